"""The EDM U-Net cut at the DRA layer, as a trainable network (Section 5.6, the two ablations).

``EDMEncoder`` keeps the blocks of an ``EDMPrecond`` up to and including one named block
(e.g. ``model.dec.8x8_in1``, the bottleneck of Appendix D) and returns that block's output
average-pooled over space: the same representation ``DiffusionFeatureExtractor`` reads with a
forward hook, but with the later blocks removed, so every parameter it holds is trained.
It runs without a class label: the all-zero label vector for a class-conditional net (its
unconditional mode), nothing for an unconditional one.

``EDMEncoderClassifier`` (classifier family ``edm_encoder``) is that encoder initialised from a
trained diffusion model plus a linear head, for end-to-end adversarial fine-tuning. Its input is
an image in [0, 1], mapped to EDM's data space [-1, 1] (no mean/std normalization: the encoder
was trained on [-1, 1]), noised at the feature's sigma. Noise: fresh Gaussian noise per image in
training mode (the diffusion model's own input distribution); in eval mode one fixed noise
image, the ``eval_noise`` buffer drawn once from ``noise_seed`` and saved with the weights,
added to every input. So an evaluated model is a deterministic function of each image, whatever
the batch it is in (AutoAttack re-batches the points it still attacks), and stays
differentiable in the image: no randomness for the attack to average over (the paper makes the
noise deterministic when it evaluates its linear probe, Section 4.1 and Appendix C).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from dra.diffusion.edm import EDMPrecond
from dra.registry import MODEL_FAMILIES


class EDMEncoderError(ValueError):
    """The layer or the checkpoint does not fit the encoder."""


def _truncate(net: EDMPrecond, layer: str) -> None:
    """Drop, in place, every U-Net block that runs after ``layer`` (enc blocks, then dec blocks)."""
    parts = layer.split(".")
    if len(parts) != 3 or parts[0] != "model" or parts[1] not in ("enc", "dec"):
        raise EDMEncoderError(f"layer must be model.enc.<block> or model.dec.<block>, got {layer!r}")
    containers = {"enc": net.model.enc, "dec": net.model.dec}
    if parts[2] not in containers[parts[1]]:
        known = [f"model.{side}.{name}" for side, blocks in containers.items() for name in blocks]
        raise EDMEncoderError(f"the U-Net has no block {layer!r}; blocks are {known}")
    if parts[1] == "enc":
        names = list(net.model.enc)
        for name in names[names.index(parts[2]) + 1:]:
            del net.model.enc[name]
        net.model.dec = nn.ModuleDict()
    else:
        names = list(net.model.dec)
        for name in names[names.index(parts[2]) + 1:]:
            del net.model.dec[name]
    # EDM's augmentation-label embedding acts only when augmentation labels are given, never here;
    # dropped so that every parameter left receives a gradient (DistributedDataParallel requires it)
    net.model.map_augment = None


class EDMEncoder(nn.Module):
    """``encoder(noisy, sigma) -> (B, D)``: pooled output of ``layer`` for images in EDM's data
    space with noise of std ``sigma`` (a float or (B,)) already added. ``net`` is truncated in place."""

    def __init__(self, net: EDMPrecond, layer: str):
        super().__init__()
        _truncate(net, layer)
        self.net = net
        self.layer = layer
        side, name = layer.split(".")[1:]
        self.feature_dim = int((net.model.enc if side == "enc" else net.model.dec)[name].out_channels)

    def forward(self, noisy: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=noisy.device).reshape(-1)
        sigma = sigma.expand(noisy.shape[0]) if sigma.numel() == 1 else sigma
        _, _, c_in, c_noise = self.net.coefficients(sigma.reshape(-1, 1, 1, 1))
        labels = (torch.zeros(noisy.shape[0], self.net.label_dim, device=noisy.device)
                  if self.net.label_dim else None)
        # with the blocks after the layer removed, the U-Net's last output is the layer's output
        hidden = self.net.model(c_in * noisy, c_noise.flatten(), labels)
        return hidden.float().mean(dim=(2, 3))


def load_encoder_weights(encoder: EDMEncoder, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy a full EDMPrecond state dict into the truncated encoder by name; every tensor the
    encoder holds must be in ``state`` with its shape (the dropped blocks are ignored)."""
    own = encoder.net.state_dict()
    missing = sorted(set(own) - set(state))
    wrong = sorted(k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape))
    if missing or wrong:
        raise EDMEncoderError(f"{source} does not fit the encoder up to {encoder.layer}: missing {missing[:5]}, "
                              f"shape mismatch {wrong[:5]}; is it the diffusion model of this network json?")
    encoder.net.load_state_dict({k: state[k] for k in own}, strict=True)


