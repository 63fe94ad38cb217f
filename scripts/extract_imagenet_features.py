"""Extract LightningDiT representations (the ImageNet DRA targets, paper Appendix D) of an image store
or of one ImageNet index split into a float16 feature store (N, 1, 1152); resumable."""

import argparse

import torch

from dra.cli import add_device_arguments, add_lightningdit_arguments, add_sharded_job_arguments
from dra.diffusion.lightningdit_features import extract_from_checkpoints


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_lightningdit_arguments(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="input image store at the VA-VAE resolution (e.g. the synthetic set)")
    source.add_argument("--imagenet-index", help="ImageNet index folder written by prepare_imagenet")
    parser.add_argument("--split", default="train", choices=("train", "val", "eval"), help="split of --imagenet-index")
    parser.add_argument("--out", required=True, help="output feature store folder")
    # the feature's settings come from config.yaml (diffusion_models.<model>.feature, Appendix D)
    parser.add_argument("--layer", type=int, required=True, help="hidden state after this many blocks")
    parser.add_argument("--t", type=float, required=True, help="time, 0 = noise, 1 = clean")
    parser.add_argument("--zero-channels", type=int, nargs="*", required=True,
                        help="massive-activation channels zeroed before the AdaLN modulation (none: give no value)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (noise depends on seed and image index)")
    parser.add_argument("--null-class", action="store_true", help="condition on the null class, not the label")
    parser.add_argument("--posterior-mean", action="store_true",
                        help="encode with the VA-VAE posterior mean instead of a (seeded) sample as the release")
    add_sharded_job_arguments(parser)
    parser.add_argument("--workers", type=int, default=8, help="DataLoader workers decoding images")
    add_device_arguments(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    extract_from_checkpoints(args.dit, args.vae, args.latent_stats, args.out, images=args.images,
                             imagenet_index=args.imagenet_index, split=args.split, layer=args.layer, t=args.t,
                             zero_channels=args.zero_channels, seed=args.seed, use_labels=not args.null_class,
                             sample_posterior=not args.posterior_mean, batch_size=args.batch_size,
                             num_workers=args.workers, state_dir=args.state_dir, device=args.device, bf16=args.bf16,
                             dit_config=args.dit_config, vae_config=args.vae_config)


if __name__ == "__main__":
    main()
