"""Extract pooled EDM features (the DRA targets) of an image store into a float16 feature store."""

import argparse

import torch

from dra.cli import add_device_arguments, add_edm_arguments, add_sharded_job_arguments
from dra.diffusion.checkpoint import load_edm
from dra.diffusion.features import extract_feature_store


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_edm_arguments(parser)
    parser.add_argument("--images", required=True, help="input image store folder")
    parser.add_argument("--out", required=True, help="output feature store folder")
    # the feature's layer and sigma come from config.yaml (diffusion_models.<model>.feature, Appendix D)
    parser.add_argument("--layer", required=True, help="module whose output is pooled, e.g. model.dec.8x8_in1")
    parser.add_argument("--sigma", type=float, required=True, help="noise level of view 0")
    parser.add_argument("--views", type=int, choices=(1, 2), default=1,
                        help="2 adds a view at a sigma drawn from EDM's training distribution")
    add_sharded_job_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="noise seed (noise depends on seed, index, view)")
    add_device_arguments(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    extract_feature_store(load_edm(args.weights, args.network).to(args.device), args.images, args.out, args.layer,
                          args.sigma, views=args.views, batch_size=args.batch_size, seed=args.seed,
                          diffusion_model=args.weights, state_dir=args.state_dir)


if __name__ == "__main__":
    main()
