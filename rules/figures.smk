# The paper's analysis figures (1, 3-6, 8-10) from the workflow's own outputs. Each model is
# measured once on the first figures.eval_n test images (representation.npz); the figure rules
# only read those files, autoattack.json and recipe.yaml. A figure whose models are not listed
# under figures: in the configuration is not drawn.


include: "figures_common.smk"


rule figure_representation:
    input:
        model=f"{RESULTS}/{{model}}/train/model.pt",
        recipe=f"{RESULTS}/{{model}}/recipe.yaml",
        test=lambda wc: cfg.split_store(config, cfg.model_dataset(config, wc.model), "test"),
    output:
        f"{RESULTS}/{{model}}/representation.npz",
    log:
        f"{RESULTS}/{{model}}/representation.log",
    benchmark:
        f"{RESULTS}/{{model}}/representation.figure_representation.benchmark.tsv"
    wildcard_constraints:
        model=_one_of(FIGURE_MODELS),
    conda:
        "../envs/torch.yaml"
    threads: resource("evaluate", "cpus")
    resources:
        **gpu_job("evaluate"),
    params:
        eps=lambda wc: eps_grid_255(cfg.model_dataset(config, wc.model)),
        attack_eps=lambda wc: config["datasets"][cfg.model_dataset(config, wc.model)]["eps_255"],
        n=FIGURES["eval_n"],
        steps=FIGURES["pgd_steps"],
        step_factor=FIGURES["pgd_step_factor"],
        batch=lambda wc: job_batch("figure_representation", cfg.classifier_of(config, wc.model)[0]),
    shell:
        "python -m scripts.figure_representation --model {input.model} --recipe {input.recipe}"
        " --test-store {input.test} --n {params.n} --eps-255 {params.eps}"
        " --attack-eps-255 {params.attack_eps} --steps {params.steps}"
        " --step-factor {params.step_factor} --batch-size {params.batch} --threads {threads}"
        " --out {output} 2> {log}"


rule figure_diffusion_representation:
    input:
        unpack(probe_inputs),
    output:
        f"{RESULTS}/{{dataset}}/figures/{{diffusion}}/representation.npz",
    log:
        f"{RESULTS}/{{dataset}}/figures/{{diffusion}}/representation.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/figures/{{diffusion}}/representation.figure_diffusion_representation.benchmark.tsv"
    wildcard_constraints:
        diffusion=_one_of(config["diffusion_models"]),
    conda:
        "../envs/torch.yaml"
    threads: resource("diffusion", "cpus")
    resources:
        **gpu_job("diffusion"),
    params:
        feature=lambda wc: cfg.diffusion_feature(config, wc.diffusion),
        train_n=lambda wc: config["diffusion_models"][wc.diffusion]["validation"]["train_n"],
        eps=lambda wc: eps_grid_255(wc.dataset),
        attack_eps=lambda wc: config["datasets"][wc.dataset]["eps_255"],
        n=FIGURES["eval_n"],
        steps=FIGURES["pgd_steps"],
        step_factor=FIGURES["pgd_step_factor"],
        batch=lambda wc: job_batch("figure_diffusion_representation", wc.diffusion),
        seed=config["seed"],
    shell:
        "python -m scripts.figure_diffusion_representation --weights {input.weights}"
        " --network {input.network} --train-store {input.train} --test-store {input.test}"
        " --layer {params.feature[layer]} --sigma {params.feature[sigma]} --train-n {params.train_n}"
        " --n {params.n} --eps-255 {params.eps} --attack-eps-255 {params.attack_eps}"
        " --steps {params.steps} --step-factor {params.step_factor} --batch-size {params.batch}"
        " --seed {params.seed}"
        " --threads {threads} --out {output} 2> {log}"


