"""Convert an official CIFAR-10/100 python archive into train and test image stores."""

import argparse

from dra.data.cifar import TEST_SIZE, TRAIN_SIZE, convert_cifar


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--archive", required=True, help="cifar-10-python.tar.gz or cifar-100-python.tar.gz"
    )
    parser.add_argument("--dataset", required=True, choices=["cifar10", "cifar100"])
    parser.add_argument("--train-out", required=True, help="train image store folder")
    parser.add_argument("--test-out", required=True, help="test image store folder")
    parser.add_argument("--expected-train", type=int, default=TRAIN_SIZE)
    parser.add_argument("--expected-test", type=int, default=TEST_SIZE)
    args = parser.parse_args(argv)
    convert_cifar(
        args.archive,
        args.dataset,
        args.train_out,
        args.test_out,
        expected_train=args.expected_train,
        expected_test=args.expected_test,
    )


if __name__ == "__main__":
    main()
