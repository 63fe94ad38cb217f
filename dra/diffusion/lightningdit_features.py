"""LightningDiT representations of ImageNet images (paper Appendix D), the ImageNet DRA targets.

Per image: 256x256 RGB in [0, 1] -> [-1, 1] -> VA-VAE posterior -> latent z (a posterior
*sample*, as the release encodes its training latents, tokenizer/vavae.py encode_images; the
sample noise is seeded, so it is reproducible) -> normalized with latents_stats -> noised to
x_t = t z + (1 - t) n at t = 0.8 (LightningDiT time: t = 0 noise, t = 1 clean; transport/path.py)
-> LightningDiT with the image's class -> the hidden state after ``layer`` = 14 blocks ->
channels 1053 and 259 (massive activations) zeroed -> the AdaLN modulation of the block that
reads that state -> mean over the 256 tokens -> (B, 1152).

Where exactly the channels are zeroed. The paper zeroes them "before applying AdaLN
modulation", following Gan et al. 2025 (DiTF, ganchaofan0000/DiTF eval_spair.py), who zero the
massive-activation channels of the hidden state *before* the block's norm, then apply norm and
AdaLN modulation, so that the huge channels no longer set the normalization scale of all the
others. Here: a forward pre-hook on ``blocks[layer].norm1`` replaces the norm's input (the
residual stream after ``layer`` blocks) by a copy with those channels zeroed; RMSNorm keeps
them at zero, so ``blocks[layer].modulate_msa`` receives the normalized state with zeros in
exactly those channels, and its output (norm -> (1 + scale) x + shift) is what is pooled. The
residual stream itself is untouched. Zeroing after the norm instead would leave every other
channel divided by the huge RMS, i.e. a feature close to the image-independent shift.

The noise of image ``index`` comes from a generator seeded by (seed, index) (the splitmix seed
of dra.diffusion.features): first the posterior sample, then the diffusion noise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from dra.diffusion.features import noise_seed
from dra.diffusion.lightningdit import LightningDiT
from dra.diffusion.shards import run_sharded_job
from dra.diffusion.vavae import VAVAE, LatentStats

class _Captured(Exception):
    """Raised by the capture hook: the blocks after the feature layer are not needed."""


class LightningDiTFeatureExtractor:
    """``extractor(images01, labels, indices) -> (B, hidden_size)`` float32 pooled representations.

    ``use_labels=False`` conditions on the null class (the release's class-dropout token) instead
    of the image's class. ``sample_posterior=False`` uses the VA-VAE posterior mean.
    """

    def __init__(self, dit: LightningDiT, vae: VAVAE, stats: LatentStats, layer: int, t: float,
                 zero_channels: Sequence[int], seed: int = 0,
                 use_labels: bool = True, sample_posterior: bool = True, bf16: bool = False):
        if not 0 <= layer < dit.depth:
            raise ValueError(f"feature layer must be in [0, {dit.depth}) (the state after `layer` blocks, read by "
                             f"blocks[layer]), got {layer}")
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"feature time t must be in [0, 1] (0 = pure noise, 1 = clean), got {t}")
        bad = [c for c in zero_channels if not 0 <= c < dit.hidden_size]
        if bad:
            raise ValueError(f"zero_channels {bad} are outside [0, {dit.hidden_size})")
        if vae.embed_dim != dit.in_channels or vae.latent_size != dit.input_size:
            raise ValueError(f"VA-VAE latents ({vae.embed_dim}x{vae.latent_size}x{vae.latent_size}) do not fit the "
                             f"LightningDiT input ({dit.in_channels}x{dit.input_size}x{dit.input_size})")
        if not use_labels and dit.null_class is None:
            raise ValueError("use_labels=False needs a null class, but this LightningDiT has no class dropout row")
        self.dit, self.vae, self.stats = dit, vae, stats
        self.layer, self.t, self.zero_channels = layer, float(t), sorted(set(int(c) for c in zero_channels))
        self.seed, self.use_labels, self.sample_posterior, self.bf16 = seed, use_labels, sample_posterior, bf16
        self.block = dit.blocks[layer]

    @property
    def dim(self) -> int:
        return self.dit.hidden_size

    def noise(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(posterior noise, diffusion noise), each (B, C, h, w) unit Gaussian, seeded per image index."""
        shape = (self.dit.in_channels, self.dit.input_size, self.dit.input_size)
        posterior = torch.empty((len(indices), *shape))
        diffusion = torch.empty((len(indices), *shape))
        for row, index in enumerate(indices):
            generator = torch.Generator().manual_seed(noise_seed(self.seed, int(index), 0))
            posterior[row] = torch.randn(*shape, generator=generator)
            diffusion[row] = torch.randn(*shape, generator=generator)
        return posterior, diffusion

    def clean_latents(self, images01: torch.Tensor, posterior_noise: torch.Tensor) -> torch.Tensor:
        """Normalized VA-VAE latents of images in [0, 1]."""
        mean, logvar = self.vae.encode_moments(images01 * 2 - 1)
        z = mean + torch.exp(0.5 * logvar) * posterior_noise if self.sample_posterior else mean
        return self.stats.normalize(z.float())

    def _zero_hook(self, _module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        hidden = inputs[0].clone()
        hidden[..., self.zero_channels] = 0
        return (hidden, *inputs[1:])

    def __call__(self, images01: torch.Tensor, labels: torch.Tensor | None, indices: Sequence[int]) -> torch.Tensor:
        if images01.ndim != 4 or images01.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W) in [0, 1], got {tuple(images01.shape)}")
        if len(indices) != images01.shape[0]:
            raise ValueError(f"{len(indices)} indices for {images01.shape[0]} images")
        device = images01.device
        batch = images01.shape[0]
        if self.use_labels:
            if labels is None:
                raise ValueError("the LightningDiT features are class-conditional: pass the labels (use_labels=True)")
            labels = torch.as_tensor(labels, dtype=torch.long, device=device)
            if labels.min() < 0 or labels.max() >= self.dit.num_classes:
                raise ValueError(f"labels must be in [0, {self.dit.num_classes}), got [{labels.min()}, {labels.max()}]")
        else:
            labels = torch.full((batch,), self.dit.null_class, dtype=torch.long, device=device)
        posterior_noise, diffusion_noise = (n.to(device) for n in self.noise(indices))
        captured: list[torch.Tensor] = []

        def capture(_module: nn.Module, _inputs, output: torch.Tensor) -> None:
            captured.append(output)
            raise _Captured

        handles = [self.block.norm1.register_forward_pre_hook(self._zero_hook),
                   self.block.modulate_msa.register_forward_hook(capture)]
        try:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16):
                z = self.clean_latents(images01, posterior_noise)
                x_t = self.t * z + (1 - self.t) * diffusion_noise
                self.dit(x_t, torch.full((batch,), self.t, device=device), labels)
        except _Captured:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return captured[0].float().mean(dim=1)


