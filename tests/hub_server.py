"""A local HTTP server that speaks the Hugging Face Hub's resolve protocol, for huggingface_hub
through HF_ENDPOINT: HEAD and GET /[datasets/]<repo>/resolve/<revision>/<path> answer with
X-Repo-Commit (the commit the revision resolves to), ETag (the git blob id), X-Linked-Etag (the LFS
sha256, as the Hub publishes it for LFS files) and X-Linked-Size. Files are looked up per commit by
their path in the repository, falling back to the file name (one file set serves every repo)."""

from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

COMMIT_1 = "1" * 40
COMMIT_2 = "2" * 40


class HubServer:
    def __init__(self, commits: dict[str, dict[str, bytes]]):
        self.commits = commits  # commit -> {path or (repo, path) or file name: bytes}
        self.branches = {"main": next(iter(commits))}
        self.published_sha256: dict[str, str] = {}  # path -> a wrong LFS sha256 (a corrupt mirror)
        self.requests: list[tuple[str, str]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _resolve(self):
                path = self.path.split("?", 1)[0].lstrip("/").removeprefix("datasets/")
                repo, _, rest = path.partition("/resolve/")
                revision, _, file = rest.partition("/")
                commit = owner.branches.get(revision, revision)
                files = owner.commits.get(commit, {})
                body = files.get((repo, file), files.get(file, files.get(file.rsplit("/", 1)[-1])))
                if body is None:
                    self.send_error(404)
                    return None
                self.send_response(200)
                self.send_header("X-Repo-Commit", commit)
                self.send_header("ETag", '"' + hashlib.sha1(body).hexdigest() + '"')
                lfs = owner.published_sha256.get(file, hashlib.sha256(body).hexdigest())
                self.send_header("X-Linked-Etag", f'"{lfs}"')
                self.send_header("X-Linked-Size", str(len(body)))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                return body

            def do_HEAD(self):
                owner.requests.append(("HEAD", self.path))
                self._resolve()

            def do_GET(self):
                owner.requests.append(("GET", self.path))
                body = self._resolve()
                if body is not None:
                    self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def environment(self, home: Path) -> dict[str, str]:
        """What a download process needs to reach this server instead of the Hub."""
        return {"HF_ENDPOINT": self.endpoint, "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HOME": str(home / "hf-home")}

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
