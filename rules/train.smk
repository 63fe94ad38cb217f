# One training job per table cell. The resolved recipe is a file of its own, so that editing a
# cell's recipe in config reruns exactly that cell (its params change, then its recipe.yaml).


rule resolve_recipe:
    output:
        report(
            f"{RESULTS}/{{dataset}}/{{arch}}/{{method}}/{{budget}}/recipe.yaml",
            category="Resolved recipes",
            labels={"cell": "{dataset}/{arch}/{method}/{budget}"},
        ),
    log:
        f"{RESULTS}/{{dataset}}/{{arch}}/{{method}}/{{budget}}/recipe.log",
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
        model=f"{RESULTS}/{{dataset}}/{{arch}}/{{method}}/{{budget}}/train/model.pt",
        log_csv=f"{RESULTS}/{{dataset}}/{{arch}}/{{method}}/{{budget}}/train/log.csv",
    log:
        f"{RESULTS}/{{dataset}}/{{arch}}/{{method}}/{{budget}}/train/train.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/{{arch}}/{{method}}/{{budget}}/train/train_cell.benchmark.tsv"
    # resumable: stopped near its time limit, it continues in the next attempt (dra.time_limits)
    retries: train_retries()
    conda:
        "../envs/torch.yaml"
    threads: resource("train", "cpus")
    resources:
        gpu=train_gpus,
        tasks_per_gpu=0,
        nodes=1,
        runtime=train_runtime,
        mem_mb=resource("train", "mem_mb"),
    params:
        # resumable state: deliberately not a declared output, so a failed or killed attempt keeps it
        state=f"{RESULTS}/state/{{dataset}}/{{arch}}/{{method}}/{{budget}}/train",
        launcher=train_launcher,
    shell:
        "{params.launcher} scripts.train --recipe {input.recipe} --out-dir $(dirname {output.model})"
        " --state-dir {params.state} --threads {threads} 2>> {log}"


rule all_models:
    input:
        [cell_path(cell, "train/model.pt") for cell in RUNNABLE_CELLS],
