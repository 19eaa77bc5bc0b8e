"""Models across processes with llama.cpp's RPC backend: `step35 rpc-server` workers on loopback.

Two workers (one CPU thread each: this machine has two cores, and a worker and
a client that both spin threads on them slow each other down a hundredfold)
serve their CPU; the tiny model is split over them and the local CPU, and must
compute what a local CPU-only run computes. Failures (a worker killed while a
model runs on it, a worker that is not running, a worker of another protocol
version) must be RPCError within a bounded time, never a crash or a hang.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

import step35
import step35.tools.bench
from step35.errors import MemoryFitError, RPCError

PROMPT = "The quick brown fox jumps over the lazy dog. Once upon a time"
# Logits of the split run may differ from the local run by the order of float
# additions at the layer boundaries (none seen: both sides run the same CPU
# kernels); this bounds it far below anything that changes a greedy choice.
LOGIT_ATOL = 1e-4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"rpc-server exited with {proc.returncode}: {output(proc)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"rpc-server on port {port} did not listen within {timeout} s")


def output(proc: subprocess.Popen) -> str:
    """What a worker printed (stdout and stderr go to a file: a pipe nobody reads would fill and block it)."""
    log = getattr(proc, "log_path", None)
    if not log:
        return ""
    with open(log, encoding="utf-8", errors="replace") as f:
        return f.read()


def start_worker(*extra: str, port: int | None = None, host: str | None = None,
                 sigint_default: bool = False) -> tuple[subprocess.Popen, str]:
    import tempfile

    port = port or free_port()
    fd, log = tempfile.mkstemp(prefix="step35-rpc-server-", suffix=".log")
    args = [sys.executable, "-m", "step35", "rpc-server", "--port", str(port), "-t", "1", *extra]
    if host:
        args += ["--host", host]
    # A process started in the background by a non-interactive shell inherits SIGINT
    # ignored; sigint_default restores it so that the worker installs Python's handler.
    with os.fdopen(fd, "w") as f:
        proc = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT,
                                preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
                                if sigint_default else None)
    proc.log_path = log  # type: ignore[attr-defined]
    wait_listening(port, proc)
    return proc, f"127.0.0.1:{port}"


def stop(proc: subprocess.Popen) -> str:
    """Stop a worker (if it still runs); returns what it printed."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    text = output(proc)
    os.unlink(proc.log_path)  # type: ignore[attr-defined]
    return text


@pytest.fixture(scope="module")
def workers(model_cache) -> Iterator[list[str]]:
    procs = [start_worker() for _ in range(2)]
    try:
        yield [endpoint for _, endpoint in procs]
    finally:
        for proc, _ in procs:
            stop(proc)


@pytest.fixture
def worker() -> Iterator[tuple[subprocess.Popen, str]]:
    """A worker of this test's own (it may be killed)."""
    proc, endpoint = start_worker()
    try:
        yield proc, endpoint
    finally:
        stop(proc)


def split_layers(n_layer: int) -> int:
    """-ngl that keeps the first third of the layers on this CPU and offloads the rest."""
    return n_layer - n_layer // 3


def test_split_over_two_workers_equals_local_cpu(workers, tiny32_path):
    with step35.Model(tiny32_path, devices=[]) as local:
        ngl = split_layers(local.n_layer)
        tokens = local.tokenize(PROMPT)
        with local.new_context(n_ctx=256) as ctx:
            want = ctx.logits(tokens)
        want_text = local.generate(PROMPT, max_tokens=48, temperature=0).text
    with step35.Model(tiny32_path, rpc=workers, n_gpu_layers=ngl, tensor_split=[1, 1]) as split:
        assert split.devices[:2] == step35.tools.rpc.connect(workers)
        with split.new_context(n_ctx=256) as ctx:
            got = ctx.logits(tokens)
            placed = {row["device"] or row["buffer_type"]: row["model"] for row in ctx.memory_breakdown()
                      if row["model"]}
        got_text = split.generate(PROMPT, max_tokens=48, temperature=0).text
    # the weights really are on both workers and on this CPU
    remote = [d for d in placed if d.startswith("RPC")]
    assert len(remote) == 2 and all(placed[d] > 0 for d in remote), placed
    assert any(d.startswith("CPU") for d in placed), placed
    diff = float(np.max(np.abs(got - want)))
    print(f"[rpc] split over {workers} + CPU: max |logit diff| = {diff:.3g} (tolerance {LOGIT_ATOL})")
    assert diff <= LOGIT_ATOL
    assert got_text == want_text and got_text


