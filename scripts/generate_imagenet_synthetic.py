"""Sample class-conditional synthetic ImageNet 256x256 images with LightningDiT + VA-VAE (the release's
Euler ODE sampler with classifier-free guidance) into an image store; resumable."""

import argparse

import torch

from dra.cli import add_device_arguments, add_lightningdit_arguments, add_sharded_job_arguments
from dra.diffusion.lightningdit_sampler import generate_from_checkpoints


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_lightningdit_arguments(parser)
    parser.add_argument("--out", required=True, help="output image store folder")
    parser.add_argument("--images-per-class", type=int, required=True, help="paper: 4000 (4M images)")
    parser.add_argument("--num-classes", type=int, required=True, help="classes 0..N-1 are sampled")
    # the sampler's settings come from config.yaml (diffusion_models.<model>.sampling, with their sources)
    parser.add_argument("--num-steps", type=int, required=True, help="Euler grid points")
    parser.add_argument("--timestep-shift", type=float, required=True, help="s of t' = s t / (1 + (s - 1) t)")
    parser.add_argument("--cfg-scale", type=float, required=True, help="guidance scale; <= 1 disables guidance")
    parser.add_argument("--cfg-interval-start", type=float, required=True, help="guidance only where t >= this")
    parser.add_argument("--cfg-channels", type=int, required=True, help="guidance on the first N latent channels")
    add_sharded_job_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="first noise seed; seeds repeat for every class")
    add_device_arguments(parser)
    parser.add_argument("--part", type=int, default=0, help="which part of the set this job samples (0-based)")
    parser.add_argument("--parts", type=int, default=1, help="how many independent jobs sample the set")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    generate_from_checkpoints(args.dit, args.vae, args.latent_stats, args.out, args.images_per_class,
                              args.num_classes, dit_config=args.dit_config, vae_config=args.vae_config,
                              device=args.device, num_steps=args.num_steps, timestep_shift=args.timestep_shift,
                              cfg_scale=args.cfg_scale, cfg_interval_start=args.cfg_interval_start,
                              cfg_channels=args.cfg_channels, batch_size=args.batch_size, seed=args.seed,
                              state_dir=args.state_dir, bf16=args.bf16, part=(args.part, args.parts))


if __name__ == "__main__":
    main()
