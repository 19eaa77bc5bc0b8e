"""Will it fit? A memory plan for a model and a context, made before anything large is allocated.

Three parts, each from a source that cannot drift from what llama.cpp does:

* **Weights**: the sum of the tensor sizes in the GGUF header(s) (exact; for a
  Hub repo only the headers are fetched, with HTTP range requests).
* **KV cache**: :func:`kv_cache_bytes` follows llama.cpp's own sizing rules
  (context padded to 256 cells, sliding-window layers keep only
  ``window + n_ubatch`` cells unless ``swa_full``, per-layer K/V widths, the
  K/V element types); the tests check it against a live context byte for byte.
* **Compute buffers** and the placement of everything on devices: llama.cpp
  itself, loading the model with ``no_alloc`` (it reads the header, places
  every tensor and reserves its graphs, but allocates and reads nothing).

The plan compares the need of every memory pool (system RAM; each GPU's memory;
on Apple silicon and other unified-memory machines GPU buffers come out of RAM)
with what the machine has, and when something does not fit it says what would:
a ``q8_0`` KV cache, a shorter context, fewer GPU layers, the macOS wired-memory
limit, a smaller quant.

    >>> from step35 import fit
    >>> p = fit.plan("ubergarm/Step-3.5-Flash-GGUF", n_ctx=65536, type_k="q8_0", type_v="q8_0")
    >>> print(p)            # the table; p.fits, p.suggestions, p.to_dict()

:class:`step35.Model` runs :func:`check` before loading (``check_memory=False``
or ``STEP35_NO_FIT_CHECK=1`` skips it).
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .._runtime import backends as _backends
from .._runtime.backends import DEVICE_IGPU, GPU_TYPES, backends, check_tensor_split, resolve_devices
from .._runtime.system import system_memory
from ..errors import MemoryFitError
from ..gguf.files import model_files
from ..gguf.reader import check_model_header, read_header

__all__ = [
    "MemoryFitError",
    "KVCache",
    "Pool",
    "Machine",
    "FitPlan",
    "kv_cache_bytes",
    "kv_table",
    "weight_bytes",
    "system_memory",
    "plan",
    "check",
    "check_context",
]

_MiB = 1 << 20
_GiB = 1 << 30
#: A pool fits only if this much stays free (the OS, the Python process, fragmentation):
#: 1 GiB plus 2% of what is available.
MARGIN_FIXED, MARGIN_FRACTION = 1 << 30, 0.02
#: An engine's host-memory prompt cache is bounded by default at this share of the RAM left over ...
CACHE_RAM_SHARE = 0.25
#: ... and at most this many MiB (llama-server's --cache-ram default).
CACHE_RAM_MAX_MIB = 8192


def default_cache_mib(spare: int) -> float:
    """The prompt cache's default bound in MiB, given ``spare`` bytes of RAM left over."""
    return min(CACHE_RAM_MAX_MIB, max(spare, 0) * CACHE_RAM_SHARE / (1 << 20))


def _usable(available: int) -> int:
    return max(int(available * (1 - MARGIN_FRACTION)) - MARGIN_FIXED, 0)


def _fmt(n: float) -> str:
    if n >= _GiB:
        return f"{n / _GiB:.2f} GiB"
    return f"{n / _MiB:.1f} MiB"


def _pad(n: int, to: int) -> int:
    return (n + to - 1) // to * to


# --------------------------------------------------------------------------- KV cache


def _row_size(type_name: str, n: int) -> int:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    from ..context import KV_TYPES  # (imports numpy: only when a plan is made)

    block, size = GGML_QUANT_SIZES[GGMLQuantizationType(KV_TYPES[type_name])]
    if n % block:
        raise ValueError(f"a {type_name} KV cache needs rows that are a multiple of {block} (have {n})")
    return n // block * size


@dataclass(frozen=True)
class KVCache:
    """KV-cache sizes for one context: full-attention and sliding-window layers apart."""

    n_ctx: int  #: context length after llama.cpp's padding (all sequences)
    cells_full: int  #: cells per stream on full-attention layers
    cells_swa: int  #: cells per stream on sliding-window layers
    n_stream: int  #: 1 with a unified cache, else n_seq_max
    layers_full: int
    layers_swa: int
    bytes_full: int
    bytes_swa: int
    type_k: str
    type_v: str

    @property
    def total(self) -> int:
        """Bytes of the whole cache."""
        return self.bytes_full + self.bytes_swa


def _arr(meta: dict[str, Any], key: str, n: int, default: Any = None) -> list[Any]:
    v = meta.get(key, default)
    if v is None:
        raise ValueError(f"the model metadata has no {key}")
    return list(v) if isinstance(v, list) else [v] * n


