"""Fetch one configured file, pinned in the lock file and verified (dra.download.fetch)."""

import argparse
import json

from dra.download import fetch


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--spec",
        required=True,
        help="the config's download entry as JSON: {url | hf: {repo, type, path, revision}, sha256, md5}",
    )
    parser.add_argument("--dest", required=True, help="path the verified file is renamed to")
    parser.add_argument("--lock", required=True, help="the lock file (config/data/downloads.lock.yaml)")
    parser.add_argument("--retries", type=int, default=3, help="retries after the first attempt")
    parser.add_argument("--timeout", type=float, default=60, help="socket timeout in seconds")
    args = parser.parse_args(argv)
    fetch(json.loads(args.spec), args.dest, args.lock, retries=args.retries, timeout=args.timeout)


if __name__ == "__main__":
    main()
