"""Batched benchmark with the semantics of llama.cpp's ``llama-batched-bench``.

For every combination of prompt length ``npp``, generated tokens ``ntg`` and
parallel sequences ``npl``: ``npl`` sequences each process an ``npp``-token
prompt (or, with ``shared_prompt``, one prompt copied to all), then generate
``ntg`` tokens each, all sequences advancing together one token per step.
Tokens are random ids, as in llama.cpp. Each row reports:

====== =====================================================================
PP     prompt tokens per sequence
TG     generated tokens per sequence
B      parallel sequences
N_KV   KV cells the row needs
T_PP   prompt-processing time (s);  S_PP = prompt tokens / T_PP
T_TG   generation time (s);         S_TG = B * TG / T_TG
T      T_PP + T_TG;                 S    = all tokens / T
====== =====================================================================

Example::

    >>> rows = step35.tools.bench.run(path, npp=[128, 512], ntg=[32], npl=[1, 4])
    >>> print(step35.tools.bench.markdown(rows))
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from pathlib import Path
from typing import Any

from .._runtime import backends as _backends
from ..context import ContextParams
from ..errors import ContextOverflowError

__all__ = ["BenchRow", "DraftRow", "run", "run_mtp", "markdown", "mtp_markdown", "to_json", "to_csv", "required_kv"]


@dataclasses.dataclass(frozen=True)
class BenchRow:
    """One row of the benchmark table (times in seconds, speeds in tokens/s)."""

    pp: int
    tg: int
    pl: int
    n_kv: int
    t_pp: float
    t_tg: float
    shared_prompt: bool = False

    @property
    def s_pp(self) -> float:
        """Prompt tokens per second (one prompt when shared, else B prompts)."""
        n = self.pp if self.shared_prompt else self.pl * self.pp
        return n / self.t_pp if self.t_pp > 0 else 0.0

    @property
    def s_tg(self) -> float:
        """Generated tokens per second over all sequences."""
        return self.pl * self.tg / self.t_tg if self.t_tg > 0 else 0.0

    @property
    def t(self) -> float:
        """Total time."""
        return self.t_pp + self.t_tg

    @property
    def s(self) -> float:
        """All tokens per second."""
        n = (self.pp if self.shared_prompt else self.pl * self.pp) + self.pl * self.tg
        return n / self.t if self.t > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """The row with the derived speeds, as llama-batched-bench's JSONL names them."""
        return {"pp": self.pp, "tg": self.tg, "pl": self.pl, "n_kv": self.n_kv, "t_pp": self.t_pp,
                "speed_pp": self.s_pp, "t_tg": self.t_tg, "speed_tg": self.s_tg, "t": self.t, "speed": self.s,
                "is_pp_shared": int(self.shared_prompt)}


def required_kv(pp: int, tg: int, pl: int, shared_prompt: bool, kv_unified: bool = True) -> int:
    """KV cells a row needs (llama-batched-bench skips rows that need more than n_ctx)."""
    if shared_prompt:
        return (pp if kv_unified else pl * pp) + pl * tg
    return pl * (pp + tg)


def _ints(name: str, values: int | Iterable[int], minimum: int) -> list[int]:
    vals = [values] if isinstance(values, int) else list(values)
    if not vals:
        raise ValueError(f"{name} must name at least one value")
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ValueError(f"{name} values must be ints >= {minimum}, got {v!r}")
    return vals


