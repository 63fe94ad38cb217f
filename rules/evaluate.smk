# AutoAttack (standard, l_inf) on every cell, and the classification dimension of Table 3.


rule autoattack:
    input:
        model=cell_file("train/model.pt"),
        recipe=cell_file("recipe.yaml"),
        test=f"{DATA}/{{dataset}}/test",
    output:
        json=cell_file("autoattack.json"),
        flags=cell_file("autoattack.npz"),
    log:
        cell_file("autoattack.log"),
    benchmark:
        cell_file("autoattack.benchmark.tsv")
    # resumable: stopped near its time limit, it continues in the next attempt (dra.time_limits)
    retries: retries_of("evaluate")
    conda:
        "../envs/torch.yaml"
    threads: resource("evaluate", "cpus")
    resources:
        **gpu_job("evaluate"),
    params:
        eps_255=lambda wc: config["datasets"][wc.dataset]["eps_255"],
        n=lambda wc: config["datasets"][wc.dataset]["eval_n"],
        seed=config["seed"],
        attacks=" ".join(config["evaluation"]["attacks"]),
        batch=lambda wc: job_batch("autoattack", wc.arch),
        # resumable state of an interrupted evaluation, not a declared output
        state=cell_state("autoattack"),
    shell:
        "python -m scripts.evaluate_autoattack --model {input.model} --recipe {input.recipe}"
        " --test-store {input.test} --eps {params.eps_255}/255 --n {params.n} --seed {params.seed}"
        " --attacks {params.attacks} --batch-size {params.batch} --state {params.state} --threads {threads}"
        " --out-json {output.json} --out-npz {output.flags} 2>> {log}"


rule classification_dimension:
    input:
        # what AutoAttack reads: the trained network, its recipe and the test images
        **rules.autoattack.input,
    output:
        json=cell_file("classification_dimension.json"),
        curve=cell_file("classification_dimension.csv"),
        figure=report(
            cell_file("figure7.png"),
            category="Figure 7",
            labels={"cell": CELL},
        ),
    log:
        cell_file("classification_dimension.log"),
    benchmark:
        cell_file("classification_dimension.benchmark.tsv")
    conda:
        "../envs/torch.yaml"
    threads: resource("evaluate", "cpus")
    resources:
        **gpu_job("evaluate"),
    params:
        eps_255=lambda wc: config["datasets"][wc.dataset]["eps_255"],
        n=config["classification_dimension"]["eval_n"],
        steps=config["classification_dimension"]["attack"]["steps"],
        step_fraction=config["classification_dimension"]["attack"]["step_fraction"],
        batch=lambda wc: job_batch("classification_dimension", wc.arch),
        seed=config["seed"],
    shell:
        "python -m scripts.classification_dimension --model {input.model} --recipe {input.recipe}"
        " --test-store {input.test} --n {params.n} --eps {params.eps_255}/255 --steps {params.steps}"
        " --step-fraction {params.step_fraction} --batch-size {params.batch}"
        " --seed {params.seed} --threads {threads} --out-json {output.json}"
        " --out-csv {output.curve} --out-png {output.figure} 2> {log}"


rule all_evals:
    input:
        eval_targets(),
