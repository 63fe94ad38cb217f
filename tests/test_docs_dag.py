"""The committed picture of the DAG (docs/dag.dot and the docs/dag.svg drawn from it) matches the
Snakefile's current rules, so README and docs/paper-run.md never show a stale graph.

Needs Snakemake only (no graphviz): the rule graph is planned afresh and compared with the
committed DOT as sets of rules and of rule -> rule edges; the SVG is checked to name every rule.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIX = "rerun `python docs/render_dag.py` and commit docs/dag.dot and docs/dag.svg"


def render_module():
    spec = importlib.util.spec_from_file_location("render_dag", ROOT / "docs" / "render_dag.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def graph(dot_source: str) -> tuple[set[str], set[tuple[str, str]]]:
    """(rules, edges between rules) of a Snakemake rule graph in DOT."""
    render = render_module()
    lines = dot_source.splitlines()
    names = {m[1]: m[3] for m in map(render.NODE.match, lines) if m}
    edges = {(names[m[1]], names[m[2]]) for m in map(render.EDGE.match, lines) if m}
    return set(names.values()), edges


def test_committed_dot_is_the_current_rule_graph():
    committed_rules, committed_edges = graph((ROOT / "docs" / "dag.dot").read_text())
    current_rules, current_edges = graph(render_module().rulegraph_dot())
    assert committed_rules == current_rules, f"rules changed: {sorted(committed_rules ^ current_rules)}; {FIX}"
    assert committed_edges == current_edges, f"edges changed: {sorted(committed_edges ^ current_edges)}; {FIX}"
    # the paper run reaches every kind of step: downloads, ImageNet, training, evaluation, figures
    for rule in ("fetch_synthetic_part", "prepare_imagenet", "extract_imagenet_features", "train_cell",
                 "autoattack", "build_table", "figure8", "reference_table"):
        assert rule in current_rules
    assert ("train_cell", "autoattack") in current_edges and ("autoattack", "build_table") in current_edges


def test_every_rule_is_drawn_or_said_why_not():
    listed = subprocess.run(
        [sys.executable, "-m", "snakemake", "--list-rules"], cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()
    drawn, _ = graph((ROOT / "docs" / "dag.dot").read_text())
    not_drawn = render_module().NOT_DRAWN
    assert set(listed) - drawn == set(not_drawn), (
        "a rule is neither in docs/dag.dot nor in NOT_DRAWN of docs/render_dag.py: "
        f"{sorted((set(listed) - drawn) ^ set(not_drawn))}"
    )
    assert drawn <= set(listed)


def test_committed_svg_draws_every_rule_of_the_dot():
    rules, edges = graph((ROOT / "docs" / "dag.dot").read_text())
    svg = (ROOT / "docs" / "dag.svg").read_text()
    drawn_labels = set(re.findall(r">([a-z0-9_]+)</text>", svg))
    assert drawn_labels == rules, f"docs/dag.svg is not the drawing of docs/dag.dot; {FIX}"
    # graphviz writes one <g class="edge"> per edge
    assert svg.count('class="edge"') == len(edges), FIX


def test_readme_and_guide_show_the_picture():
    for page in ("README.md", "docs/paper-run.md"):
        text = (ROOT / page).read_text()
        assert re.search(r"!\[[^\]]*\]\((docs/)?dag\.svg\)", text), f"{page} does not show the DAG picture"
