"""Each rule's conda env holds what its code imports: statically (AST import closure of the
rule's script through dra) and for real (venvs built from the data and analysis envs)."""

import functools
import hashlib
import http.server
import json
import os
import re
import subprocess
import sys
import tarfile
import threading
import time
import tomllib

import pytest
import yaml

from rule_envs import (
    PACKAGE_OF_MODULE,
    ROOT,
    env_packages,
    env_provides,
    import_closure,
    missing_by_rule,
    rule_needs,
    workflow_rules,
)

RULES = workflow_rules()
# the workflow's own tooling, not imported by the code under dra/, scripts/ or benchmarks/
TOOLING = {"snakemake", "snakemake-executor-plugin-slurm"}


def test_the_import_closure_follows_dra_and_pandas_lazy_imports():
    # known answers: the download script reaches tqdm, huggingface_hub (Hub files), yaml (the lock
    # file) and numpy (the npz format check) through dra.download; a table reaches
    # tabulate and jinja2 through DataFrame.to_markdown and to_latex in dra.analysis.tables, and
    # scipy and numpy through its paired tests (dra.analysis.significance)
    modules, third = import_closure(["scripts.download"])
    assert {"scripts", "scripts.download", "dra.download"} <= modules
    assert third == {"tqdm", "huggingface_hub", "yaml", "numpy"}
    assert rule_needs(RULES["build_table"]) == {"pandas", "pyyaml", "tabulate", "jinja2", "scipy", "numpy"}
    # the figures measure with torch, so their rules need it
    assert "torch" in rule_needs(RULES["figure8"])
    assert RULES["reference_autoattack"].scripts == ["evaluate_autoattack"]  # `use rule` inherits


def test_every_rule_env_holds_every_package_its_code_imports():
    with_env = [rule for rule in RULES.values() if rule.env]
    assert len(with_env) >= 35
    missing = {name: sorted(packages) for name, packages in missing_by_rule().items() if packages}
    assert missing == {}, f"rules whose env lacks a package their code imports: {missing}"


def test_envs_are_lean_and_the_data_env_has_no_torch():
    for env in ("data", "analysis", "torch"):
        needed = set().union(*(rule_needs(rule) for rule in RULES.values() if rule.env == env))
        assert env_packages(env) - needed == set(), f"envs/{env}.yaml names packages no rule of it imports"
    assert "torch" not in env_provides("data") and "torch" not in env_provides("analysis")
    # the zoo's env names robustbench and what robustbench's own import needs beside it: fra31's
    # `autoattack` (from git, so git) and pkg_resources (setuptools)
    needed = set().union(*(rule_needs(rule) for rule in RULES.values() if rule.env == "robustbench"))
    assert "robustbench" in needed
    assert env_packages("robustbench") - needed == {"autoattack", "git", "setuptools"}
    assert "timm" not in env_packages("robustbench")  # robustbench pins its own timm; envs/torch.yaml has another


def test_run_blocks_carry_no_conda_and_every_other_rule_does():
    # Snakemake runs a run: block in its own process and ignores conda: there
    for rule in RULES.values():
        if rule.run_code:
            assert "conda:" not in rule.text, rule.name
            # the run block's imports come with the workflow's own install (pyproject.toml)
            assert rule_needs(rule) <= {"pyyaml"}, rule.name
        elif rule.scripts:
            assert rule.env, rule.name


def _pyproject_names():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {re.split(r"[ =<>!\[]", req)[0].lower().replace("_", "-") for req in project["dependencies"]}


def test_pyproject_lists_what_the_code_imports_and_nothing_else():
    modules = [
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for folder in ("dra", "scripts")
        for path in sorted((ROOT / folder).rglob("*.py"))
    ]
    _, third = import_closure(modules)
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        _, outside = import_closure([], path.read_text())
        third |= outside
    third -= {"snakemake"}  # benchmarks read configs with snakemake.utils: tooling, listed below
    # benchmarks that replay test cases import the tests' own helper modules, and one benchmark imports
    # another (gpu_check runs gpu_train_step's measurement)
    third = {module for module in third
             if not (ROOT / "tests" / f"{module}.py").exists() and not (ROOT / "benchmarks" / f"{module}.py").exists()}
    # robustbench pins timm 1.0.9 (the workflow's timm is newer): it lives in envs/robustbench.yaml only,
    # and tests/test_robustbench_zoo.py installs it into a venv of its own
    third -= {"robustbench"}
    unknown = third - set(PACKAGE_OF_MODULE)
    assert unknown == set(), f"add these modules to PACKAGE_OF_MODULE in tests/rule_envs.py: {unknown}"
    imported = {PACKAGE_OF_MODULE[module].replace("_", "-") for module in third}
    assert _pyproject_names() - TOOLING == imported


# ---------------------------------------------------------------------------------------------
# For real: a venv holding only an env's packages (their PyPI names, the env's version bounds),
# pip's wheel cache reused between runs, and the env's rules run in it from the repository root as
# Snakemake runs them (`python -m scripts.<name>`, no install of this repository).


