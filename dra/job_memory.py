"""What one image costs in memory in each GPU job that is not a training cell: the input of the job
plans of dra.gpu_plan (table hardware.job_memory_per_image), measured on the CPU.

Under no_grad nothing is saved for a backward, so the saved-tensor count of the training table
(dra.training.memory) does not apply: what a job holds at its peak is the tensors alive at once.
`PeakLiveBytes` (a TorchDispatchMode) sees every tensor each operator returns, forward and backward,
adds its storage's bytes when it first appears and subtracts them when the storage is freed (a weak
finalizer), and keeps the peak. Tensors that exist before it starts (weights, the input batch) are
not counted. Measured at two batch sizes, the difference of the peaks over the difference of the
batches is the cost per image, free of every per-batch constant, as in the training table.

Modes (dra.gpu_plan): attack (eval mode, frozen weights, cross-entropy gradient with respect to
the input: one step of AutoAttack's or PGD's), infer (no_grad forward), sample (one LightningDiT
Euler step with its guidance pair, then the VA-VAE decoding of the latents) and train (a
train-mode step with parameter gradients). A job of two stages (LightningDiT's) takes the larger
per-image cost of its stages, each measured alone.
"""

from __future__ import annotations

import copy
import weakref

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

# Figures 1 and 9's RobustBench zoo (config figures.robustbench) is planned by its largest network:
# Rebuffi2021Fixing_106_16_cutmix_ddpm, a WideResNet-106-16 with SiLU (robustbench 1.1.1
# model_zoo/cifar10.py), the deepest of the zoo's widest networks (width 16: WRN-70-16, WRN-94-16,
# WRN-106-16), built here as DM-AT's WideResNet of the same depth and width (the same tensor shapes)
ZOO_PROXY = {"family": "wrn", "depth": 106, "width": 16, "activation": "silu"}


class PeakLiveBytes(TorchDispatchMode):
    """The peak bytes of tensor storages alive at once among those created while the mode is on."""

    def __init__(self):
        super().__init__()
        self.live: dict[tuple[int, int], int] = {}
        self.current = 0
        self.peak = 0

    def _free(self, key: tuple[int, int]) -> None:
        self.current -= self.live.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                # one Python object per storage while it lives (PyTorch preserves it), so its id
                # tells a new storage at a reused address from the old one
                key = (storage.data_ptr(), id(storage))
                if storage.nbytes() and key not in self.live:
                    self.live[key] = storage.nbytes()
                    self.current += storage.nbytes()
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(storage, self._free, key)
        return out


def peak_live_bytes(run) -> int:
    with PeakLiveBytes() as counter:
        out = run()
    del out
    return counter.peak


def bytes_per_image(run_at, batches: tuple[int, int] = (1, 2)) -> float:
    """(peak at batches[1] - peak at batches[0]) / (batches[1] - batches[0]); run_at(b) returns the
    function that runs one step at batch b (its inputs made before the count starts)."""
    first, second = (peak_live_bytes(run_at(batch)) for batch in batches)
    return (second - first) / (batches[1] - batches[0])


def _frozen(model: nn.Module) -> nn.Module:
    return model.eval().requires_grad_(False)


def classifier_step(model: nn.Module, mode: str, num_classes: int, image_size: int):
    """run_at for a classifier on images in [0, 1]: attack or infer."""
    model = _frozen(model)

    def run_at(batch: int):
        generator = torch.Generator().manual_seed(batch)
        images = torch.rand(batch, 3, image_size, image_size, generator=generator)
        labels = torch.randint(num_classes, (batch,), generator=generator)
        if mode == "infer":
            def run():
                with torch.no_grad():
                    return model(images)
            return run

        def run():
            x = images.clone().requires_grad_(True)
            loss = F.cross_entropy(model(x), labels)
            return torch.autograd.grad(loss, x)[0]
        return run
    return run_at


def edm_step(net: nn.Module, mode: str, image_size: int):
    """run_at for the whole EDM denoiser (an upper bound for every layer the rules read: the
    features stop at a layer of it, sampling calls all of it): infer, attack or train."""
    from dra.diffusion.edm import one_hot_labels

    net = net.train() if mode == "train" else _frozen(net)

    def run_at(batch: int):
        generator = torch.Generator().manual_seed(batch)
        images = torch.rand(batch, 3, image_size, image_size, generator=generator) * 2 - 1
        sigma = torch.full((batch,), 0.1)
        labels = one_hot_labels(torch.randint(max(net.label_dim, 1), (batch,), generator=generator), net.label_dim)

        def run():
            if mode == "infer":
                with torch.no_grad():
                    return net(images, sigma, labels)
            if mode == "attack":
                x = images.clone().requires_grad_(True)
                out = net(x, sigma, labels)
                return torch.autograd.grad(out.square().mean(), x)[0]
            net(images, sigma, labels).square().mean().backward()  # train: parameter gradients
            return None
        return run
    return run_at


