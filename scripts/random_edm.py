"""A randomly initialised EDM DDPM++ in the converted checkpoint format (the canary's diffusion model).

    python -m scripts.random_edm --seed 1 --network '{"label_dim": 100}' \
        --out-weights results/canary/data/diffusion/edm-cifar100-cond/model.safetensors \
        --out-network results/canary/data/diffusion/edm-cifar100-cond/model.json
"""

import argparse
import json

from dra.diffusion.checkpoint import save_random_edm


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--network", default="{}", help="JSON of EDMPrecond keys replacing the CIFAR-10 DDPM++ ones")
    parser.add_argument("--out-weights", required=True)
    parser.add_argument("--out-network", required=True)
    args = parser.parse_args(argv)
    save_random_edm(args.out_weights, args.out_network, args.seed, json.loads(args.network))


if __name__ == "__main__":
    main()
