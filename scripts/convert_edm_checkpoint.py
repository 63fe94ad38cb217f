"""Convert NVIDIA's EDM network pickle to safetensors + json without running code from it."""

import argparse

import torch

from dra.diffusion.checkpoint import convert_edm_pickle


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pickle", required=True, help="NVIDIA's edm-*.pkl (e.g. edm-cifar10-32x32-cond-vp.pkl)")
    parser.add_argument("--out-weights", required=True, help="output weights (.safetensors)")
    parser.add_argument("--out-network", required=True, help="output EDMPrecond init kwargs (.json)")
    parser.add_argument("--key", default="ema", help="network entry of the pickle's dict (default: ema)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    convert_edm_pickle(args.pickle, args.out_weights, args.out_network, key=args.key)


if __name__ == "__main__":
    main()
