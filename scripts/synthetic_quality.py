"""Label agreement of a generated image store under a pixel classifier fitted on real data."""

import argparse

from dra.diffusion.quality import synthetic_label_agreement


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--generated", required=True, help="generated image store")
    parser.add_argument("--train", required=True, help="real training image store (fits the judge)")
    parser.add_argument("--test", required=True, help="real test image store (the judge's own accuracy)")
    parser.add_argument("--out", required=True, help="JSON report")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    report = synthetic_label_agreement(args.generated, args.train, args.test, args.out, args.seed)
    print(f"label agreement {report['label_agreement']:.3f} (judge on real test {report['judge_test_accuracy']:.3f})")


if __name__ == "__main__":
    main()
