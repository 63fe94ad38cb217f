"""An ImageNet-layout folder of random JPEGs with its eval_ids.txt (the canary's data source).

    python -m scripts.random_imagenet_folder --num-classes 1000 --train-images 2048 --val-images 1000 \
        --seed 1 --out results/canary/data/imagenet/random/folder
"""

import argparse

from dra.data.random_imagenet import write_random_imagenet_folder


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-classes", type=int, required=True, help="class folders (wnids)")
    parser.add_argument("--train-images", type=int, required=True)
    parser.add_argument("--val-images", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--out", required=True, help="the folder to write (train/, val/, eval_ids.txt)")
    args = parser.parse_args(argv)
    write_random_imagenet_folder(args.out, args.num_classes, args.train_images, args.val_images, args.seed)


if __name__ == "__main__":
    main()