def _layers(meta: dict[str, Any]) -> tuple[str, int, list[tuple[int, int, bool]]]:
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise ValueError("the model metadata has no general.architecture")
    n_all = int(meta[f"{arch}.block_count"])
    n_layer = n_all - int(meta.get(f"{arch}.nextn_predict_layers", 0) or 0)  # MTP blocks: their own context
    head_kv = _arr(meta, f"{arch}.attention.head_count_kv", n_all, meta.get(f"{arch}.attention.head_count"))
    n_head = _arr(meta, f"{arch}.attention.head_count", n_all)
    n_embd = int(meta[f"{arch}.embedding_length"])
    dk = [int(meta.get(f"{arch}.attention.key_length", n_embd // max(int(h), 1))) for h in n_head]
    dv = [int(meta.get(f"{arch}.attention.value_length", d)) for d in dk]
    swa = _arr(meta, f"{arch}.attention.sliding_window_pattern", n_all, False)
    has_window = int(meta.get(f"{arch}.attention.sliding_window", 0) or 0) > 0
    layers = [(int(head_kv[i]) * dk[i], int(head_kv[i]) * dv[i], bool(swa[i]) and has_window) for i in range(n_layer)]
    return arch, n_layer, layers


def kv_cache_bytes(metadata: dict[str, Any], n_ctx: int = 4096, type_k: str = "f16", type_v: str = "f16", *,
                   swa_full: bool = False, n_seq_max: int = 1, kv_unified: bool = True, n_ubatch: int = 512,
                   flash_attn: bool = True) -> KVCache:
    """The KV cache llama.cpp allocates for a context on this model (from GGUF metadata).

    Follows the pinned llama.cpp: ``n_ctx`` (0 = the training context) is padded to
    256 cells; without a unified cache each of the ``n_seq_max`` streams gets
    ``n_ctx / n_seq_max`` cells (padded); sliding-window layers hold
    ``pad256(min(cells, window * (n_seq_max if unified else 1) + n_ubatch))`` cells
    unless ``swa_full``; K rows are ``n_head_kv * key_length`` wide, V rows likewise
    (without flash attention V is stored transposed at the widest layer's width).
    MTP blocks are not counted (they get their own context).
    """
    arch, _, layers = _layers(metadata)
    if n_ctx <= 0:
        n_ctx = int(metadata.get(f"{arch}.context_length", 4096))
    n_ctx = _pad(n_ctx, 256)
    if kv_unified:
        n_stream, cells = 1, n_ctx
    else:
        n_stream = n_seq_max
        cells = _pad(n_ctx // n_seq_max, 256)
        n_ctx = cells * n_seq_max
    window = int(metadata.get(f"{arch}.attention.sliding_window", 0) or 0)
    cells_swa = cells if swa_full else _pad(min(cells, window * (n_seq_max if kv_unified else 1) + n_ubatch), 256)
    v_max = max((lv for _, lv, _ in layers), default=0)
    full = swa = 0
    n_full = n_swa = 0
    for k_width, v_width, is_swa in layers:
        c = cells_swa if is_swa else cells
        b = (_row_size(type_k, k_width) + _row_size(type_v, v_width if flash_attn else v_max)) * c * n_stream
        if is_swa:
            swa += b
            n_swa += 1
        else:
            full += b
            n_full += 1
    return KVCache(n_ctx, cells, cells_swa if n_swa else 0, n_stream, n_full, n_swa, full, swa, type_k, type_v)


def checkpoint_bytes(kv: KVCache, window: int, n_ubatch: int = 512) -> int:
    """Bytes of one checkpoint of a sequence's sliding-window layers (at most: the cells of one
    sequence, ``window + n_ubatch``, on every sliding-window layer), which an engine keeps in RAM."""
    if not kv.layers_swa or not kv.cells_swa:
        return 0
    per_cell = kv.bytes_swa // (kv.cells_swa * kv.n_stream)
    return per_cell * min(kv.cells_swa, window + n_ubatch)


def kv_table(metadata: dict[str, Any], contexts: Sequence[int] = (16384, 65536, 262144),
             types: Sequence[str] = ("f16", "q8_0"), **kw: Any) -> list[dict[str, Any]]:
    """KV-cache bytes for several context lengths and K/V types (rows: n_ctx, type, bytes)."""
    return [{"n_ctx": n, "type": t, "bytes": kv_cache_bytes(metadata, n, t, t, **kw).total}
            for n in contexts for t in types]


def weight_bytes(headers: Iterable[Any]) -> int:
    """Exact bytes of tensor data: the sum of every tensor's size over the headers of all files."""
    return sum(t.nbytes for h in headers for t in h.tensors)


# --------------------------------------------------------------------------- the machine

@dataclass
class Pool:
    """One memory pool: system RAM, or one GPU's own memory."""

    name: str  #: "RAM" or the device name (CUDA0, Vulkan0, MTL0, ...)
    description: str
    total: int
    available: int
    need: int = 0
    weights: int = 0
    kv: int = 0
    compute: int = 0
    shares_ram: bool = False  #: unified memory: what this device holds also comes out of RAM

    @property
    def fits(self) -> bool:
        """Whether the need leaves the margin (:data:`MARGIN_FIXED` + :data:`MARGIN_FRACTION`) free.
        A device that reports no memory at all (some drivers) is not judged."""
        return self.total == 0 or self.need <= _usable(self.available)


@dataclass
class Machine:
    """What a plan is made against: system memory, the devices, the operating system.

    :meth:`here` describes this machine (``step35.backends()``'s devices, the
    RAM available now). :func:`plan` takes another one (``machine=``) to plan for
    a different machine; its :meth:`place` must then say where llama.cpp puts
    each buffer there (here it asks llama.cpp, with a ``no_alloc`` load).
    """

    memory_total: int  #: bytes of system RAM
    memory_available: int  #: bytes of RAM to be had without swapping
    #: every device, as :func:`step35.backends` lists them (``name``, ``description``,
    #: ``type``: one of ``step35._runtime.backends.DEVICE_*``, ``backend``, ``memory_total``, ``memory_free``)
    devices: list[dict[str, Any]] = field(default_factory=list)
    sys_platform: str = sys.platform  #: ``sys.platform`` of the machine ("darwin", "linux", "win32")
    arch: str = ""  #: ``platform.machine()``
    #: what the machine description leaves out, and why (a backend that did not load, ...)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def here(cls, memory: int | None = None) -> Machine:
        """This machine; ``memory`` pretends it has that many bytes of RAM (all of them available)."""

        total, avail = system_memory()
        if memory is not None:
            total = avail = int(memory)
        report = backends()
        devices = [{**d, "backend": d.get("backend") or b.name} for b in report.loaded for d in b.devices]
        loaded = {b.name.lower() for b in report.loaded}
        notes = [f"backend {f.name} did not load, its devices are not in this plan: {f.reason}"
                 for f in report.failed if f.name.lower() not in loaded]  # (not a CPU variant passed over)
        return cls(total, avail, devices, sys.platform, platform.machine(), notes)

    def place(self, path: Path, *, n_gpu_layers: int, main_gpu: int, context: Any,
              devices: list[str] | None, tensor_split: Sequence[float] = (),
              rpc: Sequence[str] = (), mtp: bool | Path = False) -> list[dict[str, Any]]:
        """Where llama.cpp puts the model's buffers: one dict per buffer type
        (``device``, ``host``, ``buffer_type``, and the bytes of ``model`` weights,
        KV cache (``context``) and ``compute`` buffers), as
        :meth:`step35.Context.memory_breakdown` reports them. ``mtp``: with the
        MTP heads (True: the file's own; a path: a sidecar's) and their draft
        context, whose rows have ``mtp=True``."""
        return _simulate(path, n_gpu_layers, main_gpu, context, devices, tensor_split, rpc, mtp)


def _is_unified(device: dict[str, Any], machine: Machine) -> bool:
    # Integrated GPUs (DGX Spark's GB10 and AMD's APUs report igpu) and Apple silicon
    # (Metal reports gpu) have no memory of their own: what they hold comes out of RAM.
    return device.get("type") == DEVICE_IGPU or device.get("backend") == "MTL" or machine.sys_platform == "darwin"


def _pools(machine: Machine) -> tuple[Pool, dict[str, Pool], list[str]]:
    """RAM, a pool per GPU, and notes on what could not be judged."""
    ram = Pool("RAM", f"system memory ({machine.arch or 'unknown'})", machine.memory_total,
               machine.memory_available)
    gpus: dict[str, Pool] = {}
    notes = list(machine.notes)
    for d in machine.devices:
        if d.get("type") not in GPU_TYPES:
            continue
        name = d.get("name")
        if not name:
            notes.append(f"a {d.get('type')} device with no name ({d.get('description') or 'no description'}) "
                         "is not in this plan")
            continue
        try:
            total, free = int(d.get("memory_total") or 0), int(d.get("memory_free") or 0)
        except (TypeError, ValueError):
            total = free = 0
        if total <= 0:
            notes.append(f"{name} reports no memory size: what it holds is shown, not judged")
            total = free = 0
        gpus[name] = Pool(name, d.get("description", ""), total, free, shares_ram=_is_unified(d, machine))
    return ram, gpus, notes


# --------------------------------------------------------------------------- the plan


@dataclass
class FitPlan:
    """The memory plan for one model + context on this machine (see :func:`plan`)."""

    model: str
    n_ctx: int
    type_k: str
    type_v: str
    swa_full: bool
    n_gpu_layers: int
    n_ubatch: int
    weights: int  #: bytes of tensor data (exact, from the headers)
    kv: KVCache
    compute: int  #: compute buffers, as llama.cpp reserves them (all devices)
    outputs: int  #: llama.cpp's logits buffer (n_outputs rows of n_vocab floats, in RAM)
    pools: list[Pool]
    mtp: int = 0  #: the MTP draft context (KV cache and compute buffers) and a sidecar's weights
    prompt_cache: int = 0  #: host RAM of an engine's prompt cache: its bound plus every slot's checkpoints
    cache_mib: float = 0.0  #: the prompt cache's bound in this plan (chosen here when asked for the default)
    suggestions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    kv_table: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Weights + KV cache + compute buffers + logits buffer + MTP drafting + prompt cache."""
        return self.weights + self.kv.total + self.compute + self.outputs + self.mtp + self.prompt_cache

    @property
    def fits(self) -> bool:
        """Whether every pool fits (with a margin to spare)."""
        return all(p.fits for p in self.pools)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for JSON)."""
        d = asdict(self)
        d["kv"]["total"] = self.kv.total
        d["total"], d["fits"] = self.total, self.fits
        for p, raw in zip(self.pools, d["pools"]):
            raw["fits"] = p.fits
        return d

    def __str__(self) -> str:
        kv = self.kv
        lines = [
            f"model      {self.model}",
            f"context    n_ctx={kv.n_ctx}  K={self.type_k} V={self.type_v}  swa_full={self.swa_full}  "
            f"n_ubatch={self.n_ubatch}  n_gpu_layers={self.n_gpu_layers}",
            f"weights    {_fmt(self.weights):>11}  ({self.weights / 1e9:.2f} GB)",
            f"KV cache   {_fmt(kv.total):>11}  ({kv.layers_full} full-attention layers x {kv.cells_full} cells: "
            f"{_fmt(kv.bytes_full)}; {kv.layers_swa} sliding-window layers x {kv.cells_swa} cells: "
            f"{_fmt(kv.bytes_swa)})",
            f"compute    {_fmt(self.compute):>11}",
            f"logits     {_fmt(self.outputs):>11}",
            *([f"MTP        {_fmt(self.mtp):>11}  (draft context of the MTP heads; a sidecar's weights)"] if self.mtp else []),
            *([f"prompts    {_fmt(self.prompt_cache):>11}  (in RAM: the prompt cache's bound and the slots' "
               f"sliding-window checkpoints)"] if self.prompt_cache else []),
            f"total      {_fmt(self.total):>11}  ({self.total / 1e9:.2f} GB)",
            "",
            f"{'memory':<10} {'need':>11} {'available':>11} {'total':>11}  verdict",
        ]
        for p in self.pools:
            verdict = "fits" if p.fits else "DOES NOT FIT"
            lines.append(f"{p.name:<10} {_fmt(p.need):>11} {_fmt(p.available):>11} {_fmt(p.total):>11}  {verdict}"
                         + ("  (unified: counted in RAM too)" if p.shares_ram else ""))
        lines.append("")
        lines.append(f"=> {'fits' if self.fits else 'does NOT fit'}"
                     + ("" if self.fits else "; what would:"))
        lines += [f"   - {s}" for s in self.suggestions]
        lines += [f"note: {n}" for n in self.notes]
        if self.kv_table:
            ctxs = sorted({r["n_ctx"] for r in self.kv_table})
            types = list(dict.fromkeys(r["type"] for r in self.kv_table))
            by = {(r["n_ctx"], r["type"]): r["bytes"] for r in self.kv_table}
            lines += ["", "KV cache by context length:", f"{'n_ctx':>8} " + " ".join(f"{t:>11}" for t in types)]
            lines += [f"{n:>8} " + " ".join(f"{_fmt(by[(n, t)]):>11}" for t in types) for n in ctxs]
        return "\n".join(lines)


@dataclass
class _Source:
    label: str
    files: list[Path]  # local files (real, or sparse stubs of a remote model)
    headers: list[Any]
    tmpdir: str | None = None


def _local_source(path: str | os.PathLike[str]) -> _Source:
    files = model_files(path)
    return _Source(str(files[0]), files, [read_header(f) for f in files])


def _remote_source(spec: str, quant: str | None, revision: str | None,
                   include: str | Sequence[str] | None) -> _Source:
    from . import hub

    tmp = tempfile.mkdtemp(prefix="step35-fit-")
    try:
        files, headers, label = hub.header_stubs(spec, quant, Path(tmp), revision=revision, include=include)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _Source(label, files, headers, tmp)


def _simulate(path: Path, n_gpu_layers: int, main_gpu: int, ctx: Any, devices: list[str] | None = None,
              tensor_split: Sequence[float] = (), rpc: Sequence[str] = (),
              mtp: bool | Path = False) -> list[dict[str, Any]]:

    c = _backends.core()
    place = dict(n_gpu_layers=n_gpu_layers, main_gpu=main_gpu, no_alloc=True, devices=devices,
                 tensor_split=list(tensor_split), rpc=list(rpc))
    m = c.load_model(str(path), load_mtp=mtp is True, **place)
    try:
        if isinstance(mtp, Path):
            heads = c.load_model(str(mtp), load_mtp=True, **place)
            try:
                m.set_heads(heads)
            finally:
                heads.close()
        opts = ctx.replace(warmup=False)._native(c)
        h = c.new_context(m, opts, mtp=bool(mtp))  # its draft context follows every sequence
        try:
            return list(c.memory_breakdown(h))
        finally:
            h.close()
    finally:
        m.close()


def _layer_bytes(headers: Iterable[Any]) -> dict[int, int]:
    out: dict[int, int] = {}
    for h in headers:
        for t in h.tensors:
            if t.name.startswith("blk."):
                il = int(t.name.split(".")[1])
                out[il] = out.get(il, 0) + t.nbytes
    return out


def plan(model: str | os.PathLike[str], *, quant: str | None = None, n_ctx: int = 4096, type_k: str = "f16",
         type_v: str = "f16", n_gpu_layers: int = -1, swa_full: bool = False, n_batch: int = 2048,
         n_ubatch: int = 512, n_seq_max: int = 1, kv_unified: bool = True, flash_attn: str | bool = "auto",
         main_gpu: int = 0, n_outputs: int | None = None, devices: Sequence[str] | None = None,
         memory: int | None = None, kv_contexts: Sequence[int] = (16384, 65536, 262144),
         revision: str | None = None, include: str | Sequence[str] | None = None,
         machine: Machine | None = None, rpc: str | Sequence[str] | None = None,
         tensor_split: Sequence[float] | None = None, mtp: bool | str | os.PathLike[str] = False,
         checkpoints: int = 0, cache_mib: float | None = 0.0) -> FitPlan:
    """Plan the memory of ``model`` with this context on this machine.

    ``model`` is a local ``.gguf`` (any part of a split set) or a Hub repo
    (``owner/name[:QUANT]``; only the GGUF headers are fetched; ``revision``
    and ``include`` choose the files as :func:`step35.tools.hub.download` does).
    ``memory`` pretends the machine has that many bytes of RAM (for "would it
    fit on a 128 GB Mac?"). ``n_outputs`` is the most logits rows one call returns
    (default ``n_seq_max``: generation; scoring a whole prompt needs one per
    token). ``devices``, ``rpc`` (workers whose devices join the plan, each a
    pool of the memory it reports) and ``tensor_split`` place the layers as
    :class:`~step35.Model` does. ``mtp`` adds the MTP heads and their draft
    context (True: the file's own heads; a path: an ``mtp-*.gguf`` sidecar).
    ``checkpoints`` (per sequence) and ``cache_mib`` add what an engine's prompt
    cache holds in RAM (:class:`~step35.Engine`'s arguments of the same names);
    ``cache_mib=None`` sizes it here: a quarter of the RAM the rest of the plan
    leaves, at most 8 GiB (the plan's ``cache_mib`` says what it chose).
    ``machine`` plans for another :class:`Machine` than this one. The
    other arguments are the context's (see :class:`~step35.ContextParams`);
    ``n_ctx=0`` means the training context.
    """
    from ..context import ContextParams
    from .hub import looks_like_repo

    ctx = ContextParams(n_ctx=n_ctx, type_k=type_k, type_v=type_v, swa_full=swa_full, n_batch=n_batch,
                        n_ubatch=n_ubatch, n_seq_max=n_seq_max, kv_unified=kv_unified, flash_attn=flash_attn)
    from .rpc import model_devices, remote_devices

    endpoints: list[str] = []
    if rpc is not None or remote_devices():  # workers: connected first, so that their devices are in the plan
        device_list, endpoints = model_devices(devices, rpc)
    if machine is None:
        machine = Machine.here(memory)
    elif memory is not None:
        machine = replace(machine, memory_total=int(memory), memory_available=int(memory))
    if not endpoints and not remote_devices():
        device_list = resolve_devices(devices, machine.devices)
    split = check_tensor_split(tensor_split, device_list)
    local = Path(os.fspath(model)).expanduser()
    remote = not local.exists() and looks_like_repo(str(model))
    if not remote and (revision is not None or include is not None):
        raise ValueError(f"revision= and include= choose files of a Hub repo; {model} is a local path")
    src = _remote_source(str(model), quant, revision, include) if remote else _local_source(local)
    try:
        meta = src.headers[0].metadata
        check_model_header(src.headers[0], src.files[0])
        kv = kv_cache_bytes(meta, n_ctx, ctx.type_k, ctx.type_v, swa_full=swa_full, n_seq_max=n_seq_max,
                            kv_unified=ctx.kv_unified, n_ubatch=n_ubatch, flash_attn=ctx.flash_attn != "off")
        weights = weight_bytes(src.headers)
        # (only when set: a Machine of another machine may implement place() without them)
        mtp_arg: bool | Path = Path(os.fspath(mtp)).expanduser() if isinstance(mtp, (str, os.PathLike)) else bool(mtp)
        placement = {k: v for k, v in (("tensor_split", split), ("rpc", endpoints), ("mtp", mtp_arg)) if v}
        breakdown = machine.place(src.files[0], n_gpu_layers=n_gpu_layers, main_gpu=main_gpu,
                                  context=ctx.replace(n_ctx=kv.n_ctx), devices=device_list, **placement)
    finally:
        if src.tmpdir:
            shutil.rmtree(src.tmpdir, ignore_errors=True)

    ram, gpus, notes = _pools(machine)
    elsewhere: dict[str, int] = {}
    cpu_like = {d.get("name") for d in machine.devices if d.get("type") not in GPU_TYPES}
    mtp_bytes = sum(r["model"] + r["context"] + r["compute"] for r in breakdown if r.get("mtp"))
    for row in breakdown:
        dev = row.get("device")
        pool = gpus.get(dev) if dev and not row.get("host") else None
        if pool is None and dev and not row.get("host") and dev not in cpu_like:
            elsewhere[dev] = elsewhere.get(dev, 0) + row["model"] + row["context"] + row["compute"]
        for p in ([pool, ram] if pool is not None and pool.shares_ram else [pool or ram]):
            p.weights += row["model"]
            p.kv += row["context"]
            p.compute += row["compute"]
    notes += [f"{_fmt(n)} placed on {dev}, a device this plan does not know, is counted in RAM"
              for dev, n in elsewhere.items()]
    pools = [ram] + [g for g in gpus.values() if g.weights or g.kv or g.compute]
    for p in pools:
        p.need = p.weights + p.kv + p.compute
    n_vocab = len(meta.get("tokenizer.ggml.tokens") or ())
    outputs = 4 * n_vocab * max(n_outputs or 0, n_seq_max)
    ram.need += outputs
    window = int(meta.get(f"{meta.get('general.architecture')}.attention.sliding_window", 0) or 0)
    prompt_cache = n_seq_max * checkpoints * checkpoint_bytes(kv, window, n_ubatch)
    if cache_mib is None:
        cache_mib = default_cache_mib(_usable(ram.available) - ram.need - prompt_cache)
    prompt_cache += int(cache_mib * (1 << 20))
    ram.need += prompt_cache
    compute = sum(r["compute"] for r in breakdown if not r.get("mtp"))
    result = FitPlan(src.label, kv.n_ctx, ctx.type_k, ctx.type_v, swa_full, n_gpu_layers, n_ubatch, weights, kv,
                     compute, outputs, pools, notes=notes, mtp=mtp_bytes, prompt_cache=prompt_cache,
                     cache_mib=float(cache_mib),
                     kv_table=kv_table(meta, kv_contexts, n_ubatch=n_ubatch) if kv_contexts else [])
    sim_kv = sum(r["context"] for r in breakdown if not r.get("mtp"))
    if sim_kv != kv.total:  # never seen; would mean llama.cpp's sizing rules changed (tests compare them)
        result.notes.append(f"llama.cpp plans {_fmt(sim_kv)} of KV cache, the formula {_fmt(kv.total)}")
    repack = sum(r["model"] for r in breakdown if str(r.get("buffer_type", "")).endswith("_REPACK"))
    if repack:
        result.notes.append(f"{_fmt(repack)} of weights are repacked for this CPU; with mmap (the default) their "
                            f"file pages are also read once while loading (page cache the OS reclaims when needed)")
    _suggest(result, meta, _layer_bytes(src.headers), ctx, machine)
    return result


def _suggest(p: FitPlan, meta: dict[str, Any], layer_bytes: dict[int, int], ctx: Any, machine: Machine) -> None:
    if p.fits:
        return
    ram = p.pools[0]
    kw = dict(swa_full=p.swa_full, n_seq_max=ctx.n_seq_max, kv_unified=ctx.kv_unified, n_ubatch=p.n_ubatch,
              flash_attn=ctx.flash_attn != "off")
    worst = max((q for q in p.pools if not q.fits), key=lambda q: q.need - _usable(q.available))
    over = worst.need - _usable(worst.available)
    non_kv = worst.need - worst.kv

    if worst is ram and worst.weights > _usable(worst.available):
        p.suggestions.append(f"the weights alone need {_fmt(p.weights)} but {worst.name} has {_fmt(worst.available)}"
                             f" available: pick a smaller quant, or a machine with more memory")
        return
    if worst is ram and p.prompt_cache:
        ok = p.prompt_cache >= over
        p.suggestions.append(f"a smaller prompt cache (serve --cache-ram MiB, --ctx-checkpoints N; Engine's cache_mib, "
                             f"checkpoints) frees up to {_fmt(p.prompt_cache)}: {'fits' if ok else 'not enough alone'}")
    kv_share = worst.kv / p.kv.total if p.kv.total else 0.0
    if p.type_k == "f16" or p.type_v == "f16":
        q8 = kv_cache_bytes(meta, p.n_ctx, "q8_0", "q8_0", **kw)
        saved = (p.kv.total - q8.total) * kv_share
        ok = saved >= over
        p.suggestions.append(f"a q8_0 KV cache (-ctk q8_0 -ctv q8_0) takes {_fmt(q8.total)} instead of "
                             f"{_fmt(p.kv.total)}: {'fits' if ok else 'not enough alone'}")
    # the longest context that fits (KV scales with n_ctx; compute held at this context's size)
    budget = _usable(worst.available) - non_kv
    for t in dict.fromkeys([p.type_k, "q8_0"]):
        best = 0
        lo, hi = 1, max(p.n_ctx // 256, 1)
        while lo <= hi:
            mid = (lo + hi) // 2
            need = kv_cache_bytes(meta, mid * 256, t, t if p.type_v != "f16" or t == "q8_0" else p.type_v, **kw)
            if need.total * kv_share <= budget:
                best, lo = mid * 256, mid + 1
            else:
                hi = mid - 1
        if best and best < p.n_ctx:
            p.suggestions.append(f"a shorter context: -c {best} fits with a {t} KV cache")
    devices_used = [q for q in p.pools[1:] if q.weights]
    if worst is not ram and not worst.shares_ram and len(devices_used) > 1:
        # several devices share the offloaded layers: the split decides what each one holds
        p.suggestions.append(f"give {worst.name} a smaller share of the layers with -ts/--tensor-split (one share "
                             f"per device, in order: {', '.join(q.name for q in devices_used)}), "
                             f"or offload fewer layers (-ngl)")
    elif worst is not ram and not worst.shares_ram and layer_bytes and p.n_gpu_layers != 0:
        # offload fewer layers: each layer moves its weights and its KV share back to RAM
        per_kv = p.kv.total / max(len(layer_bytes), 1)
        n_layers = len(layer_bytes)
        n_off = n_layers if p.n_gpu_layers < 0 else min(p.n_gpu_layers, n_layers)
        offloaded = sum(layer_bytes[il] for il in sorted(layer_bytes)[n_layers - n_off:])  # -ngl N: the last N
        room = _usable(worst.available) - worst.compute - max(worst.weights - offloaded, 0)
        n, used = 0, 0.0
        for il in sorted(layer_bytes, reverse=True):  # -ngl N offloads the last N layers
            if used + layer_bytes[il] + per_kv > room:
                break
            used += layer_bytes[il] + per_kv
            n += 1
        p.suggestions.append(f"offload fewer layers: -ngl {n} keeps about {_fmt(used)} on {worst.name}, "
                             f"the rest runs from RAM")
    if machine.sys_platform == "darwin" and any(q.shares_ram and not q.fits for q in p.pools) and ram.fits:
        gpu = next(q for q in p.pools if q.shares_ram and not q.fits)
        mb = math.ceil((gpu.need + MARGIN_FIXED) / _MiB / 1024) * 1024
        p.suggestions.append(f"raise macOS' GPU wired-memory limit (default ~75% of RAM): "
                             f"sudo sysctl iogpu.wired_limit_mb={mb}")


def _skip_check() -> bool:
    return os.environ.get("STEP35_NO_FIT_CHECK", "").strip().lower() in ("1", "true", "yes", "on")


def check(model: str | os.PathLike[str], **kw: Any) -> FitPlan:
    """Like :func:`plan`, but raise :class:`MemoryFitError` (with the plan) when it does not fit."""
    p = plan(model, **kw)
    if not p.fits:
        raise MemoryFitError(
            f"{p.model} does not fit in this machine's memory:\n{p}\n"
            "Change the settings as suggested, or skip this check with check_memory=False "
            "(CLI: --no-fit-check; environment: STEP35_NO_FIT_CHECK=1).", p)
    return p


def check_context(model: str | os.PathLike[str], params: Any, *, n_gpu_layers: int = -1, main_gpu: int = 0,
                  quant: str | None = None, devices: Sequence[str] | None = None, revision: str | None = None,
                  include: str | Sequence[str] | None = None, rpc: str | Sequence[str] | None = None,
                  tensor_split: Sequence[float] | None = None,
                  mtp: bool | str | os.PathLike[str] = False, checkpoints: int = 0,
                  cache_mib: float | None = 0.0) -> FitPlan | None:
    """:func:`check` for a :class:`~step35.ContextParams`; does nothing (None) when
    ``STEP35_NO_FIT_CHECK`` is set. What :class:`~step35.Model` and the CLI call."""
    if _skip_check():
        return None
    c = params
    return check(model, quant=quant, n_ctx=c.n_ctx, type_k=c.type_k, type_v=c.type_v, swa_full=c.swa_full,
                 n_batch=c.n_batch, n_ubatch=c.n_ubatch, n_seq_max=c.n_seq_max, kv_unified=c.kv_unified,
                 flash_attn=c.flash_attn, n_gpu_layers=n_gpu_layers, main_gpu=main_gpu, devices=devices,
                 revision=revision, include=include, kv_contexts=(), rpc=rpc, tensor_split=tensor_split or None,
                 mtp=mtp, checkpoints=checkpoints, cache_mib=cache_mib)


def check_engine(model: Any, params: Any, *, checkpoints: int = 0, cache_mib: float = 0.0,
                 drafts: bool = False) -> FitPlan | None:
    """Refuse an engine's context that would not fit beside its loaded ``model``.

    Plans ``params`` (the engine's whole context: every slot's KV cache, the
    compute buffers and logits; with ``drafts``, the MTP draft context that
    follows every slot) and the prompt cache in RAM (``checkpoints`` per slot,
    ``cache_mib``) where ``model`` put its layers, and compares what
    the engine adds with the memory available now: the weights are loaded
    already, so they are left out of what is needed. Raises
    :class:`MemoryFitError` with the plan when it does not fit; does nothing
    (None) when ``STEP35_NO_FIT_CHECK`` is set. What :class:`~step35.Engine` calls
    before it allocates anything.
    """
    if _skip_check():
        return None
    c = params
    placement = dict(getattr(model, "_placement", {}))
    p = plan(model.path, n_ctx=c.n_ctx, type_k=c.type_k, type_v=c.type_v, swa_full=c.swa_full, n_batch=c.n_batch,
             n_ubatch=c.n_ubatch, n_seq_max=c.n_seq_max, kv_unified=c.kv_unified, flash_attn=c.flash_attn,
             kv_contexts=(), checkpoints=checkpoints, cache_mib=cache_mib,
             n_gpu_layers=placement.get("n_gpu_layers", -1), main_gpu=placement.get("main_gpu", 0),
             devices=placement.get("devices"), rpc=placement.get("rpc") or None,
             tensor_split=placement.get("tensor_split") or None, mtp=placement.get("mtp", False) if drafts else False)
    for pool in p.pools:  # resident already: what the engine adds is the rest
        pool.need -= pool.weights
    if not p.fits:
        raise MemoryFitError(
            f"an engine of {c.n_seq_max} slot(s) x {c.n_ctx // max(c.n_seq_max, 1) if not c.kv_unified else c.n_ctx} "
            f"tokens does not fit beside {p.model} (its weights are loaded):\n{p}\n"
            "Give it fewer slots or a shorter context (Engine(model, slots=N, context={'n_ctx': TOKENS})), "
            "a q8_0 KV cache (context={'type_k': 'q8_0', 'type_v': 'q8_0'}), or a smaller prompt cache "
            "(cache_mib, checkpoints); or skip this check with check_memory=False "
            "(environment: STEP35_NO_FIT_CHECK=1).", p)
    return p

