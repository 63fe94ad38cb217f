"""Train the mini EDM (DDPM++ U-Net, EDM loss) on an image store; write model + quality.json."""

import argparse

import torch

from dra.diffusion.train import MINI_EDM_KWARGS, train_diffusion_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train-store", required=True, help="image store to learn from")
    parser.add_argument("--test-store", help="optional image store: also report the judge's accuracy on it")
    parser.add_argument("--out-dir", required=True, help="writes model.safetensors, model.json, loss.csv, quality.json")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate")
    parser.add_argument("--ema", type=float, default=0.995, help="EMA decay per step")
    parser.add_argument("--model-channels", type=int, default=MINI_EDM_KWARGS["model_channels"])
    parser.add_argument("--channel-mult", type=int, nargs="+", default=MINI_EDM_KWARGS["channel_mult"])
    parser.add_argument("--num-blocks", type=int, default=MINI_EDM_KWARGS["num_blocks"])
    parser.add_argument("--attn-resolutions", type=int, nargs="*", default=MINI_EDM_KWARGS["attn_resolutions"])
    parser.add_argument("--label-dropout", type=float, default=MINI_EDM_KWARGS["label_dropout"])
    parser.add_argument("--eval-per-class", type=int, default=100, help="generated images per class for the judge")
    parser.add_argument("--eval-steps", type=int, default=18, help="Heun steps when sampling for the judge")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    net_kwargs = dict(MINI_EDM_KWARGS, model_channels=args.model_channels, channel_mult=args.channel_mult,
                      num_blocks=args.num_blocks, attn_resolutions=args.attn_resolutions,
                      label_dropout=args.label_dropout)
    train_diffusion_model(args.train_store, args.out_dir, net_kwargs, steps=args.steps, batch_size=args.batch_size,
                          lr=args.lr, ema_decay=args.ema, seed=args.seed, eval_per_class=args.eval_per_class,
                          eval_steps=args.eval_steps, test_store=args.test_store)


if __name__ == "__main__":
    main()