def _pip_requirements(env):
    spec = yaml.safe_load((ROOT / "envs" / f"{env}.yaml").read_text())
    python, requirements = None, []
    for dependency in spec["dependencies"]:
        for entry in dependency["pip"] if isinstance(dependency, dict) else [dependency]:
            name = re.split(r"[ =<>!]", entry.strip())[0]
            if name == "python":
                python = entry.split("=")[-1].strip()
            elif name != "pip":
                requirements.append(entry.replace(" ", ""))
    return python, requirements


def _venv_python(env, tmp_path):
    """A venv from the env's packages; pip installs into it from this interpreter (--python)."""
    python, requirements = _pip_requirements(env)
    assert f"{sys.version_info.major}.{sys.version_info.minor}" == python, f"envs/{env}.yaml wants python {python}"
    venv = tmp_path / f"venv-{env}"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                           "--quiet", "--disable-pip-version-check", *requirements], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    print(f"envs/{env}.yaml: venv with {' '.join(requirements)} built in {time.monotonic() - started:.1f} s")
    return venv / "bin" / "python"


def _run_in(python, *args):
    """A command in the repository root, as a rule's job runs, with nothing of this venv on its path."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{python.parent}:/usr/bin:/bin"
    done = subprocess.run([str(python), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(args)}:\n{done.stderr}"
    return done


def _import_every_module_of(env, python):
    modules = set()
    for rule in RULES.values():
        if rule.env == env:
            modules |= import_closure([f"scripts.{name}" for name in rule.scripts])[0]
    _run_in(python, "-c", f"import importlib\nfor name in {sorted(modules)!r}: importlib.import_module(name)")
    return modules


@pytest.fixture
def served_file(tmp_path):
    """A file on a local HTTP server: (url, content)."""
    folder = tmp_path / "served"
    folder.mkdir()
    # a real gzipped tar (the download checks the format its name says), of random bytes
    member = folder / "member.bin"
    member.write_bytes(os.urandom(300_000))
    with tarfile.open(folder / "archive.tar.gz", "w:gz") as archive:
        archive.add(member, arcname="member.bin")
    content = (folder / "archive.tar.gz").read_bytes()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/archive.tar.gz", content
    server.shutdown()


@pytest.mark.slow  # builds a venv (pip, from its wheel cache after the first run)
def test_data_env_runs_the_data_rules(tmp_path, served_file):
    python = _venv_python("data", tmp_path)
    assert "dra.download" in _import_every_module_of("data", python)
    url, content = served_file
    dest = tmp_path / "data" / "archive.tar.gz"
    # download_archive's command (a verified, format-checked, locked download), and prepare_digits'
    # (scikit-learn's digits, loaded inside a function)
    spec = json.dumps({"url": url, "sha256": hashlib.sha256(content).hexdigest()})
    _run_in(python, "-m", "scripts.download", "--spec", spec, "--lock", str(tmp_path / "downloads.lock.yaml"),
            "--dest", str(dest))
    assert dest.read_bytes() == content
    _run_in(python, "-m", "scripts.prepare_digits", "--train-out", str(tmp_path / "train"),
            "--test-out", str(tmp_path / "test"))
    meta = json.loads((tmp_path / "train" / "meta.json").read_text())
    test_meta = json.loads((tmp_path / "test" / "meta.json").read_text())
    assert meta["n"] + test_meta["n"] == 1797 and meta["height"] == 8  # scikit-learn's 1797 digits
    _run_in(python, "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)")


@pytest.mark.slow  # builds a venv (pip, from its wheel cache after the first run)
def test_analysis_env_builds_a_table(tmp_path):
    python = _venv_python("analysis", tmp_path)
    assert "dra.analysis.tables" in _import_every_module_of("analysis", python)
    # build_table's command on the results of two cells, as autoattack writes them
    results = tmp_path / "results"
    rows = [{"cell": "digits/wrn-10-1/at/nosyn-bs128-ep30", "paper": None},
            {"cell": "digits/wrn-10-1/dm-at/syn2k-bs128-ep30", "paper": {"clean": 99.0, "autoattack": 80.0}}]
    for row, (clean, robust) in zip(rows, [(99.0, 79.0), (100.0, 77.0)]):
        folder = results.joinpath(*row["cell"].split("/"))
        folder.mkdir(parents=True)
        (folder / "autoattack.json").write_text(json.dumps({"clean_accuracy": clean, "robust_accuracy": robust,
                                                             "n": 100}))
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({"title": "t", "rows": rows}))
    out = {suffix: tmp_path / f"table.{suffix}" for suffix in ("csv", "md", "tex")}
    _run_in(python, "-m", "scripts.build_table", "--spec", str(tmp_path / "spec.yaml"), "--key", "rows",
            "--kind", "accuracy", "--results-root", str(results), "--out-csv", str(out["csv"]),
            "--out-md", str(out["md"]), "--out-tex", str(out["tex"]))
    markdown = out["md"].read_text()
    assert "+1.00" in markdown and "-3.00" in markdown  # tabulate wrote it: 100 - 99 and 77 - 80
    assert r"\begin{tabular}" in out["tex"].read_text() and "-3.00" in out["tex"].read_text()  # jinja2
    _run_in(python, "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)")