class EDMEncoderClassifier(nn.Module):
    """Images in [0, 1] -> logits; the diffusion encoder at a fixed sigma plus a linear head."""

    def __init__(self, net: EDMPrecond, layer: str, sigma: float, num_classes: int, noise_seed: int = 0):
        super().__init__()
        if not sigma > 0:
            raise EDMEncoderError(f"sigma must be positive, got {sigma}")
        self.encoder = EDMEncoder(net, layer)
        self.sigma = float(sigma)
        self.feature_dim = self.encoder.feature_dim
        self.head = nn.Linear(self.feature_dim, num_classes)
        generator = torch.Generator().manual_seed(int(noise_seed))
        shape = (net.img_channels, net.img_resolution, net.img_resolution)
        self.register_buffer("eval_noise", torch.randn(shape, generator=generator))

    def forward_features(self, images01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images01.ndim != 4 or tuple(images01.shape[1:]) != tuple(self.eval_noise.shape):
            raise ValueError(f"images must be (B, {', '.join(map(str, self.eval_noise.shape))}) in [0, 1], "
                             f"got {tuple(images01.shape)}")
        noise = torch.randn_like(images01) if self.training else self.eval_noise.expand_as(images01)
        features = self.encoder(images01 * 2 - 1 + self.sigma * noise, self.sigma)
        return self.head(features), features

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        return self.forward_features(images01)[0]


# the config names the diffusion model whose U-Net, up to its feature layer, is fine-tuned (Section 5.6);
# resolve_recipe expands it into network, weights, layer and sigma
@MODEL_FAMILIES.register(
    "edm_encoder", required=("diffusion",), keys={"diffusion": {"type": "string"}},
    recipe_keys={"network": {"type": "string", "minLength": 1, "description": "the diffusion model's network json"},
                 "layer": {"type": "string", "pattern": "^model\\.",
                           "description": "a U-Net block, e.g. model.dec.8x8_in1"},
                 "sigma": {"type": "number", "exclusiveMinimum": 0, "description": "a positive noise level"}})
def build_edm_encoder_classifier(arch: dict, num_classes: int, mean: Sequence[float] | None = None,
                                 std: Sequence[float] | None = None) -> EDMEncoderClassifier:
    """The family's builder: the U-Net normalizes its inputs itself (EDM scales [0, 1] to [-1, 1]),
    so the dataset's mean and std are not used."""
    return create_edm_encoder_classifier(arch, num_classes)


def create_edm_encoder_classifier(arch: dict, num_classes: int) -> EDMEncoderClassifier:
    """``{family: edm_encoder, network: <model.json> or its content, weights: <model.safetensors> | absent, layer,
    sigma, noise_seed}``: the architecture from the diffusion model's json; its weights by name
    when ``weights`` is given (training starts from them; evaluation overwrites them with model.pt)."""
    from pathlib import Path

    from safetensors.torch import load_file

    from dra.diffusion.checkpoint import edm_from_json

    for key in ("network", "layer", "sigma"):
        if key not in arch:
            raise EDMEncoderError(f"arch.{key}: missing for family 'edm_encoder' (resolve_recipe fills it in)")
    network = arch["network"]
    if not isinstance(network, dict):  # a dict is the network json's content itself (an export's config.json)
        network = Path(network)
        if not network.is_file():
            raise FileNotFoundError(f"arch.network: {network} is missing; build the diffusion model first "
                                    f"(convert_diffusion_model or train_diffusion)")
    model = EDMEncoderClassifier(edm_from_json(network, name="arch.network"), arch["layer"], float(arch["sigma"]),
                                 num_classes, noise_seed=int(arch.get("noise_seed", 0)))
    if arch.get("weights"):
        load_encoder_weights(model.encoder, load_file(str(arch["weights"])), str(arch["weights"]))
    return model


__all__: Sequence[str] = ["EDMEncoder", "EDMEncoderClassifier", "EDMEncoderError", "create_edm_encoder_classifier",
                          "load_encoder_weights"]
