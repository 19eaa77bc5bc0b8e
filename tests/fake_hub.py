"""A loopback fake of the Hugging Face Hub, enough for huggingface_hub's download path.

Endpoints (what ``HfApi.model_info`` and ``hf_hub_download`` request):

- ``GET /api/models/{repo}`` and ``/api/models/{repo}/revision/{rev}``: model info
  with ``sha`` and ``siblings`` (``size``, ``blobId``, ``lfs.sha256`` with ``?blobs=True``);
  unknown repo -> 404 ``X-Error-Code: RepoNotFound``, unknown revision -> ``RevisionNotFound``.
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: plain files answer 200 with
  ``X-Repo-Commit``, ``ETag``, ``Content-Length``; LFS files (``.gguf``) answer
  302 to an absolute ``http://localhost:PORT/cdn/{sha256}`` URL with ``X-Linked-Etag``/``X-Linked-Size``,
  like the real Hub's CDN redirect.
- ``GET /cdn/{sha256}``: the bytes, honouring ``Range: bytes=N-`` and ``bytes=N-M`` (206).

Every request is logged in ``FakeHub.log`` as ``(method, path, filename, range)``.
``faults[filename]`` makes a file misbehave: ``"cut"`` (send half the body once, then
drop the connection), ``"garbage"`` (same length, wrong bytes), ``"truncated"``
(the server consistently serves and announces only the first half), ``"slow"``
(the body trickles out in 4 KiB pieces, 20 ms apart: time to kill a client mid-way).
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Repo:
    files: dict[str, bytes]
    sha: str = COMMIT
    lfs_suffixes: tuple[str, ...] = (".gguf",)

    def is_lfs(self, name: str) -> bool:
        return name.endswith(self.lfs_suffixes)


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeHub:
    repos: dict[str, Repo] = field(default_factory=dict)
    faults: dict[str, str] = field(default_factory=dict)
    log: list[tuple[str, str, str | None, str | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._server: ThreadingHTTPServer | None = None
        self._by_sha: dict[str, tuple[str, bytes]] = {}

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> str:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- queries for tests ----------------------------------------------------
    def gets(self) -> list[str]:
        """Filenames whose bytes were requested (GET on resolve or CDN)."""
        return [f for m, p, f, _ in self.log if m == "GET" and f is not None and not p.startswith("/api/")]

    def served(self, repo_id: str, name: str) -> bytes:
        data = self.repos[repo_id].files[name]
        fault = self.faults.get(name)
        if fault == "truncated":
            return data[: len(data) // 2]
        if fault == "garbage":
            return bytes((b ^ 0x5A) for b in data)
        return data


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _send(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _error(self, code: int, error_code: str, message: str, head: bool = False) -> None:
        body = json.dumps({"error": message}).encode()
        self._send(code, body, {"Content-Type": "application/json", "X-Error-Code": error_code,
                                "X-Error-Message": message}, head)

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    def _route(self, head: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        method = "HEAD" if head else "GET"
        fname = None
        try:
            if path.startswith("/api/models/"):
                self.fake.log.append((method, path, None, None))
                return self._model_info(path[len("/api/models/"):], head)
            if path.startswith("/cdn/"):
                sha = path[len("/cdn/"):]
                repo_id, fname = self.fake._by_sha.get(sha, (None, None))
                self.fake.log.append((method, path, fname, self.headers.get("Range")))
                if fname is None:
                    return self._error(404, "EntryNotFound", "no such blob", head)
                return self._bytes(repo_id, fname, head)
            if "/resolve/" in path:
                repo_id, rest = path.lstrip("/").split("/resolve/", 1)
                rev, fname = rest.split("/", 1)
                self.fake.log.append((method, path, fname, self.headers.get("Range")))
                return self._resolve(repo_id, rev, fname, head)
            self.fake.log.append((method, path, None, None))
            self._error(404, "NotFound", f"unknown endpoint {path}", head)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _repo(self, repo_id: str, rev: str | None, head: bool) -> Repo | None:
        repo = self.fake.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found", head)
            return None
        if rev not in (None, "main", repo.sha):
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", head)
            return None
        return repo

    def _model_info(self, rest: str, head: bool) -> None:
        rev = None
        if "/revision/" in rest:
            rest, rev = rest.split("/revision/", 1)
        repo = self._repo(rest, rev, head)
        if repo is None:
            return
        siblings = []
        for name, data in sorted(repo.files.items()):
            sib = {"rfilename": name, "size": len(data), "blobId": _git_sha1(data)}
            if repo.is_lfs(name):
                sha = hashlib.sha256(data).hexdigest()
                sib["lfs"] = {"size": len(data), "sha256": sha, "pointerSize": 134}
                sib["blobId"] = _git_sha1(f"oid sha256:{sha}\nsize {len(data)}\n".encode())
            siblings.append(sib)
        body = json.dumps({"_id": rest, "id": rest, "modelId": rest, "sha": repo.sha, "private": False,
                           "tags": ["gguf"], "siblings": siblings}).encode()
        self._send(200, body, {"Content-Type": "application/json"}, head)

    def _resolve(self, repo_id: str, rev: str, fname: str, head: bool) -> None:
        repo = self._repo(repo_id, rev, head)
        if repo is None:
            return
        if fname not in repo.files:
            return self._error(404, "EntryNotFound", f"{fname} does not exist", head)
        data = repo.files[fname]
        common = {"X-Repo-Commit": repo.sha}
        if repo.is_lfs(fname):
            sha = hashlib.sha256(data).hexdigest()
            self.fake._by_sha[sha] = (repo_id, fname)
            served = self.fake.served(repo_id, fname)
            # Another host name for the "CDN", so the client treats it as one (it does not follow the HEAD there).
            loc = f"http://localhost:{self.server.server_address[1]}/cdn/{sha}"
            return self._send(302, b"", {**common, "Location": loc, "X-Linked-Etag": f'"{sha}"',
                                          "X-Linked-Size": str(len(served)), "ETag": f'"{_git_sha1(data)}"'}, head)
        self._bytes(repo_id, fname, head, {**common, "ETag": f'"{_git_sha1(data)}"'})

    def _bytes(self, repo_id: str, fname: str, head: bool, extra: dict[str, str] | None = None) -> None:
        data = self.fake.served(repo_id, fname)
        start, end = 0, len(data) - 1
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            first, _, last = rng[len("bytes="):].partition("-")
            start = int(first or 0)
            if last:
                end = min(int(last), end)
        body = data[start:end + 1]
        headers = {**(extra or {}), "Accept-Ranges": "bytes", "Content-Length": str(len(body)),
                   "Content-Type": "application/octet-stream"}
        code = 200
        if rng:
            code = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        if not head and self.fake.faults.get(fname) == "cut":
            del self.fake.faults[fname]  # only once
            self.send_response(code)
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            import socket

            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if not head and self.fake.faults.get(fname) == "slow":
            import time

            self.send_response(code)
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            try:
                for i in range(0, len(body), 4096):
                    self.wfile.write(body[i:i + 4096])
                    self.wfile.flush()
                    time.sleep(0.02)
            except (BrokenPipeError, ConnectionResetError):  # the client went away (killed): expected here
                self.close_connection = True
            return
        self._send(code, body, headers, head)
