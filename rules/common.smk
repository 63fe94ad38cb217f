# Helpers shared by the workflow files: configuration checks, cells, paths, input functions.
# Paths and recipes come from dra.config, which the tests use too.
import json
import os
import re
import shlex
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import update_config

from dra import config as cfg
from dra import gpu_plan
from dra import model_card
from dra import time_limits

# --config values typed as a config file types them (Snakemake keeps nested ones as strings)
update_config(config, cfg.typed_overrides(workflow.config_settings.config))
try:
    cfg.validate_config(config)
except cfg.ConfigError as error:
    raise WorkflowError(str(error)) from None

RESULTS = cfg.results_dir(config)
# the partition's longest wall time: no job asks for more (dra.time_limits)
TIME_LIMIT_MINUTES = time_limits.minutes(config["hardware"]["time_limit"])
DATA = config["data_dir"]
CELLS = cfg.table_cells(config)
# every trained cell by path: the tables' and the figures' (the ST model, the lambda sweep: cells
# that are no table row)
CELLS_BY_ID = {cell.id: cell for cell in CELLS + cfg.figure_cells(config)}
# The cells the aggregate targets build: all but those whose data needs a key set first (an
# ImageNet folder). Such cells stay in the tables as "not run: set <key>"; asked for by path,
# they stop at the key (imagenet_root).
RUNNABLE_CELLS = cfg.runnable_cells(config, CELLS)
WAITING_CELLS = {
    cell.id: cfg.unset_source_key(config, cell.dataset)
    for cell in CELLS + cfg.figure_cells(config)
    if cfg.unset_source_key(config, cell.dataset)
}
if WAITING_CELLS and workflow.is_main_process:
    # once per run, in the main process (not again in each cluster job's log)
    for key in sorted(set(WAITING_CELLS.values())):
        logger.warning(
            f"not run: set {key} (your ILSVRC-2012 folder) to add its "
            f"{list(WAITING_CELLS.values()).count(key)} cells; until then their table rows read "
            f"'not run: set {key}', figures of them are not drawn, and everything else builds"
        )


def _one_of(names):
    # an alternation that matches exactly the given names; no name matches nothing
    names = sorted(set(names))
    return "|".join(re.escape(name) for name in names) if names else "(?!)"


def datasets_of_kind(*kinds):
    return [name for name, d in config["datasets"].items() if d["source"]["kind"] in kinds]


def diffusion_models_of_kind(kind, random=None):
    # random: True only the canary's randomly initialised ones, False only the downloaded ones
    return [
        name
        for name, m in config["diffusion_models"].items()
        if m["source"]["kind"] == kind and random in (None, cfg.is_random(m["source"]))
    ]


# A table cell's folder below results/<scale>/, in the wildcards of every per-cell rule: the same
# path as the cell's id (dra.config.Cell.id), so that a rule's files and cell_path(cell, ...) agree.
CELL = "{dataset}/{arch}/{method}/{budget}"


def cell_file(name):
    """A per-cell file as a rule writes it, e.g. cell_file("train/model.pt")."""
    return f"{RESULTS}/{CELL}/{name}"


def cell_state(name):
    """A per-cell job's resumable state: beside the results, deliberately no declared output, so that
    a failed or killed attempt keeps it for the next."""
    return f"{RESULTS}/state/{CELL}/{name}"


def cell_of(wildcards):
    cell_id = CELL.format_map(wildcards)
    if cell_id not in CELLS_BY_ID:
        raise WorkflowError(
            f"cell {cell_id} is not a row of any table in the configuration; "
            f"add it to tables.<table>.rows (a -seed<s> replicate: raise tables.<table>.seeds) "
            f"or to figures, "
            f"or ask for one of: {', '.join(CELLS_BY_ID)}"
        )
    return CELLS_BY_ID[cell_id]


def cell_path(cell, name):
    return f"{RESULTS}/{cell.id}/{name}"


# ---------------------------------------------------------------------------- data


def split_stores(dataset):
    # a dataset's train and test stores, where the prepare rules write them (as cfg.split_store names them)
    return {split: directory(f"{DATA}/{dataset}/{split}") for split in ("train", "test")}


