"""The mini diffusion model: a small EDMPrecond trained with EDM's loss on the mini dataset.

Same classes, preconditioning, loss and sampler as the paper's EDM (NVlabs/edm training/, generate.py), at a
size that trains on two CPU cores in minutes (README.md 'Scales'). The saved files are the
same safetensors + json as a converted official checkpoint, so every downstream step loads
either with ``checkpoint.load_edm``. Label dropout makes the same net usable unconditionally
(all-zero label vector), which the linear probes need.
"""

from __future__ import annotations

import copy
import csv
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from tqdm import tqdm

from dra.diffusion.checkpoint import save_edm
from dra.diffusion.edm import EDMPrecond, one_hot_labels
from dra.diffusion.features import P_MEAN, P_STD
from dra.diffusion.sampler import edm_heun_sample, generation_plan, seeded_latents, to_uint8_hwc
from dra.io import atomic_file, package_versions, write_json

#: The mini U-Net (0.19M parameters): 8x8 input, resolutions 8 and 4 with 16 and 32 channels,
#: attention at 4x4, 10 classes.
MINI_EDM_KWARGS = dict(
    img_resolution=8, img_channels=3, label_dim=10, model_type="SongUNet", model_channels=16,
    channel_mult=[1, 2], channel_mult_emb=4, num_blocks=1, attn_resolutions=[4], dropout=0.0,
    label_dropout=0.1, augment_dim=0,
)


def edm_loss(net: EDMPrecond, images: torch.Tensor, class_labels: torch.Tensor | None,
             generator: torch.Generator) -> torch.Tensor:
    """EDM's weighted denoising loss, averaged (NVlabs/edm training/loss.py).

    ln(sigma) ~ N(-1.2, 1.2^2); weight (sigma^2 + sd^2) / (sigma * sd)^2; images in [-1, 1].
    """
    batch = images.shape[0]
    sigma = (torch.randn(batch, 1, 1, 1, generator=generator) * P_STD + P_MEAN).exp()
    sd = net.sigma_data
    weight = (sigma ** 2 + sd ** 2) / (sigma * sd) ** 2
    noise = torch.randn(images.shape, generator=generator) * sigma
    denoised = net(images + noise, sigma, class_labels)
    return (weight * (denoised - images) ** 2).mean()


def train_edm(images_uint8: np.ndarray, labels: np.ndarray, net_kwargs: dict, steps: int, batch_size: int = 128,
              lr: float = 2e-3, ema_decay: float = 0.995, seed: int = 0) -> tuple[EDMPrecond, list[dict]]:
    """Adam on EDM's loss with an EMA copy; returns (EMA net in eval mode, per-step log rows)."""
    if images_uint8.ndim != 4 or images_uint8.shape[-1] != 3 or images_uint8.dtype != np.uint8:
        raise ValueError(f"training images must be uint8 (N, H, W, 3), got {images_uint8.dtype} {images_uint8.shape}")
    if images_uint8.shape[1] != net_kwargs["img_resolution"]:
        raise ValueError(f"images are {images_uint8.shape[1]}px but the net is built for "
                         f"img_resolution={net_kwargs['img_resolution']}")
    torch.manual_seed(seed)
    net = EDMPrecond(**net_kwargs).train()
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    data = torch.from_numpy(np.ascontiguousarray(images_uint8)).permute(0, 3, 1, 2).float() / 127.5 - 1
    targets = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    generator = torch.Generator().manual_seed(seed)
    log = []
    start = time.perf_counter()
    for step in tqdm(range(steps), desc="diffusion", unit="step", file=sys.stderr):
        batch = torch.randint(len(data), (batch_size,), generator=generator)
        loss = edm_loss(net, data[batch], one_hot_labels(targets[batch], net.label_dim), generator)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"diffusion loss became {loss.item()} at step {step}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # Ramped decay so early EMA weights are not dominated by the random init.
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), net.parameters()):
                p_ema.lerp_(p, 1 - decay)
        log.append(dict(step=step, loss=loss.item(), seconds=time.perf_counter() - start))
    return ema, log


def fit_pixel_classifier(images_uint8: np.ndarray, labels: np.ndarray, seed: int = 0) -> LogisticRegression:
    """Logistic regression on raw pixels: the judge of whether a generated image shows its class."""
    flat = np.asarray(images_uint8, dtype=np.float32).reshape(len(images_uint8), -1) / 255
    return LogisticRegression(max_iter=2000, random_state=seed).fit(flat, np.asarray(labels))


