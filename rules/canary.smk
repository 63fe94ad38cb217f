# The canary (config/canary.yaml): every cell for a few steps at its real shapes on random data and
# randomly initialised diffusion networks (dra.canary), on one GPU of the cell's planned job, with the
# micro-batch each of its GPUs will hold. One table says which cells pass, their step time and memory.


rule canary_cell:
    input:
        recipe=f"{RESULTS}/{{dataset}}/{{arch}}/{{method}}/{{budget}}/recipe.yaml",
    output:
        f"{RESULTS}/{{dataset}}/{{arch}}/{{method}}/{{budget}}/canary.json",
    log:
        f"{RESULTS}/{{dataset}}/{{arch}}/{{method}}/{{budget}}/canary.log",
    conda:
        "../envs/torch.yaml"
    threads: resource("train", "cpus")
    resources:
        # one GPU of the planned job, or the CPU where the plan has none
        gpu=lambda wc: min(train_gpus(wc), 1),
        tasks_per_gpu=0,
        runtime=config["canary"]["runtime"],
        mem_mb=resource("train", "mem_mb"),
    params:
        work=f"{RESULTS}/state/{{dataset}}/{{arch}}/{{method}}/{{budget}}/canary",
        micro_batch=canary_micro_batch,
        steps=config["canary"]["steps"],
        planned=canary_planned,
    shell:
        "python -m scripts.canary_cell --recipe {input.recipe:q} --out {output:q} --work-dir {params.work:q}"
        " --micro-batch {params.micro_batch} --steps {params.steps} --threads {threads}"
        " --planned {params.planned:q} 2>> {log:q}"


rule canary:
    input:
        [cell_path(cell, "canary.json") for cell in CANARY_CELLS],
    output:
        csv=f"{RESULTS}/canary.csv",
        md=f"{RESULTS}/canary.md",
    log:
        f"{RESULTS}/canary.log",
    localrule: True
    # dra.canary, which writes the table, is torch code (it also builds the canary's networks)
    conda:
        "../envs/torch.yaml"
    shell:
        "python -m scripts.canary_table --cells {input:q} --out-csv {output.csv:q} --out-md {output.md:q} 2> {log:q}"
