"""Every citation leads somewhere a reader of this repository can open (docs/sources.md).

The project's facts come from the paper and from upstream repositories at recorded commits;
working notes outside the repository are not a source a user can follow, so no file may name
them. The names are assembled from pieces so that this file does not match itself.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# documents that lived outside the repository while it was written
OUTSIDE_DOCUMENTS = [
    "recipe" + ".md",
    "evaluation" + ".md",
    "snakemake" + ".md",
    "dra-paper" + ".md",
    ".." + "/shared",
    "DESIGN" + ".md",
]


def repository_files() -> list[Path]:
    """Tracked files plus new ones git does not ignore (what a commit would carry)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout.decode().split("\0")
    return [ROOT / name for name in listed if name and (ROOT / name).is_file()]


def test_no_file_cites_a_document_outside_the_repository():
    pattern = re.compile("|".join(re.escape(name) for name in OUTSIDE_DOCUMENTS))
    hits = []
    for path in repository_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary (a PNG, a checkpoint fixture)
        for number, line in enumerate(text.splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert hits == [], "cite the primary source or docs/sources.md instead:\n" + "\n".join(hits)


def test_the_pattern_finds_what_it_guards_against():
    pattern = re.compile("|".join(re.escape(name) for name in OUTSIDE_DOCUMENTS))
    assert pattern.search("as in " + "recipe" + ".md 1.11")
    assert pattern.search("see " + ".." + "/shared/paper")
    assert not pattern.search("docs/sources.md and docs/paper-run.md")


def markdown_links(text: str) -> list[str]:
    """Targets of [text](target) links that point inside the repository."""
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    return [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


def test_relative_links_in_readme_and_docs_resolve():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in markdown_links(page.read_text(encoding="utf-8")):
            if target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert broken == []



def test_sources_table_names_the_commit_of_every_upstream_repository():
    table = (ROOT / "docs" / "sources.md").read_text(encoding="utf-8")
    # repository -> commit its facts were read at (the same commits the module docstrings name)
    for repo, commit in {
        "wzekai99/DM-Improves-AT": "b390f25",
        "NVlabs/edm": "008a4e5",
        "hustvl/LightningDiT": "2725fed",
        "fra31/auto-attack": "a392200",
        "RobustBench/robustbench": "78fcc9e",
    }.items():
        rows = [line for line in table.splitlines() if repo in line and line.startswith("|")]
        assert rows and any(commit in row for row in rows), f"{repo} @ {commit} missing in docs/sources.md"


def test_citation_file_and_readme_cite_the_same_paper():
    import yaml

    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    # the keys CFF 1.2.0 requires (cffconvert --validate checks the full schema)
    assert citation["cff-version"] == "1.2.0"
    assert citation["message"] and citation["title"] and citation["authors"]
    (paper,) = [ref for ref in citation["references"] if "Robust Classifier Training" in ref["title"]]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    citing = readme[readme.index("## Citing"):]
    assert paper["title"] in citing.replace("\n", " ").replace("*", "")
    for author in paper["authors"]:
        assert f"{author['given-names']} {author['family-names']}" in citing
        assert author["family-names"] in citing[citing.index("@article"):]
    arxiv = paper["identifiers"][0]["value"]
    assert arxiv == "arXiv:2602.19931" and arxiv in citing and paper["url"].endswith(arxiv.split(":")[1])
