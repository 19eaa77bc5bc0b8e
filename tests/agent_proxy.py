"""A recording reverse proxy for agent-CLI tests and benchmarks (stdlib only).

``RecordingProxy(upstream_url)`` listens on ``127.0.0.1`` (port 0) in a background
thread and forwards every request -- any method, path, query, headers and body -- to
the upstream over ``http.client``. The response is streamed back as it arrives: each
piece the upstream hands over is written and flushed at once (SSE is never buffered),
with ``Content-Length`` passed through when the upstream sent one and chunked
transfer-encoding otherwise, so the client connection can stay keep-alive.

Each exchange is kept in ``.requests`` as a :class:`RecordedRequest` (credentials in
``x-api-key`` / ``authorization`` redacted); ``.summary()`` gives one printable line per
request::

    with RecordingProxy("http://127.0.0.1:8080") as proxy:
        run_cli(base_url=proxy.url)
    print("\\n".join(proxy.summary()))
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

REDACTED = frozenset({"x-api-key", "authorization"})
# hop-by-hop headers (RFC 9110 7.6.1) plus the framing ones this proxy sets itself
_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authorization",
                  "te", "trailer", "transfer-encoding", "upgrade", "expect", "content-length"})
_NO_BODY = frozenset({204, 304})


@dataclass
class RecordedRequest:
    """One proxied exchange: the request as received and the upstream's answer."""

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]  # as received, credentials redacted
    body: bytes
    status: int | None = None  # None while in flight; 502 if the upstream gave no response
    content_type: str | None = None
    elapsed_s: float | None = None  # request received -> response fully relayed
    error: str | None = None  # set if the exchange broke off (upstream unreachable or cut, client gone)

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def json(self) -> Any:
        """The body parsed as JSON (raises ValueError if it is not JSON)."""
        return json.loads(self.body)

    def line(self) -> str:
        """``METHOD path?query status size=NB headers=[names]``."""
        target = self.path + ("?" + self.query if self.query else "")
        names = ",".join(k.lower() for k, _ in self.headers)
        return f"{self.method} {target} {self.status} size={len(self.body)}B headers=[{names}]"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        """Keep test output quiet."""

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _proxy(self) -> None:
        started = time.monotonic()
        path, _, query = self.path.partition("?")
        body = self._read_body()
        rec = RecordedRequest(self.command, path, query, [
            (k, "<redacted>" if k.lower() in REDACTED else v) for k, v in self.headers.items()], body)
        with self.server.lock:
            self.server.records.append(rec)
        up = self.server.upstream
        conn = http.client.HTTPConnection(self.server.host, up.port or 80, timeout=self.server.timeout_s)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP and k.lower() != "host"}
            headers["Host"] = up.netloc
            if body or self.command in ("POST", "PUT", "PATCH"):
                headers["Content-Length"] = str(len(body))
            try:
                conn.request(self.command, up.path.rstrip("/") + self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                rec.status, rec.content_type, rec.error = 502, "text/plain", repr(exc)
                msg = f"proxy: no response from upstream {up.netloc}: {exc!r}".encode()
                self.send_response(502)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(msg)))
                self.end_headers()
                self.wfile.write(msg)
                return
            rec.status, rec.content_type = resp.status, resp.getheader("Content-Type")
            self._relay(resp)
        except (OSError, http.client.HTTPException) as exc:
            # the client went away, or the upstream broke off mid-body: drop the client
            # connection without a final chunk so it sees the truncation too
            rec.error = repr(exc)
            self.close_connection = True
        finally:
            conn.close()
            rec.elapsed_s = time.monotonic() - started

    def _relay(self, resp: http.client.HTTPResponse) -> None:
        """Send status and headers, then the body piece by piece as the upstream yields it."""
        self.send_response_only(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in _HOP:
                self.send_header(k, v)
        length = resp.getheader("Content-Length")
        no_body = self.command == "HEAD" or resp.status in _NO_BODY
        chunked = not no_body and length is None
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", length or "0")
        self.end_headers()
        if no_body:
            return
        sent = 0
        while piece := resp.read1(65536):
            sent += len(piece)
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            self.wfile.flush()
        if length is not None and sent < int(length):  # read1 reports a cut as a quiet EOF
            raise http.client.IncompleteRead(b"", int(length) - sent)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _proxy


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str, timeout_s: float) -> None:
        self.upstream = urlsplit(upstream)
        if self.upstream.scheme != "http" or not self.upstream.hostname:
            raise ValueError(f"upstream must be an http:// URL, got {upstream!r}")
        self.host: str = self.upstream.hostname
        super().__init__(("127.0.0.1", 0), _Handler)
        self.timeout_s = timeout_s
        self.records: list[RecordedRequest] = []
        self.lock = threading.Lock()


class RecordingProxy:
    """Forward everything to ``upstream_url`` and record it; use as a context manager."""

    def __init__(self, upstream_url: str, timeout_s: float = 600.0) -> None:
        self._server = _Server(upstream_url, timeout_s)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="RecordingProxy", daemon=True)

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the exchanges so far, in arrival order."""
        with self._server.lock:
            return list(self._server.records)

    def summary(self) -> list[str]:
        """One ``METHOD path?query status size=NB headers=[...]`` line per request."""
        return [r.line() for r in self.requests]

    def start(self) -> RecordingProxy:
        """Start serving in the background thread (``__enter__`` does this)."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop accepting requests and release the port (``__exit__`` does this)."""
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> RecordingProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
