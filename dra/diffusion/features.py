"""Diffusion representations: pooled activations of a named EDM block on a noised image.

Following the paper (Appendix D) and DDAE (FutureXiang/ddae model/EDM.py): the image in [0, 1] goes to
EDM's data space [-1, 1], Gaussian noise of a fixed sigma is added, the preconditioned
denoiser runs, a forward hook takes the output of the named block (e.g. 'model.dec.8x8_in1',
the bottleneck) and it is average-pooled over space. The noise of image ``index`` in view
``view`` comes from its own generator seeded by (seed, index, view): a feature does not
depend on which batch the image was in. View 1 is the paper's extra timestep: a sigma drawn
per image from EDM's training distribution, ln(sigma) ~ N(-1.2, 1.2^2) (NVlabs/edm training/loss.py).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from dra.diffusion.edm import EDMPrecond, one_hot_labels
from dra.diffusion.shards import row_batches, run_sharded_job

#: EDM's training noise distribution (training/loss.py EDMLoss): ln(sigma) ~ N(P_MEAN, P_STD^2).
P_MEAN, P_STD = -1.2, 1.2


class _AllLayersCaptured(Exception):
    """Raised by the last hook: the rest of the U-Net is not needed for the features."""


def noise_seed(seed: int, index: int, view: int) -> int:
    """A 63-bit generator seed for (seed, index, view), well mixed (splitmix64 finaliser)."""
    z = (int(seed) * 0x9E3779B97F4A7C15 + int(index) * 0xBF58476D1CE4E5B9
         + int(view) * 0x94D049BB133111EB) & (2**64 - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return (z ^ (z >> 31)) >> 1


class DiffusionFeatureExtractor:
    """``extractor(images01, labels, indices, view) -> (B, D)`` float32 pooled block outputs.

    ``layer`` is a module name of the EDMPrecond (or a list of names: then a dict name ->
    features is returned). ``use_labels`` feeds the image's class to a class-conditional net;
    False runs it with the all-zero label vector (its unconditional mode), which is what a
    linear probe needs, since the label must not be an input there.
    Gradients flow to ``images01`` when the caller enables them (robustness evaluation).
    """

    def __init__(self, net: EDMPrecond, layer: str | Sequence[str], sigma: float, extra_view: bool = False,
                 seed: int = 0, use_labels: bool = True):
        self.net = net
        self.layers = [layer] if isinstance(layer, str) else list(layer)
        self.single = isinstance(layer, str)
        modules = dict(net.named_modules())
        unknown = [name for name in self.layers if name not in modules]
        if unknown:
            candidates = [n for n in modules if n.startswith("model.dec.") and n.count(".") == 2]
            raise KeyError(f"diffusion model has no module {unknown}; decoder blocks are {candidates}")
        if not sigma > 0:
            raise ValueError(f"feature sigma must be positive, got {sigma}")
        self.modules = {name: modules[name] for name in self.layers}
        self.sigma = float(sigma)
        self.extra_view = extra_view
        self.views = 2 if extra_view else 1
        self.seed = seed
        self.use_labels = use_labels

    @property
    def dims(self) -> dict[str, int]:
        return {name: int(module.out_channels) for name, module in self.modules.items()}

    def noise(self, indices: Sequence[int], view: int, shape: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigma per image (B,), unit Gaussian noise (B, C, H, W)) for these image indices."""
        if view not in range(self.views):
            raise ValueError(f"view must be in [0, {self.views}) (extra_view={self.extra_view}), got {view}")
        sigmas = torch.empty(len(indices), dtype=torch.float32)
        noise = torch.empty((len(indices), *shape), dtype=torch.float32)
        for row, index in enumerate(indices):
            generator = torch.Generator().manual_seed(noise_seed(self.seed, int(index), view))
            if view == 0:
                sigmas[row] = self.sigma
            else:
                sigmas[row] = math.exp(P_MEAN + P_STD * float(torch.randn(1, generator=generator)))
            noise[row] = torch.randn(*shape, generator=generator)
        return sigmas, noise

    def __call__(self, images01: torch.Tensor, labels: torch.Tensor | None, indices: Sequence[int],
                 view: int = 0) -> torch.Tensor | dict[str, torch.Tensor]:
        if images01.ndim != 4 or images01.shape[1] != self.net.img_channels:
            raise ValueError(
                f"images must be (B, {self.net.img_channels}, H, W) in [0, 1], got {tuple(images01.shape)}")
        if len(indices) != images01.shape[0]:
            raise ValueError(f"{len(indices)} indices for {images01.shape[0]} images")
        device = images01.device
        sigmas, unit_noise = self.noise(indices, view, images01.shape[1:])
        sigmas, unit_noise = sigmas.to(device), unit_noise.to(device)
        noisy = images01 * 2 - 1 + sigmas[:, None, None, None] * unit_noise
        class_labels = None
        if self.net.label_dim:
            if self.use_labels:
                if labels is None:
                    raise ValueError("a class-conditional diffusion model needs the image labels (use_labels=True)")
                class_labels = one_hot_labels(labels.cpu(), self.net.label_dim).to(device)
            else:
                class_labels = torch.zeros(images01.shape[0], self.net.label_dim, device=device)

        captured: dict[str, torch.Tensor] = {}

        def make_hook(name: str):
            def hook(_module: nn.Module, _inputs, output: torch.Tensor):
                captured[name] = output
                if len(captured) == len(self.layers):
                    raise _AllLayersCaptured
            return hook

        handles = [module.register_forward_hook(make_hook(name)) for name, module in self.modules.items()]
        try:
            self.net(noisy, sigmas, class_labels)
        except _AllLayersCaptured:
            pass
        finally:
            for handle in handles:
                handle.remove()
        pooled = {name: captured[name].float().mean(dim=(2, 3)) for name in self.layers}
        return pooled[self.layers[0]] if self.single else pooled


