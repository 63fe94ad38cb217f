"""Cells and paths: the cells of the tables and figures with their replicates, and where every
store, feature store, checkpoint and cell folder lives."""

from __future__ import annotations

import copy
from typing import Iterable

from dra.config.core import Cell, parse_cell
from dra.config.downloads import is_random
from dra.registry import TABLE_KINDS


REFERENCE_PREFIX = "reference/"


def results_dir(config: dict) -> str:
    return f"results/{config['scale']}"


def table_seeds(config: dict, table: str) -> list[int]:
    """The training seeds of a table's cells: config's seed, then the next ``tables.<t>.seeds - 1``."""
    return [config["seed"] + k for k in range(config["tables"][table].get("seeds", 1))]


def replicate(config: dict, cell: Cell, seed: int) -> Cell:
    """A cell trained with ``seed``: the plain path for config's seed, ``<budget>-seed<seed>`` else."""
    if seed == config["seed"]:
        return cell
    return Cell(cell.dataset, cell.arch, cell.method, f"{cell.budget}-seed{seed}")


def cell_replicates(config: dict, cell_id: str) -> list[Cell]:
    """A cell and its replicates: the seeds of the table listing it with the most (a figure plots
    the spread of the replicates the tables run; one seed for a cell no table lists)."""
    counts = [len(table_seeds(config, name)) for name, table in config["tables"].items()
              if any(row.get("cell") == cell_id for row in table["rows"])]
    seeds = [config["seed"] + k for k in range(max(counts, default=1))]
    return [replicate(config, parse_cell(cell_id), seed) for seed in seeds]


# a table that names no kind compares accuracies (Tables 1 and 2, the ablations, the replicates)
DEFAULT_TABLE_KIND = "accuracy"


def table_kind(config: dict, table: str) -> str:
    """What a table compares (tables.<t>.kind, a dra.registry.TABLE_KINDS name)."""
    return config["tables"][table].get("kind", DEFAULT_TABLE_KIND)


def tables_of_kind(config: dict, kind: str) -> list[str]:
    return [name for name in config["tables"] if table_kind(config, name) == kind]


def table_result_files(config: dict, table: str) -> list[str]:
    """The files a table reads of each of its cells (relative to the cell's folder): its rule's inputs."""
    return list(TABLE_KINDS.meta(table_kind(config, table))["result_files"])


def table_cells(config: dict, tables: Iterable[str] | None = None) -> list[Cell]:
    """The trained cells of the given tables (all by default), each once, in table order: every
    row's cell, followed by its replicates where a table runs more than one seed."""
    names = list(tables) if tables is not None else list(config["tables"])
    cells: dict[str, Cell] = {}
    for name in names:
        for row in config["tables"][name]["rows"]:
            if "cell" in row:
                for seed in table_seeds(config, name):
                    cell = replicate(config, parse_cell(row["cell"]), seed)
                    cells.setdefault(cell.id, cell)
    return list(cells.values())


def figure_models(config: dict) -> list[str]:
    """Models whose test-set representations the figures read (Figures 1, 3-6, 9, 10): cell paths
    and reference/<name>, each once, in configuration order."""
    figures = config["figures"]
    models = [figures[key] for key in ("standard", "adversarial") if key in figures]
    for key in ("figure1_models", "figure5_models", "figure6_models"):
        models += figures.get(key, [])
    for pair in figures.get("figure10_pairs", []):
        models += [pair["aligned"], pair["baseline"]]
    return list(dict.fromkeys(models))


def figure_cells(config: dict) -> list[Cell]:
    """The trained cells the figures need (the representation models above and the cells of the
    lambda sweep of Figure 8), each once; some are table cells too."""
    figures = config["figures"]
    models = figure_models(config) + figures.get("figure8_models", [])
    if "figure8_models" in figures:
        models.append(figures["figure8_baseline"])
    return [parse_cell(model) for model in dict.fromkeys(models) if not model.startswith(REFERENCE_PREFIX)]


def model_dataset(config: dict, model: str) -> str:
    """The dataset of a figure model (a cell path or reference/<name>)."""
    if model.startswith(REFERENCE_PREFIX):
        return config["reference_models"]["models"][model.removeprefix(REFERENCE_PREFIX)]["dataset"]
    return parse_cell(model).dataset


