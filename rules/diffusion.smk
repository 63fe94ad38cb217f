# Diffusion models: fetch (official EDM pickles) or train (mini), generate synthetic data,
# extract the representations DRA aligns to, and validate them with linear probes.


# the download rule of data.smk (scripts.download), for an EDM pickle
use rule download_archive as fetch_diffusion_model with:
    output:
        temp(f"{DATA}/diffusion/{{model}}/network.pkl"),
    log:
        f"{DATA}/diffusion/{{model}}/fetch.log",
    wildcard_constraints:
        model=_one_of(diffusion_models_of_kind("edm_pickle", random=False)),
    params:
        spec=lambda wc: download_spec(config["diffusion_models"][wc.model]["source"]),


rule convert_diffusion_model:
    input:
        f"{DATA}/diffusion/{{model}}/network.pkl",
    output:
        **diffusion_files("{model}"),
    log:
        f"{DATA}/diffusion/{{model}}/convert.log",
    wildcard_constraints:
        model=_one_of(diffusion_models_of_kind("edm_pickle", random=False)),
    conda:
        "../envs/torch.yaml"
    shell:
        "python -m scripts.convert_edm_checkpoint --pickle {input} --out-weights {output.weights}"
        " --out-network {output.network} 2> {log}"


rule train_diffusion:
    input:
        lambda wc: cfg.split_store(
            config, config["diffusion_models"][wc.model]["source"]["dataset"], "train"
        ),
    output:
        **diffusion_files("{model}"),
        loss=f"{DATA}/diffusion/{{model}}/loss.csv",
    log:
        f"{DATA}/diffusion/{{model}}/train.log",
    benchmark:
        f"{DATA}/diffusion/{{model}}/train_diffusion.benchmark.tsv"
    wildcard_constraints:
        model=_one_of(diffusion_models_of_kind("train")),
    conda:
        "../envs/torch.yaml"
    threads: resource("diffusion", "cpus")
    resources:
        **gpu_job("diffusion"),
    params:
        network=lambda wc: json.dumps(config["diffusion_models"][wc.model]["source"]["network"]),
        training=lambda wc: config["diffusion_models"][wc.model]["source"]["training"],
        seed=config["seed"],
    shell:
        "python -m scripts.train_diffusion --train-store {input} --network {params.network:q}"
        " --steps {params.training[steps]} --batch-size {params.training[batch_size]}"
        " --lr {params.training[lr]} --ema-half-life-images {params.training[ema_half_life_images]}"
        " --seed {params.seed} --threads {threads} --out-weights {output.weights}"
        " --out-network {output.network} --out-loss {output.loss} 2> {log}"


rule train_noisy_classifier:
    input:
        unpack(noisy_classifier_inputs),
    output:
        **diffusion_files("{model}"),
        loss=f"{DATA}/diffusion/{{model}}/loss.csv",
        metrics=f"{DATA}/diffusion/{{model}}/metrics.json",
    log:
        f"{DATA}/diffusion/{{model}}/train.log",
    benchmark:
        f"{DATA}/diffusion/{{model}}/train_noisy_classifier.benchmark.tsv"
    wildcard_constraints:
        model=_one_of(diffusion_models_of_kind("noisy_classifier")),
    conda:
        "../envs/torch.yaml"
    threads: resource("diffusion", "cpus")
    resources:
        **gpu_job("diffusion"),
    params:
        feature=lambda wc: cfg.diffusion_feature(config, wc.model),
        layer=lambda wc: cfg.diffusion_feature(config, wc.model)["layer"],
        training=lambda wc: config["diffusion_models"][wc.model]["source"]["training"],
        augment=noisy_classifier_augment,
        seed=config["seed"],
    shell:
        "python -m scripts.train_noisy_classifier --train-store {input.train} --test-store {input.test}"
        " --base-network {input.base_network} --layer {params.layer:q} --sigma {params.feature[sigma]}"
        " --steps {params.training[steps]} --batch-size {params.training[batch_size]}"
        " --lr {params.training[lr]} --augment {params.augment:q} --seed {params.seed} --threads {threads}"
        " --out-weights {output.weights} --out-network {output.network} --out-loss {output.loss}"
        " --out-metrics {output.metrics} 2> {log}"


rule generate_synthetic:
    input:
        unpack(lambda wc: diffusion_files(diffusion_of(wc.dataset))),
    output:
        directory(f"{DATA}/{{dataset}}/generated/{{set}}"),
    log:
        f"{DATA}/{{dataset}}/generated/{{set}}.log",
    benchmark:
        f"{DATA}/{{dataset}}/generated/{{set}}.generate_synthetic.benchmark.tsv"
    wildcard_constraints:
        dataset=_one_of(d for d in config["datasets"] if cfg.uses_edm(config, d)),
    # resumable: stopped near its time limit, it continues in the next attempt (dra.time_limits)
    retries: retries_of("diffusion")
    conda:
        "../envs/torch.yaml"
    threads: resource("diffusion", "cpus")
    resources:
        **gpu_job("diffusion"),
    params:
        spec=lambda wc: config["datasets"][wc.dataset]["synthetic"][wc.set]["generate"],
        num_classes=lambda wc: config["datasets"][wc.dataset]["num_classes"],
        state=f"{RESULTS}/state/{{dataset}}/generated-{{set}}",
        batch=lambda wc: job_batch("generate_synthetic", diffusion_of(wc.dataset)),
        seed=config["seed"],
    shell:
        "python -m scripts.generate_synthetic --weights {input.weights} --network {input.network}"
        " --images-per-class {params.spec[images_per_class]} --num-classes {params.num_classes}"
        " --num-steps {params.spec[num_steps]} --batch-size {params.batch} --seed {params.seed}"
        " --state-dir {params.state}"
        " --threads {threads} --out {output} 2> {log}"


