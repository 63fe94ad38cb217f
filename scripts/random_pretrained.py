"""Randomly initialised weights of a timm backbone in its release's layout (the canary's stand-in
for the pretrained download).

    python -m scripts.random_pretrained --name convnext_base.dinov3_lvd1689m --seed 1 \
        --out results/canary/data/pretrained/convnext-b/model.safetensors
"""

import argparse
import json

from dra.models.timm_models import save_random_pretrained


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="timm model name (archs.<arch>.name)")
    parser.add_argument("--kwargs", default="{}", help="JSON of timm.create_model keyword arguments")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    save_random_pretrained(args.name, args.out, args.seed, json.loads(args.kwargs))


if __name__ == "__main__":
    main()
