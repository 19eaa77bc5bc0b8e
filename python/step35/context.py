"""Contexts: the KV cache and compute settings a model runs with.

A :class:`Context` is what evaluates tokens. :class:`~step35.Model` keeps a
default one for :meth:`~step35.Model.generate` / :meth:`~step35.Model.chat`
(created on first use from the model's ``context`` settings); make more with
:meth:`~step35.Model.new_context` when you need different settings or several
conversations at once.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from gguf.constants import GGMLQuantizationType

from ._runtime import backends as _backends
from ._runtime.limits import INT32_MAX as _INT32_MAX
from ._runtime.limits import MAX_SEQ as _MAX_SEQ
from ._runtime.system import default_threads
from .errors import ContextOverflowError

if TYPE_CHECKING:
    from .model import Model

__all__ = ["ContextParams", "Context", "KV_TYPES"]

#: KV-cache element types (``type_k`` / ``type_v``) and their ggml type ids (the sizes
#: step35.tools.fit plans with). The native layer's ``KVType`` enum is what a context is made with;
#: the two are checked against each other in the tests.
KV_TYPES: dict[str, int] = {
    t: int(GGMLQuantizationType[t.upper()])
    for t in ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl")
}
#: The flash_attn settings (the -fa flag's choices; the native ``FlashAttn`` enum's names).
FLASH_ATTN = ("auto", "off", "on")

FlashAttn = Literal["auto", "on", "off"]


_UINT32_MAX = 2**32 - 1  # the C++ ContextOptions fields n_ctx, n_batch, n_ubatch, n_seq_max are uint32_t

#: The allowed range of each integer ContextParams field (None fields aside), as the C++ side takes it.
_INT_RANGES: dict[str, tuple[int, int]] = {
    "n_ctx": (0, _UINT32_MAX),
    "n_batch": (1, _INT32_MAX),  # llama_batch_init takes an int32_t size
    "n_ubatch": (1, _INT32_MAX),
    "n_seq_max": (1, _MAX_SEQ),
    "n_threads": (1, _INT32_MAX),
    "n_threads_batch": (1, _INT32_MAX),
}


def _positive_int(name: str, value: Any, *, minimum: int = 1, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if maximum is not None and not minimum <= value <= maximum:
        raise ValueError(f"{name} must be in [{minimum}, {maximum}], got {value}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


@dataclasses.dataclass(frozen=True)
class ContextParams:
    """Settings of a context (the matching llama.cpp flags in brackets).

    Args:
        n_ctx: context length in tokens [-c]; 0 means the model's training context.
        n_batch: most tokens handed to one decode call [-b].
        n_ubatch: most tokens computed at once inside a decode call [-ub]; <= n_batch.
        n_seq_max: independent sequences (parallel streams, batched benchmarks); at most 256.
        n_threads: threads for generation [-t]; None = the physical cores (as llama.cpp's tools).
        n_threads_batch: threads for prompt processing [-tb]; None = n_threads.
        flash_attn: "auto", "on" or "off" (or a bool) [-fa].
        type_k: K-cache type: "f16" (default), "q8_0", "q4_0", ... (see ``KV_TYPES``) [-ctk].
        type_v: V-cache type, as type_k; quantized V needs flash attention [-ctv].
        swa_full: keep a full-length cache for sliding-window layers (needed to
            rewind further back than the window; costs memory) [--swa-full].
        kv_unified: one KV buffer shared by all sequences.
        offload_kqv: keep the KV cache and attention on the GPU when layers are offloaded.
        warmup: run one cheap single-token decode when the context is made, so the
            first real call is not slower. Unlike llama.cpp's default warm-up it
            does not touch every expert, so it cannot run a nearly full machine
            out of memory. False skips it [--no-warmup].

    Integer settings outside what llama.cpp takes (``n_ctx`` beyond 2**32 - 1,
    ``n_batch`` or a thread count beyond 2**31 - 1) raise ``ValueError`` naming
    the setting and its range.
    """

    n_ctx: int = 4096
    n_batch: int = 2048
    n_ubatch: int = 512
    n_seq_max: int = 1
    n_threads: int | None = None
    n_threads_batch: int | None = None
    flash_attn: FlashAttn | bool = "auto"
    type_k: str = "f16"
    type_v: str = "f16"
    swa_full: bool = False
    kv_unified: bool = True
    offload_kqv: bool = True
    warmup: bool = True

    def __post_init__(self) -> None:
        for name, (lo, hi) in _INT_RANGES.items():
            v = getattr(self, name)
            if v is not None or name not in ("n_threads", "n_threads_batch"):
                _positive_int(name, v, minimum=lo, maximum=hi)
        if self.n_ubatch > self.n_batch:
            raise ValueError(f"n_ubatch ({self.n_ubatch}) must not exceed n_batch ({self.n_batch})")
        fa = self.flash_attn
        if isinstance(fa, bool):
            object.__setattr__(self, "flash_attn", "on" if fa else "off")
        elif fa not in FLASH_ATTN:
            raise ValueError(f"flash_attn must be 'auto', 'on', 'off' or a bool, got {fa!r}")
        for name in ("type_k", "type_v"):
            v = getattr(self, name)
            key = v.lower() if isinstance(v, str) else v
            if key not in KV_TYPES:
                raise ValueError(f"unknown {name} {v!r}: expected one of {', '.join(KV_TYPES)}")
            object.__setattr__(self, name, key)
        if self.type_v not in ("f32", "f16", "bf16") and self.flash_attn == "off":
            raise ValueError(f"type_v={self.type_v!r} (a quantized V cache) needs flash_attn 'on' or 'auto'")

    def replace(self, **changes: Any) -> ContextParams:
        """A copy with some settings changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def coerce(cls, value: ContextParams | Mapping[str, Any] | None, **overrides: Any) -> ContextParams:
        """``value`` as ContextParams (from None, a dict, or ContextParams), with ``overrides`` applied."""
        if value is None:
            base = cls()
        elif isinstance(value, ContextParams):
            base = value
        elif isinstance(value, Mapping):
            unknown = set(value) - {f.name for f in dataclasses.fields(cls)}
            if unknown:
                raise ValueError(f"unknown context setting(s): {', '.join(sorted(unknown))}")
            base = cls(**value)
        else:
            raise ValueError(f"context settings must be ContextParams or a dict, got {type(value).__name__}")
        overrides = {k: v for k, v in overrides.items() if v is not None}
        return base.replace(**overrides) if overrides else base

    def _native(self, core: Any) -> Any:
        o = core.ContextOptions()
        o.n_ctx = self.n_ctx
        o.n_batch = self.n_batch
        o.n_ubatch = self.n_ubatch
        o.n_seq_max = self.n_seq_max
        o.n_threads = self.n_threads or default_threads()
        o.n_threads_batch = self.n_threads_batch or o.n_threads
        o.flash_attn = core.FlashAttn.__members__[str(self.flash_attn)]
        o.type_k = core.KVType.__members__[self.type_k]
        o.type_v = core.KVType.__members__[self.type_v]
        o.swa_full = self.swa_full
        o.kv_unified = self.kv_unified
        o.offload_kqv = self.offload_kqv
        o.warmup = self.warmup
        return o


def _token_list(tokens: Iterable[int] | np.ndarray) -> list[int]:
    if isinstance(tokens, (str, bytes)):
        raise ValueError("expected token ids (ints); tokenize text with Model.tokenize() first")
    out = []
    for i, t in enumerate(tokens):
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
            raise ValueError(f"token at position {i} is not an int: {t!r}")
        out.append(int(t))
    return out


class Context:
    """A llama.cpp context over a :class:`~step35.Model`: the KV cache plus compute settings.

    Example::

        >>> with model.new_context(n_ctx=8192, type_k="q8_0") as ctx:
        ...     logits = ctx.logits(model.tokenize("The capital of France is"))
        ...     print(model.detokenize([int(logits[-1].argmax())]))

    Contexts hold their own reference to the weights: closing the model does
    not break a live context. One call at a time may use a context; another
    thread or an unfinished stream gets :class:`~step35.errors.ContextBusyError`.
    """

    def __init__(self, model: Model, params: ContextParams | Mapping[str, Any] | None = None, *,
                 mtp: bool | None = None, **overrides: Any):
        """Create a context for ``model`` (settings: see :class:`ContextParams`).

        ``mtp``: give it a draft context over the model's MTP heads, which
        follows every sequence (True; the model must have heads loaded); None:
        when the model has heads and the context has one sequence.
        """

        self.params: ContextParams = ContextParams.coerce(params, **overrides)
        """The settings this context was made with."""
        self.model = model
        """The model this context runs."""
        self._core = _backends.core()
        if mtp is None:  # one sequence: it drafts with the model's MTP heads when it has them
            mtp = bool(model.mtp_heads) and self.params.n_seq_max == 1
        self._handle = self._core.new_context(model._native_handle(), self.params._native(self._core), mtp=bool(mtp))

    # -- lifetime -------------------------------------------------------------
    def close(self) -> None:
        """Free the KV cache now (idempotent). Raises ContextBusyError while a call uses it."""
        self._handle.close()

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return bool(self._handle.closed)

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.closed:
            return "<step35.Context (closed)>"
        return f"<step35.Context n_ctx={self.n_ctx} n_batch={self.n_batch} n_ubatch={self.n_ubatch}>"

    # -- properties -----------------------------------------------------------
    @property
    def n_ctx(self) -> int:
        """Context length in tokens (llama.cpp may round the requested size up)."""
        return int(self._handle.n_ctx)

    @property
    def n_batch(self) -> int:
        """Most tokens per decode call."""
        return int(self._handle.n_batch)

    @property
    def n_ubatch(self) -> int:
        """Most tokens computed at once."""
        return int(self._handle.n_ubatch)

    @property
    def n_seq_max(self) -> int:
        """Number of independent sequences."""
        return int(self._handle.n_seq_max)

    @property
    def n_threads(self) -> int:
        """Threads used for generation."""
        return int(self._handle.n_threads)

    @property
    def n_threads_batch(self) -> int:
        """Threads used for prompt processing."""
        return int(self._handle.n_threads_batch)

    def memory(self) -> dict[str, int]:
        """Bytes llama.cpp holds for this context's model and the context itself,
        summed over devices: ``{"model": weights, "context": KV cache, "compute": buffers}``.
        :meth:`memory_breakdown` has them per buffer type."""
        out = {"model": 0, "context": 0, "compute": 0}
        for row in self.memory_breakdown():
            for k in out:
                out[k] += int(row[k])
        return out

    def memory_breakdown(self) -> list[dict[str, Any]]:
        """Per buffer type (``CPU``, ``CPU_REPACK``, ``CUDA0``, ...): bytes of weights
        (``model``), KV cache (``context``) and compute buffers (``compute``)."""

        return list(_backends.core().memory_breakdown(self._handle))

    @property
    def tokens(self) -> list[int]:
        """The tokens of sequence 0 held in the KV cache (reused as a prompt prefix)."""
        return list(self._handle.history)

    # -- evaluation -----------------------------------------------------------
    def clear(self) -> None:
        """Empty the KV cache."""
        self._handle.clear()

    def cancel(self) -> None:
        """Ask the call running on this context to stop (safe from any thread)."""
        self._handle.cancel()

    def eval(self, tokens: Sequence[int] | np.ndarray, *, pos: int | None = None, seq_id: int = 0,
             logits: Literal["all", "last", "none"] = "all", chunk: int = 0) -> np.ndarray:
        """Evaluate ``tokens`` at positions ``pos, pos+1, ...`` and return their logits.

        Args:
            tokens: token ids.
            pos: position of the first token; default: right after what sequence
                0 already holds (continuing it). Evaluating at a position inside
                the held tokens replaces them from there on.
            seq_id: the sequence to write into (< n_seq_max).
            logits: which rows to return: every token's, the last one's, or none.
            chunk: most tokens per decode call (0 = n_batch; 1 = token by token).

        Returns:
            float32 array of shape (rows, n_vocab).

        Raises:
            ContextOverflowError: the tokens do not fit (the message gives both sizes).
            ValueError: a token id outside the vocabulary, a bad argument.
        """
        if logits not in ("all", "last", "none"):  # the native Outputs enum's names
            raise ValueError(f"logits must be 'all', 'last' or 'none', got {logits!r}")
        ids = _token_list(tokens)
        _positive_int("seq_id", seq_id, minimum=0, maximum=self.n_seq_max - 1)
        if pos is None:
            pos = len(self._handle.history) if seq_id == 0 else int(self._handle.seq_pos_max(seq_id)) + 1
        _positive_int("pos", pos, minimum=0)
        chunk = min(_positive_int("chunk", chunk, minimum=0), self.n_batch)  # as the native side clamps it
        if pos + len(ids) > self.n_ctx:
            raise ContextOverflowError(
                f"{len(ids)} tokens at position {pos} need {pos + len(ids)} positions but the context "
                f"holds {self.n_ctx}; use a larger n_ctx or a shorter input"
            )
        return self._handle.eval(ids, pos, seq_id, self._core.Outputs.__members__[logits], chunk)

    def logits(self, tokens: Sequence[int] | np.ndarray, *, incremental: bool = False) -> np.ndarray:
        """Logits of every position of ``tokens``, from an empty cache.

        ``incremental=False`` evaluates the sequence in batched passes of up to
        ``n_batch`` tokens; ``incremental=True`` feeds it token by token, as
        generation does. Both return a float32 array of shape (len(tokens), n_vocab).
        """
        self.clear()
        return self.eval(tokens, pos=0, logits="all", chunk=1 if incremental else 0)


def _round_up(n: int, to: int) -> int:
    return int(math.ceil(n / to) * to)


def scoring_params(n_tokens: int, base: ContextParams | None, **overrides: Any) -> ContextParams:
    """Settings for a throwaway context that scores ``n_tokens`` tokens in one pass."""
    n_ctx = max(256, _round_up(max(n_tokens, 1), 256))
    n_batch = min(max(n_tokens, 1), 2048)
    defaults: dict[str, Any] = {"n_ctx": n_ctx, "n_batch": n_batch, "n_ubatch": min(n_batch, 512)}
    defaults.update({k: v for k, v in overrides.items() if v is not None})
    if defaults["n_ubatch"] > defaults["n_batch"]:
        defaults["n_ubatch"] = defaults["n_batch"]
    return ContextParams.coerce(base, **defaults)