@torch.no_grad()
def extract_lightningdit_feature_store(extractor: LightningDiTFeatureExtractor, dataset, out_path: str | Path,
                                       source: str, diffusion_model: str = "", batch_size: int = 64,
                                       num_workers: int = 8, shard_size: int | None = None,
                                       state_dir: str | Path | None = None, device: str = "cpu") -> Path:
    """Features of every image of ``dataset`` (``(uint8 CHW, label, index)`` items, e.g.
    dra.data.imagenet_loader.ImageNetIndexDataset with the adm256 transform, or ImageStoreDataset)
    into a float16 FeatureStore (N, 1, hidden_size), aligned with the dataset's rows.

    Resumable: finished shards wait in ``state_dir`` (default ``<out_path>.state/``).
    """
    from torch.utils.data import Subset

    from dra.data.imagenet_loader import imagenet_loader
    from dra.data.store import FeatureStoreWriter

    out_path = Path(out_path)
    n = len(dataset)
    settings = dict(layer=extractor.layer, t=extractor.t, zero_channels=extractor.zero_channels,
                    seed=extractor.seed, use_labels=extractor.use_labels, sample_posterior=extractor.sample_posterior,
                    bf16=extractor.bf16, source=source, diffusion_model=diffusion_model)

    def compute(start: int, stop: int, advance) -> dict[str, np.ndarray]:
        features = np.empty((stop - start, 1, extractor.dim), dtype=np.float16)
        loader = imagenet_loader(Subset(dataset, range(start, stop)), batch_size, num_workers=num_workers)
        for images, labels, indices in loader:
            images01 = images.to(device).float() / 255
            rows = extractor(images01, labels.to(device), indices.tolist())
            features[indices.numpy() - start, 0] = rows.cpu().numpy().astype(np.float16)
            advance(len(indices))
        return {"features": features}

    meta = dict(settings, sigma=None, extra_view=False, image_store=source,
                feature=f"mean over tokens of blocks[{extractor.layer}].modulate_msa output, channels "
                        f"{extractor.zero_channels} zeroed before blocks[{extractor.layer}].norm1")

    def write_output(shards) -> None:
        with FeatureStoreWriter(out_path, n, 1, extractor.dim, meta=meta) as writer:
            for start, arrays in shards:
                writer.write(start, arrays["features"])

    run_sharded_job(out_path, n, shard_size or batch_size * 64, settings, compute, write_output,
                    "lightningdit features", state_dir)
    return out_path


