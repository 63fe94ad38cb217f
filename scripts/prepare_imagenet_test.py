"""Write the ImageNet evaluation images (RobustBench's 5000, Res256Crop224) into an image store."""

import argparse

from dra.data.imagenet_loader import write_eval_store


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--index", required=True, help="index folder written by prepare_imagenet")
    parser.add_argument("--out", required=True, help="output image store folder")
    parser.add_argument("--size", type=int, required=True,
                        help="crop size (RobustBench: 224; config: datasets.<d>.image_size)")
    parser.add_argument("--num-classes", type=int, required=True)
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers decoding JPEGs")
    args = parser.parse_args(argv)
    write_eval_store(args.index, args.out, args.size, args.num_classes, num_workers=args.workers)


if __name__ == "__main__":
    main()
