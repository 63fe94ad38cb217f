# The canary (config/canary.yaml): the paper's own rules on random stand-ins for every download, each
# cell trained for canary.steps steps and evaluated on a few images, plus one table per cell of pass
# or fail, step time and memory. The rules below write the stand-ins, in the real formats, where an
# entry of the config has `random:`; canary_cell measures each cell on one GPU of its planned job.


rule random_cifar_archive:
    # a CIFAR python archive of random pixels, converted by prepare_cifar as the download would be
    output:
        f"{DATA}/{{dataset}}/random/cifar-python.tar.gz",
    log:
        f"{DATA}/{{dataset}}/random/cifar-python.log",
    wildcard_constraints:
        dataset=_one_of(
            name
            for name in datasets_of_kind("cifar10", "cifar100")
            if cfg.is_random(config["datasets"][name]["source"])
        ),
    conda:
        "../envs/data.yaml"
    params:
        kind=lambda wc: config["datasets"][wc.dataset]["source"]["kind"],
        random=lambda wc: config["datasets"][wc.dataset]["source"]["random"],
    shell:
        "python -m scripts.random_cifar_archive --dataset {params.kind} --train-images {params.random[train_images]}"
        " --test-images {params.random[test_images]} --seed {params.random[seed]} --out {output:q} 2> {log:q}"


rule random_imagenet_folder:
    # train/<wnid>/*.JPEG, val/<wnid>/*.JPEG and eval_ids.txt, validated and indexed by prepare_imagenet
    output:
        directory(f"{DATA}/{{dataset}}/random/folder"),
    log:
        f"{DATA}/{{dataset}}/random/folder.log",
    wildcard_constraints:
        dataset=_one_of(
            name
            for name in datasets_of_kind("imagenet_folder")
            if cfg.is_random(config["datasets"][name]["source"])
        ),
    # JPEGs written with pillow, which the torch env has (torchvision's)
    conda:
        "../envs/torch.yaml"
    params:
        source=lambda wc: config["datasets"][wc.dataset]["source"],
        num_classes=lambda wc: config["datasets"][wc.dataset]["num_classes"],
    shell:
        "python -m scripts.random_imagenet_folder --num-classes {params.num_classes}"
        " --train-images {params.source[train_images]} --val-images {params.source[val_images]}"
        " --seed {params.source[random][seed]} --out {output:q} 2> {log:q}"


rule random_synthetic_part:
    # DM-AT's npz format (image, label), joined by prepare_synthetic as the downloaded parts are
    output:
        temp(f"{DATA}/{{dataset}}/synthetic-random/{{set}}/part{{index}}.npz"),
    log:
        f"{DATA}/{{dataset}}/synthetic-random/{{set}}/part{{index}}.log",
    conda:
        "../envs/data.yaml"
    params:
        part=synthetic_part,
        size=lambda wc: config["datasets"][wc.dataset]["image_size"],
        num_classes=lambda wc: config["datasets"][wc.dataset]["num_classes"],
    shell:
        "python -m scripts.random_synthetic_part --images {params.part[images]} --image-size {params.size}"
        " --num-classes {params.num_classes} --seed {params.part[random][seed]} --out {output:q} 2> {log:q}"


rule random_edm:
    # EDM DDPM++ at the configuration of NVIDIA's CIFAR-10 model, as convert_diffusion_model writes it
    output:
        **diffusion_files("{model}"),
    log:
        f"{DATA}/diffusion/{{model}}/random.log",
    wildcard_constraints:
        model=_one_of(diffusion_models_of_kind("edm_pickle", random=True)),
    conda:
        "../envs/torch.yaml"
    params:
        seed=lambda wc: config["diffusion_models"][wc.model]["source"]["random"]["seed"],
        network=lambda wc: json.dumps(
            config["diffusion_models"][wc.model]["source"]["random"].get("network", {})
        ),
    shell:
        "python -m scripts.random_edm --seed {params.seed} --network {params.network:q}"
        " --out-weights {output.weights:q} --out-network {output.network:q} 2> {log:q}"


rule random_lightningdit:
    # LightningDiT-XL/1, VA-VAE f16d32 and unit latent statistics, in the files fetch_lightningdit writes
    output:
        **lightningdit_files("{model}"),
    log:
        f"{DATA}/diffusion/{{model}}/random.log",
    wildcard_constraints:
        model=_one_of(diffusion_models_of_kind("lightningdit", random=True)),
    conda:
        "../envs/torch.yaml"
    params:
        seed=lambda wc: config["diffusion_models"][wc.model]["source"]["random"]["seed"],
        networks=lambda wc: lightningdit_config_flags(wc.model),
    shell:
        "python -m scripts.random_lightningdit --seed {params.seed} {params.networks}"
        " --out-dit {output.dit:q} --out-vae {output.vae:q} --out-latent-stats {output.latents_stats:q} 2> {log:q}"


rule random_pretrained:
    # the backbone's random weights in its release's layout, where download_pretrained puts them
    output:
        f"{DATA}/pretrained/{{arch}}/model.safetensors",
    log:
        f"{DATA}/pretrained/{{arch}}/random.log",
    wildcard_constraints:
        arch=_one_of(pretrained_archs(random=True)),
    conda:
        "../envs/torch.yaml"
    params:
        name=lambda wc: config["archs"][wc.arch]["name"],
        kwargs=lambda wc: json.dumps(config["archs"][wc.arch].get("kwargs", {})),
        seed=lambda wc: config["archs"][wc.arch]["pretrained"]["random"]["seed"],
    shell:
        "python -m scripts.random_pretrained --name {params.name:q} --kwargs {params.kwargs:q}"
        " --seed {params.seed} --out {output:q} 2> {log:q}"


rule canary_cell:
    # the cell's own inputs (the stand-ins above through the paper's rules), a few steps on one GPU of
    # its planned job; a failure is a row of the table, not a stopped workflow
    input:
        unpack(train_inputs),
    output:
        cell_file("canary.json"),
    log:
        cell_file("canary.log"),
    conda:
        "../envs/torch.yaml"
    threads: resource("train", "cpus")
    # one GPU of the planned job, or the CPU where the plan has none; one attempt of canary.runtime
    resources:
        **gpu_job(
            "train",
            gpu=lambda wc: min(train_gpus(wc), 1),
            runtime=f"{min(time_limits.minutes(config['canary']['runtime']), TIME_LIMIT_MINUTES)}m",
        ),
    params:
        work=cell_state("canary"),
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
    # dra.canary, which writes the table, is torch code
    conda:
        "../envs/torch.yaml"
    shell:
        "python -m scripts.canary_table --cells {input:q} --out-csv {output.csv:q} --out-md {output.md:q} 2> {log:q}"