def extract_from_checkpoints(dit_checkpoint: str | Path, vae_checkpoint: str | Path, latent_stats: str | Path,
                             out_path: str | Path, layer: int, t: float, zero_channels: Sequence[int],
                             images: str | Path | None = None, imagenet_index: str | Path | None = None,
                             split: str = "train", seed: int = 0,
                             use_labels: bool = True, sample_posterior: bool = True, batch_size: int = 64,
                             num_workers: int = 8, state_dir: str | Path | None = None, device: str = "cpu",
                             bf16: bool = False, dit_config: dict | None = None,
                             vae_config: dict | None = None) -> Path:
    """Load the released LightningDiT + VA-VAE + latent stats and extract the features of either an image
    store (``images``, e.g. the synthetic set; its images must be at the VA-VAE resolution) or one split
    of the ImageNet index (``imagenet_index``; images center-cropped to it the ADM way)."""
    from dra.data.imagenet_loader import ImageNetIndexDataset, ImageStoreDataset, imagenet_transform
    from dra.diffusion.lightningdit import load_lightningdit
    from dra.diffusion.vavae import load_latent_stats, load_vavae

    if (images is None) == (imagenet_index is None):
        raise ValueError("give exactly one source: an image store (images) or an ImageNet index (imagenet_index)")
    dit = load_lightningdit(dit_checkpoint, dit_config).to(device)
    vae = load_vavae(vae_checkpoint, vae_config).to(device)
    stats = load_latent_stats(latent_stats, channels=vae.embed_dim)
    if images is not None:
        dataset, source = ImageStoreDataset(images), str(images)
        height, width = dataset.store.meta["height"], dataset.store.meta["width"]
        if (height, width) != (vae.resolution, vae.resolution):
            raise ValueError(f"image store {images} holds {height}x{width} images; the VA-VAE encodes "
                             f"{vae.resolution}x{vae.resolution}")
    else:
        dataset = ImageNetIndexDataset(imagenet_index, split, imagenet_transform("adm256", vae.resolution))
        source = f"{imagenet_index}:{split}"
    extractor = LightningDiTFeatureExtractor(dit, vae, stats, layer, t, zero_channels, seed, use_labels,
                                             sample_posterior, bf16)
    return extract_lightningdit_feature_store(extractor, dataset, out_path, source, str(dit_checkpoint), batch_size,
                                              num_workers, state_dir=state_dir, device=device)
