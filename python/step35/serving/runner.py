"""Running the app: uvicorn until SIGINT or SIGTERM, with the server's address reported once bound."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import uvicorn

__all__ = ["run", "url_of"]


def url_of(host: str, port: int) -> str:
    """``http://host:port`` (an IPv6 address in brackets)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _Uvicorn(uvicorn.Server):
    """uvicorn's server, telling ``on_ready`` the address it listens on once its socket is bound."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[str, int], None] | None) -> None:
        super().__init__(config)
        self._on_ready = on_ready

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.started and self._on_ready is not None and not self.should_exit:
            host, port = self.config.host, self.config.port
            for server in getattr(self, "servers", ()):
                for sock in server.sockets or ():
                    name = sock.getsockname()
                    if isinstance(name, tuple):
                        port = name[1]
                        break
            self._on_ready(host, port)


def run(app: Any, *, host: str = "127.0.0.1", port: int = 8080, log_level: str = "info",
        shutdown_timeout: float = 10.0, on_ready: Callable[[str, int], None] | None = None) -> str | None:
    """Serve ``app`` with uvicorn until SIGINT or SIGTERM; returns the signal's name (or None).

    On the signal the server stops accepting connections; event streams end
    at once (their generation is cancelled), other requests get up to
    ``shutdown_timeout`` seconds to finish before they are cancelled too.
    ``on_ready(host, port)`` is called once the socket is bound (``port=0``
    picks a free port; ``on_ready`` gets the real one).
    """
    import signal
    import threading

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="off",
                            timeout_graceful_shutdown=math.ceil(max(0.0, shutdown_timeout)),
                            access_log=log_level in ("info", "debug"))
    server = _Uvicorn(config, on_ready)
    # uvicorn re-raises a caught signal with the handler it found once it has
    # shut down; with these handlers that is a no-op here, so the caller gets
    # to close the engine (and return) instead of dying of SIGTERM.
    received: list[int] = []
    main = threading.current_thread() is threading.main_thread()
    signals = [signal.SIGINT, signal.SIGTERM] if main else []
    previous = {sig: signal.signal(sig, lambda sig, frame: received.append(sig)) for sig in signals}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return signal.Signals(received[0]).name if received else None
