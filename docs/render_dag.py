"""Draw the paper run's rule graph: docs/dag.dot (Snakemake's --rulegraph) and docs/dag.svg.

    python docs/render_dag.py

run from anywhere with the project's environment active. It rewrites docs/dag.dot, and
docs/dag.svg when graphviz's ``dot`` is installed (Debian: ``apt-get install graphviz``).
The graph is the paper configuration (config.yaml) planned for the targets ``all`` and
``all_reference``, with an ImageNet folder configured so that the ImageNet rules appear: the
folder is a placeholder name, nothing is read while planning. tests/test_docs_dag.py checks
that docs/dag.dot still matches the Snakefile's rules; rerun this script after changing rules.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOT_FILE = ROOT / "docs" / "dag.dot"
SVG_FILE = ROOT / "docs" / "dag.svg"
TARGETS = ("all", "all_reference")
IMAGENET_PLACEHOLDER = "datasets={imagenet: {source: {path: ILSVRC2012}}}"

NODE = re.compile(r"\s*(\d+)(\[label = \"([^\"]+)\".*)$")
EDGE = re.compile(r"\s*(\d+) -> (\d+)\s*$")

#: Rules that are in no job of the picture, and why. Every other rule must be drawn.
NOT_DRAWN = {
    "all_tables": "a list of targets (the tables); `all` names the same files",
    "all_figures": "a list of targets (the figures); `all` names the same files",
    "all_features": "a list of targets (features and their validation); `all` names the same files",
    "all_models": "a list of targets (every trained cell)",
    "all_evals": "a list of targets (every AutoAttack evaluation)",
    "all_data": "a list of targets (every download and the stores made from them)",
    "all_exports": "a list of targets (every cell's export folder); `all` names the same files",
    "all_replicates": "a list of targets (tables that run several seeds; none in the paper's config)",
    "prepare_digits": "mini scale only: scikit-learn's digits instead of CIFAR",
    "train_diffusion": "mini scale only: the workflow trains its own small EDM",
    "generate_synthetic": "mini scale only: synthetic digits sampled from that EDM",
    "synthetic_quality": "mini scale only: how often a generated digit shows its label",
    "canary_cell": "the canary's (config/canary.yaml): a few steps of one cell, measured, on its random stand-ins",
    "canary": "the canary's table of every canary_cell (in all_tables at canary scale only)",
    "random_cifar_archive": "the canary's: a CIFAR archive of random pixels instead of the download",
    "random_imagenet_folder": "the canary's: an ImageNet-layout folder of random JPEGs instead of the user's",
    "random_synthetic_part": "the canary's: a DM-AT npz part of random pixels instead of the download",
    "random_edm": "the canary's: a randomly initialised EDM DDPM++ instead of the download",
    "random_lightningdit": "the canary's: a randomly initialised LightningDiT-XL/1 and VA-VAE instead of the download",
    "random_pretrained": "the canary's: randomly initialised backbone weights instead of the download",
}


def rulegraph_dot() -> str:
    """Snakemake's rule graph of the paper run, in DOT (its log lines on stdout dropped)."""
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", *TARGETS, "--rulegraph", "dot", "--config", IMAGENET_PLACEHOLDER],
        cwd=ROOT, capture_output=True, text=True,
    )
    if result.returncode != 0 or "digraph" not in result.stdout:
        raise SystemExit(f"snakemake --rulegraph failed (exit {result.returncode}):\n{result.stderr}")
    return canonical(result.stdout[result.stdout.index("digraph"):])


def canonical(dot_source: str) -> str:
    """The same graph with nodes numbered in the order of their rule names and edges sorted:
    Snakemake numbers the nodes in the order it meets them, which changes with Python's hash
    seed, so without this the file (and graphviz's layout of it) would change from run to run."""
    lines = dot_source.strip().splitlines()
    nodes = {int(m[1]): (m[3], m[2]) for m in map(NODE.match, lines) if m}  # id -> (rule, attributes)
    number = {old: new for new, old in enumerate(sorted(nodes, key=lambda node: nodes[node][0]))}
    edges = sorted((number[int(m[1])], number[int(m[2])]) for m in map(EDGE.match, lines) if m)
    header = [line for line in lines[:-1] if not NODE.match(line) and not EDGE.match(line)]
    node_lines = [f"\t{number[old]}{nodes[old][1]}" for old in sorted(nodes, key=number.get)]
    edge_lines = [f"\t{a} -> {b}" for a, b in edges]
    return "\n".join(header + node_lines + edge_lines + ["}"]) + "\n"


def write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def main() -> None:
    dot_source = rulegraph_dot()
    write_atomically(DOT_FILE, dot_source.encode())
    print(f"wrote {DOT_FILE.relative_to(ROOT)}")
    if shutil.which("dot") is None:
        print("graphviz's `dot` is not installed: docs/dag.svg is unchanged (apt-get install graphviz)")
        return
    # left to right: the graph is wider than it is deep, so this shape scales down more legibly
    svg = subprocess.run(["dot", "-Grankdir=LR", "-Tsvg"], input=dot_source.encode(),
                         capture_output=True, check=True).stdout
    write_atomically(SVG_FILE, svg)
    print(f"wrote {SVG_FILE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
