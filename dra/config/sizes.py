"""Sizes and ranges that the schema cannot express: split sizes against the datasets, the cells and
figure models a table or figure names, duplicate rows."""

from __future__ import annotations

from pathlib import Path

from dra.config.cells import REFERENCE_PREFIX, figure_models, model_dataset, table_cells, tables_of_kind, uses_edm
from dra.config.core import HOW_TO_FIX, Cell, ConfigError, _require, parse_cell
from dra.config.downloads import is_random


# training and test images of the datasets the workflow reads itself: CIFAR-10/100 (Krizhevsky 2009,
# "Learning Multiple Layers of Features from Tiny Images": 50,000 + 10,000), the digits' fixed split
# (dra.data.digits: 1297 + 500). ImageNet's come from its source entry and the evaluation ids.
SPLIT_SIZES = {"cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000), "sklearn_digits": (1297, 500)}


def split_sizes(config: dict, dataset: str) -> tuple[int | None, int | None]:
    """(training images, test images) of a dataset, None where it is not known before a job."""
    source = config["datasets"][dataset]["source"]
    if is_random(source) and source["kind"] in ("cifar10", "cifar100"):
        return source["random"]["train_images"], source["random"]["test_images"]
    if is_random(source) and source["kind"] == "imagenet_folder":
        return source["train_images"], source["val_images"]  # every random validation image is evaluated
    if source["kind"] in SPLIT_SIZES:
        return SPLIT_SIZES[source["kind"]]
    ids = Path(source.get("eval_ids", ""))
    test = sum(1 for line in ids.read_text().splitlines() if line.strip()) if ids.is_file() else None
    return source.get("train_images"), test


def _check_sizes_and_ranges(config: dict) -> None:
    datasets = config["datasets"]
    for name, dataset in datasets.items():
        train, test = split_sizes(config, name)
        key = f"datasets.{name}"
        if train is not None:
            _require(dataset["val_size"] < train, f"{key}.val_size",
                     f"{dataset['val_size']} held-out images leave none of the {train} training images to train on; "
                     f"use fewer than {train} (DM-AT holds out 1024 of CIFAR's 50,000)")
        if test is not None:
            _require(dataset["eval_n"] <= test, f"{key}.eval_n",
                     f"{dataset['eval_n']} is more than the {test} test images; use at most {test}")
        _require(dataset["augment"]["crop_padding"] < dataset["image_size"], f"{key}.augment.crop_padding",
                 f"{dataset['augment']['crop_padding']} is not smaller than image_size {dataset['image_size']}")
    for name, model in config["diffusion_models"].items():
        validation = model.get("validation")
        if validation is None:
            continue
        for dataset in (d for d, spec in datasets.items() if spec["diffusion"] == name):
            train, test = split_sizes(config, dataset)
            for split, size in (("train_n", train), ("test_n", test)):
                if size is not None:
                    _require(validation[split] <= size, f"diffusion_models.{name}.validation.{split}",
                             f"{validation[split]} is more than the {size} images of dataset {dataset}; "
                             f"use at most {size}")
    for dataset, archs in config["recipes"].items():
        _require(dataset in datasets, f"recipes.{dataset}",
                 f"'{dataset}' is not in datasets (known: {', '.join(datasets)})")
        for arch, recipe in archs.items():
            key = f"recipes.{dataset}.{arch}"
            _require(arch in config["archs"], key, f"'{arch}' is not in archs (known: {', '.join(config['archs'])})")
            attack, eps_255 = recipe["attack"], datasets[dataset]["eps_255"]
            _require(attack["step_255"] <= eps_255, f"{key}.attack.step_255",
                     f"a PGD step of {attack['step_255']}/255 is larger than the budget datasets.{dataset}.eps_255 "
                     f"{eps_255}; DM-AT steps eps/4 (2/255 for 8/255)")
    evaluated = {
        "classification_dimension.eval_n": (config["classification_dimension"]["eval_n"],
                                            {c.dataset for c in table_cells(
                                                config, tables_of_kind(config, "classification_dimension"))}),
        "figures.eval_n": (config["figures"]["eval_n"],
                           {model_dataset(config, m) for m in figure_models(config)}),
    }
    for key, (n, used) in evaluated.items():
        for dataset in sorted(used & set(datasets)):
            _, test = split_sizes(config, dataset)
            if test is not None:
                _require(n <= test, key,
                         f"{n} is more than the {test} test images of dataset {dataset}; use at most {test}")
    figures = config["figures"]
    if "figure1_models" in figures:  # CKNNA (Figures 1, 9): k neighbours of a point among the other eval_n - 1
        _require(figures["cknna_topk"] < figures["eval_n"], "figures.cknna_topk",
                 f"{figures['cknna_topk']} neighbours need more than eval_n {figures['eval_n']} points; use fewer")


def _check_duplicate_rows(config: dict) -> None:
    for table_name, table in config["tables"].items():
        rows: dict[str, int] = {}
        for index, row in enumerate(table["rows"]):
            if "cell" not in row:
                continue
            _require(row["cell"] not in rows, f"tables.{table_name}.rows[{index}].cell",
                     f"{row['cell']} is rows[{rows.get(row['cell'])}] already; a table holds each cell once "
                     "(with one set of paper numbers): delete one of the two rows")
            rows[row["cell"]] = index


def dra_target_model(config: dict, dataset: str, target: str) -> str:
    """The diffusion_models entry whose features a DRA method aligns to: the dataset's diffusion
    model ('diffusion'), or the noisy classifier built on it ('noisy_classifier', Section 5.6)."""
    diffusion = config["datasets"][dataset]["diffusion"]
    if target == "diffusion":
        return diffusion
    found = [
        name
        for name, model in config["diffusion_models"].items()
        if model["source"]["kind"] == "noisy_classifier"
        and model["source"].get("diffusion") == diffusion
        and model["source"].get("dataset") == dataset
    ]
    if len(found) != 1:
        raise ConfigError(
            f"config key diffusion_models: a method with dra_target: noisy_classifier on dataset '{dataset}' needs "
            f"exactly one entry with source {{kind: noisy_classifier, dataset: {dataset}, diffusion: {diffusion}}}; "
            f"found {found or 'none'}. {HOW_TO_FIX}"
        )
    return found[0]


def _check_cell(config: dict, cell_id: str, key: str) -> Cell:
    """A cell named in a table or a figure: every part of its path must be configured."""
    datasets, archs, methods = config["datasets"], config["archs"], config["methods"]
    cell = parse_cell(cell_id)
    _require(cell.dataset in datasets, key, f"dataset '{cell.dataset}' is not in datasets")
    _require(cell.arch in archs, key, f"arch '{cell.arch}' is not in archs (known: {', '.join(archs)})")
    _require(cell.method in methods, key, f"method '{cell.method}' is not in methods (known: {', '.join(methods)})")
    _require(
        cell.arch in config["recipes"].get(cell.dataset, {}),
        f"recipes.{cell.dataset}.{cell.arch}",
        f"no recipe for cell {cell.id}",
    )
    if methods[cell.method]["dra"]:
        dra_target_model(config, cell.dataset, methods[cell.method].get("dra_target", "diffusion"))
        _require(config["dra"]["target"] == "stored" or uses_edm(config, cell.dataset), "dra.target",
                 f"online targets are computed from EDM U-Nets; cell {cell.id} aligns to LightningDiT, whose "
                 "features are stored (set dra.target: stored)")
    wants_synthetic = methods[cell.method]["synthetic"]
    _require(
        wants_synthetic == (cell.synthetic is not None),
        key,
        f"method '{cell.method}' {'needs' if wants_synthetic else 'uses no'} synthetic data, "
        f"but the budget is '{cell.budget}'",
    )
    if cell.synthetic is not None:
        _require(
            cell.synthetic in datasets[cell.dataset]["synthetic"],
            key,
            f"synthetic set '{cell.synthetic}' is not in datasets.{cell.dataset}.synthetic "
            f"(known: {', '.join(datasets[cell.dataset]['synthetic'])})",
        )
    schedule = config["recipes"][cell.dataset][cell.arch]["schedule"]
    # PyTorch's OneCycleLR divides by zero when the warm-up is exactly one of its steps
    _require(
        schedule["name"] != "dmat_onecycle" or abs(schedule["warmup_fraction"] * cell.epochs - 1) > 1e-9,
        f"recipes.{cell.dataset}.{cell.arch}.schedule.warmup_fraction",
        f"warmup_fraction x epochs is exactly 1 for cell {cell.id}, which OneCycleLR (stepped per epoch) "
        "cannot schedule; change the epochs or the warm-up fraction",
    )
    return cell


def _check_figure_model(config: dict, model: str, key: str) -> str:
    """A figure's model is a cell path or reference/<name> of reference_models; returns its dataset."""
    if model.startswith(REFERENCE_PREFIX):
        name = model.removeprefix(REFERENCE_PREFIX)
        known = config["reference_models"]["models"]
        _require(name in known, key, f"'{name}' is not in reference_models.models (known: {', '.join(known)})")
        return known[name]["dataset"]
    return _check_cell(config, model, key).dataset


def _check_figures(config: dict) -> None:
    figures = config["figures"]
    datasets = {}
    for key in ("standard", "adversarial"):
        if key in figures:
            datasets[key] = _check_figure_model(config, figures[key], f"figures.{key}")
    _require(
        len(set(datasets.values())) <= 1,
        "figures.standard",
        f"the ST and AT models of Figures 3, 4 and 9 must share a dataset (the diffusion model's); got {datasets}",
    )
    for key in ("figure1_models", "figure5_models", "figure6_models", "figure8_models"):
        for index, model in enumerate(figures.get(key, [])):
            _check_figure_model(config, model, f"figures.{key}[{index}]")
    if "figure8_models" in figures:
        _require(len(figures["figure8_models"]) != 1, "figures.figure8_models",
                 f"a sweep needs two strengths or more, not {figures['figure8_models']}; [] leaves Figure 8 out")
        baseline = _check_cell(config, figures.get("figure8_baseline", ""), "figures.figure8_baseline")
        for index, model in enumerate(figures["figure8_models"]):
            cell = parse_cell(model)
            _require(
                config["methods"][cell.method]["dra"],
                f"figures.figure8_models[{index}]",
                f"Figure 8 sweeps the DRA strength, but method '{cell.method}' has dra: false",
            )
            _require(
                cell.dataset == baseline.dataset,
                f"figures.figure8_models[{index}]",
                f"dataset '{cell.dataset}' differs from the baseline's '{baseline.dataset}'",
            )
    for index, pair in enumerate(figures.get("figure10_pairs", [])):
        key = f"figures.figure10_pairs[{index}]"
        aligned = _check_cell(config, pair["aligned"], f"{key}.aligned")
        baseline = _check_cell(config, pair["baseline"], f"{key}.baseline")
        _require(aligned.dataset == baseline.dataset, key, "the two cells of a difference map must share a dataset")
