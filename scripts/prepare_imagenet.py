"""Validate an ILSVRC-2012 folder (train/<wnid>, val/<wnid>) and write its index."""

import argparse

from dra.data.imagenet import NUM_CLASSES, TRAIN_IMAGES, VAL_IMAGES, index_imagenet


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", required=True, help="folder holding train/ and val/")
    parser.add_argument(
        "--out", required=True, help="index folder (classes.txt, train/val/eval.csv, meta.json)"
    )
    parser.add_argument("--expected-train", type=int, default=TRAIN_IMAGES)
    parser.add_argument("--expected-val", type=int, default=VAL_IMAGES)
    parser.add_argument("--num-classes", type=int, default=NUM_CLASSES)
    parser.add_argument(
        "--eval-ids",
        default=None,
        help="evaluation id list (default: RobustBench's 5000 ids in config/data/)",
    )
    args = parser.parse_args(argv)
    index_imagenet(
        args.root,
        args.out,
        expected_train=args.expected_train,
        expected_val=args.expected_val,
        num_classes=args.num_classes,
        eval_ids=args.eval_ids,
    )


if __name__ == "__main__":
    main()