def label_agreement(net: EDMPrecond, judge: LogisticRegression, n_per_class: int, num_classes: int,
                    num_steps: int = 18, seed: int = 0, batch_size: int = 500) -> dict:
    """Sample ``n_per_class`` images per class; the fraction the judge labels as their class."""
    labels, seeds = generation_plan(n_per_class, num_classes, seed)
    predictions = []
    for lo in range(0, len(labels), batch_size):
        hi = min(len(labels), lo + batch_size)
        latents = seeded_latents(seeds[lo:hi].tolist(), (net.img_channels, net.img_resolution, net.img_resolution))
        labels_one_hot = one_hot_labels(torch.from_numpy(labels[lo:hi]), net.label_dim)
        images = to_uint8_hwc(edm_heun_sample(net, latents, labels_one_hot,
                                              num_steps))
        predictions.append(judge.predict(images.reshape(len(images), -1).astype(np.float32) / 255))
    predictions = np.concatenate(predictions)
    per_class = [float((predictions[labels == c] == c).mean()) for c in range(num_classes)]
    return dict(label_agreement=float((predictions == labels).mean()), per_class=per_class,
                n=int(len(labels)), num_steps=num_steps, seed=seed)


def ema_decay_per_step(batch_size: int, half_life_images: float) -> float:
    """EDM's EMA parametrisation (half-life in images, edm training_loop.py) as a per-step decay."""
    return 0.5 ** (batch_size / half_life_images)


def train_diffusion_model(train_store: str | Path, out_weights: str | Path, out_network: str | Path,
                          out_loss: str | Path, net_kwargs: dict | None = None, steps: int = 1000,
                          batch_size: int = 128, lr: float = 2e-3, ema_half_life_images: float = 17_700,
                          seed: int = 0, out_quality: str | Path | None = None, eval_per_class: int = 100,
                          eval_steps: int = 18, test_store: str | Path | None = None) -> dict:
    """Train the mini EDM on an image store and write the weights (safetensors), the network
    json (load_edm reads both), the loss log (csv) and, if ``out_quality`` is given, the label
    agreement of generated images under a pixel classifier fitted on the training store.

    ``net_kwargs`` override MINI_EDM_KWARGS. The default half-life, 17.7k images, is a decay of
    0.995 per step at batch 128.
    """
    from dra.data.store import open_image_store

    store = open_image_store(train_store)
    net_kwargs = dict(MINI_EDM_KWARGS, **(net_kwargs or {}))
    if net_kwargs.get("label_dim", 0) not in (0, store.num_classes):
        raise ValueError(f"net label_dim {net_kwargs['label_dim']} != {store.num_classes} classes of {train_store}")
    images, labels = np.array(store.images), np.array(store.labels)  # small mini sets: load into memory
    ema_decay = ema_decay_per_step(batch_size, ema_half_life_images)
    started = time.perf_counter()
    ema, log = train_edm(images, labels, net_kwargs, steps, batch_size, lr, ema_decay, seed)
    train_seconds = time.perf_counter() - started

    with atomic_file(out_loss) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["step", "loss", "seconds"])
            writer.writeheader()
            writer.writerows(log)
    first, last = log[: min(20, len(log))], log[-min(20, len(log)):]
    summary = dict(parameters=sum(p.numel() for p in ema.parameters()), train_seconds=train_seconds, steps=steps,
                   batch_size=batch_size, lr=lr, ema_decay=ema_decay, ema_half_life_images=ema_half_life_images,
                   loss_first20=float(np.mean([r["loss"] for r in first])),
                   loss_last20=float(np.mean([r["loss"] for r in last])), threads=torch.get_num_threads(),
                   train_store=str(train_store), versions=package_versions())
    if out_quality is not None:
        judge = fit_pixel_classifier(images, labels, seed)
        summary.update(label_agreement(ema, judge, eval_per_class, store.num_classes, eval_steps, seed=10**6 + seed))
        if test_store is not None:
            test = open_image_store(test_store)
            flat = np.asarray(test.images, dtype=np.float32).reshape(len(test), -1) / 255
            summary["judge_accuracy_on_real_test"] = float((judge.predict(flat) == np.asarray(test.labels)).mean())
        write_json(out_quality, summary)
    save_edm(ema, net_kwargs, out_weights, out_network,
             extra={"source": "dra.diffusion.train", "train_store": str(train_store), "steps": steps, "seed": seed})
    return summary