def test_streamed_greedy_output_identical(workers, tiny_path):
    with step35.Model(tiny_path, devices=[]) as local:
        want = "".join(local.generate(PROMPT, max_tokens=32, temperature=0, stream=True))
    with step35.Model(tiny_path, rpc=",".join(workers), n_gpu_layers=-1) as remote:
        got = "".join(remote.generate(PROMPT, max_tokens=32, temperature=0, stream=True))
    assert got == want


def test_remote_devices_in_backends_and_info(workers):
    names = step35.tools.rpc.connect(workers)
    report = step35.backends()
    listed = {d["name"]: d for b in report.loaded for d in b.devices}
    for name, endpoint in zip(names, workers):
        assert listed[name]["description"] == endpoint
        assert listed[name]["memory_total"] > 0
    r = subprocess.run([sys.executable, "-m", "step35", "info", "--rpc", workers[0]], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"RPC[{workers[0]}]" in r.stdout and f"device RPC0: {workers[0]} (gpu," in r.stdout


def test_worker_offers_mem():
    proc, endpoint = start_worker("--mem", "1G")
    try:
        name = step35.tools.rpc.connect(endpoint)[0]
        dev = next(d for b in step35.backends().loaded for d in b.devices if d["name"] == name)
        assert dev["memory_total"] == dev["memory_free"] == 10**9
    finally:
        stop(proc)


def test_fit_plan_spreads_over_workers_and_refuses_with_a_plan(workers, tiny_path):
    with step35.Model(tiny_path, devices=[]) as local:
        n_layer = local.n_layer
    p = step35.tools.fit.plan(tiny_path, rpc=workers, n_gpu_layers=split_layers(n_layer), tensor_split=[1, 1])
    pools = {q.name: q for q in p.pools}
    names = step35.tools.rpc.connect(workers)
    assert all(n in pools and pools[n].weights > 0 for n in names), str(p)
    assert pools["RAM"].weights > 0 and p.fits
    text = str(p)
    assert all(n in text for n in names)
    # a worker that reports too little memory: refused, with the plan naming it
    proc, small = start_worker("--mem", "1M")
    try:
        with pytest.raises(MemoryFitError) as e:
            step35.Model(tiny_path, rpc=small, n_gpu_layers=-1)
        name = step35.tools.rpc.connect(small)[0]
        assert name in str(e.value) and "does not fit" in str(e.value)
        assert not e.value.plan.fits
    finally:
        stop(proc)


def test_bench_over_rpc(workers, tiny_path):
    rows = step35.tools.bench.run(tiny_path, [32], [8], [1], rpc=workers[0], n_gpu_layers=-1, n_threads=1)
    assert len(rows) == 1 and rows[0].s_tg > 0


def test_cli_run_and_bench_take_rpc(workers, tiny_path):
    run = subprocess.run([sys.executable, "-m", "step35", "run", "-m", str(tiny_path), "-p", "Hi", "-n", "8",
                          "--temp", "0", "--rpc", ",".join(workers), "-ngl", "3", "-ts", "1,2", "-t", "1"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    bench = subprocess.run([sys.executable, "-m", "step35", "bench", "-m", str(tiny_path), "-npp", "16", "-ntg", "4",
                            "--rpc", workers[0], "-t", "1", "--output-format", "jsonl"],
                           capture_output=True, text=True, timeout=300)
    assert bench.returncode == 0, bench.stderr
    assert '"speed_tg"' in bench.stdout


def test_worker_not_running(tiny_path):
    endpoint = f"127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(RPCError, match=f"RPC worker {endpoint}: cannot connect"):
        step35.Model(tiny_path, rpc=endpoint)
    assert time.monotonic() - t0 < 10


def test_worker_killed_mid_generation(worker, tiny_path):
    proc, endpoint = worker
    model = step35.Model(tiny_path, rpc=endpoint, n_gpu_layers=-1)
    n = 0
    killed_at = None
    with pytest.raises(RPCError, match=f"RPC worker {endpoint}: lost the connection") as e:
        for _ in model.generate(PROMPT, max_tokens=100_000, temperature=0, stream=True):
            n += 1
            if n == 16:
                proc.kill()
                killed_at = time.monotonic()
    assert killed_at is not None and time.monotonic() - killed_at < 20
    assert "load it again" in str(e.value)
    # the model stays unusable (a clear error each time), and closes cleanly
    with pytest.raises(RPCError):
        model.generate("again", max_tokens=4)
    model.close()
    # the same worker back on its port: a new model works
    port = int(endpoint.rsplit(":", 1)[1])
    proc2, _ = start_worker(port=port)
    try:
        with step35.Model(tiny_path, rpc=endpoint, n_gpu_layers=-1) as again:
            assert again.generate(PROMPT, max_tokens=4, temperature=0).text
    finally:
        stop(proc2)


def test_worker_killed_while_the_engine_serves(worker, tiny_path):
    proc, endpoint = worker
    with step35.Model(tiny_path, rpc=endpoint, n_gpu_layers=-1) as model:
        with step35.Engine(model, slots=2) as engine:
            streams = [engine.generate(PROMPT, max_tokens=100_000, temperature=0, stream=True) for _ in range(2)]
            first = next(iter(streams[0]))
            assert first is not None
            proc.kill()
            for s in streams:
                t0 = time.monotonic()
                with pytest.raises(RPCError):
                    for _ in s:
                        pass
                assert time.monotonic() - t0 < 20


class _OtherVersionWorker:
    """A TCP peer that answers the RPC handshake (HELLO) with protocol 6.0.0."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _recv(self, conn: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                try:
                    cmd = self._recv(conn, 1)[0]
                    (size,) = struct.unpack("<Q", self._recv(conn, 8))
                    self._recv(conn, size)
                    assert cmd == 14  # RPC_CMD_HELLO
                    reply = bytes([6, 0, 0, 0]) + bytes(24)  # major, minor, patch, padding, conn_caps
                    conn.sendall(struct.pack("<Q", len(reply)) + reply)
                    conn.recv(1)  # the client hangs up
                except (OSError, ConnectionError, AssertionError):
                    pass

    def close(self) -> None:
        self.sock.close()


def test_worker_of_another_protocol_version(tiny_path):
    peer = _OtherVersionWorker()
    try:
        t0 = time.monotonic()
        with pytest.raises(RPCError, match=r"version mismatch: it speaks protocol 6\.0\.0, this client 7\."):
            step35.Model(tiny_path, rpc=peer.endpoint)
        assert time.monotonic() - t0 < 10
    finally:
        peer.close()


@pytest.mark.parametrize("bad", ["localhost", "host:port", "1.2.3.4:0", "1.2.3.4:70000", ":50052", "a:1:2"])
def test_bad_endpoint_is_a_value_error(bad, tiny_path):
    with pytest.raises(ValueError, match="host:port"):
        step35.Model(tiny_path, rpc=bad)


def test_tensor_split_is_checked(workers, tiny_path):
    with pytest.raises(ValueError, match="tensor_split has 3 shares but the model uses 2"):
        step35.Model(tiny_path, rpc=workers, tensor_split=[1, 1, 1])
    with pytest.raises(ValueError, match="non-negative"):
        step35.Model(tiny_path, rpc=workers, tensor_split=[1, -1])


def test_models_without_rpc_stay_local(workers, tiny_path):
    step35.tools.rpc.connect(workers)
    with step35.Model(tiny_path) as m:
        assert not any(d.startswith("RPC") for d in m.devices or [])
        with m.new_context(n_ctx=256) as ctx:
            assert not any(str(r["device"]).startswith("RPC") for r in ctx.memory_breakdown())


def test_server_binds_loopback_unless_told():
    port = free_port()
    r = subprocess.run([sys.executable, "-m", "step35", "rpc-server", "--host", "0.0.0.0", "--port", str(port)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "no authentication" in r.stderr and "--allow-open-network" in r.stderr
    proc, _ = start_worker("--allow-open-network", port=port, host="0.0.0.0")
    printed = stop(proc)
    assert "Never expose the RPC server to an open network!" in printed and "0.0.0.0" in printed


def test_server_port_in_use_is_a_clear_error(workers):
    port = workers[0].rsplit(":", 1)[1]
    r = subprocess.run([sys.executable, "-m", "step35", "rpc-server", "--port", port], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in r.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_server_stops_on_ctrl_c():
    proc, _ = start_worker(sigint_default=True)
    os.kill(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=10) == 0
    assert "step35 rpc-server: stopped" in stop(proc)
