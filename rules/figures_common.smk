# Names and input functions of rules/figures.smk (kept apart: Snakemake's lint wants rules and
# functions in separate files).

FIGURES = config["figures"]
FIGURE_MODELS = cfg.figure_models(config)
FIGURE_DIR = f"{RESULTS}/figures"
# Figures 1 and 9: RobustBench's CIFAR-10 l_inf model zoo (figures.robustbench; none at mini scale)
ZOO = FIGURES.get("robustbench") or {}
ZOO_MODELS = [ZOO["standard"], *(model["name"] for model in ZOO["models"])] if ZOO else []
ZOO_DATASET = "cifar10"


def representation_of(model):
    return f"{RESULTS}/{model}/representation.npz"


def zoo_features(name):
    return f"{RESULTS}/robustbench/{name}/features.npz"


def zoo_figure_inputs(wildcards):
    if not ZOO:
        raise WorkflowError(
            "Figures 1 and 9 plot RobustBench's CIFAR-10 models: set figures.robustbench "
            "(config.yaml lists RobustBench's zoo); this configuration has none"
        )
    return {
        "zoo": [zoo_features(model["name"]) for model in ZOO["models"]],
        "standard": zoo_features(ZOO["standard"]),
        "diffusion": diffusion_representation_of(ZOO_DATASET),
    }


def figure_dataset():
    return cfg.model_dataset(config, FIGURES["standard"])


def diffusion_representation_of(dataset):
    return f"{RESULTS}/{dataset}/figures/{diffusion_of(dataset)}/representation.npz"


def eps_grid_255(dataset):
    # the eps grid of Figure 3b is the feature-validation grid of the dataset's diffusion model;
    # LightningDiT has no probe grid (ImageNet, Figure 6): clean and the dataset's budget
    validation = config["diffusion_models"][diffusion_of(dataset)].get("validation")
    if validation is None:
        return f"0 {config['datasets'][dataset]['eps_255']}"
    return " ".join(str(e) for e in validation["eps_255"])


def accuracy_files(models):
    return [f"{RESULTS}/{model}/autoattack.json" for model in models]


def measured_models(key):
    """What a figure of the models figures.<key> lists reads: each one's representation and AutoAttack result."""
    models = FIGURES.get(key, [])
    return {
        "representations": [representation_of(model) for model in models],
        "accuracy": accuracy_files(models),
    }


def figure_files(number):
    """A figure's files, as its script writes them: the PNG (in the report), the PDF and the CSV of its numbers."""
    return {
        "png": report(
            f"{FIGURE_DIR}/figure{number}.png", category="Figures", labels={"figure": number}
        ),
        "pdf": f"{FIGURE_DIR}/figure{number}.pdf",
        "csv": f"{FIGURE_DIR}/figure{number}.csv",
    }


def figure8_cells():
    # every replicate the tables run of each cell: Figure 8 draws their spread as error bars
    if "figure8_models" not in FIGURES:
        return []
    models = FIGURES["figure8_models"] + [FIGURES["figure8_baseline"]]
    return [replica.id for model in models for replica in cfg.cell_replicates(config, model)]


def replicate_group(model):
    # a cell and its replicates as one argument of scripts/figure_8.py: comma-separated paths
    return ",".join(replica.id for replica in cfg.cell_replicates(config, model))


def configured_figures():
    """The PNGs of every figure whose models the configuration lists."""
    wanted = {
        "figure3": "standard",
        "figure4": "standard",
        "figure5": "figure5_models",
        "figure6": "figure6_models",
        "figure8": "figure8_models",
        "figure10": "figure10_pairs",
    }
    drawn = [
        f"{FIGURE_DIR}/{name}.png"
        for name, key in wanted.items()
        if FIGURES.get(key) and all(can_run(model) for model in models_listed(key))
    ]
    if ZOO and all(can_run(model) for model in FIGURES.get("figure1_models", [])):
        drawn += [f"{FIGURE_DIR}/figure1.png", f"{FIGURE_DIR}/figure9.png"]
    return drawn


def models_listed(key):
    # figures: entries are a model, a list of models, or a list of {aligned, baseline} pairs
    value = FIGURES[key]
    items = value if isinstance(value, list) else [value]
    return [
        model for item in items for model in (item.values() if isinstance(item, dict) else [item])
    ]


def can_run(model):
    # a figure of an ImageNet model waits for datasets.imagenet.source.path (common.smk says so)
    return cfg.unset_source_key(config, cfg.model_dataset(config, model)) is None
