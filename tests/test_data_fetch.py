"""dra.download.fetch: a configured file becomes an output only when its size, hashes and format are
right, pinned in the lock file at its first download. Served by local HTTP servers on 127.0.0.1: a
plain one, and one that speaks the Hugging Face Hub's resolve protocol (HEAD/GET
/<repo>/resolve/<revision>/<path> with X-Repo-Commit, and X-Linked-Etag = the LFS sha256), which
huggingface_hub reaches through HF_ENDPOINT."""

import hashlib
import http.server
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.numpy import save as save_safetensors

from dra.download import ChecksumError, FormatError, check_format, fetch, read_lock
from hub_server import COMMIT_1, COMMIT_2, HubServer

ROOT = Path(__file__).resolve().parent.parent


def _tar_gz() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        data = bytes(range(256)) * 64
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _npz() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, image=np.arange(4 * 32 * 32 * 3, dtype=np.uint8).reshape(4, 32, 32, 3),
             label=np.arange(4, dtype=np.int64))
    return buffer.getvalue()


def _torch_zip() -> bytes:
    buffer = io.BytesIO()
    torch.save({"model_state_dict": {"w": torch.arange(1000.0)}}, buffer)
    return buffer.getvalue()


FILES = {
    "cifar-10-python.tar.gz": _tar_gz(),
    "1m.npz": _npz(),
    "network.pkl": pickle.dumps({"ema": list(range(1000))}, protocol=4),
    "model.safetensors": save_safetensors({"w": np.arange(1000, dtype=np.float32)}),
    "checkpoint.pt": _torch_zip(),
    "args.txt": b"batch_size=512\nbeta=5.0\n",
}
HTML = b"<!DOCTYPE html><html><body>Sign in to continue</body></html>" + b" " * 2000


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------- format checks


@pytest.mark.parametrize("name", list(FILES))
def test_whole_files_pass_and_cut_or_html_ones_fail_naming_the_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(FILES[name])
    check_format(path)
    if name != "args.txt":  # a text file has no length of its own
        path.write_bytes(FILES[name][: len(FILES[name]) * 2 // 3])
        with pytest.raises(FormatError, match=str(path)):
            check_format(path)
    path.write_bytes(HTML)
    with pytest.raises(FormatError, match="HTML page"):
        check_format(path)


def test_npz_whose_array_is_shorter_than_its_header_says_fails(tmp_path):
    # a zip that is whole but whose array member was written short (the header promises 4 images)
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (4, 8)})
    path = tmp_path / "part.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("image.npy", header.getvalue() + bytes(16))
    with pytest.raises(FormatError, match="needs 32 bytes"):
        check_format(path)


# ---------------------------------------------------------------------------- a plain HTTP server


