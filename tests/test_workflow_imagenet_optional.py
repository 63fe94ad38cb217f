"""The paper's aggregate targets without an ImageNet folder: everything else is planned, the
ImageNet rows read "not run: set datasets.imagenet.source.path", and setting the key adds the
ImageNet track without changing any other job."""

import re
from collections import Counter

import yaml

from dra import config as cfg
from dra.analysis.tables import build_and_write_table
from workflow_helpers import ROOT, run_snakemake

KEY = "datasets.imagenet.source.path"
PAPER = yaml.safe_load((ROOT / "config.yaml").read_text())


def dry_run(*args):
    result = run_snakemake(ROOT, *args, "--dry-run", "--forceall", "--printshellcmds", timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def jobs_of(stdout):
    """(rule, output, shell command) of every planned job."""
    jobs = Counter()
    for block in re.split(r"\n(?:local)?rule ", stdout)[1:]:
        output = re.search(r"\n    output: (.*)", block)
        command = block.split("Shell command: ")[1].split("\n")[0] if "Shell command: " in block else ""
        jobs[(block.split(":")[0], output[1] if output else "", command)] += 1
    return jobs


def test_all_tables_without_the_folder_plans_every_other_cell_and_says_so_once():
    result = dry_run("all_tables")
    said = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith(f"not run: set {KEY}")]
    assert len(said) == 1, said
    jobs = Counter(rule for rule, _, _ in jobs_of(result.stdout).elements())
    # the 24 cells of Tables 1-3 and the ablations less Table 1's 4 ImageNet cells
    assert jobs["train_cell"] == 20 and jobs["build_table"] == 4
    assert not {"prepare_imagenet", "download_pretrained", "generate_imagenet_synthetic_part"} & set(jobs)


def test_setting_the_key_adds_the_imagenet_track_and_changes_nothing_else(imagenet_overlay):
    without = jobs_of(dry_run("all").stdout)
    with_key = jobs_of(dry_run("all", "--configfile", imagenet_overlay).stdout)
    assert without - with_key == Counter()  # every job stays as it was
    added = with_key - without
    assert {rule for rule, _, _ in added} >= {"prepare_imagenet", "train_cell", "figure6"}
    for rule, output, command in added:
        # the DINOv3 weights and Figure 6 belong to the ImageNet track without saying so in their paths
        assert "imagenet" in output + command or rule in ("download_pretrained", "figure6"), (rule, output)


def test_an_imagenet_cell_asked_for_by_path_stops_at_the_key():
    result = run_snakemake(ROOT, "results/paper/imagenet/vit-b-16/dm-at/syn4m-bs1024-ep100/autoattack.json",
                           "--dry-run", timeout=600)
    assert result.returncode != 0
    assert f"{KEY} is not set" in result.stdout + result.stderr


def test_table1_reads_not_run_for_imagenet_and_pending_for_the_rest(tmp_path):
    # the table rule's two steps: the spec table_spec writes, then scripts.build_table's function
    spec = tmp_path / "table1.spec.yaml"
    spec.write_text(yaml.safe_dump(cfg.table_spec(PAPER, "table1")))
    out = {suffix: tmp_path / f"table1.{suffix}" for suffix in ("csv", "md", "tex")}
    frame = build_and_write_table(spec, "rows", tmp_path / "results", "accuracy", out["csv"], out["md"], out["tex"])
    imagenet = frame["Dataset"] == "imagenet"
    assert imagenet.sum() == 4 and (~imagenet).sum() == 8
    assert set(frame.loc[imagenet, "Ours AA"]) == {f"not run: set {KEY}"}
    assert set(frame.loc[~imagenet, "Ours AA"]) == {"pending"}
    assert out["md"].read_text().count(f"not run: set {KEY}") == 4 * 5  # Ours, Diff (clean, AA) and n
    with_folder = yaml.safe_load(yaml.safe_dump(PAPER))
    with_folder["datasets"]["imagenet"]["source"]["path"] = "/data/ILSVRC2012"
    assert cfg.table_spec(with_folder, "table1") == PAPER["tables"]["table1"]
