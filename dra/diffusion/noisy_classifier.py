"""The noisy-input discriminative target of Section 5.6 and Appendix E.

Section 5.6: "applying noisy-input discriminative pre-training to the same UNet encoder architecture
used in the EDM diffusion model": the diffusion model's U-Net (same SongUNet configuration, read from its
network json) up to the DRA layer, randomly initialised, plus an average-pooled linear head,
trained with cross-entropy on noisy images. The noise is the DRA feature's: the fixed sigma of
the feature (Appendix E: "on the same noisy inputs"), so the target differs from the diffusion
target only in the training objective. The label is what the classifier predicts, so it is no
input: the network is built with ``label_dim = 0``.

The trained U-Net is written in the diffusion models' format (safetensors + json of the
EDMPrecond init kwargs), so ``load_edm`` and ``extract_feature_store`` read it unchanged and its
pooled layer output becomes DRA's target in place of the diffusion feature. The blocks after the
layer are never used by the classifier nor by feature extraction; they keep their random
initialisation in the file so that it loads strictly as an EDMPrecond.
"""

from __future__ import annotations

import copy
import csv
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from dra.data.augment import random_crop_flip_rotate
from dra.diffusion.checkpoint import edm_init_kwargs, save_edm
from dra.diffusion.edm import EDMPrecond
from dra.diffusion.features import noise_seed
from dra.io import atomic_file, package_versions, write_json
from dra.models.edm_encoder import EDMEncoder


def noisy_classifier_kwargs(base_network_json: str | Path) -> dict:
    """The EDMPrecond init kwargs of the diffusion model's network, unconditional."""
    path = Path(base_network_json)
    if not path.is_file():
        raise FileNotFoundError(f"network json {path} of the diffusion model is missing; build that model first")
    return dict(edm_init_kwargs(path), label_dim=0)


def _noisy(images01: torch.Tensor, sigma: float, noise: torch.Tensor) -> torch.Tensor:
    return images01 * 2 - 1 + sigma * noise


@torch.no_grad()
def noisy_accuracy(encoder: EDMEncoder, head: nn.Module, images_uint8: np.ndarray, labels: np.ndarray, sigma: float,
                   seed: int, batch_size: int = 500) -> float:
    """Accuracy on images noised as the feature extractor noises them (seeded per image index)."""
    encoder.eval()
    correct = 0
    for lo in range(0, len(images_uint8), batch_size):
        hi = min(len(images_uint8), lo + batch_size)
        images = torch.from_numpy(np.array(images_uint8[lo:hi])).permute(0, 3, 1, 2).float() / 255
        noise = torch.stack([torch.randn(images.shape[1:], generator=torch.Generator().manual_seed(
            noise_seed(seed, index, 0))) for index in range(lo, hi)])
        logits = head(encoder(_noisy(images, sigma, noise), sigma))
        correct += int((logits.argmax(1) == torch.from_numpy(np.array(labels[lo:hi], dtype=np.int64))).sum())
    return correct / len(images_uint8)


def train_noisy_classifier(train_store: str | Path, base_network_json: str | Path, layer: str, sigma: float,
                           steps: int, batch_size: int, lr: float, out_weights: str | Path, out_network: str | Path,
                           out_loss: str | Path, out_metrics: str | Path, augment: dict | None = None,
                           test_store: str | Path | None = None, seed: int = 0) -> dict:
    """Train the classifier (Adam, cosine decay to zero, the dataset's crop/flip augmentation) and
    write the U-Net (safetensors + json), the per-step loss (csv) and a summary json with the
    accuracy on the (noised) test store."""
    from dra.data.store import open_image_store

    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    store = open_image_store(train_store)
    kwargs = noisy_classifier_kwargs(base_network_json)
    if store.images.shape[1] != kwargs["img_resolution"]:
        raise ValueError(f"{train_store} holds {store.images.shape[1]}px images but {base_network_json} is built "
                         f"for img_resolution={kwargs['img_resolution']}")
    augment = augment or {"crop_padding": 0, "hflip": False, "rotate_degrees": 0}
    torch.manual_seed(seed)
    net = EDMPrecond(**kwargs)
    encoder = EDMEncoder(copy.deepcopy(net), layer).train()
    head = nn.Linear(encoder.feature_dim, store.num_classes)
    parameters = list(encoder.parameters()) + list(head.parameters())
    optimizer = torch.optim.Adam(parameters, lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    images = torch.from_numpy(np.array(store.images)).permute(0, 3, 1, 2).float() / 255
    targets = torch.from_numpy(np.array(store.labels, dtype=np.int64))
    generator = torch.Generator().manual_seed(seed)
    log = []
    started = time.perf_counter()
    for step in tqdm(range(steps), desc="noisy classifier", unit="step", file=sys.stderr):
        batch = torch.randint(len(images), (batch_size,), generator=generator)
        clean = random_crop_flip_rotate(images[batch], generator, **augment)
        noise = torch.randn(clean.shape, generator=generator)
        logits = head(encoder(_noisy(clean, sigma, noise), sigma))
        loss = F.cross_entropy(logits, targets[batch])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"noisy classifier loss became {loss.item()} at step {step}; lower the lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        accuracy = float((logits.argmax(1) == targets[batch]).float().mean())
        log.append(dict(step=step, loss=loss.item(), accuracy=accuracy, seconds=time.perf_counter() - started))

    # the trained blocks back into the full network, by name
    state = net.state_dict()
    trained = encoder.net.state_dict()
    state.update(trained)
    net.load_state_dict(state, strict=True)

    with atomic_file(out_loss) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["step", "loss", "accuracy", "seconds"])
            writer.writeheader()
            writer.writerows(log)
    window = max(1, min(20, len(log) // 4))
    summary = dict(layer=layer, sigma=float(sigma), steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                   trained_tensors=len(trained), parameters_trained=sum(p.numel() for p in parameters),
                   loss_first=float(np.mean([r["loss"] for r in log[:window]])),
                   loss_last=float(np.mean([r["loss"] for r in log[-window:]])),
                   train_seconds=time.perf_counter() - started, threads=torch.get_num_threads(),
                   train_store=str(train_store), base_network=str(base_network_json), versions=package_versions())
    if test_store is not None:
        test = open_image_store(test_store)
        summary["test_accuracy"] = noisy_accuracy(encoder, head, test.images, test.labels, sigma, seed)
        summary["test_n"] = len(test)
    save_edm(net, kwargs, out_weights, out_network,
             extra={"source": "dra.diffusion.noisy_classifier", "layer": layer, "sigma": float(sigma),
                    "base_network": str(base_network_json), "train_store": str(train_store), "steps": steps,
                    "seed": seed})
    write_json(out_metrics, summary)
    return summary
