"""Train one table cell from its resolved recipe (resumable; works under torchrun).

    python scripts/train.py --recipe results/mini/<cell>/recipe.yaml \
        --out-dir results/mini/<cell>/train --state-dir results/mini/state/<cell> --threads 2
"""

import argparse

from dra.training import load_recipe, train_cell


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", required=True, help="resolved recipe.yaml (docs/architecture.md)")
    parser.add_argument("--out-dir", required=True, help="folder for model.pt (EMA weights) and log.csv")
    parser.add_argument("--state-dir", required=True, help="folder for the resumable training state")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    args = parser.parse_args(argv)
    train_cell(load_recipe(args.recipe), args.out_dir, args.state_dir, args.threads)


if __name__ == "__main__":
    main()
