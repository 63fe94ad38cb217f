"""A synthetic part of random pixels in DM-AT's npz format (the canary's stand-in for a released set).

    python -m scripts.random_synthetic_part --images 4096 --image-size 32 --num-classes 10 --seed 1 \
        --out results/canary/data/cifar10/synthetic-random/1m/part0.npz
"""

import argparse

from dra.data.synthetic import write_random_synthetic_part


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, required=True)
    parser.add_argument("--image-size", type=int, required=True)
    parser.add_argument("--num-classes", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--out", required=True, help="the .npz to write (image, label)")
    args = parser.parse_args(argv)
    write_random_synthetic_part(args.out, args.images, args.image_size, args.num_classes, args.seed)


if __name__ == "__main__":
    main()
