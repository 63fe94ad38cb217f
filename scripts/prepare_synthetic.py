"""Stream DM-AT synthetic npz parts (concatenated in the order given) into one image store."""

import argparse

from dra.data.synthetic import convert_synthetic


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--parts", required=True, nargs="+", help="npz files with image.npy and label.npy"
    )
    parser.add_argument("--out", required=True, help="image store folder")
    parser.add_argument(
        "--num-classes", required=True, type=int, help="10 for CIFAR-10, 100 for CIFAR-100"
    )
    parser.add_argument(
        "--chunk-images", type=int, default=16384, help="images copied per chunk (memory)"
    )
    parser.add_argument(
        "--expected-images", type=int, nargs="+", default=None, help="the config's image count per part"
    )
    args = parser.parse_args(argv)
    convert_synthetic(
        args.parts,
        args.out,
        args.num_classes,
        chunk_images=args.chunk_images,
        expected_images=args.expected_images,
    )


if __name__ == "__main__":
    main()
