"""Each rule's conda env holds what its code imports: statically (AST import closure of the
rule's script through dra) and for real (venvs built from the data and analysis envs)."""

import re
import tomllib

import pytest

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
    # known answers: the download script reaches tqdm through dra.download; a table reaches
    # tabulate and jinja2 through DataFrame.to_markdown and to_latex in dra.analysis.tables
    modules, third = import_closure(["scripts.download"])
    assert {"scripts", "scripts.download", "dra.download"} <= modules and third == {"tqdm"}
    assert rule_needs(RULES["build_table"]) == {"pandas", "pyyaml", "tabulate", "jinja2"}
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
    unknown = third - set(PACKAGE_OF_MODULE)
    assert unknown == set(), f"add these modules to PACKAGE_OF_MODULE in tests/rule_envs.py: {unknown}"
    imported = {PACKAGE_OF_MODULE[module].replace("_", "-") for module in third}
    assert _pyproject_names() - TOOLING == imported