class PlainServer:
    """Serves FILES by name (and /page.npz as an HTML page with status 200); 'no_length' leaves
    Content-Length out and closes early, as a proxy cutting a transfer short does."""

    def __init__(self):
        self.files = dict(FILES)
        self.no_length_cut = set()
        self.requests = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                owner.requests.append(self.path)
                name = self.path.split("?", 1)[0].rsplit("/", 1)[-1]
                if name == "page.npz":
                    body = HTML
                elif name in owner.files:
                    body = owner.files[name]
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                if name in owner.no_length_cut:
                    body = body[: len(body) // 2]
                    self.send_header("Connection", "close")
                else:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def plain():
    server = PlainServer()
    yield server
    server.close()


def test_first_download_is_recorded_and_later_ones_verified_against_the_lock(plain, tmp_path):
    lock = tmp_path / "config" / "data" / "downloads.lock.yaml"
    url = f"{plain.base}/network.pkl"
    fetch({"url": url}, tmp_path / "a" / "network.pkl", lock, backoff_s=0)
    data = FILES["network.pkl"]
    assert read_lock(lock) == {url: {"revision": None, "size": len(data), "sha256": sha256(data)}}
    # another machine, later: the server now sends another file of the same size under the same URL
    changed = data[:100] + bytes([data[100] ^ 1]) + data[101:]
    plain.files["network.pkl"] = changed
    dest = tmp_path / "b" / "network.pkl"
    with pytest.raises(ChecksumError) as raised:
        fetch({"url": url}, dest, lock, backoff_s=0)
    message = str(raised.value)
    assert str(lock) in message and url in message and str(dest) in message
    assert sha256(data) in message and sha256(changed) in message
    assert not dest.exists() and list(dest.parent.iterdir()) == []
    # a file of another size is refused from the announced length, before it is fetched
    plain.files["network.pkl"] = data + b"more"
    with pytest.raises(ChecksumError, match=f"'size': {len(data) + 4}"):
        fetch({"url": url}, dest, lock, backoff_s=0)
    assert list(dest.parent.iterdir()) == []


def test_html_page_with_status_200_never_becomes_an_output(plain, tmp_path):
    dest = tmp_path / "part0.npz"
    lock = tmp_path / "lock.yaml"
    with pytest.raises(FormatError, match="HTML page"):
        fetch({"url": f"{plain.base}/page.npz"}, dest, lock, backoff_s=0)
    assert list(tmp_path.iterdir()) == []  # no output, no lock entry


def test_short_body_without_content_length_never_becomes_an_output(plain, tmp_path):
    plain.no_length_cut.add("1m.npz")
    dest = tmp_path / "part0.npz"
    with pytest.raises(FormatError, match="not a whole npz"):
        fetch({"url": f"{plain.base}/1m.npz"}, dest, tmp_path / "lock.yaml", backoff_s=0)
    assert list(tmp_path.iterdir()) == []


def test_published_md5_is_checked(plain, tmp_path):
    url = f"{plain.base}/cifar-10-python.tar.gz"
    good = hashlib.md5(FILES["cifar-10-python.tar.gz"]).hexdigest()
    dest = tmp_path / "cifar-10-python.tar.gz"
    fetch({"url": url, "md5": good}, dest, tmp_path / "lock.yaml", backoff_s=0)
    assert dest.read_bytes() == FILES["cifar-10-python.tar.gz"]
    dest.unlink()
    with pytest.raises(ChecksumError, match=f"expected {'0' * 32}, got {good}"):
        fetch({"url": url, "md5": "0" * 32}, dest, tmp_path / "lock.yaml", backoff_s=0)


def test_wrong_file_at_the_destination_is_replaced(plain, tmp_path):
    dest = tmp_path / "model.safetensors"
    dest.write_bytes(b"an older, wrong file")
    fetch({"url": f"{plain.base}/model.safetensors"}, dest, tmp_path / "lock.yaml", backoff_s=0)
    assert dest.read_bytes() == FILES["model.safetensors"]


# ---------------------------------------------------------------------------- the Hub's resolve protocol


@pytest.fixture
def hub():
    server = HubServer({COMMIT_1: FILES, COMMIT_2: dict(FILES)})
    yield server
    server.close()


def _fetch_in_subprocess(hub, spec, dest, lock):
    # huggingface_hub reads HF_ENDPOINT when imported: run the download script as the rules do
    env = {**os.environ, **hub.environment(Path(lock).parent)}
    return subprocess.run(
        [sys.executable, "-m", "scripts.download", "--spec", json.dumps(spec), "--dest", str(dest), "--lock", str(lock),
         "--retries", "0"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )


def test_hub_file_is_fetched_by_repo_path_revision_and_pinned_to_its_commit(hub, tmp_path):
    spec = {"hf": {"repo": "P2333/DM-Improves-AT", "type": "dataset", "path": "cifar10/1m.npz", "revision": "main"}}
    lock = tmp_path / "downloads.lock.yaml"
    result = _fetch_in_subprocess(hub, spec, tmp_path / "a" / "part0.npz", lock)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "a" / "part0.npz").read_bytes() == FILES["1m.npz"]
    assert read_lock(lock) == {"hf://dataset/P2333/DM-Improves-AT/cifar10/1m.npz": {
        "revision": COMMIT_1, "size": len(FILES["1m.npz"]), "sha256": sha256(FILES["1m.npz"])}}
    assert ("HEAD", "/datasets/P2333/DM-Improves-AT/resolve/main/cifar10/1m.npz") in hub.requests
    assert ("GET", f"/datasets/P2333/DM-Improves-AT/resolve/{COMMIT_1}/cifar10/1m.npz") in hub.requests
    # main moves on: the lock keeps every later download at the recorded commit
    hub.commits[COMMIT_2]["1m.npz"] = _npz()[:-10] + b"x" * 10
    hub.branches["main"] = COMMIT_2
    hub.requests.clear()
    result = _fetch_in_subprocess(hub, spec, tmp_path / "b" / "part0.npz", lock)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "b" / "part0.npz").read_bytes() == FILES["1m.npz"]
    assert all(COMMIT_1 in path for _, path in hub.requests)


