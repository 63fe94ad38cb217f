# Datasets: official archives, DM-AT's synthetic sets, the offline mini dataset.
# Downloads run on the submit host (localrule): compute nodes often have no internet.


# The one download rule: scripts.download fetches a config entry's file (url or Hugging Face), checks
# it and pins it in the lock file. Every other download is this rule with its own files and entry
# (`use rule download_archive as ... with:` here and in diffusion.smk and imagenet.smk).
rule download_archive:
    output:
        f"{DATA}/{{dataset}}/archive/{{filename}}",
    log:
        f"{DATA}/{{dataset}}/archive/{{filename}}.log",
    localrule: True
    conda:
        "../envs/data.yaml"
    params:
        spec=lambda wc: download_spec(archive_source(wc)),
        lock=LOCK_FILE,
    shell:
        "python -m scripts.download --spec {params.spec:q} --lock {params.lock:q} --dest {output:q} 2> {log:q}"


rule prepare_cifar:
    input:
        archive_path,
    output:
        **split_stores("{dataset}"),
    log:
        f"{DATA}/{{dataset}}/prepare.log",
    wildcard_constraints:
        dataset=_one_of(datasets_of_kind("cifar10", "cifar100")),
    conda:
        "../envs/data.yaml"
    params:
        kind=lambda wc: config["datasets"][wc.dataset]["source"]["kind"],
        # the official 50,000 + 10,000, or the sizes of the canary's random archive
        sizes=lambda wc: cfg.split_sizes(config, wc.dataset),
    shell:
        "python -m scripts.prepare_cifar --archive {input} --dataset {params.kind}"
        " --expected-train {params.sizes[0]} --expected-test {params.sizes[1]}"
        " --train-out {output.train} --test-out {output.test} 2> {log}"


rule prepare_digits:
    output:
        **split_stores("{dataset}"),
    log:
        f"{DATA}/{{dataset}}/prepare.log",
    wildcard_constraints:
        dataset=_one_of(datasets_of_kind("sklearn_digits")),
    conda:
        "../envs/data.yaml"
    shell:
        "python -m scripts.prepare_digits --train-out {output.train} --test-out {output.test} 2> {log}"


rule prepare_imagenet:
    input:
        imagenet_folder_input,
    output:
        directory(f"{DATA}/{{dataset}}/index"),
    log:
        f"{DATA}/{{dataset}}/index.log",
    wildcard_constraints:
        dataset=_one_of(datasets_of_kind("imagenet_folder")),
    localrule: True
    conda:
        "../envs/data.yaml"
    params:
        root=imagenet_root,
        source=lambda wc: config["datasets"][wc.dataset]["source"],
        eval_ids=imagenet_eval_ids,
        num_classes=lambda wc: config["datasets"][wc.dataset]["num_classes"],
    shell:
        "python -m scripts.prepare_imagenet --root {params.root:q} --out {output}"
        " --expected-train {params.source[train_images]} --expected-val {params.source[val_images]}"
        " --num-classes {params.num_classes} --eval-ids {params.eval_ids:q} 2> {log}"


use rule download_archive as fetch_synthetic_part with:
    output:
        temp(f"{DATA}/{{dataset}}/synthetic-parts/{{set}}/part{{index}}.npz"),
    log:
        f"{DATA}/{{dataset}}/synthetic-parts/{{set}}/part{{index}}.log",
    params:
        spec=lambda wc: download_spec(synthetic_part(wc)),


rule prepare_synthetic:
    input:
        synthetic_parts,
    output:
        directory(f"{DATA}/{{dataset}}/synthetic/{{set}}"),
    log:
        f"{DATA}/{{dataset}}/synthetic/{{set}}.log",
    conda:
        "../envs/data.yaml"
    params:
        num_classes=lambda wc: config["datasets"][wc.dataset]["num_classes"],
        images=lambda wc: [
            part["images"] for part in config["datasets"][wc.dataset]["synthetic"][wc.set]["parts"]
        ],
    shell:
        "python -m scripts.prepare_synthetic --parts {input} --num-classes {params.num_classes}"
        " --expected-images {params.images} --out {output} 2> {log}"


rule all_data:
    input:
        all_data_targets(),
