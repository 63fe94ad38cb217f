# One training job per table cell. The resolved recipe is a file of its own, so that editing a
# cell's recipe in config reruns exactly that cell (its params change, then its recipe.yaml).


rule resolve_recipe:
    output:
        report(
            cell_file("recipe.yaml"),
            category="Resolved recipes",
            labels={"cell": CELL},
        ),
    log:
        cell_file("recipe.log"),
    localrule: True
    params:
        recipe=lambda wc: cfg.resolve_recipe(config, cell_of(wc)),
    run:
        from dra.io import write_yaml

        write_yaml(output[0], params.recipe)


rule train_cell:
    input:
        unpack(train_inputs),
    output:
        model=cell_file("train/model.pt"),
        log_csv=cell_file("train/log.csv"),
    log:
        cell_file("train/train.log"),
    benchmark:
        cell_file("train/train_cell.benchmark.tsv")
    # resumable: stopped near its time limit, it continues in the next attempt (dra.time_limits)
    retries: train_retries()
    conda:
        "../envs/torch.yaml"
    threads: resource("train", "cpus")
    # the cell's own GPU count and time: from its memory plan and steps (dra.gpu_plan)
    resources:
        **gpu_job("train", gpu=train_gpus, runtime=train_runtime),
    params:
        state=cell_state("train"),
        launcher=train_launcher,
    shell:
        "{params.launcher} scripts.train --recipe {input.recipe} --out-dir $(dirname {output.model})"
        " --state-dir {params.state} --threads {threads} 2>> {log}"


rule all_models:
    input:
        [cell_path(cell, "train/model.pt") for cell in RUNNABLE_CELLS],