rule figure3:
    input:
        standard=lambda wc: representation_of(FIGURES["standard"]),
        adversarial=lambda wc: representation_of(FIGURES["adversarial"]),
        diffusion=lambda wc: diffusion_representation_of(figure_dataset()),
    output:
        **figure_files("3"),
    log:
        f"{FIGURE_DIR}/figure3.log",
    localrule: True
    conda:
        "../envs/torch.yaml"
    params:
        # results/<scale>, the folder above figures/
        results_root=lambda wc, output: Path(output.png).parent.parent,
        standard=FIGURES.get("standard"),
        adversarial=FIGURES.get("adversarial"),
    shell:
        "python -m scripts.figure_3 --results-root {params.results_root} --standard {params.standard}"
        " --adversarial {params.adversarial} --diffusion {input.diffusion} --out-png {output.png}"
        " --out-pdf {output.pdf} --out-csv {output.csv} 2> {log}"


rule figure4:
    input:
        representations=lambda wc: [
            representation_of(FIGURES[key]) for key in ("standard", "adversarial")
        ],
        diffusion=lambda wc: diffusion_representation_of(figure_dataset()),
    output:
        **figure_files("4"),
    log:
        f"{FIGURE_DIR}/figure4.log",
    localrule: True
    conda:
        "../envs/torch.yaml"
    params:
        # results/<scale>, the folder above figures/
        results_root=lambda wc, output: Path(output.png).parent.parent,
        models=lambda wc: f"{FIGURES['standard']} {FIGURES['adversarial']}",
        # what the models are drawn beside: the diffusion model's representation (Figure 4) or
        # their AutoAttack accuracy (Figure 5)
        beside=lambda wc, input: f"--diffusion {input.diffusion}",
        title="ST, AT and DR",
    shell:
        "python -m scripts.figure_alignment_uniformity --results-root {params.results_root} --models {params.models}"
        " {params.beside} --title {params.title:q} --out-png {output.png}"
        " --out-pdf {output.pdf} --out-csv {output.csv} 2> {log}"


# Figure 4's plot of the trained models, beside their accuracy
use rule figure4 as figure5 with:
    input:
        **measured_models("figure5_models"),
    output:
        **figure_files("5"),
    log:
        f"{FIGURE_DIR}/figure5.log",
    params:
        models=" ".join(FIGURES.get("figure5_models", [])),
        beside="--with-accuracy",
        title="Trained models",


rule figure6:
    input:
        **measured_models("figure6_models"),
    output:
        **figure_files("6"),
    log:
        f"{FIGURE_DIR}/figure6.log",
    benchmark:
        f"{FIGURE_DIR}/figure6.benchmark.tsv"
    conda:
        "../envs/torch.yaml"
    threads: resource("evaluate", "cpus")
    resources:
        **gpu_job("evaluate"),
    params:
        # results/<scale>, the folder above figures/
        results_root=lambda wc, output: Path(output.png).parent.parent,
        models=" ".join(FIGURES.get("figure6_models", [])),
        k=" ".join(str(k) for k in FIGURES.get("figure6_sae_k", [])),
        sae=FIGURES.get("figure6_sae"),
        seed=config["seed"],
    shell:
        "python -m scripts.figure_6 --results-root {params.results_root} --models {params.models} --k {params.k}"
        " --latents-per-dim {params.sae[latents_per_dim]} --steps {params.sae[steps]}"
        " --batch-size {params.sae[batch_size]} --lr {params.sae[lr]} --seed {params.seed}"
        " --threads {threads} --out-png {output.png} --out-pdf {output.pdf} --out-csv {output.csv} 2> {log}"


rule figure8:
    input:
        accuracy=accuracy_files(figure8_cells()),
        recipes=[f"{RESULTS}/{m}/recipe.yaml" for m in FIGURES.get("figure8_models", [])],
    output:
        **figure_files("8"),
    log:
        f"{FIGURE_DIR}/figure8.log",
    localrule: True
    conda:
        "../envs/torch.yaml"
    params:
        # results/<scale>, the folder above figures/
        results_root=lambda wc, output: Path(output.png).parent.parent,
        baseline=(
            replicate_group(FIGURES["figure8_baseline"]) if "figure8_baseline" in FIGURES else ""
        ),
        models=" ".join(replicate_group(model) for model in FIGURES.get("figure8_models", [])),
    shell:
        "python -m scripts.figure_8 --results-root {params.results_root} --baseline {params.baseline}"
        " --models {params.models} --out-png {output.png} --out-pdf {output.pdf}"
        " --out-csv {output.csv} 2> {log}"


