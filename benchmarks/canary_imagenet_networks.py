"""CPU cost of the canary's ImageNet diffusion path: the release's sizes against tests/test_canary.py's.

The canary test runs the ImageNet cell through the same rules on a LightningDiT and a VA-VAE of the
release's classes at smaller widths (its overlay's dit_config / vae_config: same 256x256 images,
16x16x32 latents and 256 tokens); config/canary.yaml keeps LightningDiT-XL/1 and VA-VAE f16d32.
Prints parameters, the bytes rule random_lightningdit writes, and per-image seconds of the three
passes the rules make (one sampling step with guidance, a decode, the features: encode + DiT up to
the feature layer), for both, with the ratio.

    python benchmarks/canary_imagenet_networks.py --threads 1
"""

import argparse
import sys
import time
from pathlib import Path

import torch

from dra.diffusion.lightningdit import LIGHTNINGDIT_XL_1, LightningDiT
from dra.diffusion.vavae import VAVAE, VAVAE_F16D32

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the test file imports scripts/ and tests/ helpers
from test_canary import OVERLAY  # noqa: E402  (the test's overlay is the other side of the comparison)


def seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure(dit_config: dict, vae_config: dict, layer: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    dit, vae = LightningDiT(**dit_config).eval(), VAVAE(**vae_config).eval()
    image = torch.rand(1, 3, vae.resolution, vae.resolution) * 2 - 1
    latent = torch.randn(1, vae.embed_dim, vae.latent_size, vae.latent_size)
    label = torch.zeros(1, dtype=torch.long)

    def features():
        vae.encode_moments(image)
        dit_to_layer(dit, latent, label, layer)

    with torch.no_grad():
        return {
            "parameters (M)": (sum(p.numel() for p in dit.parameters())
                               + sum(p.numel() for p in vae.parameters())) / 1e6,
            "written (MB)": (sum(t.numel() * t.element_size() for t in dit.state_dict().values())
                             + sum(t.numel() * t.element_size() for t in vae.state_dict().values())) / 1e6,
            # classifier-free guidance: the conditional and unconditional halves in one batch of 2
            "sampling step (s)": seconds(lambda: dit(latent.repeat(2, 1, 1, 1), torch.full((2,), 0.5),
                                                     torch.tensor([0, 1000])), repeats),
            "decode (s)": seconds(lambda: vae.decode(latent), repeats),
            "features (s)": seconds(features, repeats),
        }


def dit_to_layer(dit: LightningDiT, latent: torch.Tensor, label: torch.Tensor, layer: int) -> None:
    # a forward whose blocks after `layer` are skipped, as the feature extractor's hook does
    blocks = dit.blocks
    dit.blocks = blocks[:layer + 1]
    try:
        dit(latent, torch.full((1,), 0.8), label)
    finally:
        dit.blocks = blocks


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    test = OVERLAY["diffusion_models"]["lightningdit-xl"]
    release = measure(LIGHTNINGDIT_XL_1, VAVAE_F16D32, 14, args.repeats)  # config.yaml: feature layer 14
    small = measure({**LIGHTNINGDIT_XL_1, **test["source"]["dit_config"]},
                    {**VAVAE_F16D32, **test["source"]["vae_config"]}, test["feature"]["layer"], args.repeats)
    print(f"CPU, {args.threads} thread(s), one 256x256 image; best of {args.repeats}")
    print(f"{'':<20}{'XL/1 + f16d32':>15}{'test overlay':>15}{'ratio':>9}")
    for key in release:
        print(f"{key:<20}{release[key]:>15.3f}{small[key]:>15.3f}{release[key] / small[key]:>9.1f}")


if __name__ == "__main__":
    main()
