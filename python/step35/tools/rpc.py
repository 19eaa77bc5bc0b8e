"""Remote devices: run parts of a model on other machines with llama.cpp's RPC backend.

A *worker* (``step35 rpc-server``, :func:`serve`) exposes one machine's devices
(its GPU, or its CPU and RAM) over TCP; a client adds workers by ``host:port``
(:func:`connect`, ``Model(path, rpc=[...])``, ``--rpc`` on the CLI) and their
devices take layers as local GPUs do. The engine is ggml-rpc from the pinned
llama.cpp; step35 only chooses, checks and explains.

The RPC protocol has **no authentication and no encryption**: anyone who can
reach a worker's port can run code on its devices and read its memory. A worker
binds 127.0.0.1 unless told otherwise; reach it from another machine through an
SSH tunnel (see the README), never over an open network.

A worker that cannot be reached, speaks another protocol version, or goes away
while a model runs on it raises :class:`~step35.errors.RPCError` (never a
crash): the model is then unusable, close it and load it again.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
import threading
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "parse_endpoint", "connect", "remote_devices", "serve",
           "OPEN_NETWORK_WARNING"]

#: Where a worker listens unless told otherwise: this machine only.
DEFAULT_HOST = "127.0.0.1"
#: llama.cpp's rpc-server port.
DEFAULT_PORT = 50052
#: llama.cpp's own warning (tools/rpc/rpc-server.cpp), printed when a worker binds anything but 127.0.0.1.
OPEN_NETWORK_WARNING = """
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
WARNING: Host ('{host}') is != '127.0.0.1'
         Never expose the RPC server to an open network!
         This is an experimental feature and is not secure!
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
"""


def parse_endpoint(value: str) -> tuple[str, int]:
    """Split ``host:port`` (a name or IPv4 address, and a port in 1..65535); ValueError otherwise."""
    if not isinstance(value, str) or value.count(":") != 1:
        raise ValueError(f"an RPC worker is given as host:port (e.g. 192.168.1.20:{DEFAULT_PORT}), got {value!r}")
    host, _, port_text = value.partition(":")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"an RPC worker is given as host:port with a port in 1..65535, got {value!r}")
    return host, int(port_text)


def _endpoints(rpc: str | Iterable[str]) -> list[str]:
    """``rpc`` as a list of checked, distinct endpoints (a string may hold several, comma-separated)."""
    items = rpc.split(",") if isinstance(rpc, str) else list(rpc)
    out: list[str] = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        parse_endpoint(item)
        if item not in out:
            out.append(item)
    return out


_lock = threading.Lock()
_workers: dict[str, list[str]] = {}  # endpoint -> its device names, for every worker connected


def connect(rpc: str | Iterable[str]) -> list[str]:
    """Add the devices of the workers at ``rpc`` (``"host:port"``, a list, or comma-separated).

    Returns the names of their devices (``RPC0``, ``RPC1``, ...), in the order
    given. Each worker is asked again on every call, so one that has gone away
    fails here rather than in the middle of a load. Its devices then appear in
    :func:`step35.backends` (with their memory) like local ones.

    Raises:
        ValueError: an endpoint is not ``host:port``.
        RPCError: a worker cannot be reached, speaks another protocol version, or has no devices.
    """
    from .._runtime.backends import core, note_remote

    names: list[str] = []
    for endpoint in _endpoints(rpc):
        devs = core().rpc_connect(endpoint)
        with _lock:
            _workers[endpoint] = list(devs)
        note_remote(endpoint, devs)
        names.extend(devs)
    return names


def remote_devices() -> list[str]:
    """Names of every device of every worker this process has connected to."""
    with _lock:
        return [d for devs in _workers.values() for d in devs]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_port(host: str, port: int) -> None:
    """A clear error now if ``host:port`` cannot be bound (in use, not an address of this machine)."""
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ValueError(f"cannot resolve --host {host!r}: {e}") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e} "
                             "(another process uses the port? pick one with --port)") from None


def default_devices(devices: Sequence[dict[str, Any]]) -> list[str]:
    """What a worker serves by default, as llama.cpp's rpc-server: every GPU, else the CPU."""
    from .._runtime.backends import DEVICE_ACCEL, DEVICE_CPU, is_remote

    gpus = [d["name"] for d in devices if d["type"] not in (DEVICE_CPU, DEVICE_ACCEL) and not is_remote(d)]
    if gpus:
        return gpus
    cpus = [d["name"] for d in devices if d["type"] == DEVICE_CPU]
    return cpus[:1]


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, devices: Sequence[str] | None = None,
          mem: Sequence[int] | None = None, cache_dir: str | os.PathLike[str] | None = None,
          threads: int | None = None, allow_open_network: bool = False) -> None:
    """Run a worker: serve this machine's devices to RPC clients at ``host:port``. Blocks until Ctrl-C.

    Args:
        host: the address to bind. Anything but a loopback address needs
            ``allow_open_network=True`` and prints llama.cpp's warning: the
            protocol has no authentication.
        port: TCP port (default 50052, llama.cpp's).
        devices: device names to serve (``CUDA0``, ``Vulkan0``, ``CPU``; see
            ``step35 info``); default: every GPU, else the CPU.
        mem: per device (or one value for all), the memory (bytes) to offer,
            reported to clients as its total and free memory, so their memory
            plans leave the rest of this machine alone (default: what the
            device reports).
        cache_dir: a directory where the worker keeps large tensors it was sent,
            so a client that loads the same model again sends only their hashes.
        threads: CPU threads for a CPU device (default: the physical cores).
        allow_open_network: required to bind an address other than loopback.

    Raises:
        ValueError: bad host/port/devices/mem, the port is taken, or a non-loopback
            host without ``allow_open_network``.
        RPCError: the server could not start.
    """
    from .._runtime.backends import backends, core, is_remote
    from .._runtime.system import default_threads

    if not 0 < int(port) < 65536:
        raise ValueError(f"port must be in 1..65535, got {port}")
    if not _is_loopback(host) and not allow_open_network:
        raise ValueError(f"binding {host} exposes this machine's devices to anyone who can reach it: the RPC "
                         "protocol has no authentication. Keep the default 127.0.0.1 and use an SSH tunnel "
                         "(see the README), or pass --allow-open-network (allow_open_network=True) on a network "
                         "you trust")
    available = [d for b in backends().loaded for d in b.devices if not is_remote(d)]
    names = list(devices) if devices else default_devices(available)
    known = [d["name"] for d in available]
    wrong = [n for n in names if n not in known]
    if wrong or not names:
        raise ValueError(f"no device named {', '.join(map(repr, wrong)) or '(none)'}; the devices here are "
                         f"{', '.join(known) or 'none'}; see `step35 info`")
    limits = [int(m) for m in mem] if mem else []
    if limits and len(limits) not in (1, len(names)):
        raise ValueError(f"--mem takes one size, or one per device ({len(names)}: {', '.join(names)})")
    if len(limits) == 1 and len(names) > 1:
        limits = limits * len(names)
    if any(m < 0 for m in limits):
        raise ValueError("--mem sizes cannot be negative (0 = what the device reports)")
    if cache_dir is not None:
        os.makedirs(cache_dir, exist_ok=True)
    _check_port(host, int(port))
    if not _is_loopback(host):
        print(OPEN_NETWORK_WARNING.format(host=host), file=sys.stderr, flush=True)
    n_threads = threads if threads and threads > 0 else default_threads()
    error: list[Exception] = []

    def run() -> None:
        try:
            core().rpc_serve(f"{host}:{port}", None if cache_dir is None else os.fspath(cache_dir), n_threads,
                             names, limits)
        except Exception as e:  # handed to the main thread, which raises it
            error.append(e)

    # The server loop never returns while it serves; the main thread waits on
    # it so that Ctrl-C (KeyboardInterrupt) still reaches Python.
    worker = threading.Thread(target=run, name="step35-rpc-server", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.2)
    if error:
        raise error[0]


def model_devices(devices: Sequence[str] | str | None,
                  rpc: str | Iterable[str] | None) -> tuple[list[str] | None, list[str]]:
    """The devices a model loads on, and the workers among them (to watch for failures).

    ``rpc`` workers are connected and their devices come first (as llama.cpp
    orders them), then ``devices`` (default: the local GPUs llama.cpp would
    pick). Once any worker is connected in this process, a model without
    ``rpc`` gets an explicit local list, so it never lands on a worker by
    accident. ``None`` means llama.cpp's default (no worker connected).
    """
    from .._runtime.backends import local_gpus, resolve_devices

    remote = connect(rpc) if rpc is not None else []
    device_list = resolve_devices(devices)
    if device_list is None and (remote or remote_devices()):
        device_list = local_gpus()
    if remote:
        device_list = remote + [d for d in device_list or [] if d not in remote]
    with _lock:
        used = set(device_list or ())
        endpoints = [e for e, devs in _workers.items() if used.intersection(devs)]
    return device_list, endpoints
