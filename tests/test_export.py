"""Exports (dra.export, rule export_cell): a tiny WRN trained here at CIFAR shape, evaluated by our
AutoAttack (APGD-CE), exported; the export loads bit for bit, its card parses and states the
evaluation's numbers, a wrong normalisation cannot be exported, and (slow) RobustBench 1.1.1's own
architecture and `benchmark` agree with ours on the RobustBench checkpoint."""

from __future__ import annotations

import json
import math
import subprocess
import textwrap
import time

import numpy as np
import pytest
import torch
import yaml

from dra.analysis.significance import accuracy_interval
from dra.io import write_yaml

N_TEST = 10
EPS_255 = 8
# not CIFAR-10's statistics (RobustBench's DMWideResNet default): a model loaded with those is wrong
MEAN, STD = [0.45, 0.40, 0.35], [0.22, 0.24, 0.26]
CIFAR10_MEAN, CIFAR10_STD = [0.4914, 0.4822, 0.4465], [0.2471, 0.2435, 0.2616]
CELL = {"dataset": "cifar10", "arch": "wrn-10-1", "method": "at", "budget": "nosyn-bs64-ep1"}
GPUS = {"train": 2, "autoattack": 1}


def coloured_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """32x32 images whose class shifts the colour: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    palette = np.random.default_rng(99).uniform(0.1, 0.9, (10, 3))
    images = np.clip(palette[labels][:, None, None, :] + rng.normal(0, 0.1, (n, 32, 32, 3)), 0, 1)
    return (images * 255).astype(np.uint8), labels.astype(np.int64)


def as_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


def write_benchmark(path, seconds: float) -> None:
    # Snakemake's benchmark format (the columns of snakemake.benchmark)
    path.write_text("s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
                    f"{seconds:.4f}\t0:00:00\t1\t1\t1\t1\t0\t0\t0\t{seconds:.2f}\n")


def make_cell(root, arch: dict, mean, std, image_size: int, train_steps: int) -> "Path":  # noqa: F821
    """A cell folder as the workflow leaves it: recipe.yaml, train/model.pt (trained here),
    autoattack.json/.npz (our AutoAttack, APGD-CE) and the two benchmark files (measured here)."""
    from dra.evaluation.autoattack import evaluate_autoattack, write_autoattack_outputs
    from dra.models import create_classifier

    cell = root / "results" / "export-test" / CELL["dataset"] / CELL["arch"] / CELL["method"] / CELL["budget"]
    (cell / "train").mkdir(parents=True)
    recipe = {"cell": CELL, "seed": 1,
              "data": {"num_classes": 10, "mean": mean, "std": std, "image_size": image_size, "synthetic": None},
              "arch": arch, "dra": None}
    write_yaml(cell / "recipe.yaml", recipe)
    torch.manual_seed(0)
    model = create_classifier(arch, 10, mean, std)
    images, labels = coloured_images(256, seed=1)
    x, y = as_tensor(images)[..., :image_size, :image_size], torch.from_numpy(labels)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    start = time.perf_counter()
    model.train()
    for step in range(train_steps):
        batch = torch.arange(step * 32, step * 32 + 32) % len(x)
        loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    # BatchNorm's running statistics over the training images (DM-AT's momentum 0.01 barely moves them
    # in a few steps), so that eval mode predicts what training learnt
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average
    with torch.no_grad():
        model(x)
    for norm in norms:
        norm.momentum = 0.01
    write_benchmark(cell / "train" / "train_cell.benchmark.tsv", time.perf_counter() - start)
    torch.save(model.state_dict(), cell / "train" / "model.pt")
    test_images, test_labels = coloured_images(N_TEST, seed=2)
    start = time.perf_counter()
    result = evaluate_autoattack(model.eval(), as_tensor(test_images)[..., :image_size, :image_size],
                                 torch.from_numpy(test_labels), EPS_255 / 255, 0, N_TEST, None, "cpu",
                                 attacks=["apgd-ce"])
    write_autoattack_outputs(result, EPS_255 / 255, 0, cell / "train" / "model.pt", cell / "autoattack.json",
                             cell / "autoattack.npz", attacks=["apgd-ce"])
    write_benchmark(cell / "autoattack.benchmark.tsv", time.perf_counter() - start)
    np.save(root / "test_images.npy", test_images)
    return cell


def export(cell, out=None, **overrides):
    from dra.export import export_cell

    sources = [{"name": "CIFAR-10 (Krizhevsky 2009)", "hub_dataset": "uoft-cs/cifar10", "license": "none stated",
                "link": "https://www.cs.toronto.edu/~kriz/cifar.html", "role": "training images"}]
    kwargs = dict(dataset_kind="cifar10", sources=sources,
                  paper=[{"table": "table2", "clean": 84.33, "autoattack": 55.25}])
    kwargs.update(overrides)
    return export_cell(cell / "recipe.yaml", cell / "train" / "model.pt", cell / "autoattack.json",
                       cell / "autoattack.npz", {"train": cell / "train" / "train_cell.benchmark.tsv",
                                                 "autoattack": cell / "autoattack.benchmark.tsv"},
                       GPUS, out or cell / "export", **kwargs)


@pytest.fixture(scope="module")
def wrn_cell(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("wrn")
    cell = make_cell(root, {"family": "wrn", "depth": 10, "width": 1, "activation": "silu"}, MEAN, STD, 32, 30)
    summary = export(cell)
    return root, cell, summary


def test_the_export_loads_bit_for_bit_as_the_evaluated_model(wrn_cell):
    from dra import load_model
    from dra.evaluation.autoattack import load_classifier

    root, cell, summary = wrn_cell
    x = as_tensor(np.load(root / "test_images.npy"))
    with torch.no_grad():
        evaluated = load_classifier(cell / "train" / "model.pt", cell / "recipe.yaml", "cpu")(x)
        from_cell = load_model(cell)(x)
        from_export = load_model(cell / "export")(x)
    assert torch.equal(evaluated, from_cell) and torch.equal(evaluated, from_export)
    assert not load_model(cell / "export").training
    # the trained model is no constant: the comparison means something
    flags = np.load(cell / "autoattack.npz")
    assert 0.5 < flags["clean"].mean() <= 1.0
    assert set(summary["files"]) == {"model.safetensors", "config.json", "README.md", "LICENSE.md",
                                     "robustbench/models/cifar10/Linf/Huang2026Expanding_wrn-10-1_at_nosyn-bs64-ep1.pt",
                                     "robustbench/model_info/cifar10/Linf/Huang2026Expanding_wrn-10-1_at_nosyn-bs64-ep1.json"}
    config = json.loads((cell / "export" / "config.json").read_text())
    assert config["mean"] == MEAN and config["std"] == STD and config["input_size"] == [3, 32, 32]
    assert config["threat_model"] == {"norm": "Linf", "eps": EPS_255 / 255, "eps_255": "8/255"}
    assert config["arch"] == {"family": "wrn", "depth": 10, "width": 1, "activation": "silu"}
    assert summary["robustbench_max_abs_logit_difference"] == 0.0


def test_the_model_card_parses_and_states_the_evaluation(wrn_cell):
    from huggingface_hub import ModelCard

    _, cell, _ = wrn_cell
    card = ModelCard.load(cell / "export" / "README.md")
    evaluation = json.loads((cell / "autoattack.json").read_text())
    assert card.data.license == "other" and card.data.license_link == "LICENSE.md"
    assert card.data.datasets == ["uoft-cs/cifar10"] and card.data.metrics == ["accuracy"]
    assert card.data.library_name == "pytorch"
    values = {result.metric_name: result.metric_value for result in card.data.eval_results}
    assert values == {"clean accuracy": evaluation["clean_accuracy"],
                      "AutoAttack accuracy (Linf, eps 8/255)": evaluation["robust_accuracy"]}
    flags = np.load(cell / "autoattack.npz")
    robust = accuracy_interval(flags["robust"])
    text = card.text
    row = f"| AutoAttack accuracy | {evaluation['robust_accuracy']:.2f} | {robust['low']:.2f}-{robust['high']:.2f} |"
    assert row in text
    assert "55.25 (table2)" in text and "84.33 (table2)" in text
    # GPU-hours: the benchmark files' seconds times the GPUs each job asked for
    seconds = {job: float((cell / path).read_text().splitlines()[1].split("\t")[0])
               for job, path in (("train", "train/train_cell.benchmark.tsv"),
                                 ("autoattack", "autoattack.benchmark.tsv"))}
    total = sum(seconds[job] * GPUS[job] for job in seconds) / 3600
    assert f"total: {total:.4f} GPU-hours" in text
    info = json.loads(next((cell / "export" / "robustbench" / "model_info").rglob("*.json")).read_text())
    # RobustBench's model_info keys (model_info/cifar10/Linf/Wang2023Better_WRN-28-10.json), in its order
    assert list(info) == ["link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
                          "architecture", "eps", "clean_acc", "reported", "autoattack_acc", "footnote", "unreliable"]
    assert info["clean_acc"] == f"{evaluation['clean_accuracy']:.2f}" and info["eps"] == "8/255"
    assert info["autoattack_acc"] == f"{evaluation['robust_accuracy']:.2f}"
    assert info["architecture"] == "WideResNet-10-1"


def test_an_export_with_another_normalisation_cannot_be_written(wrn_cell, monkeypatch, tmp_path):
    import dra.export

    _, cell, _ = wrn_cell
    real = dra.export.model_spec
    # RobustBench's DMWideResNet default: the silent mistake of the issue
    monkeypatch.setattr(dra.export, "model_spec", lambda *a, **k: {**real(*a, **k), "mean": CIFAR10_MEAN,
                                                                    "std": CIFAR10_STD})
    with pytest.raises(dra.export.ExportError, match="other logits than the evaluated model"):
        export(cell, out=tmp_path / "export")
    assert not (tmp_path / "export").exists() and not list(tmp_path.iterdir())


def test_a_config_that_does_not_fit_its_weights_stops_naming_what_differs(wrn_cell, tmp_path):
    import shutil

    from dra import load_model
    from dra.export import ExportError

    _, cell, _ = wrn_cell
    shutil.copytree(cell / "export", tmp_path / "export")
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    (tmp_path / "export" / "config.json").write_text(json.dumps({**config, "std": [0.5, 0.5, 0.5]}))
    with pytest.raises(ExportError, match=r"std: config.json \[0.5, 0.5, 0.5\], weights \[0.22, 0.24, 0.26\]"):
        load_model(tmp_path / "export")
    # a cell whose recipe names another width than its weights
    other = tmp_path / "cell"
    shutil.copytree(cell, other, ignore=shutil.ignore_patterns("export"))
    recipe = yaml.safe_load((other / "recipe.yaml").read_text())
    recipe["arch"]["width"] = 2
    write_yaml(other / "recipe.yaml", recipe)
    with pytest.raises(ExportError, match=r"WRN-10-2 \(silu\) with 10 classes: missing 1 "
                                          r"\(layer.0.block.0.shortcut.weight\); shape mismatches"):
        load_model(other)
    with pytest.raises(ExportError, match="neither an export folder"):
        load_model(tmp_path)


def test_accuracy_interval_known_answers():
    # Clopper-Pearson with no successes: upper = 1 - (alpha/2)^(1/n); with all: lower = (alpha/2)^(1/n)
    none = accuracy_interval(np.zeros(20, bool))
    assert none["low"] == 0.0 and none["high"] == pytest.approx(100 * (1 - 0.025 ** (1 / 20)), rel=1e-9)
    every = accuracy_interval(np.ones(20, bool))
    assert every["high"] == 100.0 and every["low"] == pytest.approx(100 * 0.025 ** (1 / 20), rel=1e-9)
    half = accuracy_interval(np.arange(100) % 2 == 0)
    assert half["accuracy"] == 50.0 and half["low"] < 50 < half["high"]
    assert half["high"] - 50 == pytest.approx(50 - half["low"], rel=1e-9)  # symmetric at one half


@pytest.mark.parametrize("family", ["timm", "edm_encoder"])
def test_every_family_exports_and_loads_bit_for_bit(family, tmp_path):
    from dra import load_model
    from dra.export import model_spec

    torch.set_num_threads(1)
    if family == "timm":  # ViT-B/2's construction at a tiny size (timm's ViT with 2x2 patches)
        arch = {"family": "timm", "name": "vit_base_patch16_224",
                "kwargs": {"img_size": 8, "patch_size": 2, "depth": 1, "embed_dim": 16, "num_heads": 2}}
        mean, std = MEAN, STD
    else:  # the mini EDM's encoder, its network json where the workflow writes it
        from dra.diffusion.checkpoint import save_edm
        from dra.diffusion.edm import EDMPrecond
        from dra.diffusion.train import MINI_EDM_KWARGS

        network = tmp_path / "results" / "export-test" / "data" / "diffusion" / "edm" / "model.json"
        save_edm(EDMPrecond(**MINI_EDM_KWARGS), MINI_EDM_KWARGS, network.with_suffix(".safetensors"), network)
        arch = {"family": "edm_encoder", "network": str(network.relative_to(tmp_path)), "layer": "model.dec.4x4_in1",
                "sigma": 0.06, "noise_seed": 1}
        mean, std = [0.5] * 3, [0.25] * 3
    import os

    here = os.getcwd()
    os.chdir(tmp_path)  # the workflow's root: recipe paths are relative to it
    try:
        cell = make_cell(tmp_path, arch, mean, std, 8, 3)
        export(cell, dataset_kind="sklearn_digits")
    finally:
        os.chdir(here)
    x = as_tensor(np.load(tmp_path / "test_images.npy"))[..., :8, :8]
    with torch.no_grad():
        assert torch.equal(load_model(cell)(x), load_model(cell / "export")(x))  # the cell found from elsewhere too
    config = json.loads((cell / "export" / "config.json").read_text())
    assert "robustbench" not in config  # RobustBench's DeepMind WideResNet holds CIFAR WRNs only
    if family == "edm_encoder":  # the network's configuration travels inside config.json
        assert config["arch"]["network"]["class_name"] == "EDMPrecond"
        assert model_spec(yaml.safe_load((cell / "recipe.yaml").read_text()), cell)["arch"] == config["arch"]


# ------------------------------------------------------------------------------------ RobustBench 1.1.1

PACKAGE_SIDE = textwrap.dedent("""
    # in the zoo venv: RobustBench's own DMWideResNet, its load_model and benchmark on our export
    import json, sys, numpy as np, torch
    from torch import nn
    import pyautoattack
    import robustbench.eval
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.architectures.dm_wide_resnet import CIFAR10_MEAN, CIFAR10_STD, DMWideResNet
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
    from robustbench.utils import load_model
    export, images, labels, eps = sys.argv[1], np.load(sys.argv[2]), np.load(sys.argv[3]), float(sys.argv[4])
    config = json.load(open(f"{export}/config.json"))
    entry = config["robustbench"]
    kwargs = dict(entry["kwargs"], activation_fn=getattr(nn, entry["kwargs"]["activation_fn"]),
                  mean=tuple(entry["kwargs"]["mean"]), std=tuple(entry["kwargs"]["std"]))
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(labels)
    # the entry a leaderboard proposal adds to the model zoo; the file is in model_dir, so nothing is fetched
    zoo = model_dicts[BenchmarkDataset(entry["dataset"])][ThreatModel(entry["threat_model"])]
    zoo[entry["model_name"]] = {"model": lambda: DMWideResNet(**kwargs), "gdrive_id": "not-downloaded"}
    model = load_model(entry["model_name"], model_dir=f"{export}/robustbench/models", dataset=entry["dataset"],
                       threat_model=entry["threat_model"])
    default = DMWideResNet(**dict(kwargs, mean=CIFAR10_MEAN, std=CIFAR10_STD)).eval()  # its default normalisation
    default.load_state_dict(torch.load(f"{export}/{entry['checkpoint']}"), strict=True)
    with torch.no_grad():
        logits, default_logits = model(x).numpy(), default(x).numpy()
    # benchmark()'s data: these images (CIFAR-10's download is out of reach offline); fra31's
    # AutoAttack API over pyautoattack's (log_path dropped, bs -> batch_size, the images returned)
    robustbench.eval.load_clean_dataset = lambda dataset, n, data_dir, prepr: (x[:n], y[:n])
    class FraAutoAttack:
        def __init__(self, model, norm, eps, version, device, log_path=None):
            self.attack = pyautoattack.AutoAttack(model, norm=norm, eps=eps, version=version, device=device)
        def run_standard_evaluation(self, x, y, bs=250, state_path=None):
            # fra31's returns the adversarial images; pyautoattack's (images, their labels)
            return self.attack.run_standard_evaluation(x, y, batch_size=bs, state_path=state_path)[0]
    robustbench.eval.AutoAttack = FraAutoAttack
    clean, robust = robustbench.eval.benchmark(model, n_examples=len(y), dataset=entry["dataset"],
                                               threat_model=entry["threat_model"], eps=eps, batch_size=len(y))
    np.savez(sys.argv[5], logits=logits, default_logits=default_logits)
    print(json.dumps({"clean": clean, "robust": robust, "training": model.training}))
