"""Convert a released DM-AT checkpoint (wzekai99/DM-Improves-AT) into our WideResNet's model.pt.

The output is a plain state dict, the same as train/model.pt of a trained cell, so
scripts/evaluate_autoattack.py evaluates it unchanged. A checkpoint whose keys or shapes do
not fit the recipe's arch stops with the unexpected, missing and mis-shaped keys.

Example:
    python -m scripts.convert_dmat_checkpoint \\
        --checkpoint resources/reference/cifar10_linf_wrn28-10/checkpoint.pt \\
        --args-txt resources/reference/cifar10_linf_wrn28-10/args.txt \\
        --recipe results/paper/reference/cifar10_linf_wrn28-10/recipe.yaml \\
        --out results/paper/reference/cifar10_linf_wrn28-10/train/model.pt
"""

from __future__ import annotations

import argparse
import logging

import torch

from dra.reference import convert_reference_checkpoint


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="DM-AT checkpoint (.pt with 'model_state_dict')")
    parser.add_argument("--args-txt", default=None,
                        help="DM-AT's args.txt of the run: model, data and normalize are checked against the recipe")
    parser.add_argument("--recipe", required=True, help="recipe.yaml of the reference cell (arch, data, reference)")
    parser.add_argument("--out", required=True, help="model.pt to write (state dict of our WideResNet)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    summary = convert_reference_checkpoint(args.checkpoint, args.args_txt, args.recipe, args.out)
    logging.getLogger("dra.reference").info("wrote %s: %d tensors, %d parameters", args.out,
                                            summary["tensors"], summary["parameters"])


if __name__ == "__main__":
    main()
