"""Realistic configuration mistakes, each with the key its message must name and the bad value it
must show. tests/test_workflow_config_checks.py checks each through dra.config.validate_config (what
the Snakefile runs before building the DAG); benchmarks/config_rejections.py dry-runs each through
Snakemake and times the rejection."""

from __future__ import annotations

DELETE = object()
R = ["recipes", "cifar10", "wrn-28-10"]
EDM = ["diffusion_models", "edm-cifar10-cond"]
HF_1M = {"repo": "P2333/DM-Improves-AT", "type": "dataset", "path": "cifar10/1m.npz", "revision": "main"}
T1_CELL = ["tables", "table1", "rows", 0, "cell"]

# (name, path into the paper config, new value, key the message names, bad value it shows)
CASES = [
    # ranges and relations the schema alone did not state (the list first)
    # the one budget of a dataset, for training and evaluation
    ("eps 300/255", ["datasets", "cifar10", "eps_255"], 300, "datasets.cifar10.eps_255", "300"),
    ("an attack AutoAttack's standard version does not run", ["evaluation", "attacks"], ["apgd-dlr"],
     "evaluation.attacks", "apgd-dlr"),
    ("a recipe with its own eps", R + ["attack", "eps_255"], 8, "recipes.cifar10.wrn-28-10.attack", "eps_255"),
    ("PGD step larger than eps", R + ["attack", "step_255"], 20, "recipes.cifar10.wrn-28-10.attack.step_255", "20"),
    ("no attack steps", R + ["attack", "steps"], 0, "recipes.cifar10.wrn-28-10.attack.steps", "0"),
    ("std with a 0", ["datasets", "cifar10", "std"], [0.2471, 0, 0.2616], "datasets.cifar10.std[1]", "0"),
    ("negative std", ["datasets", "cifar10", "std"], [-0.2, 0.2, 0.2], "datasets.cifar10.std[0]", "-0.2"),
    ("mean of two channels", ["datasets", "cifar10", "mean"], [0.5, 0.5], "datasets.cifar10.mean", "[0.5, 0.5]"),
    ("cell with batch 0", T1_CELL, "cifar10/wrn-28-10/dm-at/syn20m-bs0-ep2400", "tables.table1.rows[0].cell", "bs0"),
    ("cell with 0 epochs", T1_CELL, "cifar10/wrn-28-10/dm-at/syn20m-bs2048-ep0", "tables.table1.rows[0].cell", "ep0"),
    ("val_size the whole training set", ["datasets", "cifar10", "val_size"], 50000, "datasets.cifar10.val_size",
     "50000"),
    ("eval_n above the test set", ["datasets", "cifar10", "eval_n"], 20000, "datasets.cifar10.eval_n", "20000"),
    ("eval_n above CIFAR-100's test set", ["datasets", "cifar100", "eval_n"], 10001, "datasets.cifar100.eval_n",
     "10001"),
    ("probe train_n above the training set", EDM + ["validation", "train_n"], 60000,
     "diffusion_models.edm-cifar10-cond.validation.train_n", "60000"),
    ("probe test_n above the test set", EDM + ["validation", "test_n"], 20000,
     "diffusion_models.edm-cifar10-cond.validation.test_n", "20000"),
    ("classification dimension on more points than the test set", ["classification_dimension", "eval_n"], 20000,
     "classification_dimension.eval_n", "20000"),
    ("figures on more points than the test set", ["figures", "eval_n"], 20000, "figures.eval_n", "20000"),
    ("CKNNA neighbourhood as large as eval_n", ["figures", "cknna_topk"], 1000, "figures.cknna_topk", "1000"),
    ("crop padding the size of the image", ["datasets", "cifar10", "augment", "crop_padding"], 32,
     "datasets.cifar10.augment.crop_padding", "32"),
    ("a recipe for an unknown dataset", ["recipes", "cifar11"], {}, "recipes.cifar11", "cifar11"),
    ("zero dataset eps", ["datasets", "cifar10", "eps_255"], 0, "datasets.cifar10.eps_255", "0"),
    ("extra view threshold 0", ["datasets", "cifar10", "extra_view_over_synthetic"], 0,
     "datasets.cifar10.extra_view_over_synthetic", "0"),
    # the oneOf of an EDM / LightningDiT feature: the message is about the EDM branch the user meant
    ("sigma 0", EDM + ["feature", "sigma"], 0, "diffusion_models.edm-cifar10-cond.feature.sigma", "0"),
    ("negative sigma", EDM + ["feature", "sigma"], -0.1, "diffusion_models.edm-cifar10-cond.feature.sigma", "-0.1"),
    ("sigma as a string", EDM + ["feature", "sigma"], "0.1", "diffusion_models.edm-cifar10-cond.feature.sigma",
     "'0.1'"),
    ("misspelt sigma", EDM + ["feature"], {"layer": "model.dec.8x8_in1", "sigam": 0.1},
     "diffusion_models.edm-cifar10-cond.feature", "sigam"),
    ("LightningDiT t above 1", ["diffusion_models", "lightningdit-xl", "feature", "t"], 1.5,
     "diffusion_models.lightningdit-xl.feature.t", "1.5"),
    ("EDM layer holding a command", EDM + ["feature", "layer"], "model.dec.$(id)",
     "diffusion_models.edm-cifar10-cond.feature.layer", "model.dec.$(id)"),
    ("lambda 0", ["dra", "lambda"], 0, "dra.lambda", "0"),
    ("negative lambda", ["dra", "lambda"], -1.2, "dra.lambda", "-1.2"),
    ("a sweep method's lambda 0", ["methods", "dm-at+dra-lambda0.4", "lambda"], 0,
     "methods.dm-at+dra-lambda0.4.lambda", "0"),
    ("EMA tau above 1", R + ["ema", "tau"], 1.5, "recipes.cifar10.wrn-28-10.ema.tau", "1.5"),
    ("negative warm-up", R + ["schedule", "warmup_fraction"], -0.1,
     "recipes.cifar10.wrn-28-10.schedule.warmup_fraction", "-0.1"),
    ("learning rate 0", R + ["optimizer", "lr"], 0, "recipes.cifar10.wrn-28-10.optimizer.lr", "0"),
    ("label smoothing 2", R + ["objective", "label_smoothing"], 2,
     "recipes.cifar10.wrn-28-10.objective.label_smoothing",
     "2"),
    ("unsup fraction 1", R + ["unsup_fraction"], 1, "recipes.cifar10.wrn-28-10.unsup_fraction", "1"),
    ("a BatchNorm group of no image", R + ["batchnorm_group"], 0, "recipes.cifar10.wrn-28-10.batchnorm_group", "0"),
    ("negative seed", ["seed"], -1, "seed", "-1"),
    ("a lambda sweep of one model", ["figures", "figure8_models"],
     ["cifar100/wrn-28-10/dm-at+dra-lambda0.4/syn1m-bs512-ep400"],
     "figures.figure8_models", "lambda0.4"),
    # duplicates
    ("a table row twice", ["tables", "table2", "rows", "append-copy-of", 0], None, "tables.table2.rows[", "rows[0]"),
    ("two parts with the same file", ["datasets", "cifar10", "synthetic", "5m", "parts", 0, "hf"], HF_1M,
     "datasets.cifar10.synthetic.5m.parts[0]", "cifar10/1m.npz"),
    ("a part with url and hf", ["datasets", "cifar10", "synthetic", "1m", "parts", 0, "url"],
     "https://example.org/1m.npz", "datasets.cifar10.synthetic.1m.parts[0]", "exactly one of url"),
    ("pretrained weights with neither url nor hf", ["archs", "convnext-b", "pretrained"], {"sha256": None},
     "archs.convnext-b.pretrained", "exactly one of url"),
    # downloads and paths: nothing a shell could read
    ("URL with a space", ["datasets", "cifar10", "source", "url"], "https://www.cs.toronto.edu/~kriz/cifar 10.tar.gz",
     "datasets.cifar10.source.url", "cifar 10.tar.gz"),
    ("URL with a quote", ["datasets", "cifar10", "source", "url"], "https://example.org/a'b.tar.gz",
     "datasets.cifar10.source.url", "a'b.tar.gz"),
    ("URL with backticks", ["archs", "convnext-b", "pretrained"],
     {"url": "https://example.org/`id`.bin", "sha256": None},
     "archs.convnext-b.pretrained.url", "`id`"),
    ("FTP URL", ["datasets", "cifar10", "source", "url"], "ftp://example.org/c.tar.gz", "datasets.cifar10.source.url",
     "ftp://"),
    ("Hub path leaving the repository", ["datasets", "cifar10", "synthetic", "1m", "parts", 0, "hf", "path"],
     "../x.npz", "datasets.cifar10.synthetic.1m.parts[0].hf.path", "../x.npz"),
    ("Hub revision with a space", ["archs", "vit-b-16", "pretrained", "hf", "revision"], "v 1",
     "archs.vit-b-16.pretrained.hf.revision", "v 1"),
    ("Hub repo type 'space'", ["archs", "vit-b-16", "pretrained", "hf", "type"], "space",
     "archs.vit-b-16.pretrained.hf.type", "space"),
    ("Hub entry without revision", ["reference_models", "models", "cifar10_linf_wrn28-10", "args", "hf"],
     {"repo": "wzekai99/DM-Improves-AT", "type": "model", "path": "argtxt/x.txt"},
     "reference_models.models.cifar10_linf_wrn28-10.args.hf", "revision"),
    ("md5 of the wrong length", ["datasets", "cifar10", "source", "md5"], "c58f30108f718f92",
     "datasets.cifar10.source.md5", "c58f30108f718f92"),
    ("sha256 in upper case", ["datasets", "cifar100", "source", "sha256"],
     "85CD44D02BA6437773C5BBD22E183051D648DE2E7D6B014E1EF29B855BA677A7",
     "datasets.cifar100.source.sha256", "85CD44D0"),
    ("data_dir with a space", ["data_dir"], "my data", "data_dir", "my data"),
    ("data_dir with a command", ["data_dir"], "$(rm -rf x)", "data_dir", "$(rm -rf x)"),
    ("empty eval ids path", ["datasets", "imagenet", "source", "eval_ids"], "",
     "datasets.imagenet.source.eval_ids", "''"),
    ("ImageNet path with a newline", ["datasets", "imagenet", "source", "path"], "/data/ILSVRC\n2012",
     "datasets.imagenet.source.path", "ILSVRC"),
    ("scale with a space", ["scale"], "paper 2", "scale", "paper 2"),
    ("diffusion model name with a space", ["diffusion_models", "edm cifar"], {}, "diffusion_models", "edm cifar"),
    # the canary's random stand-ins (config/canary.yaml)
    ("random CIFAR archive without its sizes", ["datasets", "cifar10", "source", "random"], {"seed": 1},
     "datasets.cifar10.source.random.train_images", "50000"),
    ("random EDM with CIFAR-10's labels for CIFAR-100", ["diffusion_models", "edm-cifar100-cond", "source", "random"],
     {"seed": 1}, "diffusion_models.edm-cifar100-cond.source.random.network.label_dim", "num_classes 100"),
    ("random stand-in for a trained model", ["diffusion_models", "noisy-cifar10", "source", "random"], {"seed": 1},
     "diffusion_models.noisy-cifar10.source.random", "noisy_classifier"),
    ("random ImageNet folder with fewer images than classes", ["datasets", "imagenet", "source"],
     {"kind": "imagenet_folder", "path": None, "train_images": 500, "val_images": 1000, "eval_ids": "ids.txt",
      "random": {"seed": 1}}, "datasets.imagenet.source.train_images", "500"),
    ("random weights with a negative seed", ["archs", "convnext-b", "pretrained", "random"], {"seed": -1},
     "archs.convnext-b.pretrained.random.seed", "-1"),
    # a source kind's own keys (config/schema.yaml: the allOf of $defs/dataset's source and $defs/diffusion_model)
    ("an ImageNet folder without its evaluation ids", ["datasets", "imagenet", "source", "eval_ids"], DELETE,
     "datasets.imagenet.source.eval_ids", "ImageNet folder"),
    ("the digits with a random source", ["datasets", "cifar10", "source"],
     {"kind": "sklearn_digits", "random": {"seed": 1}}, "datasets.cifar10.source.random", "scikit-learn"),
    ("a LightningDiT feature for an EDM model", EDM + ["feature"], {"layer": 14, "t": 0.8, "zero_channels": []},
     "diffusion_models.edm-cifar10-cond.feature.layer", "an EDM model takes"),
    ("sampler settings for an EDM model", EDM + ["sampling"],
     {"timestep_shift": 0.3, "cfg_scale": 6.7, "cfg_interval_start": 0.125, "cfg_channels": 3},
     "diffusion_models.edm-cifar10-cond.sampling", "only a LightningDiT model"),
    ("a LightningDiT model without its tokenizer", ["diffusion_models", "lightningdit-xl", "source", "tokenizer"],
     DELETE, "diffusion_models.lightningdit-xl.source.tokenizer", "LightningDiT"),
    ("a noisy classifier without its training", ["diffusion_models", "noisy-cifar10", "source", "training"], DELETE,
     "diffusion_models.noisy-cifar10.source.training", "noisy_classifier"),
]