class _Progress:
    """A one-line progress display on stderr (only on a terminal unless forced)."""

    def __init__(self, enabled: bool | None, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.width = 0

    def show(self, text: str) -> None:
        if not self.enabled:
            return
        pad = max(0, self.width - len(text))
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
        self.width = len(text)

    def clear(self) -> None:
        if self.enabled and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0


def _run_row(worker: ThreadPoolExecutor, ctx: Any, progress: _Progress, label: str, fn: Callable[..., Any],
             *args: Any, **kw: Any) -> Any:
    """Run native ``fn`` on the benchmark's worker thread while this thread shows progress and watches for Ctrl-C.

    Every call of one benchmark runs on the same worker thread (the warm-up
    included): a fresh thread per row can be placed beside a busy ggml worker
    for its first batch, which makes short rows slow and noisy.
    """
    fut = worker.submit(fn, *args, **kw)
    t0 = time.perf_counter()
    try:
        while True:
            try:
                return fut.result(timeout=0.25)
            except FuturesTimeout:
                done, total = ctx._handle.progress
                if total:
                    progress.show(f"{label}: {done}/{total} tokens, {time.perf_counter() - t0:.0f} s")
    except KeyboardInterrupt:
        ctx.cancel()
        fut.exception()  # wait for the native call to stop
        raise


def run(
    model: Any,
    npp: int | Sequence[int] = (128, 256, 512),
    ntg: int | Sequence[int] = (128,),
    npl: int | Sequence[int] = (1,),
    *,
    shared_prompt: bool = False,
    tg_separate: bool = False,
    n_ctx: int | None = None,
    n_batch: int = 2048,
    n_ubatch: int = 512,
    flash_attn: str | bool = "auto",
    type_k: str = "f16",
    type_v: str = "f16",
    n_threads: int | None = None,
    n_threads_batch: int | None = None,
    kv_unified: bool = False,
    n_gpu_layers: int = -1,
    use_mmap: bool = True,
    devices: Sequence[str] | None = None,
    rpc: str | Sequence[str] | None = None,
    tensor_split: Sequence[float] | None = None,
    seed: int = 0,
    progress: bool | None = None,
    on_row: Callable[[BenchRow], None] | None = None,
) -> list[BenchRow]:
    """Run the benchmark and return its rows (in llama-batched-bench's order: npp, then ntg, then npl).

    Args:
        model: a :class:`~step35.Model` or the path of a GGUF.
        npp, ntg, npl: prompt lengths, generated tokens, parallel sequences (``-npp -ntg -npl``).
        shared_prompt: one prompt shared by all sequences (``-pps``).
        tg_separate: generate the sequences one after the other instead of together.
        n_ctx: KV size (``-c``); default: the largest row's need. Rows that need
            more than ``n_ctx`` are skipped, as in llama.cpp.
        n_batch, n_ubatch, flash_attn, type_k, type_v, n_threads, n_threads_batch,
            kv_unified: context settings (``-b -ub -fa -ctk -ctv -t -tb -kvu``);
            kv_unified defaults to False as in llama-batched-bench.
        n_gpu_layers, use_mmap, devices, rpc, tensor_split: how to load ``model`` when it is a
            path (see :class:`Model`).
        seed: seed of the random token ids.
        progress: a progress line on stderr (default: when stderr is a terminal).
        on_row: called with each row as soon as it is measured.
    """
    from ..model import Model

    pps = _ints("npp", npp, 0)
    tgs = _ints("ntg", ntg, 0)
    pls = _ints("npl", npl, 1)
    combos = [(pp, tg, pl) for pp in pps for tg in tgs for pl in pls]
    need = max(required_kv(pp, tg, pl, shared_prompt, kv_unified) for pp, tg, pl in combos)
    if n_ctx is None or n_ctx == 0:
        n_ctx = max(need, 256)
    params = ContextParams(n_ctx=n_ctx, n_batch=n_batch, n_ubatch=min(n_ubatch, n_batch), n_seq_max=max(pls),
                           flash_attn=flash_attn, type_k=type_k, type_v=type_v, n_threads=n_threads,
                           n_threads_batch=n_threads_batch, kv_unified=kv_unified, warmup=False)
    own = not isinstance(model, Model)
    # context=params: the memory check made when loading plans for this benchmark's context
    m = Model(model, n_gpu_layers=n_gpu_layers, use_mmap=use_mmap, devices=devices, rpc=rpc,
              tensor_split=tensor_split, context=params) if own else model
    display = _Progress(progress)
    rows: list[BenchRow] = []
    try:
        with m.new_context(params) as ctx, ThreadPoolExecutor(1, thread_name_prefix="step35-bench") as worker:
            core = _backends.core()
            _run_row(worker, ctx, display, "warm-up", core.bench_warmup, ctx._handle, seed)
            runnable = [c for c in combos if required_kv(*c, shared_prompt, kv_unified) <= ctx.n_ctx]
            for i, (pp, tg, pl) in enumerate(runnable):
                label = f"row {i + 1}/{len(runnable)} (PP {pp}, TG {tg}, B {pl})"
                d = _run_row(worker, ctx, display, label, core.bench_row, ctx._handle, pp=pp, tg=tg, pl=pl,
                             shared=shared_prompt, tg_separate=tg_separate, kv_unified=kv_unified, seed=seed + i)
                row = BenchRow(pp=pp, tg=tg, pl=pl, n_kv=int(d["n_kv"]), t_pp=float(d["t_pp"]),
                               t_tg=float(d["t_tg"]), shared_prompt=shared_prompt)
                rows.append(row)
                display.clear()
                if on_row is not None:
                    on_row(row)
    finally:
        display.clear()
        if own:
            m.close()
    if not rows:
        raise ContextOverflowError(f"every row needs more than n_ctx={n_ctx} KV cells (the largest needs {need})")
    return rows


@dataclasses.dataclass(frozen=True)
class DraftRow:
    """One row of the multi-token-prediction benchmark: one sequence generating greedily with a draft length."""

    pp: int
    tg: int  #: tokens generated
    draft: int  #: MTP draft length (0: none)
    t_pp: float  #: prompt time (s)
    t_tg: float  #: time from the first generated token to the last (s)
    drafted: int
    accepted: int

    @property
    def s_tg(self) -> float:
        """Generated tokens per second after the first (llama-server's ``predicted_per_second``)."""
        return (self.tg - 1) / self.t_tg if self.t_tg > 0 and self.tg > 1 else 0.0

    @property
    def acceptance(self) -> float:
        """Drafted tokens kept / drafted."""
        return self.accepted / self.drafted if self.drafted else 0.0

    def as_dict(self) -> dict[str, Any]:
        """Plain data, with the derived speed and acceptance."""
        return {**dataclasses.asdict(self), "speed_tg": self.s_tg, "acceptance": self.acceptance}


def run_mtp(
    model: Any,
    npp: int | Sequence[int] = (128,),
    ntg: int | Sequence[int] = (128,),
    drafts: int | Sequence[int] = (0, 1, 2, 3),
    *,
    mtp: Any = True,
    seed: int = 0,
    on_row: Callable[[DraftRow], None] | None = None,
    **context: Any,
) -> list[DraftRow]:
    """Greedy generation of one sequence at each MTP draft length: tok/s and acceptance.

    ``model``: a :class:`~step35.Model` loaded with heads, or a path (loaded
    with ``mtp``). The prompt is ``pp`` random token ids (seeded); each row
    starts from an empty cache. ``context``: :class:`~step35.ContextParams`
    fields (``n_ctx`` defaults to what the largest row needs).
    """
    import random

    from ..model import Model

    pps, tgs = _ints("npp", npp, 1), _ints("ntg", ntg, 2)
    ds = _ints("draft", drafts, 0)
    context.setdefault("n_ctx", max(256, max(pps) + max(tgs) + 8))
    own = not isinstance(model, Model)
    m = Model(model, mtp=mtp, context=ContextParams(**context)) if own else model
    rows: list[DraftRow] = []
    try:
        rng = random.Random(seed)
        for pp in pps:
            prompt = [rng.randrange(m.n_vocab) for _ in range(pp)]
            for tg in tgs:
                for d in ds:
                    m.context.clear()
                    s = m.generate(prompt, max_tokens=tg, temperature=0, draft=d).stats
                    first = s.ttft_ms - s.prompt_ms
                    row = DraftRow(pp=pp, tg=s.generated_tokens, draft=d, t_pp=s.prompt_ms / 1e3,
                                   t_tg=(s.generation_ms - first) / 1e3, drafted=s.draft.drafted if s.draft else 0,
                                   accepted=s.draft.accepted if s.draft else 0)
                    rows.append(row)
                    if on_row is not None:
                        on_row(row)
    finally:
        if own:
            m.close()
    return rows


MTP_HEADER = ("PP", "TG", "DRAFT", "T_PP s", "T_TG s", "S_TG t/s", "DRAFTED", "ACCEPTED", "ACCEPT")


def mtp_header() -> str:
    """The header and rule lines of the MTP benchmark table."""
    return ("|" + " | ".join(f"{h:>8}" for h in MTP_HEADER) + " |\n|"
            + "|".join("-" * 10 for _ in MTP_HEADER) + "|")


def format_mtp_row(r: DraftRow) -> str:
    """One line of the MTP benchmark table."""
    return (f"|{r.pp:8d} | {r.tg:8d} | {r.draft:8d} | {r.t_pp:8.3f} | {r.t_tg:8.3f} | {r.s_tg:8.2f} | "
            f"{r.drafted:8d} | {r.accepted:8d} | {r.acceptance:8.3f} |")


def mtp_markdown(rows: Iterable[DraftRow]) -> str:
    """The rows of :func:`run_mtp` as a markdown table."""
    return "\n".join([mtp_header(), *(format_mtp_row(r) for r in rows)])


HEADER = ("PP", "TG", "B", "N_KV", "T_PP s", "S_PP t/s", "T_TG s", "S_TG t/s", "T s", "S t/s")


def format_row(r: BenchRow) -> str:
    """One markdown table line, formatted exactly as llama-batched-bench prints it."""
    return (f"|{r.pp:6d} | {r.tg:6d} | {r.pl:4d} | {r.n_kv:6d} | {r.t_pp:8.3f} | {r.s_pp:8.2f} | "
            f"{r.t_tg:8.3f} | {r.s_tg:8.2f} | {r.t:8.3f} | {r.s:8.2f} |")


def table_header() -> str:
    """The header and rule lines of the markdown table."""
    h = "|{:>6} | {:>6} | {:>4} | {:>6} | {:>8} | {:>8} | {:>8} | {:>8} | {:>8} | {:>8} |".format(*HEADER)
    rule = "|{}-|-{}-|-{}-|-{}-|-{}-|-{}-|-{}-|-{}-|-{}-|-{}-|".format(
        "-" * 6, "-" * 6, "-" * 4, "-" * 6, *["-" * 8] * 6)
    return h + "\n" + rule


def markdown(rows: Iterable[BenchRow]) -> str:
    """The rows as llama-batched-bench's markdown table."""
    return "\n".join([table_header(), *(format_row(r) for r in rows)])


def to_json(rows: Iterable[BenchRow]) -> str:
    """The rows as JSON lines (llama-batched-bench's ``--output-format jsonl`` field names)."""
    return "\n".join(json.dumps(r.as_dict()) for r in rows)


def to_csv(rows: Iterable[BenchRow]) -> str:
    """The rows as CSV with a header line."""
    rows = list(rows)
    buf = io.StringIO()
    fields = list(BenchRow(0, 0, 1, 0, 0.0, 0.0).as_dict())
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r.as_dict())
    return buf.getvalue()


def describe(path: str | os.PathLike[str], params: dict[str, Any]) -> str:
    """The settings line printed above the table."""
    return f"model: {Path(os.fspath(path)).name} | " + ", ".join(f"{k} = {v}" for k, v in params.items())
