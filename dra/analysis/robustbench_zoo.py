"""RobustBench's CIFAR-10 l_inf model zoo for Figures 1 and 9 (Appendix A).

The models are built and loaded by RobustBench's own package (robustbench 1.1.1,
``robustbench.utils.load_model``): its model zoo (robustbench/model_zoo/cifar10.py) holds each
architecture and the Google Drive id of its checkpoint. ``load_model(name, model_dir)`` reads
``<model_dir>/cifar10/Linf/<name>.pt`` and downloads it with gdown only when that file is absent;
here the download is a rule of its own on the submit host (``download_zoo_checkpoint``, through the
project's verified downloader) and the loading refuses to run without the file, so a compute node
never reaches for the internet.

The features compared are each model's input to its last linear layer (the pooled penultimate
representation, as for our own classifiers), on clean test images. Every zoo model normalises
its input itself, so images go in as [0, 1] like RobustBench's own evaluation.

This module imports robustbench, so it runs in envs/robustbench.yaml only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from dra.io import atomic_file

DATASET = "cifar10"
THREAT_MODEL = "Linf"
ZOO_KEYS = ("clean_features", "labels", "logits", "clean_accuracy")


class ZooError(ValueError):
    """A zoo model that cannot be used as asked; the message says why and the fix."""


def checkpoint_path(model_dir: str | Path, name: str) -> Path:
    """Where load_model looks for a zoo model's single checkpoint (robustbench/utils.py)."""
    return Path(model_dir) / DATASET / THREAT_MODEL / f"{name}.pt"


def _zoo_entry(name: str) -> dict:
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    models = model_dicts[BenchmarkDataset(DATASET)][ThreatModel(THREAT_MODEL)]
    if name not in models:
        raise ZooError(f"{name} is not a CIFAR-10 Linf model of RobustBench's zoo; fix the name in "
                       "figures.robustbench.models (RobustBench spells it as in its leaderboard)")
    return models[name]


def gdrive_id(name: str) -> str:
    """The Google Drive id of a zoo model's single checkpoint, as the package records it."""
    entry = _zoo_entry(name)
    identifier = entry["gdrive_id"]
    if not isinstance(identifier, str):
        # a list: an ensemble of several checkpoints; None: a timm model fetched from the HF hub
        raise ZooError(f"{name} has no single checkpoint in RobustBench's zoo (gdrive_id {identifier!r}); "
                       "remove it from figures.robustbench.models (config.yaml says which are listed)")
    return identifier


def download_url(identifier: str) -> str:
    """Google Drive's direct download of a file id; confirm=t skips the page Drive shows for files too
    large for its virus scan (the checkpoints are 40 MB to 1.5 GB)."""
    return f"https://drive.usercontent.google.com/download?id={identifier}&export=download&confirm=t"


def download_checkpoint(name: str, model_dir: str | Path, sha256: str | None = None) -> Path:
    """Fetch a zoo model's checkpoint into RobustBench's layout with dra.download (verified size,
    resumable, sha256 when given; RobustBench publishes none)."""
    from dra.download import download

    return download(download_url(gdrive_id(name)), checkpoint_path(model_dir, name), sha256=sha256)


def load_zoo_model(name: str, model_dir: str | Path) -> nn.Module:
    """The zoo model in eval mode, built and filled by robustbench.utils.load_model from the local file."""
    path = checkpoint_path(model_dir, name)
    gdrive_id(name)  # refuses ensembles and hub models before load_model would fetch them
    if not path.is_file():
        raise ZooError(f"{path} does not exist: run `snakemake {path}` on a host with internet (rule "
                       "download_zoo_checkpoint) first; compute nodes do not download")
    from robustbench.utils import load_model

    return load_model(name, model_dir=str(model_dir), dataset=DATASET, threat_model=THREAT_MODEL)


def last_linear(model: nn.Module) -> nn.Linear:
    """The classifier head: the last nn.Linear the model registers."""
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ZooError(f"{type(model).__name__} has no nn.Linear head whose input could serve as its representation")
    return linears[-1]


def logits_and_features(model: nn.Module, images01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass: the logits and the input of the last linear layer, flattened per image."""
    captured = []
    handle = last_linear(model).register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0]))
    try:
        logits = model(images01)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise ZooError(f"the last linear layer of {type(model).__name__} ran {len(captured)} times in one "
                       "forward pass; its input is not one representation per image")
    return logits, captured[0].flatten(1)


@torch.no_grad()
def zoo_features(model: nn.Module, images01: torch.Tensor, labels: torch.Tensor, batch_size: int,
                 device: str | torch.device) -> dict[str, np.ndarray]:
    """Clean features, logits and clean accuracy (percent) of a zoo model on the given images."""
    model = model.to(device).eval()
    features, logits = [], []
    for start in range(0, images01.shape[0], batch_size):
        batch_logits, batch_features = logits_and_features(model, images01[start:start + batch_size].to(device))
        logits.append(batch_logits.float().cpu())
        features.append(batch_features.float().cpu())
    logits_all = torch.cat(logits)
    return {
        "clean_features": torch.cat(features).numpy(),
        "labels": labels.numpy(),
        "logits": logits_all.numpy(),
        "clean_accuracy": np.array(100.0 * float((logits_all.argmax(1) == labels).double().mean())),
    }


def measure_zoo_model(name: str, model_dir: str | Path, test_store: str | Path, n: int, batch_size: int,
                      device: str | torch.device, out_npz: str | Path) -> dict[str, np.ndarray]:
    """zoo_features of one zoo model on the first n test images, saved as out_npz."""
    from dra.evaluation.autoattack import load_test_images

    images01, labels = load_test_images(test_store, n)
    if images01.shape[1:] != (3, 32, 32):
        raise ZooError(f"{test_store} holds {tuple(images01.shape[1:])} images; RobustBench's CIFAR-10 "
                       "models take 3x32x32: point the rule at a CIFAR-10 test store")
    record = zoo_features(load_zoo_model(name, model_dir), images01, labels, batch_size, device)
    with atomic_file(out_npz) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **record)
    return record
