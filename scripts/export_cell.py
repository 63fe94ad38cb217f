"""Export one evaluated cell: weights as safetensors, a config that rebuilds the module, a model
card, and for CIFAR WideResNets RobustBench's checkpoint and model_info (dra.export).

    python -m scripts.export_cell --recipe <cell>/recipe.yaml --model <cell>/train/model.pt \\
        --autoattack-json <cell>/autoattack.json --autoattack-flags <cell>/autoattack.npz \\
        --benchmark train=<cell>/train/train_cell.benchmark.tsv \\
        --benchmark autoattack=<cell>/autoattack.benchmark.tsv \\
        --gpus '{"train": 1, "autoattack": 1}' --dataset-kind cifar10 --sources '[...]' --paper '[...]' \\
        --out <cell>/export
"""

from __future__ import annotations

import argparse
import json
import logging

import torch

from dra.export import export_cell


def _benchmark(text: str) -> tuple[str, str]:
    job, sep, path = text.partition("=")
    if not sep or not job or not path:
        raise argparse.ArgumentTypeError(f"--benchmark {text!r}: expected JOB=PATH "
                                         "(e.g. train=<cell>/train/train_cell.benchmark.tsv)")
    return job, path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", required=True, help="the cell's resolved recipe.yaml")
    parser.add_argument("--model", required=True, help="the cell's train/model.pt (the selected weights)")
    parser.add_argument("--autoattack-json", required=True)
    parser.add_argument("--autoattack-flags", required=True, help="autoattack.npz: per-example clean/robust flags")
    parser.add_argument("--benchmark", type=_benchmark, action="append", default=[],
                        help="JOB=PATH of a Snakemake benchmark file (repeatable)")
    parser.add_argument("--gpus", required=True, help="JSON {job: GPUs the job asked for}")
    parser.add_argument("--dataset-kind", required=True, help="datasets.<d>.source.kind (cifar10, cifar100, ...)")
    parser.add_argument("--sources", required=True,
                        help="JSON list: the sources the weights derive from (dra.model_card)")
    parser.add_argument("--paper", required=True, help="JSON list: the paper's numbers of this cell, per table")
    parser.add_argument("--out", required=True, help="the export folder (replaced as a whole)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    summary = export_cell(args.recipe, args.model, args.autoattack_json, args.autoattack_flags, dict(args.benchmark),
                          json.loads(args.gpus), args.out, dataset_kind=args.dataset_kind,
                          sources=json.loads(args.sources), paper=json.loads(args.paper))
    log = logging.getLogger("dra.export")
    for name, size in summary["files"].items():
        log.info("%s: %d bytes", name, size)
    if summary["robustbench_max_abs_logit_difference"] is not None:
        log.info("RobustBench checkpoint: largest logit difference to the evaluated model %.3g",
                 summary["robustbench_max_abs_logit_difference"])


if __name__ == "__main__":
    main()
