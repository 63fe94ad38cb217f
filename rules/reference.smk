# Reference cells: DM-AT's released checkpoints through our AutoAttack, beside their published
# numbers (config reference_models). Run before training: the evaluation must reproduce them.
#   snakemake --profile slurm all_reference
from dra import reference as ref

try:
    ref.check_reference_models(config)
except cfg.ConfigError as error:
    raise WorkflowError(str(error)) from None

REFERENCE_NAMES = ref.reference_names(config)


rule fetch_reference_checkpoint:
    output:
        checkpoint=f"{DATA}/reference/{{name}}/checkpoint.pt",
        args=f"{DATA}/reference/{{name}}/args.txt",
    log:
        f"{DATA}/reference/{{name}}/fetch.log",
    wildcard_constraints:
        name=_one_of(REFERENCE_NAMES),
    localrule: True
    conda:
        "../envs/data.yaml"
    params:
        checkpoint=lambda wc: download_spec(ref.reference_entry(config, wc.name)["checkpoint"]),
        args=lambda wc: download_spec(ref.reference_entry(config, wc.name)["args"]),
        lock=LOCK_FILE,
    shell:
        "python -m scripts.download --spec {params.checkpoint:q} --lock {params.lock:q}"
        " --dest {output.checkpoint:q} 2> {log:q}"
        " && python -m scripts.download --spec {params.args:q} --lock {params.lock:q}"
        " --dest {output.args:q} 2>> {log:q}"


# The recipe file of the trained cells' rule (train.smk), with the checkpoint's recipe.
use rule resolve_recipe as reference_recipe with:
    output:
        f"{RESULTS}/reference/{{name}}/recipe.yaml",
    log:
        f"{RESULTS}/reference/{{name}}/recipe.log",
    wildcard_constraints:
        name=_one_of(REFERENCE_NAMES),
    params:
        recipe=lambda wc: ref.reference_recipe(config, wc.name),


rule convert_reference_checkpoint:
    input:
        checkpoint=f"{DATA}/reference/{{name}}/checkpoint.pt",
        args=f"{DATA}/reference/{{name}}/args.txt",
        recipe=f"{RESULTS}/reference/{{name}}/recipe.yaml",
    output:
        f"{RESULTS}/reference/{{name}}/train/model.pt",
    log:
        f"{RESULTS}/reference/{{name}}/train/convert.log",
    wildcard_constraints:
        name=_one_of(REFERENCE_NAMES),
    conda:
        "../envs/torch.yaml"
    shell:
        "python -m scripts.convert_dmat_checkpoint --checkpoint {input.checkpoint} --args-txt {input.args}"
        " --recipe {input.recipe} --out {output} --threads {threads} 2> {log}"


# The AutoAttack rule of the trained cells, unchanged, on the converted checkpoint.
use rule autoattack as reference_autoattack with:
    input:
        model=f"{RESULTS}/reference/{{name}}/train/model.pt",
        recipe=f"{RESULTS}/reference/{{name}}/recipe.yaml",
        test=lambda wc: cfg.split_store(
            config, ref.reference_entry(config, wc.name)["dataset"], "test"
        ),
    output:
        json=f"{RESULTS}/reference/{{name}}/autoattack.json",
        flags=f"{RESULTS}/reference/{{name}}/autoattack.npz",
    log:
        f"{RESULTS}/reference/{{name}}/autoattack.log",
    benchmark:
        f"{RESULTS}/reference/{{name}}/autoattack.benchmark.tsv"
    wildcard_constraints:
        name=_one_of(REFERENCE_NAMES),
    params:
        eps_255=lambda wc: ref.reference_dataset(config, wc.name)["eps_255"],
        n=lambda wc: ref.reference_dataset(config, wc.name)["eval_n"],
        seed=config["seed"],
        attacks=" ".join(config["evaluation"]["attacks"]),
        batch=lambda wc: job_batch(
            "reference_autoattack", ref.reference_entry(config, wc.name)["arch"]
        ),
        state=f"{RESULTS}/state/reference/{{name}}/autoattack",


# The tables' rules (analysis.smk), for the table of the reference cells: an accuracy table.
use rule table_spec as reference_table_spec with:
    output:
        f"{RESULTS}/tables/reference.spec.yaml",
    log:
        f"{RESULTS}/tables/reference.spec.log",
    params:
        spec=ref.reference_table_spec(config),


use rule build_table as reference_table with:
    input:
        spec=f"{RESULTS}/tables/reference.spec.yaml",
        results=[f"{RESULTS}/reference/{name}/autoattack.json" for name in REFERENCE_NAMES],
    output:
        **table_files("reference"),
    log:
        f"{RESULTS}/tables/reference.log",
    params:
        kind="accuracy",


rule all_reference:
    input:
        rules.reference_table.output,