# YAML files as users write them: (name, text, what the message must contain)
YAML_CASES = [
    ("a second dra: block", "dra:\n  lambda: 1.2\nseed: 1\ndra:\n  lambda: 0.5\n", ["line 4", "'dra'", "line 1"]),
    ("a second seed:", "seed: 1\nscale: paper\nseed: 2\n", ["line 3", "'seed'"]),
    ("a repeated nested key", "dra:\n  lambda: 1.2\n  head_hidden: 512\n  lambda: 0.5\n", ["line 4", "'lambda'"]),
    ("a tab in the indentation", "dra:\n\tlambda: 1.2\n", ["line 2, column 1", "tabs"]),
    ("an unclosed bracket", "datasets:\n  cifar10:\n    std: [0.2, 0.2\nseed: 1\n", ["line 4", "column"]),
    ("a mis-indented key", "dra:\n  lambda: 1.2\n head_hidden: 512\n", ["line 3", "column"]),
    ("an empty file", "", ["empty", "line 1, column 1"]),
    ("a list at the top level", "- seed: 1\n- scale: paper\n", ["a list, not a mapping"]),
    ("a bare scalar", "seed\n", ["a str, not a mapping"]),
]


def apply(config: dict, path: list, value) -> None:
    """Make one mistake in a config: set the value at the path (DELETE removes it);
    [..., 'rows', 'append-copy-of', i] appends a copy of row i."""
    node = config
    if "append-copy-of" in path:
        rows = config
        for key in path[: path.index("append-copy-of")]:
            rows = rows[key]
        rows.append(dict(rows[path[-1]]))
        return
    for key in path[:-1]:
        node = node[key]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value


def overlay_of(path: list, value, config: dict) -> dict:
    """The same mistake as a --configfile overlay: the whole top-level section it changes."""
    import copy

    changed = copy.deepcopy(config)
    apply(changed, path, value)
    return {path[0]: changed[path[0]]}