def archive_path(wildcards):
    source = config["datasets"][wildcards.dataset]["source"]
    if cfg.is_random(source):  # the canary's archive of random pixels (rule random_cifar_archive)
        return f"{DATA}/{wildcards.dataset}/random/cifar-python.tar.gz"
    return f"{DATA}/{wildcards.dataset}/archive/{cfg.download_name(source)}"


def archive_source(wildcards):
    source = config["datasets"][wildcards.dataset]["source"]
    if cfg.download_name(source) != wildcards.filename:
        raise WorkflowError(
            f"{wildcards.filename} is not the archive of datasets.{wildcards.dataset}"
        )
    return source


# Every file's resolved revision, size and sha256 at its first download (dra.download.fetch);
# reviewed and committed with the workflow like any lock file. Relative to the working directory
# (the repository root as a rule), so that the rules' params do not change with the checkout's place.
LOCK_FILE = os.path.relpath(f"{workflow.basedir}/config/data/downloads.lock.yaml")
try:
    cfg.check_download_lock(config, LOCK_FILE)
except cfg.ConfigError as error:
    raise WorkflowError(str(error)) from None


def download_spec(entry):
    """A config entry's download fields as JSON for scripts.download: passed as one quoted
    argument, so no config string is ever read by the shell."""
    return json.dumps(cfg.download_fields(entry))


def synthetic_parts(wildcards):
    # downloaded parts, or the canary's parts of random pixels (rule random_synthetic_part)
    spec = config["datasets"][wildcards.dataset]["synthetic"][wildcards.set]
    return [
        f"{DATA}/{wildcards.dataset}/"
        f"{'synthetic-random' if cfg.is_random(part) else 'synthetic-parts'}/{wildcards.set}/part{index}.npz"
        for index, part in enumerate(spec["parts"])
    ]


def synthetic_part(wildcards):
    parts = config["datasets"][wildcards.dataset]["synthetic"][wildcards.set]["parts"]
    return parts[int(wildcards.index)]


def synthetic_store_of(cell):
    return cfg.synthetic_store(config, cell.dataset, cell.synthetic)


def random_imagenet_folder(dataset):
    return f"{DATA}/{dataset}/random/folder"


def imagenet_folder_input(wildcards):
    # the canary's random folder is built by a rule; the user's ILSVRC-2012 folder is not a file of the workflow
    if cfg.is_random(config["datasets"][wildcards.dataset]["source"]):
        return random_imagenet_folder(wildcards.dataset)
    return []


def imagenet_eval_ids(wildcards):
    if cfg.is_random(config["datasets"][wildcards.dataset]["source"]):
        return f"{random_imagenet_folder(wildcards.dataset)}/eval_ids.txt"
    return config["datasets"][wildcards.dataset]["source"]["eval_ids"]


def imagenet_root(wildcards):
    if cfg.is_random(config["datasets"][wildcards.dataset]["source"]):
        return random_imagenet_folder(wildcards.dataset)
    root = config["datasets"][wildcards.dataset]["source"]["path"]
    if not root:
        raise WorkflowError(
            f"datasets.{wildcards.dataset}.source.path is not set: point it at your ILSVRC-2012 folder "
            "(train/<wnid>/*.JPEG and val/<wnid>/*.JPEG, from image-net.org) in config.yaml or an overlay"
        )
    return root


def all_data_targets():
    """Everything the cells read that is downloaded or prepared from a download, so that a host
    with internet can fetch it all before compute nodes (often offline) start. ImageNet is indexed
    once its folder is configured; its synthetic set is sampled by GPU jobs, not fetched."""
    targets = []
    for cell in CELLS:
        if cfg.reads_imagenet_folder(config, cell.dataset):
            if config["datasets"][cell.dataset]["source"]["path"]:
                targets += [f"{DATA}/{cell.dataset}/index", f"{DATA}/{cell.dataset}/test"]
        else:
            targets += [cfg.split_store(config, cell.dataset, split) for split in ("train", "test")]
            if cell.synthetic is not None:
                targets.append(synthetic_store_of(cell))
        if "pretrained" in config["archs"][cell.arch]:
            targets.append(cfg.pretrained_weights(config, cell.arch))
        if cell.dataset in lightningdit_datasets():
            targets += lightningdit_files(diffusion_of(cell.dataset)).values()
    zoo = config["figures"].get("robustbench")
    if zoo:
        targets += [
            zoo_checkpoint(name) for name in [zoo["standard"], *(m["name"] for m in zoo["models"])]
        ]
    return sorted(set(targets))