def images_to_tensor(images_uint8_nhwc: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.array(images_uint8_nhwc, dtype=np.uint8)).permute(0, 3, 1, 2).float() / 255


@torch.no_grad()
def extract_feature_store(net: EDMPrecond, image_store: str | Path, out_path: str | Path, layer: str, sigma: float,
                          views: int = 1, batch_size: int = 256, seed: int = 0, diffusion_model: str = "",
                          shard_size: int | None = None, state_dir: str | Path | None = None) -> Path:
    """Features of every image of ``image_store`` into a float16 FeatureStore (N, views, D).

    Resumable: finished shards wait in ``state_dir`` (default ``<out_path>.state/``) until the
    store is assembled.
    """
    from dra.data.store import FeatureStoreWriter, open_image_store

    if views not in (1, 2):
        raise ValueError(f"views must be 1 (fixed sigma) or 2 (plus EDM's training-sigma view), got {views}")
    store = open_image_store(image_store)
    extractor = DiffusionFeatureExtractor(net, layer, sigma, extra_view=views == 2, seed=seed)
    dim = extractor.dims[layer]
    out_path = Path(out_path)
    n = len(store)

    def compute(start: int, stop: int, advance) -> dict[str, np.ndarray]:
        parts = []
        for lo, hi in row_batches(start, stop, batch_size):
            images = images_to_tensor(store.images[lo:hi])
            labels = torch.from_numpy(np.array(store.labels[lo:hi], dtype=np.int64))
            per_view = [extractor(images, labels, range(lo, hi), view) for view in range(views)]
            parts.append(torch.stack(per_view, dim=1).numpy().astype(np.float16))
            advance(hi - lo)
        return {"features": np.concatenate(parts)}

    meta = dict(layer=layer, sigma=float(sigma), extra_view=views == 2, diffusion_model=diffusion_model,
                image_store=str(image_store), seed=seed, extra_view_sigma=f"lognormal({P_MEAN}, {P_STD})")

    def write_output(shards) -> None:
        with FeatureStoreWriter(out_path, n, views, dim, meta=meta) as writer:
            for start, arrays in shards:
                writer.write(start, arrays["features"])

    run_sharded_job(out_path, n, shard_size or batch_size * 16,
                    dict(layer=layer, sigma=sigma, views=views, seed=seed, image_store=str(image_store),
                         diffusion_model=diffusion_model),
                    compute, write_output, "features", state_dir)
    return out_path
