"""Train the mini EDM (DDPM++ U-Net, EDM loss and preconditioning) on an image store."""

import argparse
import json

import torch

from dra.diffusion.train import train_diffusion_model


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train-store", required=True, help="image store to learn from")
    parser.add_argument("--network", default="{}", help="JSON of EDMPrecond kwargs overriding the mini defaults")
    parser.add_argument("--steps", type=int, required=True, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--lr", type=float, required=True, help="Adam learning rate")
    parser.add_argument("--ema-half-life-images", type=float, required=True,
                        help="EMA half-life in images (17.7k = decay 0.995 per step at batch 128)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-weights", required=True, help="model .safetensors")
    parser.add_argument("--out-network", required=True, help="model .json (EDMPrecond init kwargs)")
    parser.add_argument("--out-loss", required=True, help="per-step loss .csv")
    parser.add_argument("--out-quality", help="optional .json: label agreement of generated images")
    parser.add_argument("--test-store", help="with --out-quality: also score the judge on real test images")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    train_diffusion_model(args.train_store, args.out_weights, args.out_network, args.out_loss,
                          json.loads(args.network), steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                          ema_half_life_images=args.ema_half_life_images, seed=args.seed,
                          out_quality=args.out_quality, test_store=args.test_store)


if __name__ == "__main__":
    main()