def zoo_checkpoint(name):
    # RobustBench's model_dir layout, where robustbench.utils.load_model looks for a zoo model
    # (without figures.robustbench the rules that use it match no model)
    model_dir = (config["figures"].get("robustbench") or {}).get(
        "model_dir", "resources/robustbench"
    )
    return f"{model_dir}/cifar10/Linf/{name}.pt"


# ---------------------------------------------------------------------------- diffusion


def diffusion_of(dataset):
    return config["datasets"][dataset]["diffusion"]


def diffusion_files(model):
    # an EDM network as every rule that writes one leaves it (converted, trained or random)
    folder = f"{DATA}/diffusion/{model}"
    return {"weights": f"{folder}/model.safetensors", "network": f"{folder}/model.json"}


def probe_inputs(wildcards):
    # what a probe of a diffusion model's features reads: the model, the train and the test stores
    return {
        **diffusion_files(wildcards.diffusion),
        "train": f"{DATA}/{wildcards.dataset}/train",
        "test": f"{DATA}/{wildcards.dataset}/test",
    }


def feature_source_store(wildcards):
    """The image store whose features a feature store holds: 'train' or 'synthetic-<set>'."""
    if wildcards.store == "train":
        return cfg.split_store(config, wildcards.dataset, "train")
    name = wildcards.store.removeprefix("synthetic-")
    return cfg.synthetic_store(config, wildcards.dataset, name)


def feature_store_inputs(wildcards):
    # the dataset's diffusion model, or a noisy classifier standing in for it (Section 5.6)
    return {"images": feature_source_store(wildcards), **diffusion_files(wildcards.diffusion)}


def noisy_classifier_inputs(wildcards):
    source = config["diffusion_models"][wildcards.model]["source"]
    return {
        "train": cfg.split_store(config, source["dataset"], "train"),
        "test": cfg.split_store(config, source["dataset"], "test"),
        "base_network": diffusion_files(source["diffusion"])["network"],
    }


def noisy_classifier_augment(wildcards):
    # the crop and flip of the dataset it learns, as JSON for the script
    dataset = config["diffusion_models"][wildcards.model]["source"]["dataset"]
    return json.dumps(config["datasets"][dataset]["augment"])


def edm_datasets():
    return [d for d in config["datasets"] if cfg.uses_edm(config, d)]


def lightningdit_datasets():
    return [
        d
        for d in config["datasets"]
        if config["diffusion_models"][diffusion_of(d)]["source"]["kind"] == "lightningdit"
    ]


def pretrained_archs(random=False):
    # random: the canary's randomly initialised stand-ins for the downloads (rule random_pretrained)
    return [
        name
        for name, arch in config["archs"].items()
        if "pretrained" in arch and cfg.is_random(arch["pretrained"]) == random
    ]


LIGHTNINGDIT_FILES = {"dit": "source", "vae": "tokenizer", "latents_stats": "latent_stats"}


def lightningdit_download(wildcards):
    # dit.pt is the model's own download; vae.pt and latents_stats.pt are the tokenizer's entries
    source = config["diffusion_models"][wildcards.model]["source"]
    key = LIGHTNINGDIT_FILES[wildcards.file]
    return source if key == "source" else source[key]


def lightningdit_files(model):
    return {name: f"{DATA}/diffusion/{model}/{name}.pt" for name in LIGHTNINGDIT_FILES}


def lightningdit_config_flags(model):
    # smaller networks than the release's XL/1 and f16d32 (the tests' mini ImageNet)
    source = config["diffusion_models"][model]["source"]
    flags = [
        f"--{key.replace('_', '-')} {shlex.quote(json.dumps(source[key]))}"
        for key in ("dit_config", "vae_config")
        if key in source
    ]
    return " ".join(flags)


def synthetic_part_stores(wildcards):
    spec = config["datasets"][wildcards.dataset]["synthetic"][wildcards.set]["generate"]
    return [
        f"{DATA}/{wildcards.dataset}/generated-parts/{wildcards.set}/part{index}"
        for index in range(spec.get("parts", 1))
    ]


def imagenet_feature_inputs(wildcards):
    images = (
        cfg.split_store(config, wildcards.dataset, "train")
        if wildcards.store == "train"
        else cfg.synthetic_store(
            config, wildcards.dataset, wildcards.store.removeprefix("synthetic-")
        )
    )
    return {"images": images, **lightningdit_files(wildcards.diffusion)}


