"""Write scikit-learn's digits as the mini dataset: train (first 1297) and test (last 500) stores."""

import argparse

from dra.data.digits import prepare_digits


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train-out", required=True, help="train image store folder")
    parser.add_argument("--test-out", required=True, help="test image store folder")
    args = parser.parse_args(argv)
    prepare_digits(args.train_out, args.test_out)


if __name__ == "__main__":
    main()
