"""Sample class-conditional synthetic images with EDM's Heun sampler into an image store (resumable)."""

import argparse

import torch

from dra.cli import add_device_arguments, add_edm_arguments, add_sharded_job_arguments
from dra.diffusion.checkpoint import load_edm
from dra.diffusion.sampler import generate_synthetic


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_edm_arguments(parser)
    parser.add_argument("--out", required=True, help="output image store folder")
    parser.add_argument("--images-per-class", type=int, required=True)
    parser.add_argument("--num-classes", type=int, required=True)
    parser.add_argument("--num-steps", type=int, required=True,
                        help="Heun steps (config: the set's generate.num_steps)")
    add_sharded_job_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="first latent seed; seeds repeat for every class")
    add_device_arguments(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    generate_synthetic(load_edm(args.weights, args.network).to(args.device), args.out, args.images_per_class,
                       args.num_classes, num_steps=args.num_steps, batch_size=args.batch_size, seed=args.seed,
                       state_dir=args.state_dir, meta={"diffusion_model": args.weights})


if __name__ == "__main__":
    main()
