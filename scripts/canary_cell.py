"""The canary of one cell: a few training steps at its real shapes on random data (dra.canary).

    python -m scripts.canary_cell --recipe results/canary/<cell>/recipe.yaml \
        --out results/canary/<cell>/canary.json --work-dir results/canary/state/<cell>/canary \
        --micro-batch 2 --steps 3 --threads 2
"""

import argparse
import json

from dra.canary import canary_cell
from dra.training import load_recipe


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", required=True, help="the cell's resolved recipe.yaml")
    parser.add_argument("--out", required=True,
                        help="canary.json: pass or fail, step time, peak memory, memory per image")
    parser.add_argument("--work-dir", required=True, help="folder for the random data, features and training state")
    parser.add_argument("--micro-batch", type=int, required=True, help="images per step (one GPU's micro-batch)")
    parser.add_argument("--steps", type=int, required=True, help="optimizer steps")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--planned", default="{}", help="JSON of the GPU plan's figures, copied into the row")
    args = parser.parse_args(argv)
    canary_cell(load_recipe(args.recipe), args.work_dir, args.out, args.micro_batch, args.steps, args.threads,
                json.loads(args.planned))


if __name__ == "__main__":
    main()