""")


@pytest.mark.slow  # the zoo venv (about 30 s the first time in a session) and AutoAttack in RobustBench
def test_robustbench_s_architecture_loads_the_checkpoint_and_gives_our_logits(wrn_cell, zoo_python, tmp_path):
    from dra import load_model

    root, cell, _ = wrn_cell
    images = np.load(root / "test_images.npy")
    labels = coloured_images(N_TEST, seed=2)[1]
    np.save(tmp_path / "labels.npy", labels)
    # an eps at which APGD-CE breaks every point of the tiny model, so the later attacks have nothing to do
    eps = 64 / 255
    done = subprocess.run([str(zoo_python), "-c", PACKAGE_SIDE, str(cell / "export"), str(root / "test_images.npy"),
                           str(tmp_path / "labels.npy"), str(eps), str(tmp_path / "rb.npz")],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    record = np.load(tmp_path / "rb.npz")
    with torch.no_grad():
        ours = load_model(cell / "export")(as_tensor(images)).numpy()
    difference = np.abs(record["logits"] - ours).max()
    print(f"largest |logit difference| RobustBench DMWideResNet vs ours: {difference:.3g}")
    # the same computation in another order (avg_pool2d(8) for our mean over H and W, (C,1,1) buffers):
    # float32 rounding only, and the same decisions
    np.testing.assert_allclose(record["logits"], ours, rtol=1e-5, atol=1e-5)
    assert (record["logits"].argmax(1) == ours.argmax(1)).all()
    # with RobustBench's default CIFAR-10 normalisation the same file gives other logits
    assert np.abs(record["default_logits"] - ours).max() > 1e-3
    assert facts["training"] is False
    assert facts["clean"] == pytest.approx(float(np.mean(ours.argmax(1) == labels)), abs=1e-12)
    assert math.isfinite(facts["robust"]) and facts["robust"] <= facts["clean"]
