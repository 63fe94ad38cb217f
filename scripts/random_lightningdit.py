"""A randomly initialised LightningDiT-XL/1 and VA-VAE f16d32 in the release's file formats
(the canary's ImageNet diffusion model).

    python -m scripts.random_lightningdit --seed 1 --out-dit results/canary/data/diffusion/lightningdit-xl/dit.pt \
        --out-vae results/canary/data/diffusion/lightningdit-xl/vae.pt \
        --out-latent-stats results/canary/data/diffusion/lightningdit-xl/latents_stats.pt
"""

import argparse
import json

from dra.diffusion.checkpoint import save_random_lightningdit


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--dit-config", default=None, help="JSON of LightningDiT sizes (default: XL/1)")
    parser.add_argument("--vae-config", default=None, help="JSON of VA-VAE sizes (default: f16d32)")
    parser.add_argument("--out-dit", required=True)
    parser.add_argument("--out-vae", required=True)
    parser.add_argument("--out-latent-stats", required=True)
    args = parser.parse_args(argv)
    save_random_lightningdit(args.out_dit, args.out_vae, args.out_latent_stats, args.seed,
                             json.loads(args.dit_config) if args.dit_config else None,
                             json.loads(args.vae_config) if args.vae_config else None)


if __name__ == "__main__":
    main()
