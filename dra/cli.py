"""Command-line arguments that several scripts share, written once: where a script runs, and
the files of the diffusion networks it loads. Each `add_*` adds a group of arguments to a parser."""

from __future__ import annotations

import argparse
import json


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """--device (the GPU where there is one) and --threads (torch's CPU threads)."""
    import torch  # here, so that a script's --help does not wait for torch

    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")


def add_edm_arguments(parser: argparse.ArgumentParser) -> None:
    """An EDM network as converted checkpoints are stored: weights and init kwargs."""
    parser.add_argument("--weights", required=True, help="EDM .safetensors")
    parser.add_argument("--network", required=True, help="EDM .json (init kwargs)")


def add_lightningdit_arguments(parser: argparse.ArgumentParser) -> None:
    """LightningDiT with its VA-VAE tokenizer, as the release ships them."""
    parser.add_argument("--dit", required=True, help="LightningDiT checkpoint (lightningdit-xl-imagenet256-*.pt)")
    parser.add_argument("--vae", required=True, help="VA-VAE checkpoint (vavae-imagenet256-f16d32-dinov2.pt)")
    parser.add_argument("--latent-stats", required=True, help="latents_stats.pt of the VA-VAE")
    parser.add_argument("--dit-config", type=json.loads, help="JSON LightningDiT kwargs (default: XL/1 of the release)")
    parser.add_argument("--vae-config", type=json.loads, help="JSON VA-VAE kwargs (default: f16d32 of the release)")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (GPU)")


def add_sharded_job_arguments(parser: argparse.ArgumentParser) -> None:
    """A resumable job of shards (dra.diffusion.shards): its batch (the rule passes the GPU plan's,
    dra.gpu_plan) and where finished shards wait."""
    parser.add_argument("--batch-size", type=int, required=True, help="images per batch on the device")
    parser.add_argument("--state-dir", help="where finished shards wait (default: <out>.state)")


def add_robust_curve_arguments(parser: argparse.ArgumentParser) -> None:
    """The test points, the budgets of a robust-accuracy curve and the PGD of the adversarial features."""
    parser.add_argument("--n", type=int, required=True, help="use the first N test images")
    parser.add_argument("--eps-255", type=float, nargs="+", required=True,
                        help="L-inf budgets of the robust curve, x/255")
    parser.add_argument("--attack-eps-255", type=float, required=True, help="budget of the adversarial features, x/255")
    parser.add_argument("--steps", type=int, required=True, help="PGD steps (config: figures.pgd_steps)")
    parser.add_argument("--step-factor", type=float, required=True,
                        help="each PGD step is factor * eps / steps (config: figures.pgd_step_factor)")