def feature_targets():
    """Feature stores of every DRA cell with a stored target, and the feature validation."""
    targets = set()
    for cell in RUNNABLE_CELLS:
        recipe = cfg.resolve_recipe(config, cell)
        if recipe["dra"] is not None:
            targets.add(recipe["dra"]["features"]["real"])
            if recipe["dra"]["features"]["synthetic"]:
                targets.add(recipe["dra"]["features"]["synthetic"])
        if cfg.uses_edm(config, cell.dataset):  # linear probes (Sections 4.1-4.2) read EDM U-Nets
            targets.add(
                f"{RESULTS}/{cell.dataset}/feature-validation/{diffusion_of(cell.dataset)}/probe.csv"
            )
    return sorted(targets)


def generated_sets():
    # sets sampled from an EDM by the generate_synthetic rule (LightningDiT sets are not wired yet)
    return [
        (dataset, name)
        for dataset, spec in config["datasets"].items()
        for name, synthetic in spec["synthetic"].items()
        if "generate" in synthetic and cfg.uses_edm(config, dataset)
    ]


# ---------------------------------------------------------------------------- training


def train_inputs(wildcards):
    cell = cell_of(wildcards)
    recipe = cfg.resolve_recipe(config, cell)
    inputs = {"recipe": cell_path(cell, "recipe.yaml"), "train": recipe["data"]["train"]}
    if recipe["data"]["synthetic"]:
        inputs["synthetic"] = recipe["data"]["synthetic"]
    if recipe["dra"] is not None:
        if recipe["dra"]["target"] == "stored":
            inputs["features_real"] = recipe["dra"]["features"]["real"]
            if recipe["dra"]["features"]["synthetic"]:
                inputs["features_synthetic"] = recipe["dra"]["features"]["synthetic"]
        else:
            inputs["diffusion"] = recipe["dra"]["diffusion"]["checkpoint"]
    if recipe["arch"].get("pretrained"):  # resolve_arch: pretrained: true and the weights file
        inputs["pretrained"] = recipe["arch"]["weights"]
    if recipe["arch"]["family"] == "edm_encoder":
        # the diffusion model whose encoder is fine-tuned (Section 5.6)
        inputs["encoder_weights"] = recipe["arch"]["weights"]
        inputs["encoder_network"] = recipe["arch"]["network"]
    return inputs


def train_gpus(wildcards):
    # the fewest GPUs whose memory holds the cell's share of the batch (dra.gpu_plan, config hardware)
    return cfg.train_plan(config, cell_of(wildcards)).gpus


def train_estimate_minutes(cell):
    """From the cell's steps and the measured GPU seconds per image where the memory table has them,
    else resources.train.runtime (the canary's capped training: canary.runtime)."""
    if config["canary"]["cap_training"]:
        return time_limits.minutes(config["canary"]["runtime"])
    minutes = cfg.train_plan(config, cell).runtime_minutes
    if minutes is None:
        return time_limits.minutes(config["resources"]["train"]["runtime"])
    return minutes


def train_runtime(wildcards, attempt):
    # the estimate times the attempt, at most the partition's limit (dra.time_limits)
    minutes = train_estimate_minutes(cell_of(wildcards))
    return f"{time_limits.attempt_minutes(minutes, attempt, TIME_LIMIT_MINUTES)}m"


def train_retries():
    """What the longest cell needs: Snakemake takes one retries count per rule, not per job."""
    if not workflow.is_main_process:
        return 0  # see retries_of
    return max(
        time_limits.retries(train_estimate_minutes(cell), TIME_LIMIT_MINUTES)
        for cell in CELLS_BY_ID.values()
    )


# every trained cell, once: the canary runs them all
CANARY_CELLS = list(CELLS_BY_ID.values())


def canary_micro_batch(wildcards):
    # planned: the images each GPU of the cell's job holds at once; a number: that (the CPU's 2)
    chosen = config["canary"]["micro_batch"]
    if chosen == "planned":
        return cfg.train_plan(config, cell_of(wildcards)).micro_batch
    return chosen


