"""Fetch one RobustBench CIFAR-10 Linf zoo checkpoint into <model-dir>/cifar10/Linf/<name>.pt
(dra.analysis.robustbench_zoo.download_checkpoint: the package's Google Drive id, dra.download)."""

import argparse

from dra.analysis.robustbench_zoo import download_checkpoint


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True, help="the model's RobustBench name, e.g. Wang2023Better_WRN-70-16")
    parser.add_argument("--model-dir", required=True, help="RobustBench's model_dir (the folder above cifar10/)")
    parser.add_argument("--sha256", default=None, help="expected sha256; RobustBench publishes none")
    args = parser.parse_args(argv)
    download_checkpoint(args.name, args.model_dir, args.sha256)


if __name__ == "__main__":
    main()
