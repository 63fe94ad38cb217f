# Models that leave the project: per evaluated cell, an export folder that loads with
# dra.load_model, uploads to the Hugging Face Hub as it is, and for CIFAR WideResNets holds
# RobustBench's checkpoint and model_info (dra.export).
rule export_cell:
    input:
        recipe=cell_file("recipe.yaml"),
        model=cell_file("train/model.pt"),
        json=cell_file("autoattack.json"),
        flags=cell_file("autoattack.npz"),
        train_benchmark=cell_file("train/train_cell.benchmark.tsv"),
        eval_benchmark=cell_file("autoattack.benchmark.tsv"),
    output:
        # the folder export/ is written whole and renamed into place (dra.io.atomic_dir); config.json
        # stands for it, so that no marker file of Snakemake's lies in a folder that is uploaded as it is
        config=cell_file("export/config.json"),
    log:
        cell_file("export.log"),
    benchmark:
        cell_file("export_cell.benchmark.tsv")
    conda:
        "../envs/torch.yaml"
    threads: resource("export", "cpus")
    params:
        gpus=export_gpus,
        dataset_kind=lambda wc: config["datasets"][wc.dataset]["source"]["kind"],
        sources=export_sources,
        paper=export_paper,
    shell:
        "python -m scripts.export_cell --recipe {input.recipe} --model {input.model}"
        " --autoattack-json {input.json} --autoattack-flags {input.flags}"
        " --benchmark train={input.train_benchmark} --benchmark autoattack={input.eval_benchmark}"
        " --gpus {params.gpus:q} --dataset-kind {params.dataset_kind} --sources {params.sources:q}"
        " --paper {params.paper:q} --out $(dirname {output.config}) --threads {threads} 2> {log}"


rule all_exports:
    input:
        export_targets(),
