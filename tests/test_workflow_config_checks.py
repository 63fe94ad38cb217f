"""Every configuration mistake of tests/config_cases.py stops before the first job with one message
naming the key, the bad value and where to fix it; config files are read strictly (duplicate keys,
YAML syntax, top-level shape named with file, line and column); --config values are typed and
checked as a file's are."""

import copy
import time
from pathlib import Path

import pytest
import yaml
from snakemake.utils import update_config

from dra.config import ConfigError, load_config_file, typed_overrides, validate_config
from config_cases import CASES, YAML_CASES, apply, overlay_of
from workflow_helpers import copy_workflow, run_snakemake

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def paper():
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    validate_config(config)
    return config


def test_there_are_at_least_thirty_cases_beyond_the_issue():
    assert len(CASES) >= 50 and len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize("name,path,value,key,shown", CASES, ids=[case[0] for case in CASES])
def test_mistake_is_rejected_naming_key_and_value(paper, name, path, value, key, shown):
    config = copy.deepcopy(paper)
    apply(config, path, value)
    with pytest.raises(ConfigError) as raised:
        validate_config(config)
    message = str(raised.value)
    assert f"config key {key}" in message
    assert shown in message
    assert "\n" not in message.replace("ILSVRC\\n2012", "")  # one line (the newline case shows it escaped)
    assert "config.yaml" in message and "--config" in message  # where to fix it


def test_the_feature_oneof_names_the_edm_branch_not_the_lightningdit_one(paper):
    config = copy.deepcopy(paper)
    config["diffusion_models"]["edm-cifar10-cond"]["feature"]["sigma"] = 0
    with pytest.raises(ConfigError) as raised:
        validate_config(config)
    assert "feature.sigma: 0 is less than or equal to the minimum of 0" in str(raised.value)
    assert "integer" not in str(raised.value)


@pytest.mark.parametrize("name,text,shown", YAML_CASES, ids=[case[0] for case in YAML_CASES])
def test_config_file_is_read_strictly(tmp_path, name, text, shown):
    path = tmp_path / "overlay.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_config_file(path)
    message = str(raised.value)
    assert message.startswith(str(path)) and "\n" not in message
    for part in shown:
        assert part in message


def test_repository_config_files_have_no_duplicate_keys():
    for path in [ROOT / "config.yaml", *sorted((ROOT / "config").glob("*.yaml"))]:
        assert isinstance(load_config_file(path), dict), path


def test_command_line_values_are_typed_and_checked_like_a_file(paper):
    # Snakemake hands nested --config values over as strings: 'dra={lambda: 0.5}' gives '0.5'
    config = copy.deepcopy(paper)
    update_config(config, typed_overrides({"dra": {"lambda": "0.5"}, "seed": 3}))
    validate_config(config)
    assert config["dra"]["lambda"] == 0.5 and config["seed"] == 3
    update_config(config, typed_overrides({"dra": {"lambda": "0"}}))
    with pytest.raises(ConfigError, match="config key dra.lambda: 0 is less than or equal"):
        validate_config(config)


# ---------------------------------------------------------------------------- through Snakemake


TARGET = "results/paper/tables/table2.md"


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    return copy_workflow(tmp_path_factory.mktemp("workflow"))


def _dry_run(workdir, *args):
    started = time.perf_counter()
    result = run_snakemake(workdir, TARGET, "--dry-run", *args, timeout=120)
    return result, time.perf_counter() - started


def _rejected_before_any_job(result):
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Building DAG of jobs" not in output and "Job stats" not in output
    return output


def test_overlay_mistake_stops_the_dry_run_naming_the_key(workflow, paper):
    overlay = workflow / "eps.yaml"
    overlay.write_text(yaml.safe_dump(overlay_of(["datasets", "cifar10", "eps_255"], 300, paper)))
    result, seconds = _dry_run(workflow, "--configfile", overlay.name)
    output = _rejected_before_any_job(result)
    assert "config key datasets.cifar10.eps_255: 300 is greater than the maximum of 255" in output
    print(f"rejected in {seconds:.1f} s")


def test_duplicate_key_in_an_overlay_stops_the_dry_run_with_file_and_line(workflow):
    overlay = workflow / "twice.yaml"
    overlay.write_text("seed: 1\ndra:\n  lambda: 1.2\nseed: 2\n")
    output = _rejected_before_any_job(_dry_run(workflow, "--configfile", overlay.name)[0])
    assert "twice.yaml, line 4: key 'seed' appears twice in one mapping (first at line 1)" in output


def test_syntax_error_in_config_yaml_names_file_line_and_column(workflow, tmp_path):
    broken = copy_workflow(tmp_path)
    text = (broken / "config.yaml").read_text().replace("seed: 1 ", "seed: [1 ", 1)
    (broken / "config.yaml").write_text(text)
    line = text[: text.index("seed: [1")].count("\n") + 1
    output = _rejected_before_any_job(_dry_run(broken)[0])
    assert "config.yaml, line " in output and "column" in output and "not valid YAML" in output
    assert f"line {line}" in output or f"line {line + 1}" in output


def test_command_line_override_is_checked_and_typed(workflow):
    output = _rejected_before_any_job(_dry_run(workflow, "--config", "dra={lambda: 0}")[0])
    assert "config key dra.lambda: 0 is less than or equal to the minimum of 0" in output
    result, _ = _dry_run(workflow, "--config", "dra={lambda: 0.5}")
    assert result.returncode == 0, result.stderr[-2000:]


def test_lock_file_and_config_must_agree_before_any_job(paper, tmp_path):
    from dra.config import check_download_lock

    lock = tmp_path / "downloads.lock.yaml"
    url = paper["datasets"]["cifar10"]["source"]["url"]
    recorded = {"revision": None, "size": 170498071, "sha256": "0" * 64}
    lock.write_text(yaml.safe_dump({url: recorded}))
    with pytest.raises(ConfigError) as raised:
        check_download_lock(paper, lock)
    message = str(raised.value)
    assert "config key datasets.cifar10.source.sha256" in message and str(lock) in message
    assert "0" * 64 in message and paper["datasets"]["cifar10"]["source"]["sha256"] in message
    # a Hub commit written into the config must be the one the lock pinned
    config = copy.deepcopy(paper)
    part = config["datasets"]["cifar10"]["synthetic"]["1m"]["parts"][0]
    part["hf"]["revision"] = "a" * 40
    lock.write_text(yaml.safe_dump({"hf://dataset/P2333/DM-Improves-AT/cifar10/1m.npz":
                                    {"revision": "b" * 40, "size": 1, "sha256": "1" * 64}}))
    with pytest.raises(ConfigError, match="datasets.cifar10.synthetic.1m.parts\\[0\\].hf.revision: commit a{40} "):
        check_download_lock(config, lock)
    check_download_lock(paper, ROOT / "config" / "data" / "downloads.lock.yaml")  # the repository's own
