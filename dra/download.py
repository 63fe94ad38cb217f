"""Verified, resumable downloads.

``fetch`` is what the download rules run: a configured file (a URL, or a Hugging Face file by
repository, path and revision through huggingface_hub) becomes its output only when its size and
hashes match the config, the Hub's published LFS sha256 and the lock file
(config/data/downloads.lock.yaml, written at the file's first download), and it parses in its
format (``check_format``). ``download`` is its plain-HTTP transfer: it streams a URL into a hidden
``.part`` sibling of the destination, checks the
byte count against Content-Length (a connection that closes early is a truncated transfer,
retried), checks the sha256 when one is given, and renames the part into place only when it
is whole. A kept ``.part`` is resumed with an HTTP Range request when the server honours it;
the synthetic sets are 30-40 GB per file, so a dropped connection must not restart from zero.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
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


class SizeError(DownloadError):
    """The server announces another size than the one expected."""

    def __init__(self, message: str, size: int):
        super().__init__(message)
        self.size = size


class _RetryableError(Exception):
    """A failure worth another attempt: HTTP 5xx/429, connection trouble, truncated body."""


def _part_path(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.part")


def _validator_path(part: Path) -> Path:
    return part.with_name(part.name + ".version")


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
    validator = _validator_path(part)
    if offset and validator.exists():
        # If-Range: the server sends the rest only if the file is still the version the kept part
        # came from, else the whole new file (a 200), so a resume never splices two versions
        request.add_header("Range", f"bytes={offset}-")
        request.add_header("If-Range", validator.read_text())
    elif offset:
        offset = 0  # a part without a validator cannot be proven to be the same version
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            # The kept part does not fit the remote file (it changed, or is already whole):
            # start over rather than trust it.
            part.unlink()
            raise _RetryableError(f"HTTP 416 for a resumed range at byte {offset}; restarting") from error
        if error.code >= 500 or error.code == 429:
            raise _RetryableError(f"HTTP {error.code} {error.reason}") from error
        raise DownloadError(
            f"downloading {url} to {dest} failed with HTTP {error.code} "
            f"{error.reason}; check the URL (and access rights) in the config."
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        raise _RetryableError(f"connection failed: {error}") from error

    with response:
        resumed = offset > 0 and response.status == 206
        if not resumed:
            offset = 0  # the server ignored the Range header and sends the whole file
        total = _total_size(response, offset)
        version = response.headers.get("ETag") or response.headers.get("Last-Modified")
        if version and not resumed:
            validator.write_text(version)
        elif not version:
            validator.unlink(missing_ok=True)
        if expected_size is not None and total is not None and total != expected_size:
            raise SizeError(
                f"{url} has {total} bytes but {expected_size} were expected; the config names "
                "a different file than the server provides. Check the URL and expected size.",
                total,
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
                    raise _RetryableError(f"connection lost after {received} bytes: {error}") from error
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
    report_hash: bool = True,
) -> Path:
    """Download ``url`` to ``dest``; return ``dest``.

    Retries up to ``retries`` times after the first attempt, waiting ``backoff_s * 2**k``
    seconds, on HTTP 5xx/429, connection errors, timeouts and truncated transfers. A 4xx,
    a size disagreeing with ``expected_size`` or a sha256 mismatch stop at once. An existing
    ``dest`` is kept only when it has the expected sha256; without one it is fetched again.
    """
    dest = Path(dest)
    if sha256 is not None:
        sha256 = sha256.lower()
    if dest.exists():
        if sha256 is not None and _sha256_of(dest) == sha256:
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
        _validator_path(part).unlink(missing_ok=True)
        raise ChecksumError(_checksum_message(dest, url, sha256, actual))
    if sha256 is None and report_hash:
        # no published checksum: record what was downloaded, so it can be pinned in the config
        print(f"sha256 {actual} {dest} (not checked: no checksum configured)", file=sys.stderr)
    os.replace(part, dest)
    _validator_path(part).unlink(missing_ok=True)
    return dest


# ----------------------------------------------------------------------------------------------
# what a downloaded file must be before it becomes an output


class FormatError(DownloadError):
    """The bytes are not a whole file of the format its name says."""


_HTML_STARTS = (b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")


def check_format(path: str | os.PathLike, name: str | None = None) -> None:
    """Parse ``path`` as the format its name (``name``, default the path's) says, without running
    any of its code: a tar archive to its last member, every array header of an npz against its
    member's size, a pickle's opcodes to STOP, a safetensors header against the file size, a torch
    zip's central directory and CRCs. An HTML page (an error or login page served with status 200)
    or a body cut short fails, naming the file."""
    path = Path(path)
    name = (name or path.name).lower()
    with open(path, "rb") as handle:
        head = handle.read(512)
    if head.lstrip().lower().startswith(_HTML_STARTS):
        raise FormatError(f"{path} is an HTML page, not a {name.rsplit('.', 1)[-1]} file: the server sent an "
                          "error or login page. Check the URL (and access rights) in the config.")
    try:
        if name.endswith((".tar.gz", ".tgz", ".tar")):
            import tarfile

            with tarfile.open(path) as archive:
                if not archive.getmembers():
                    raise ValueError("the archive has no members")
        elif name.endswith(".npz"):
            _check_npz(path)
        elif name.endswith(".pkl"):
            import pickletools

            with open(path, "rb") as handle:
                for _ in pickletools.genops(handle):
                    pass
        elif name.endswith(".safetensors"):
            _check_safetensors(path)
        elif name.endswith((".pt", ".pth")):
            _check_torch_file(path)
        elif name.endswith(".txt"):
            path.read_bytes().decode("utf-8")
        else:
            raise ValueError(f"no format check is known for a file named {name}")
    except FormatError:
        raise
    except Exception as error:  # every parser's own error means the same: not a whole file
        raise FormatError(
            f"{path} is not a whole {name.rsplit('.', 1)[-1]} file ({type(error).__name__}: {error}); "
            "the transfer was cut short or the server sent something else. It was not kept; rerun, "
            "and if it happens again check the URL in the config."
        ) from None


def _check_npz(path: Path) -> None:
    import zipfile

    import numpy as np

    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
        if not members:
            raise ValueError("the npz holds no arrays")
        for member in members:
            with archive.open(member) as handle:
                version = np.lib.format.read_magic(handle)
                read_header = {(1, 0): np.lib.format.read_array_header_1_0}.get(
                    version, np.lib.format.read_array_header_2_0)
                shape, _, dtype = read_header(handle)
                header = handle.tell()
            data = int(np.prod(shape)) * dtype.itemsize
            if member.file_size != header + data:
                raise ValueError(f"array {member.filename} of shape {shape} needs {data} bytes after its "
                                 f"header, the member holds {member.file_size - header}")


def _check_safetensors(path: Path) -> None:
    import json
    import struct

    size = path.stat().st_size
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > size - 8:
            raise ValueError(f"header of {length} bytes in a file of {size}")
        header = json.loads(handle.read(length))
    end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    if 8 + length + end != size:
        raise ValueError(f"the tensors end at byte {8 + length + end}, the file has {size}")


def _check_torch_file(path: Path) -> None:
    import zipfile

    if not zipfile.is_zipfile(path):
        # torch.save's legacy format: a pickle first, then the storages
        import pickletools

        with open(path, "rb") as handle:
            if handle.read(2) != b"\x80\x02":
                raise ValueError("neither a torch zip nor torch's legacy pickle format")
            handle.seek(0)
            for _ in pickletools.genops(handle):
                pass
        return
    with zipfile.ZipFile(path) as archive:
        if not any(name.endswith("/data.pkl") or name == "data.pkl" for name in archive.namelist()):
            raise ValueError("a zip without data.pkl is not a torch checkpoint")
        bad = archive.testzip()
        if bad is not None:
            raise ValueError(f"member {bad} fails its CRC")


# ----------------------------------------------------------------------------------------------
# the lock file: what each source was at its first download


def source_id(spec: dict) -> str:
    """The lock file's key for a download spec: the URL, or hf://<type>/<repo>/<path>."""
    if spec.get("hf"):
        hf = spec["hf"]
        return f"hf://{hf['type']}/{hf['repo']}/{hf['path']}"
    return spec["url"]


def read_lock(lock_path: str | os.PathLike) -> dict:
    import yaml

    path = Path(lock_path)
    if not path.exists():
        return {}
    entries = yaml.safe_load(path.read_text()) or {}
    if not isinstance(entries, dict):
        raise DownloadError(f"{path} is not a mapping of source -> {{revision, size, sha256}}; restore it from git.")
    return entries


def _record(lock_path: Path, key: str, entry: dict) -> None:
    """Add one entry under an exclusive lock: download jobs run side by side on the submit host."""
    import fcntl

    import yaml

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path.with_name(lock_path.name + ".flock"), "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        entries = read_lock(lock_path)
        if key in entries and entries[key] != entry:
            raise DownloadError(_lock_mismatch(lock_path, key, entries[key], entry))
        entries[key] = entry
        temporary = lock_path.with_name(f".{lock_path.name}.tmp")
        temporary.write_text(LOCK_HEADER + yaml.safe_dump(entries, sort_keys=True))
        os.replace(temporary, lock_path)


LOCK_HEADER = """\
# Every downloaded file as it was at its first download: the resolved revision (a Hugging Face
# commit; null for a plain URL), its size in bytes and its sha256. Written by dra.download.fetch,
# checked on every later download, on every machine. Review and commit it like any lock file; to
# accept a new version of a file on purpose, delete its entry and download again.
"""


def _lock_mismatch(lock_path: Path, key: str, locked: dict, found: dict) -> str:
    return (
        f"{key} does not match its entry in {lock_path}: locked {locked}, downloaded {found}. "
        "The source has changed since it was first downloaded, or the config points elsewhere. If the new "
        f"file is the one you want, delete the entry for {key} from {lock_path} and rerun."
    )


# ----------------------------------------------------------------------------------------------
# fetch: a configured download, pinned and verified


_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def fetch(spec: dict, dest: str | os.PathLike, lock_path: str | os.PathLike, retries: int = 3,
          timeout: float = 60, backoff_s: float = 2.0) -> Path:
    """Download a configured file (``{url: ...}`` or ``{hf: {repo, type, path, revision}}``, with
    optional ``sha256`` and ``md5``) to ``dest``. The file becomes ``dest`` only when its size and
    hashes match everything known about it (the config, the lock file, the Hub's LFS sha256) and it
    parses in its format; its first download records revision, size and sha256 in the lock file."""
    dest, lock_path = Path(dest), Path(lock_path)
    key = source_id(spec)
    locked = read_lock(lock_path).get(key)
    staged = dest.with_name(f".{dest.name}.unverified")
    dest.unlink(missing_ok=True)
    if spec.get("hf"):
        staged, revision, published_sha256, size = _fetch_hf(spec["hf"], staged, locked, timeout)
    else:
        revision, published_sha256 = None, None
        size = None  # a plain server publishes no size of its own; the lock's is checked below
        try:
            download(spec["url"], staged, retries=retries, timeout=timeout,
                     expected_size=locked["size"] if locked else None, backoff_s=backoff_s, report_hash=False)
        except SizeError as error:  # stop before fetching a file the lock already rules out
            found = {"revision": None, "size": error.size, "sha256": "(not downloaded)"}
            raise ChecksumError(
                _lock_mismatch(lock_path, key, locked, found) + f" Nothing was written to {dest}.") from None
    try:
        check_format(staged, dest.name)  # first: an HTML page is named as one, not as a hash mismatch
        entry = _verify(staged, dest, key, spec, locked, revision, published_sha256, size, lock_path)
    except DownloadError:
        staged.unlink(missing_ok=True)
        raise
    if locked is None:
        _record(lock_path, key, entry)
        print(f"recorded {key} in {lock_path}: {entry}", file=sys.stderr)
    os.replace(staged, dest)
    return dest


def _verify(staged: Path, dest: Path, key: str, spec: dict, locked: dict | None, revision: str | None,
            published_sha256: str | None, size: int | None, lock_path: Path) -> dict:
    actual_size = staged.stat().st_size
    sha256 = _sha256_of(staged)
    entry = {"revision": revision, "size": actual_size, "sha256": sha256}
    expected = [("the config's sha256", spec.get("sha256"), sha256),
                ("the Hub's LFS sha256", published_sha256, sha256),
                ("the size the Hub announced", size, actual_size)]
    if spec.get("md5"):
        digest = hashlib.md5()
        with open(staged, "rb") as handle:
            for block in iter(lambda: handle.read(_CHUNK_BYTES), b""):
                digest.update(block)
        expected.append(("the config's (published) md5", spec["md5"], digest.hexdigest()))
    for what, want, got in expected:
        if want is not None and (want.lower() if isinstance(want, str) else want) != got:
            raise ChecksumError(
                f"{dest} (from {key}) does not match {what}: expected {want}, got {got}. The file was not "
                "kept. Check that the config names the file you mean (the server may have replaced it), then rerun."
            )
    if locked is not None and {k: locked.get(k) for k in ("size", "sha256")} != {"size": actual_size, "sha256": sha256}:
        raise ChecksumError(_lock_mismatch(lock_path, key, locked, entry) + f" The file ({dest}) was not kept.")
    return entry


def _fetch_hf(hf: dict, staged: Path, locked: dict | None, timeout: float):
    """One Hub file through huggingface_hub (HF_ENDPOINT names the server): resolve the revision to
    its commit (or take the locked commit), download that commit's file with the library's resume,
    and return it with the commit, the LFS sha256 the Hub publishes (None for a non-LFS file) and
    the size."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    configured = hf["revision"]
    if locked is not None and _HEX40.match(configured) and locked["revision"] != configured:
        raise DownloadError(
            f"hf://{hf['type']}/{hf['repo']}/{hf['path']}: the config pins revision {configured}, the lock file "
            f"{locked['revision']}. Make them agree (delete the lock entry to accept the config's)."
        )
    revision = locked["revision"] if locked is not None else configured
    try:
        url = hf_hub_url(hf["repo"], hf["path"], repo_type=hf["type"], revision=revision)
        meta = get_hf_file_metadata(url, timeout=timeout, retry_on_errors=True)
        if not meta.commit_hash:
            raise DownloadError(f"{url} names no commit (X-Repo-Commit); it is not a Hugging Face Hub resolve URL.")
        staging = staged.parent / f".{staged.name}.hf"
        path = hf_hub_download(hf["repo"], hf["path"], repo_type=hf["type"], revision=meta.commit_hash,
                               local_dir=staging, etag_timeout=timeout)
    except DownloadError:
        raise
    except Exception as error:  # HfHubHTTPError, connection errors, a file missing at that revision
        raise DownloadError(
            f"downloading {hf['path']} of {hf['type']} repository {hf['repo']} at revision {revision} failed: "
            f"({type(error).__name__}: {error}). Check the repo, type, path and revision in the config, and the "
            "network; a partial download is kept and resumed by the next run."
        ) from None
    os.replace(path, staged)
    shutil.rmtree(staging, ignore_errors=True)
    etag = (meta.etag or "").lower()
    return staged, meta.commit_hash, etag if _HEX64.match(etag) else None, meta.size
