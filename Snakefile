# Reproduction of "Expanding the Role of Diffusion Models for Robust Classifier Training" (DRA).
#
#   snakemake --profile slurm all_tables --configfile config/canary.yaml   first: does each cell fit your GPUs?
#   snakemake --profile slurm all_tables                                   the paper, on a SLURM cluster
#   snakemake all --cores 2 --configfile config/mini.yaml               offline mini scale, CPU
#   snakemake --profile slurm results/paper/<dataset>/<arch>/<method>/<budget>/autoattack.json
#                                                                      one table cell
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

from dra import config as cfg

min_version("9.19")

# Read the config files the strict way before Snakemake does: a duplicated key, a YAML syntax
# error or a file that is not a mapping is named with its file, line and column.
try:
    cfg.check_config_files(
        path
        for path in ["config.yaml", *workflow.config_settings.configfiles]
        if Path(path).is_file()
    )
except cfg.ConfigError as error:
    raise WorkflowError(str(error)) from None


configfile: "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"


# A mistyped cell path fails at once (MissingRuleException) instead of training something new.
wildcard_constraints:
    dataset=_one_of(config["datasets"]),
    arch=_one_of(config["archs"]),
    method=_one_of(config["methods"]),
    budget=_one_of(cell.budget for cell in CELLS + cfg.figure_cells(config)),
    table=_one_of(config["tables"]),


include: "rules/data.smk"
include: "rules/diffusion.smk"
include: "rules/imagenet.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/analysis.smk"
# after train.smk, evaluate.smk and analysis.smk: the reference cells use their rules
include: "rules/reference.smk"
include: "rules/figures.smk"
include: "rules/canary.smk"
include: "rules/export.smk"


rule all:
    default_target: True
    input:
        rules.all_tables.input,
        rules.all_features.input,
        rules.all_figures.input,
        rules.all_exports.input,
