# Models that leave the project: per evaluated cell, an export folder that loads with
# dra.load_model, uploads to the Hugging Face Hub as it is, and for CIFAR WideResNets holds
# RobustBench's checkpoint and model_info (dra.export).
from dra import model_card


def export_gpus(wildcards):
    # the GPUs each measured job asked for: GPU-hours = benchmark wall time x these
    return json.dumps({"train": train_gpus(wildcards), "autoattack": resource("evaluate", "gpu")})


def export_sources(wildcards):
    return json.dumps(
        model_card.weight_sources(config, cfg.resolve_recipe(config, cell_of(wildcards)))
    )


def export_targets():
    # the canary's cells are random networks: nothing to hand on
    if config["canary"]["cap_training"]:
        return []
    return [cell_path(cell, "export") for cell in RUNNABLE_CELLS]


rule export_cell:
    input:
        recipe=f"{RESULTS}/{{dataset}}/{{arch}}/{{method}}/{{budget}}/recipe.yaml",
        model=f"{RESULTS}/{{dataset}}/{{arch}}/{{method}}/{{budget}}/train/model.pt",
        json=f"{RESULTS}/{{dataset}}/{{arch}}/{{method}}/{{budget}}/autoattack.json",
        flags=f"{RESULTS}/{{dataset}}/{{arch}}/{{method}}/{{budget}}/autoattack.npz",
        train_benchmark=f"{RESULTS}/{{dataset}}/{{arch}}/{{method}}/{{budget}}/train/train_cell.benchmark.tsv",
        eval_benchmark=f"{RESULTS}/{{dataset}}/{{arch}}/{{method}}/{{budget}}/autoattack.benchmark.tsv",
    output:
        # the folder is replaced as a whole (dra.io.atomic_dir); config.json marks it complete
        folder=directory(f"{RESULTS}/{{dataset}}/{{arch}}/{{method}}/{{budget}}/export"),
    log:
        f"{RESULTS}/{{dataset}}/{{arch}}/{{method}}/{{budget}}/export.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/{{arch}}/{{method}}/{{budget}}/export.benchmark.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1
    params:
        gpus=export_gpus,
        dataset_kind=lambda wc: config["datasets"][wc.dataset]["source"]["kind"],
        sources=export_sources,
        paper=lambda wc: json.dumps(model_card.paper_numbers(config, cell_of(wc).id)),
    shell:
        "python -m scripts.export_cell --recipe {input.recipe} --model {input.model}"
        " --autoattack-json {input.json} --autoattack-flags {input.flags}"
        " --benchmark train={input.train_benchmark} --benchmark autoattack={input.eval_benchmark}"
        " --gpus {params.gpus:q} --dataset-kind {params.dataset_kind} --sources {params.sources:q}"
        " --paper {params.paper:q} --out {output.folder} --threads {threads} 2> {log}"


rule all_exports:
    input:
        export_targets(),
