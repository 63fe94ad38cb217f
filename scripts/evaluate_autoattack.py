"""AutoAttack (Linf; version standard unless --attacks names fewer) evaluation of one trained cell
-> autoattack.json + autoattack.npz.

Example:
    python scripts/evaluate_autoattack.py --model results/mini/<cell>/train/model.pt \\
        --recipe results/mini/<cell>/recipe.yaml --test-store results/mini/data/digits/test \\
        --eps 8/255 --n 1000 --batch-size 500 --out-json <cell>/autoattack.json --out-npz <cell>/autoattack.npz
"""

from __future__ import annotations

import argparse
import logging

import torch

from dra.cli import add_device_arguments
from dra.evaluation.autoattack import STANDARD_ATTACKS, parse_eps, run_autoattack_evaluation


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model.pt (state dict)")
    parser.add_argument("--recipe", required=True,
                        help="resolved recipe.yaml of the cell (arch, data.num_classes/mean/std)")
    parser.add_argument("--test-store", required=True, help="image store folder of the test split")
    parser.add_argument("--eps", required=True, help="Linf budget as a fraction of 1, e.g. 8/255 or 0.0314")
    parser.add_argument("--n", type=int, default=None, help="evaluate the first N test points (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, required=True,
                        help="images per batch on the device (the rule passes the GPU plan's, dra.gpu_plan)")
    parser.add_argument("--chunk-size", type=int, default=2000,
                        help="points per resumable chunk; a killed job loses at most one chunk. Each chunk pays "
                             "pyautoattack's fixed per-call cost, so keep it several batches large")
    parser.add_argument("--attacks", nargs="+", default=list(STANDARD_ATTACKS),
                        help="AutoAttack's attacks (config: evaluation.attacks; all four: version standard)")
    parser.add_argument("--state", default=None, help="resume file (npz); omit to run without resuming")
    parser.add_argument("--out-json", required=True)
    parser.add_argument("--out-npz", required=True)
    add_device_arguments(parser)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    summary = run_autoattack_evaluation(args.model, args.recipe, args.test_store, parse_eps(args.eps), args.n,
                                        args.seed, args.batch_size, args.chunk_size, args.state,
                                        args.out_json, args.out_npz, args.device, attacks=args.attacks)
    logging.getLogger("dra.evaluation").info("clean %.2f%%, AutoAttack %.2f%% on %d points",
                                             summary["clean_accuracy"], summary["robust_accuracy"], summary["n"])


if __name__ == "__main__":
    main()
