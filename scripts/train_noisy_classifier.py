"""Train the noisy-input discriminative target of Section 5.6: the diffusion model's U-Net up to
the DRA layer, randomly initialised, as a classifier on images noised at the feature's sigma."""

import argparse
import json

import torch

from dra.diffusion.noisy_classifier import train_noisy_classifier


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train-store", required=True, help="image store to learn from")
    parser.add_argument("--test-store", help="image store whose noised accuracy is reported")
    parser.add_argument("--base-network", required=True,
                        help="model.json of the diffusion model whose U-Net configuration is used")
    parser.add_argument("--layer", required=True, help="the DRA layer, e.g. model.dec.8x8_in1")
    parser.add_argument("--sigma", type=float, required=True, help="noise level of the inputs (the DRA feature's)")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--lr", type=float, required=True, help="Adam learning rate, decayed to 0 by a cosine")
    parser.add_argument("--augment", default="{}",
                        help="JSON of crop_padding, hflip, rotate_degrees (the dataset's augment)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-weights", required=True,
                        help="model .safetensors (an EDMPrecond, like the diffusion models)")
    parser.add_argument("--out-network", required=True, help="model .json (EDMPrecond init kwargs)")
    parser.add_argument("--out-loss", required=True, help="per-step loss and batch accuracy .csv")
    parser.add_argument("--out-metrics", required=True, help="summary .json (test accuracy at sigma)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    train_noisy_classifier(args.train_store, args.base_network, args.layer, args.sigma, args.steps, args.batch_size,
                           args.lr, args.out_weights, args.out_network, args.out_loss, args.out_metrics,
                           augment=json.loads(args.augment) or None, test_store=args.test_store, seed=args.seed)


if __name__ == "__main__":
    main()