def lightningdit_stages(dit: nn.Module, vae: nn.Module, mode: str, sampling: dict) -> list:
    """run_at functions of the stages of a LightningDiT job, measured one by one: a stage whose
    per-image cost is small can still have the larger peak at batches 1 and 2 (a constant of its
    own), which would hide the other stage's cost per image. infer: the VA-VAE encoding and one
    transformer pass (the feature stops halfway through it); sample: one Euler step with its
    guidance pair, and the decoding of the latents."""
    from dra.diffusion.lightningdit_sampler import decode_latents, euler_sample
    from dra.diffusion.vavae import LatentStats

    dit, vae = _frozen(dit), _frozen(vae)
    stats = LatentStats(torch.zeros(1, vae.embed_dim, 1, 1), torch.ones(1, vae.embed_dim, 1, 1))

    def encode_at(batch: int):
        images = torch.rand(batch, 3, vae.resolution, vae.resolution, generator=torch.Generator().manual_seed(batch))

        def run():
            with torch.no_grad():
                return vae.encode_moments(images * 2 - 1)
        return run

    def transformer_at(batch: int):
        generator = torch.Generator().manual_seed(batch)
        labels = torch.randint(dit.num_classes, (batch,), generator=generator)
        noise = torch.randn(batch, dit.in_channels, dit.input_size, dit.input_size, generator=generator)
        if mode == "infer":
            def run():
                with torch.no_grad():
                    return dit(noise, torch.full((batch,), 0.8), labels)
            return run

        def run():  # two steps: the grid needs both ends; one is alive at a time
            return euler_sample(dit, noise, labels, 2, sampling["timestep_shift"], sampling["cfg_scale"], 0.0,
                                sampling["cfg_channels"])
        return torch.no_grad()(run)

    def decode_at(batch: int):
        latents = torch.randn(batch, vae.embed_dim, vae.latent_size, vae.latent_size)
        return lambda: decode_latents(vae, stats, latents)

    return [encode_at, transformer_at] if mode == "infer" else [transformer_at, decode_at]


def edm_network(config: dict, model: str) -> dict:
    """The EDMPrecond keyword arguments of a diffusion model of the configuration."""
    from dra.network_presets import EDM_CIFAR10_DDPMPP

    source = config["diffusion_models"][model]["source"]
    if source["kind"] == "train":
        return dict(source["network"])
    if source["kind"] == "noisy_classifier":
        return {**edm_network(config, source["diffusion"]), "label_dim": 0}
    num_classes = next(d["num_classes"] for d in config["datasets"].values() if d["diffusion"] == model)
    return {**EDM_CIFAR10_DDPMPP, "label_dim": num_classes}


def _classifier(config: dict, arch_name: str, dataset: dict) -> nn.Module:
    from dra.config import diffusion_feature, resolve_arch
    from dra.diffusion.edm import EDMPrecond
    from dra.models import create_classifier
    from dra.models.edm_encoder import EDMEncoderClassifier

    arch = copy.deepcopy(config["archs"][arch_name])
    if arch["family"] == "edm_encoder":  # built from the diffusion model's network, randomly initialised
        feature = diffusion_feature(config, arch["diffusion"])
        return EDMEncoderClassifier(EDMPrecond(**edm_network(config, arch["diffusion"])), feature["layer"],
                                    feature["sigma"], dataset["num_classes"])
    arch = resolve_arch(config, arch_name, 0)
    arch.pop("weights", None)
    arch["pretrained"] = False  # the shapes, not the weights
    return create_classifier(arch, dataset["num_classes"], dataset["mean"], dataset["std"])


def measure_job(config: dict, job) -> tuple[float, int]:
    """(bytes per image, parameters) of a dra.gpu_plan.Job's network in its mode."""
    from dra.diffusion.edm import EDMPrecond
    from dra.gpu_plan import ZOO_NETWORK
    from dra.models import create_classifier

    torch.manual_seed(0)
    if job.network == ZOO_NETWORK:
        model = create_classifier(ZOO_PROXY, 10, [0.5] * 3, [0.5] * 3)
        return bytes_per_image(classifier_step(model, job.mode, 10, job.image_size)), _parameters(model)
    if job.network in config["archs"]:
        dataset = next(d for d in config["datasets"].values() if d["image_size"] == job.image_size)
        model = _classifier(config, job.network, dataset)
        return (bytes_per_image(classifier_step(model, job.mode, dataset["num_classes"], job.image_size)),
                _parameters(model))
    source = config["diffusion_models"][job.network]["source"]
    if source["kind"] == "lightningdit":
        from dra.diffusion.lightningdit import LIGHTNINGDIT_XL_1, LightningDiT
        from dra.diffusion.vavae import VAVAE, VAVAE_F16D32

        dit = LightningDiT(**source.get("dit_config", LIGHTNINGDIT_XL_1))
        vae = VAVAE(**source.get("vae_config", VAVAE_F16D32))
        stages = lightningdit_stages(dit, vae, job.mode, config["diffusion_models"][job.network]["sampling"])
        return max(bytes_per_image(run_at) for run_at in stages), _parameters(dit) + _parameters(vae)
    net = EDMPrecond(**edm_network(config, job.network))
    return bytes_per_image(edm_step(net, job.mode, job.image_size)), _parameters(net)


def _parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
