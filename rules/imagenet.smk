# The ImageNet track (Section 5.1, Appendix D): DINOv3 weights, LightningDiT + VA-VAE checkpoints,
# the 4M synthetic set sampled by independent jobs, LightningDiT representations, and the 5000
# RobustBench evaluation images. The ILSVRC-2012 folder itself is the user's (prepare_imagenet).


# the download rule of data.smk (scripts.download), for a backbone's pretrained weights
use rule download_archive as download_pretrained with:
    output:
        f"{DATA}/pretrained/{{arch}}/model.safetensors",
    log:
        f"{DATA}/pretrained/{{arch}}/download.log",
    wildcard_constraints:
        arch=_one_of(pretrained_archs()),
    params:
        spec=lambda wc: download_spec(config["archs"][wc.arch]["pretrained"]),


# the same, for LightningDiT's files
use rule download_archive as fetch_lightningdit with:
    output:
        f"{DATA}/diffusion/{{model}}/{{file}}.pt",
    log:
        f"{DATA}/diffusion/{{model}}/{{file}}.fetch.log",
    wildcard_constraints:
        model=_one_of(diffusion_models_of_kind("lightningdit", random=False)),
        file=_one_of(LIGHTNINGDIT_FILES),
    params:
        spec=lambda wc: download_spec(lightningdit_download(wc)),


rule prepare_imagenet_test:
    input:
        f"{DATA}/{{dataset}}/index",
    output:
        directory(f"{DATA}/{{dataset}}/test"),
    log:
        f"{DATA}/{{dataset}}/test.log",
    wildcard_constraints:
        dataset=_one_of(datasets_of_kind("imagenet_folder")),
    conda:
        "../envs/torch.yaml"
    threads: resource("imagenet_test", "cpus")
    params:
        size=lambda wc: config["datasets"][wc.dataset]["image_size"],
        num_classes=lambda wc: config["datasets"][wc.dataset]["num_classes"],
    shell:
        "python -m scripts.prepare_imagenet_test --index {input} --out {output} --size {params.size}"
        " --num-classes {params.num_classes} --workers {threads} 2> {log}"


rule generate_imagenet_synthetic_part:
    input:
        unpack(lambda wc: lightningdit_files(diffusion_of(wc.dataset))),
    output:
        # kept: the joined store hard-links these files, so they cost no second copy, and a
        # re-join (after an edit to the assemble rule) needs no GPU job
        directory(f"{DATA}/{{dataset}}/generated-parts/{{set}}/part{{part}}"),
    log:
        f"{DATA}/{{dataset}}/generated-parts/{{set}}/part{{part}}.log",
    benchmark:
        f"{DATA}/{{dataset}}/generated-parts/{{set}}/part{{part}}.benchmark.tsv"
    wildcard_constraints:
        dataset=_one_of(lightningdit_datasets()),
        part="[0-9]+",
    # resumable: stopped near its time limit, it continues in the next attempt (dra.time_limits)
    retries: retries_of("diffusion")
    conda:
        "../envs/torch.yaml"
    threads: resource("diffusion", "cpus")
    resources:
        **gpu_job("diffusion"),
    params:
        spec=lambda wc: config["datasets"][wc.dataset]["synthetic"][wc.set]["generate"],
        parts=lambda wc: config["datasets"][wc.dataset]["synthetic"][wc.set]["generate"].get(
            "parts", 1
        ),
        num_classes=lambda wc: config["datasets"][wc.dataset]["num_classes"],
        networks=lambda wc: lightningdit_config_flags(diffusion_of(wc.dataset)),
        sampling=lambda wc: config["diffusion_models"][diffusion_of(wc.dataset)]["sampling"],
        # resumable shards of an interrupted job, not a declared output
        state=f"{RESULTS}/state/{{dataset}}/generated-{{set}}/part{{part}}",
        batch=lambda wc: job_batch("generate_imagenet_synthetic_part", diffusion_of(wc.dataset)),
        seed=config["seed"],
    shell:
        "python -m scripts.generate_imagenet_synthetic --dit {input.dit} --vae {input.vae}"
        " --latent-stats {input.latents_stats} --images-per-class {params.spec[images_per_class]}"
        " --num-classes {params.num_classes} --num-steps {params.spec[num_steps]}"
        " --timestep-shift {params.sampling[timestep_shift]} --cfg-scale {params.sampling[cfg_scale]}"
        " --cfg-interval-start {params.sampling[cfg_interval_start]}"
        " --cfg-channels {params.sampling[cfg_channels]}"
        " --part {wildcards.part} --parts {params.parts} --batch-size {params.batch}"
        " --seed {params.seed} {params.networks}"
        " --state-dir {params.state} --threads {threads} --out {output} 2> {log}"


rule assemble_imagenet_synthetic:
    input:
        synthetic_part_stores,
    output:
        directory(f"{DATA}/{{dataset}}/generated/{{set}}"),
    log:
        f"{DATA}/{{dataset}}/generated/{{set}}.log",
    wildcard_constraints:
        dataset=_one_of(lightningdit_datasets()),
    localrule: True
    conda:
        "../envs/data.yaml"
    shell:
        "python -m scripts.assemble_synthetic --parts {input} --out {output} 2> {log}"


rule extract_imagenet_features:
    input:
        unpack(imagenet_feature_inputs),
    output:
        directory(f"{RESULTS}/{{dataset}}/features/{{diffusion}}/{{store}}-v1"),
    log:
        f"{RESULTS}/{{dataset}}/features/{{diffusion}}/{{store}}-v1.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/features/{{diffusion}}/{{store}}-v1.extract_imagenet_features.benchmark.tsv"
    wildcard_constraints:
        dataset=_one_of(lightningdit_datasets()),
        diffusion=_one_of(diffusion_models_of_kind("lightningdit")),
        store=r"train|synthetic-[0-9a-z]+",
    # resumable: stopped near its time limit, it continues in the next attempt (dra.time_limits)
    retries: retries_of("diffusion")
    conda:
        "../envs/torch.yaml"
    threads: resource("diffusion", "cpus")
    resources:
        **gpu_job("diffusion"),
    params:
        # training JPEGs through the index (ADM center crop), synthetic images from their store
        source=lambda wc: "--imagenet-index" if wc.store == "train" else "--images",
        feature=lambda wc: cfg.diffusion_feature(config, wc.diffusion),
        zero=lambda wc: " ".join(
            str(c) for c in cfg.diffusion_feature(config, wc.diffusion)["zero_channels"]
        ),
        networks=lambda wc: lightningdit_config_flags(wc.diffusion),
        state=f"{RESULTS}/state/{{dataset}}/features/{{diffusion}}/{{store}}-v1",
        batch=lambda wc: job_batch("extract_imagenet_features", wc.diffusion),
        seed=config["seed"],
    shell:
        "python -m scripts.extract_imagenet_features --dit {input.dit} --vae {input.vae}"
        " --latent-stats {input.latents_stats} {params.source} {input.images}"
        " --layer {params.feature[layer]} --t {params.feature[t]} --zero-channels {params.zero}"
        " --batch-size {params.batch} --seed {params.seed} {params.networks} --workers {threads}"
        " --threads {threads}"
        " --state-dir {params.state} --out {output} 2> {log}"
