"""A CIFAR python archive of random pixels in the official layout (the canary's data source).

    python -m scripts.random_cifar_archive --dataset cifar10 --train-images 10240 --test-images 1000 \
        --seed 1 --out results/canary/data/cifar10/random/cifar-python.tar.gz
"""

import argparse

from dra.data.cifar import write_random_cifar_archive


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=["cifar10", "cifar100"], help="the archive's layout")
    parser.add_argument("--train-images", type=int, required=True)
    parser.add_argument("--test-images", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--out", required=True, help="the .tar.gz to write")
    args = parser.parse_args(argv)
    write_random_cifar_archive(args.out, args.dataset, args.train_images, args.test_images, args.seed)


if __name__ == "__main__":
    main()