def canary_planned(wildcards):
    plan = cfg.train_plan(config, cell_of(wildcards))
    gib = plan.bytes_per_gpu / 2**30 if plan.bytes_per_gpu is not None else None
    return json.dumps(
        {
            "planned_gpus": plan.gpus,
            "planned_accumulation": plan.accumulation_steps,
            "planned_gib_per_gpu": gib,
        }
    )


# the batch of every other GPU job, from the memory model of its network and mode (dra.gpu_plan);
# the config check above has planned each of them already
JOB_BATCHES = cfg.job_batches(config)


def job_batch(rule, network):
    return JOB_BATCHES[(rule, network)]


def train_launcher(wildcards, resources):
    # one process per allocated GPU; torchrun splits the recipe's global batch across them
    if resources.gpu > 1:
        return f"torchrun --standalone --nproc-per-node {resources.gpu} -m"
    return "python -m"


def resource(kind, key):
    return config["resources"][kind][key]


def gpu_job(kind, **overrides):
    """What a GPU job of resources.<kind> asks SLURM for, written once for every GPU rule
    (`resources: **gpu_job(kind)`): its GPUs and memory, its runtime per attempt, and all its GPUs in
    one task on one node (torchrun --standalone starts one process per GPU and sees only its own
    node's). overrides: a rule's own values (the training cell plans its GPUs and time per cell)."""
    return {
        "gpu": resource(kind, "gpu"),
        "tasks_per_gpu": 0,
        "nodes": 1,
        "runtime": runtime_per_attempt(kind),
        "mem_mb": resource(kind, "mem_mb"),
    } | overrides


def runtime_per_attempt(kind):
    """resources.<kind>.runtime times the attempt (a job killed at its limit is retried longer), at
    most the partition's limit (hardware.time_limit)."""
    minutes = time_limits.minutes(config["resources"][kind]["runtime"])
    return (
        lambda wildcards, attempt: f"{time_limits.attempt_minutes(minutes, attempt, TIME_LIMIT_MINUTES)}m"
    )


def retries_of(kind):
    # attempts after the first for a resumable job of resources.<kind>.runtime (dra.time_limits).
    # Only the main process retries, by submitting a new SLURM job: a rule's retries: also applies in
    # the Snakemake that runs the job inside its allocation (its --retries 0 does not override it),
    # which would restart a job stopped before its limit in the same allocation, to be killed there
    if not workflow.is_main_process:
        return 0
    return time_limits.retries(
        time_limits.minutes(config["resources"][kind]["runtime"]), TIME_LIMIT_MINUTES
    )


# ---------------------------------------------------------------------------- evaluation and tables


def eval_targets(tables=None):
    cells = cfg.runnable_cells(config, cfg.table_cells(config, tables))
    return [cell_path(cell, "autoattack.json") for cell in cells]


def table_inputs(wildcards):
    # every seed of every cell, the files its kind reads (an accuracy table's include the
    # per-example flags of its paired tests; dra.registry.TABLE_KINDS)
    cells = cfg.runnable_cells(config, cfg.table_cells(config, [wildcards.table]))
    names = cfg.table_result_files(config, wildcards.table)
    return [cell_path(cell, name) for cell in cells for name in names]


def table_files(table):
    """A table's files, as scripts.build_table writes them: the CSV in the report, Markdown and LaTeX."""
    return {
        "csv": report(f"{RESULTS}/tables/{table}.csv", category="Tables"),
        "md": f"{RESULTS}/tables/{table}.md",
        "tex": f"{RESULTS}/tables/{table}.tex",
    }


def table_outputs(table):
    # the paths alone, for the aggregate targets
    return [str(path) for path in table_files(table).values()]


# ---------------------------------------------------------------------------- exports


def export_gpus(wildcards):
    # the GPUs each measured job asked for: GPU-hours = benchmark wall time x these
    return json.dumps({"train": train_gpus(wildcards), "autoattack": resource("evaluate", "gpu")})


def export_sources(wildcards):
    return json.dumps(
        model_card.weight_sources(config, cfg.resolve_recipe(config, cell_of(wildcards)))
    )


def export_targets():
    # the canary's cells are random networks: nothing to hand on
    if config["canary"]["cap_training"]:
        return []
    return [cell_path(cell, "export/config.json") for cell in RUNNABLE_CELLS]


def export_paper(wildcards):
    return json.dumps(model_card.paper_numbers(config, cell_of(wildcards).id))
