"""dra.download against a scripted http.server on 127.0.0.1 (ephemeral port, own thread)."""

import hashlib
import http.server
import threading

import pytest

from dra.download import ChecksumError, DownloadError, download

BODY = bytes(range(256)) * 400  # 102,400 bytes
SHA256 = hashlib.sha256(BODY).hexdigest()


class _Server:
    """Serves BODY at any path; each request consumes the next scripted behaviour."""

    def __init__(self, behaviours, replaced_after_truncation=False):
        self.behaviours = list(behaviours)
        self.etag = '"v1"'
        self.next_etag = '"v2"' if replaced_after_truncation else '"v1"'
        self.requests = []  # (path, Range header or None)
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                owner.requests.append((self.path, self.headers.get("Range")))
                behaviour = owner.behaviours.pop(0) if owner.behaviours else "full"
                if behaviour in ("500", "404"):
                    self.send_error(int(behaviour))
                    return
                start = 0
                range_header = self.headers.get("Range")
                # If-Range: the rest of the file only while it is still the version the client holds
                same_version = self.headers.get("If-Range") in (None, owner.etag)
                if behaviour == "full" and range_header and same_version:
                    start = int(range_header.split("=")[1].rstrip("-"))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(BODY) - 1}/{len(BODY)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(BODY) - start))
                self.send_header("ETag", owner.etag)
                self.end_headers()
                if behaviour == "truncated":
                    self.wfile.write(BODY[: len(BODY) // 3])  # then the connection closes
                    owner.etag = owner.next_etag  # the server's file may change meanwhile
                else:
                    self.wfile.write(BODY[start:])

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/file.bin"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_truncated_transfer_is_resumed_with_range(tmp_path):
    dest = tmp_path / "out" / "file.bin"
    with _Server(["truncated", "full"]) as server:
        download(server.url, dest, sha256=SHA256, backoff_s=0)
    assert dest.read_bytes() == BODY
    assert server.requests == [("/file.bin", None), ("/file.bin", f"bytes={len(BODY) // 3}-")]
    assert sorted(p.name for p in dest.parent.iterdir()) == ["file.bin"]


def test_file_replaced_on_the_server_during_a_resume_is_fetched_whole(tmp_path):
    # the kept third is of version 1; the server now holds version 2, so If-Range gets a 200 and the
    # whole file: no file spliced from two versions
    dest = tmp_path / "file.bin"
    with _Server(["truncated", "full"], replaced_after_truncation=True) as server:
        download(server.url, dest, sha256=SHA256, backoff_s=0)
    assert dest.read_bytes() == BODY
    assert server.requests[1] == ("/file.bin", f"bytes={len(BODY) // 3}-")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.bin"]


def test_existing_file_without_a_checksum_is_fetched_again(tmp_path):
    dest = tmp_path / "file.bin"
    dest.write_bytes(b"a wrong file from an earlier run")
    with _Server(["full"]) as server:
        download(server.url, dest, backoff_s=0)
    assert dest.read_bytes() == BODY and len(server.requests) == 1


def test_truncated_transfer_restarts_when_range_is_ignored(tmp_path):
    dest = tmp_path / "file.bin"
    with _Server(["truncated", "ignore-range"]) as server:
        download(server.url, dest, sha256=SHA256, backoff_s=0)
    assert dest.read_bytes() == BODY
    assert len(server.requests) == 2


def test_checksum_mismatch_is_a_clear_error_and_leaves_nothing(tmp_path):
    dest = tmp_path / "file.bin"
    wrong = "0" * 64
    with _Server(["full"]) as server:
        with pytest.raises(ChecksumError) as raised:
            download(server.url, dest, sha256=wrong, backoff_s=0)
    message = str(raised.value)
    assert str(dest) in message and wrong in message and SHA256 in message and "rerun" in message
    assert list(tmp_path.iterdir()) == []
    assert len(server.requests) == 1  # a checksum mismatch is not retried


def test_server_error_then_success(tmp_path):
    dest = tmp_path / "file.bin"
    with _Server(["500", "full"]) as server:
        download(server.url, dest, sha256=SHA256, expected_size=len(BODY), backoff_s=0)
    assert dest.read_bytes() == BODY
    assert len(server.requests) == 2


def test_gives_up_after_retries_and_keeps_nothing_at_dest(tmp_path):
    dest = tmp_path / "file.bin"
    with _Server(["500"] * 3) as server:
        with pytest.raises(DownloadError, match="failed after 3 attempts"):
            download(server.url, dest, retries=2, backoff_s=0)
    assert len(server.requests) == 3
    assert not dest.exists()


def test_client_error_is_not_retried(tmp_path):
    with _Server(["404"]) as server:
        with pytest.raises(DownloadError, match="HTTP 404"):
            download(server.url, tmp_path / "file.bin", backoff_s=0)
    assert len(server.requests) == 1


def test_expected_size_disagreement_stops(tmp_path):
    with _Server(["full"]) as server:
        with pytest.raises(DownloadError, match=f"has {len(BODY)} bytes but 5 were expected"):
            download(server.url, tmp_path / "file.bin", expected_size=5, backoff_s=0)


def test_existing_verified_file_is_kept_without_request(tmp_path):
    dest = tmp_path / "file.bin"
    dest.write_bytes(BODY)
    with _Server([]) as server:
        download(server.url, dest, sha256=SHA256, backoff_s=0)
    assert server.requests == []


def test_without_a_configured_checksum_the_hash_is_recorded(tmp_path, capsys):
    dest = tmp_path / "file.bin"
    with _Server(["full"]) as server:
        download(server.url, dest, backoff_s=0)
    assert dest.read_bytes() == BODY
    # the rule log then holds the hash to pin in config.yaml
    assert f"sha256 {SHA256} {dest}" in capsys.readouterr().err
