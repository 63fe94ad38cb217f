"""Join the parts of a synthetic set, sampled by independent jobs, into one image store (hard links)."""

import argparse

from dra.data.store import assemble_image_store


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--parts", nargs="+", required=True, help="part image stores, in row order")
    parser.add_argument("--out", required=True, help="the assembled store folder")
    args = parser.parse_args(argv)
    assemble_image_store(args.parts, args.out,
                         meta={"source": "lightningdit_euler_sampler", "assembled_from": args.parts})


if __name__ == "__main__":
    main()