def test_hub_file_not_matching_its_published_lfs_sha256_is_refused(hub, tmp_path):
    hub.published_sha256["model.safetensors"] = "f" * 64
    spec = {"hf": {"repo": "timm/convnext_base.dinov3_lvd1689m", "type": "model", "path": "model.safetensors",
                   "revision": "main"}}
    dest = tmp_path / "pretrained" / "model.safetensors"
    result = _fetch_in_subprocess(hub, spec, dest, tmp_path / "lock.yaml")
    assert result.returncode != 0
    assert "the Hub's LFS sha256: expected " + "f" * 64 in result.stderr
    assert sha256(FILES["model.safetensors"]) in result.stderr and str(dest) in result.stderr
    assert not dest.exists() and not (tmp_path / "lock.yaml").exists()


def test_hub_revision_pinned_in_config_must_agree_with_the_lock(hub, tmp_path):
    lock = tmp_path / "lock.yaml"
    spec = {"hf": {"repo": "wzekai99/DM-Improves-AT", "type": "model", "path": "checkpoint/checkpoint.pt",
                   "revision": COMMIT_1}}
    assert _fetch_in_subprocess(hub, spec, tmp_path / "a.pt", lock).returncode == 0
    spec["hf"]["revision"] = COMMIT_2
    result = _fetch_in_subprocess(hub, spec, tmp_path / "b.pt", lock)
    assert result.returncode != 0 and COMMIT_1 in result.stderr and COMMIT_2 in result.stderr


def test_lock_file_of_the_repository_is_a_mapping_of_recorded_files():
    # committed by users after their first download; it starts empty (no value is invented here)
    lock = ROOT / "config" / "data" / "downloads.lock.yaml"
    entries = yaml.safe_load(lock.read_text()) or {}
    assert isinstance(entries, dict)
    for entry in entries.values():
        assert set(entry) == {"revision", "size", "sha256"}


# ---------------------------------------------------------------------------- through the download rule


def test_download_rule_passes_urls_to_no_shell(plain, tmp_path):
    """A query string with & and a URL holding a command substitution reach the server verbatim;
    the command never runs (before, the rule's shell line took both unquoted). Backticks, quotes and
    spaces are refused by the schema (tests/config_cases.py)."""
    from workflow_helpers import copy_workflow, run_snakemake

    workdir = copy_workflow(tmp_path)
    archive = FILES["cifar-10-python.tar.gz"]
    target = "resources/cifar10/archive/cifar-10-python.tar.gz"
    urls = [f"{plain.base}/cifar-10-python.tar.gz?a=1&b=2",
            f"{plain.base}/cifar-10-python.tar.gz?x=$(touch${{IFS}}MARKER)"]
    for url in urls:
        source = {"kind": "cifar10", "url": url, "sha256": sha256(archive), "md5": hashlib.md5(archive).hexdigest()}
        (workdir / "local.yaml").write_text(yaml.safe_dump({"datasets": {"cifar10": {"source": source}}}))
        result = run_snakemake(workdir, target, "--cores", "1", "--configfile", "local.yaml", "--forceall",
                               timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        assert (workdir / target).read_bytes() == archive
        assert plain.requests[-1] == url.removeprefix(plain.base)
        assert not (workdir / "MARKER").exists()
    # both first downloads are in the workflow's lock file, under their exact URLs
    assert set(read_lock(workdir / "config" / "data" / "downloads.lock.yaml")) == set(urls)


def test_hub_file_missing_at_that_revision_names_repo_path_and_revision(hub, tmp_path):
    spec = {"hf": {"repo": "P2333/DM-Improves-AT", "type": "dataset", "path": "cifar10/7m.npz", "revision": "main"}}
    result = _fetch_in_subprocess(hub, spec, tmp_path / "part0.npz", tmp_path / "lock.yaml")
    assert result.returncode != 0
    assert "cifar10/7m.npz of dataset repository P2333/DM-Improves-AT at revision main failed" in result.stderr


def test_html_page_is_named_as_one_even_with_a_configured_checksum(plain, tmp_path):
    with pytest.raises(FormatError, match="HTML page"):
        fetch({"url": f"{plain.base}/page.npz", "sha256": sha256(FILES["1m.npz"])}, tmp_path / "p.npz",
              tmp_path / "lock.yaml", backoff_s=0)
