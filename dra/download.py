"""Verified, resumable downloads.

``download`` streams a URL into a hidden ``.part`` sibling of the destination, checks the
byte count against Content-Length (a connection that closes early is a truncated transfer,
retried), checks the sha256 when one is given, and renames the part into place only when it
is whole. A kept ``.part`` is resumed with an HTTP Range request when the server honours it;
the synthetic sets are 30-40 GB per file, so a dropped connection must not restart from zero.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

_CHUNK_BYTES = 1 << 20


class DownloadError(RuntimeError):
    """A download could not be completed; the message names the URL, the file and the fix."""


class ChecksumError(DownloadError):
    """The downloaded bytes do not have the expected sha256."""


class _RetryableError(Exception):
    """A failure worth another attempt: HTTP 5xx/429, connection trouble, truncated body."""


def _part_path(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.part")


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def _checksum_message(dest: Path, url: str, expected: str, actual: str) -> str:
    return (
        f"sha256 mismatch for {dest} (downloaded from {url}): expected {expected}, got {actual}. "
        "The bad file was deleted. Check that the URL and the expected sha256 in the config name the "
        "same file (the server may have replaced it), then rerun."
    )


def _total_size(response: http.client.HTTPResponse, offset: int) -> int | None:
    """Full size of the remote file, from Content-Range on a 206 or Content-Length on a 200."""
    if response.status == 206:
        content_range = response.headers.get("Content-Range", "")
        if "/" in content_range and not content_range.endswith("/*"):
            return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    if length is None:
        return None
    return int(length) + (offset if response.status == 206 else 0)


def _attempt(url: str, dest: Path, part: Path, timeout: float, expected_size: int | None) -> None:
    """One transfer into ``part``, appending when the server honours a Range request."""
    offset = part.stat().st_size if part.exists() else 0
    if expected_size is not None and offset > expected_size:
        offset = 0
    request = urllib.request.Request(url, headers={"User-Agent": "dra-workflow"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            # The kept part does not fit the remote file (it changed, or is already whole):
            # start over rather than trust it.
            part.unlink()
            raise _RetryableError(f"HTTP 416 for a resumed range at byte {offset}; restarting")
        if error.code >= 500 or error.code == 429:
            raise _RetryableError(f"HTTP {error.code} {error.reason}")
        raise DownloadError(
            f"downloading {url} to {dest} failed with HTTP {error.code} "
            f"{error.reason}; check the URL (and access rights) in the config."
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        raise _RetryableError(f"connection failed: {error}")

    with response:
        resumed = offset > 0 and response.status == 206
        if not resumed:
            offset = 0  # the server ignored the Range header and sends the whole file
        total = _total_size(response, offset)
        if expected_size is not None and total is not None and total != expected_size:
            raise DownloadError(
                f"{url} has {total} bytes but {expected_size} were expected; the config names "
                "a different file than the server provides. Check the URL and expected size."
            )
        received = offset
        with (
            open(part, "ab" if resumed else "wb") as handle,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                desc=dest.name,
                file=sys.stderr,
                mininterval=5.0,
            ) as progress,
        ):
            while True:
                try:
                    block = response.read(_CHUNK_BYTES)
                except (OSError, http.client.HTTPException) as error:
                    raise _RetryableError(f"connection lost after {received} bytes: {error}")
                if not block:
                    break
                handle.write(block)
                received += len(block)
                progress.update(len(block))
    expected_total = total if total is not None else expected_size
    if expected_total is not None and received != expected_total:
        raise _RetryableError(f"truncated transfer: {received} of {expected_total} bytes")


def download(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None = None,
    retries: int = 3,
    timeout: float = 60,
    expected_size: int | None = None,
    *,
    backoff_s: float = 2.0,
) -> Path:
    """Download ``url`` to ``dest``; return ``dest``.

    Retries up to ``retries`` times after the first attempt, waiting ``backoff_s * 2**k``
    seconds, on HTTP 5xx/429, connection errors, timeouts and truncated transfers. A 4xx,
    a size disagreeing with ``expected_size`` or a sha256 mismatch stop at once. An existing
    ``dest`` is kept when it has the expected sha256 (or when none is given).
    """
    dest = Path(dest)
    if sha256 is not None:
        sha256 = sha256.lower()
    if dest.exists():
        if sha256 is None or _sha256_of(dest) == sha256:
            return dest
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _part_path(dest)

    failures: list[str] = []
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        try:
            _attempt(url, dest, part, timeout, expected_size)
            break
        except _RetryableError as error:
            failures.append(str(error))
            print(f"download {url}: attempt {attempt + 1} failed: {error}", file=sys.stderr)
    else:
        raise DownloadError(
            f"downloading {url} to {dest} failed after {retries + 1} attempts "
            f"(last: {failures[-1]}). The partial file {part} is kept and the next run resumes it; "
            "check the network or the server and rerun."
        )

    actual = _sha256_of(part)
    if sha256 is not None and actual != sha256:
        part.unlink()
        raise ChecksumError(_checksum_message(dest, url, sha256, actual))
    if sha256 is None:
        # no published checksum: record what was downloaded, so it can be pinned in the config
        print(f"sha256 {actual} {dest} (not checked: no checksum configured)", file=sys.stderr)
    os.replace(part, dest)
    return dest