rule synthetic_quality:
    input:
        generated=f"{DATA}/{{dataset}}/generated/{{set}}",
        train=f"{DATA}/{{dataset}}/train",
        test=f"{DATA}/{{dataset}}/test",
    output:
        report(f"{RESULTS}/{{dataset}}/synthetic-quality/{{set}}.json", category="Synthetic data"),
    log:
        f"{RESULTS}/{{dataset}}/synthetic-quality/{{set}}.log",
    conda:
        "../envs/torch.yaml"
    shell:
        "python -m scripts.synthetic_quality --generated {input.generated} --train {input.train}"
        " --test {input.test} --out {output} 2> {log}"


rule extract_features:
    input:
        unpack(feature_store_inputs),
    output:
        directory(f"{RESULTS}/{{dataset}}/features/{{diffusion}}/{{store}}-v{{views}}"),
    log:
        f"{RESULTS}/{{dataset}}/features/{{diffusion}}/{{store}}-v{{views}}.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/features/{{diffusion}}/{{store}}-v{{views}}.extract_features.benchmark.tsv"
    wildcard_constraints:
        dataset=_one_of(edm_datasets()),
        store=r"train|synthetic-[0-9a-z]+",
        views="1|2",
    # resumable: stopped near its time limit, it continues in the next attempt (dra.time_limits)
    retries: retries_of("diffusion")
    conda:
        "../envs/torch.yaml"
    threads: resource("diffusion", "cpus")
    resources:
        **gpu_job("diffusion"),
    params:
        layer=lambda wc: cfg.diffusion_feature(config, wc.diffusion)["layer"],
        sigma=lambda wc: cfg.diffusion_feature(config, wc.diffusion)["sigma"],
        batch=lambda wc: job_batch("extract_features", cfg.memory_network(config, wc.diffusion)),
        seed=config["seed"],
    shell:
        "python -m scripts.extract_features --weights {input.weights} --network {input.network}"
        " --images {input.images} --layer {params.layer:q} --sigma {params.sigma}"
        " --views {wildcards.views} --batch-size {params.batch} --seed {params.seed} --threads {threads}"
        " --out {output} 2> {log}"


rule validate_features:
    input:
        unpack(probe_inputs),
    output:
        probe=report(
            f"{RESULTS}/{{dataset}}/feature-validation/{{diffusion}}/probe.csv",
            category="Feature validation",
        ),
        probe_png=report(
            f"{RESULTS}/{{dataset}}/feature-validation/{{diffusion}}/probe.png",
            category="Feature validation",
        ),
        robustness=report(
            f"{RESULTS}/{{dataset}}/feature-validation/{{diffusion}}/robustness.csv",
            category="Feature validation",
        ),
        robustness_png=report(
            f"{RESULTS}/{{dataset}}/feature-validation/{{diffusion}}/robustness.png",
            category="Feature validation",
        ),
    log:
        f"{RESULTS}/{{dataset}}/feature-validation/{{diffusion}}/validate.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/feature-validation/{{diffusion}}/validate_features.benchmark.tsv"
    conda:
        "../envs/torch.yaml"
    threads: resource("diffusion", "cpus")
    resources:
        **gpu_job("diffusion"),
    params:
        spec=lambda wc: config["diffusion_models"][wc.diffusion]["validation"],
        eps=lambda wc: " ".join(
            str(e) for e in config["diffusion_models"][wc.diffusion]["validation"]["eps_255"]
        ),
        layers=lambda wc: " ".join(config["diffusion_models"][wc.diffusion]["validation"]["layers"]),
        sigmas=lambda wc: " ".join(
            str(s) for s in config["diffusion_models"][wc.diffusion]["validation"]["sigmas"]
        ),
        batch=lambda wc: job_batch("validate_features", wc.diffusion),
        seed=config["seed"],
    shell:
        "python -m scripts.validate_features --weights {input.weights} --network {input.network}"
        " --train-store {input.train} --test-store {input.test} --layers {params.layers}"
        " --sigmas {params.sigmas} --eps-255 {params.eps} --train-n {params.spec[train_n]}"
        " --test-n {params.spec[test_n]} --attack-n {params.spec[attack][n]}"
        " --pgd-steps {params.spec[attack][steps]} --pgd-step-factor {params.spec[attack][step_factor]}"
        " --batch-size {params.batch} --seed {params.seed} --threads {threads}"
        " --out-probe {output.probe} --out-probe-png {output.probe_png}"
        " --out-robustness {output.robustness} --out-robustness-png {output.robustness_png} 2> {log}"


rule all_features:
    input:
        feature_targets(),
        [f"{RESULTS}/{dataset}/synthetic-quality/{name}.json" for dataset, name in generated_sets()],