rule figure10:
    input:
        [
            representation_of(pair[role])
            for pair in FIGURES.get("figure10_pairs", [])
            for role in ("aligned", "baseline")
        ],
    output:
        **figure_files("10"),
    log:
        f"{FIGURE_DIR}/figure10.log",
    localrule: True
    conda:
        "../envs/torch.yaml"
    params:
        # results/<scale>, the folder above figures/
        results_root=lambda wc, output: Path(output.png).parent.parent,
        pairs=" ".join(
            f"--pair {pair['aligned']} {pair['baseline']}"
            for pair in FIGURES.get("figure10_pairs", [])
        ),
    shell:
        "python -m scripts.figure_10 --results-root {params.results_root} {params.pairs} --out-png {output.png}"
        " --out-pdf {output.pdf} --out-csv {output.csv} 2> {log}"


rule download_zoo_checkpoint:
    output:
        zoo_checkpoint("{zoo_model}"),
    log:
        f"{RESULTS}/robustbench/{{zoo_model}}/download.log",
    wildcard_constraints:
        zoo_model=_one_of(ZOO_MODELS),
    localrule: True
    conda:
        "../envs/robustbench.yaml"
    params:
        # the model_dir of RobustBench's layout: the folder above cifar10/Linf/
        model_dir=lambda wc, output: Path(output[0]).parents[2],
    shell:
        "python -m scripts.download_zoo_checkpoint --name {wildcards.zoo_model}"
        " --model-dir {params.model_dir} 2> {log}"


rule zoo_representation:
    input:
        checkpoint=zoo_checkpoint("{zoo_model}"),
        test=lambda wc: cfg.split_store(config, ZOO_DATASET, "test"),
    output:
        zoo_features("{zoo_model}"),
    log:
        f"{RESULTS}/robustbench/{{zoo_model}}/features.log",
    benchmark:
        f"{RESULTS}/robustbench/{{zoo_model}}/features.zoo_representation.benchmark.tsv"
    wildcard_constraints:
        zoo_model=_one_of(ZOO_MODELS),
    conda:
        "../envs/robustbench.yaml"
    threads: resource("evaluate", "cpus")
    resources:
        **gpu_job("evaluate"),
    params:
        model_dir=lambda wc, input: Path(input.checkpoint).parents[2],
        n=FIGURES["eval_n"],
        batch=lambda wc: job_batch("zoo_representation", gpu_plan.ZOO_NETWORK),
    shell:
        "python -m scripts.zoo_representation --name {wildcards.zoo_model} --model-dir {params.model_dir}"
        " --test-store {input.test} --n {params.n} --batch-size {params.batch} --threads {threads}"
        " --out {output} 2> {log}"


rule figure1_9:
    input:
        unpack(zoo_figure_inputs),
        **measured_models("figure1_models"),
    output:
        **figure_files("1"),
        png9=report(f"{FIGURE_DIR}/figure9.png", category="Figures", labels={"figure": "9"}),
        pdf9=f"{FIGURE_DIR}/figure9.pdf",
    log:
        f"{FIGURE_DIR}/figure1_9.log",
    localrule: True
    conda:
        "../envs/torch.yaml"
    params:
        # results/<scale>, the folder above figures/
        results_root=lambda wc, output: Path(output.png).parent.parent,
        # name, features, the AutoAttack accuracy RobustBench reports (config.yaml cites its source)
        zoo=" ".join(
            f"--zoo {model['name']} {zoo_features(model['name'])} {model['autoattack']}"
            for model in ZOO.get("models", [])
        ),
        cells=" ".join(FIGURES.get("figure1_models", [])),
        topk=FIGURES["cknna_topk"],
    shell:
        "python -m scripts.figure_1_9 {params.zoo} --standard {input.standard}"
        " --diffusion {input.diffusion} --topk {params.topk} --results-root {params.results_root}"
        " --cells {params.cells} --out-png {output.png} --out-pdf {output.pdf} --out-csv {output.csv}"
        " --out9-png {output.png9} --out9-pdf {output.pdf9} 2> {log}"


rule all_figures:
    input:
        configured_figures(),
