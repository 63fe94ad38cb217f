"""Download one URL into a path, verifying size and sha256 (dra.download.download)."""

import argparse

from dra.download import download


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="http(s) URL of the file")
    parser.add_argument("--dest", required=True, help="path the verified file is renamed to")
    parser.add_argument(
        "--sha256", default=None, help="expected sha256 (hex); omitted = not checked"
    )
    parser.add_argument("--expected-size", type=int, default=None, help="expected size in bytes")
    parser.add_argument("--retries", type=int, default=3, help="retries after the first attempt")
    parser.add_argument("--timeout", type=float, default=60, help="socket timeout in seconds")
    args = parser.parse_args()
    download(
        args.url,
        args.dest,
        sha256=args.sha256,
        retries=args.retries,
        timeout=args.timeout,
        expected_size=args.expected_size,
    )


if __name__ == "__main__":
    main()