def cell_dir(config: dict, cell: Cell) -> str:
    return f"{results_dir(config)}/{cell.id}"


def synthetic_is_generated(config: dict, dataset: str, name: str) -> bool:
    return "generate" in config["datasets"][dataset]["synthetic"][name]


def synthetic_store(config: dict, dataset: str, name: str) -> str:
    folder = "generated" if synthetic_is_generated(config, dataset, name) else "synthetic"
    return f"{config['data_dir']}/{dataset}/{folder}/{name}"


def synthetic_size(config: dict, dataset: str, name: str) -> int:
    spec = config["datasets"][dataset]["synthetic"][name]
    if "generate" in spec:
        return spec["generate"]["images_per_class"] * config["datasets"][dataset]["num_classes"]
    return sum(part["images"] for part in spec["parts"])


def uses_edm(config: dict, dataset: str) -> bool:
    """Whether a dataset's diffusion model is an EDM U-Net (CIFAR, mini) rather than LightningDiT."""
    kind = config["diffusion_models"][config["datasets"][dataset]["diffusion"]]["source"]["kind"]
    return kind in ("edm_pickle", "train")


def reads_imagenet_folder(config: dict, dataset: str) -> bool:
    return config["datasets"][dataset]["source"]["kind"] == "imagenet_folder"


def unset_source_key(config: dict, dataset: str) -> str | None:
    """The config key a user must set before a dataset's cells can run, or None: an ImageNet
    folder's path (ILSVRC-2012 is the user's own copy; nothing can fetch it)."""
    source = config["datasets"][dataset]["source"]
    if source["kind"] == "imagenet_folder" and not source["path"] and not is_random(source):
        return f"datasets.{dataset}.source.path"
    return None


def runnable_cells(config: dict, cells: Iterable[Cell]) -> list[Cell]:
    """The cells whose data the configuration can reach (see unset_source_key)."""
    return [cell for cell in cells if unset_source_key(config, cell.dataset) is None]


def table_spec(config: dict, table: str) -> dict:
    """A table as the table rule reads it: config's rows, a row whose cell cannot run until a key
    is set carrying ``not_run: set <key>`` (shown in our columns instead of "pending")."""
    spec = copy.deepcopy(config["tables"][table])
    seeds = table_seeds(config, table)
    for row in spec["rows"]:
        key = unset_source_key(config, parse_cell(row["cell"]).dataset) if "cell" in row else None
        if key:
            row["not_run"] = f"set {key}"
        if "cell" in row and len(seeds) > 1:
            # the table shows the mean and spread over these cells (dra.analysis.tables)
            row["replicates"] = [replicate(config, parse_cell(row["cell"]), seed).id for seed in seeds]
    return spec


def split_store(config: dict, dataset: str, split: str) -> str:
    """Where a split's images are read from: an image store, except ImageNet's training images,
    which stay JPEGs in the user's folder and are read through its index (prepare_imagenet).
    ImageNet's 'test' store holds RobustBench's 5000 evaluation images at 224x224."""
    if split == "train" and reads_imagenet_folder(config, dataset):
        return f"{config['data_dir']}/{dataset}/index"
    return f"{config['data_dir']}/{dataset}/{split}"


def pretrained_weights(config: dict, arch: str) -> str:
    """The pretrained weights file of a timm arch, written by the download_pretrained rule."""
    return f"{config['data_dir']}/pretrained/{arch}/model.safetensors"


def diffusion_checkpoint(config: dict, model: str) -> str:
    return f"{config['data_dir']}/diffusion/{model}/model.safetensors"


def feature_views(config: dict, cell: Cell) -> int:
    """Appendix D: a second representation per image for large synthetic sets."""
    threshold = config["datasets"][cell.dataset]["extra_view_over_synthetic"]
    if threshold is None or cell.synthetic is None:
        return 1
    return 2 if synthetic_size(config, cell.dataset, cell.synthetic) > threshold else 1


def feature_store(config: dict, dataset: str, store: str, views: int, diffusion: str | None = None) -> str:
    """``store`` is 'train' or 'synthetic-<set>'; ``diffusion`` defaults to the dataset's model."""
    diffusion = diffusion or config["datasets"][dataset]["diffusion"]
    return f"{results_dir(config)}/{dataset}/features/{diffusion}/{store}-v{views}"
