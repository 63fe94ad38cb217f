"""The configuration's GPU jobs besides training (AutoAttack, representations, features, sampling,
the noisy classifier), each with the batch it runs at: the jobs are read from the configuration
here, their memory is planned by dra.gpu_plan (plan_job), as a training cell's recipe is resolved in
dra.config.recipe and its GPUs planned by dra.gpu_plan.plan_cell. The config check plans them all
(validate_config); rules pass each job's batch (job_batches) as --batch-size."""

from __future__ import annotations

import math

from dra.config.cells import (REFERENCE_PREFIX, figure_cells, figure_models, model_dataset, synthetic_size,
                              table_cells, tables_of_kind, uses_edm)
from dra.config.core import parse_cell
from dra.config.sizes import split_sizes
from dra.gpu_plan import ZOO_NETWORK, Job, JobPlan, plan_job, read_job_table

# the VA-VAE f16d32's resolution (dra.diffusion.vavae.VAVAE_F16D32; a constant here so that the config
# check imports no torch): LightningDiT samples and reads 256x256 images
VAVAE_RESOLUTION = 256


def classifier_of(config: dict, model: str) -> tuple[str, str]:
    """(arch, dataset) of a cell path or reference/<name>."""
    if model.startswith(REFERENCE_PREFIX):
        entry = config["reference_models"]["models"][model.removeprefix(REFERENCE_PREFIX)]
        return entry["arch"], entry["dataset"]
    cell = parse_cell(model)
    return cell.arch, cell.dataset


def memory_network(config: dict, model: str) -> str:
    # a noisy classifier is its base diffusion model's U-Net (label input removed): the same memory
    source = config["diffusion_models"][model]["source"]
    return source["diffusion"] if source["kind"] == "noisy_classifier" else model


def gpu_jobs(config: dict) -> list[Job]:
    """Every kind of job of the configuration that runs a network on a GPU, besides training cells
    (plan_cell) and the canary's cells: one entry per rule and network it runs (jobs of one rule on
    one network at one size differ only in their images, and the largest count stands for them)."""
    jobs: dict[tuple, Job] = {}

    def add(job: Job) -> None:
        key = (job.rule, job.network, job.image_size, job.mode)
        if key not in jobs or job.images > jobs[key].images:
            jobs[key] = job

    datasets = config["datasets"]
    cells = list({c.id: c for c in table_cells(config) + figure_cells(config)}.values())
    for cell in cells:
        dataset = datasets[cell.dataset]
        add(Job("autoattack", cell.arch, dataset["image_size"], "attack", dataset["eval_n"], "evaluate",
                label=f"cell {cell.id}"))
    for name, entry in config["reference_models"]["models"].items():
        dataset = datasets[entry["dataset"]]
        add(Job("reference_autoattack", entry["arch"], dataset["image_size"], "attack", dataset["eval_n"],
                "evaluate", label=f"reference_models.models.{name}"))
    for cell in table_cells(config, tables_of_kind(config, "classification_dimension")):
        add(Job("classification_dimension", cell.arch, datasets[cell.dataset]["image_size"], "attack",
                config["classification_dimension"]["eval_n"], "evaluate", label=f"cell {cell.id}"))
    figures = config["figures"]
    for model in figure_models(config):
        arch, dataset = classifier_of(config, model)
        add(Job("figure_representation", arch, datasets[dataset]["image_size"], "attack", figures["eval_n"],
                "evaluate", label=f"figure model {model}"))
    figure_datasets = []
    if "standard" in figures:
        figure_datasets.append(model_dataset(config, figures["standard"]))
    if figures.get("robustbench"):
        figure_datasets.append("cifar10")  # the zoo's dataset (rules/figures_common.smk ZOO_DATASET)
        add(Job("zoo_representation", ZOO_NETWORK, 32, "infer", figures["eval_n"], "evaluate",
                label="figures.robustbench"))
    for dataset in dict.fromkeys(figure_datasets):
        model = datasets[dataset]["diffusion"]
        validation = config["diffusion_models"][model].get("validation") or {}
        add(Job("figure_diffusion_representation", model, datasets[dataset]["image_size"], "attack",
                max(figures["eval_n"], validation.get("train_n", 0)), "diffusion", label=f"dataset {dataset}"))
    for dataset_name, dataset in datasets.items():
        model = dataset["diffusion"]
        kind = config["diffusion_models"][model]["source"]["kind"]
        largest_store = max([split_sizes(config, dataset_name)[0] or 0]
                            + [synthetic_size(config, dataset_name, name) for name in dataset["synthetic"]])
        if uses_edm(config, dataset_name):
            views = 2 if dataset["extra_view_over_synthetic"] is not None else 1
            for target in {model, *(m for m, d in config["diffusion_models"].items()
                                    if d["source"]["kind"] == "noisy_classifier"
                                    and d["source"]["dataset"] == dataset_name)}:
                add(Job("extract_features", memory_network(config, target), dataset["image_size"], "infer",
                        largest_store * views, "diffusion", label=f"dataset {dataset_name}, {target}"))
            validation = config["diffusion_models"][model]["validation"]
            add(Job("validate_features", model, dataset["image_size"], "attack",
                    max(validation["train_n"], validation["test_n"]), "diffusion", label=f"dataset {dataset_name}"))
            for name, spec in dataset["synthetic"].items():
                if "generate" in spec:
                    add(Job("generate_synthetic", model, dataset["image_size"], "infer",
                            synthetic_size(config, dataset_name, name), "diffusion",
                            label=f"datasets.{dataset_name}.synthetic.{name}"))
        elif kind == "lightningdit":
            resolution = config["diffusion_models"][model]["source"].get("vae_config", {}).get(
                "resolution", VAVAE_RESOLUTION)
            add(Job("extract_imagenet_features", model, resolution, "infer", largest_store, "diffusion",
                    label=f"dataset {dataset_name}"))
            for name, spec in dataset["synthetic"].items():
                if "generate" in spec:
                    per_part = math.ceil(synthetic_size(config, dataset_name, name)
                                         / spec["generate"].get("parts", 1))
                    add(Job("generate_imagenet_synthetic_part", model, resolution, "sample", per_part, "diffusion",
                            label=f"datasets.{dataset_name}.synthetic.{name}"))
    for name, model in config["diffusion_models"].items():
        source = model["source"]
        if source["kind"] in ("noisy_classifier", "train"):
            size = datasets[source["dataset"]]["image_size"]
            rule = "train_noisy_classifier" if source["kind"] == "noisy_classifier" else "train_diffusion"
            add(Job(rule, name, size, "train", source["training"]["batch_size"], "diffusion",
                    fixed_batch=source["training"]["batch_size"], label=f"diffusion_models.{name}"))
    return list(jobs.values())


def job_plans(config: dict) -> list[JobPlan]:
    """The plan of every GPU job of the configuration (the config check runs it before any job)."""
    table = None
    if any(config["resources"][family]["gpu"] for family in ("evaluate", "diffusion")):
        table = read_job_table(config["hardware"]["job_memory_per_image"])
    return [plan_job(config, job, table) for job in gpu_jobs(config)]


def job_batches(config: dict) -> dict[tuple[str, str], int]:
    """{(rule, network): the batch the rule passes to its script (--batch-size)}; a network that one
    rule runs at two image sizes gets the smaller batch."""
    batches: dict[tuple[str, str], int] = {}
    for plan in job_plans(config):
        key = (plan.job.rule, plan.job.network)
        batches[key] = min(batches.get(key, plan.batch), plan.batch)
    return batches
