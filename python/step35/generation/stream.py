"""Text generation: the stream, results and their statistics.

The token loop itself (decode -> sample -> detokenize -> stop check) runs in
C++ with the GIL released: the batching engine's scheduler, which for one
prompt is one slot run by the calling thread. This module validates
arguments, drives the native loop, and packages what it returns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from .params import SamplingParams, check_max_tokens, check_stop

if TYPE_CHECKING:
    from ..context import Context


@dataclasses.dataclass(frozen=True)
class GenerationStats:
    """What one generate/chat call did: token counts, times, speeds (llama.cpp's units)."""

    prompt_tokens: int
    """Tokens in the prompt."""
    prompt_tokens_evaluated: int
    """Prompt tokens actually computed (the rest were reused from the context's cache)."""
    prompt_ms: float
    """Time to evaluate the prompt."""
    generated_tokens: int
    """Tokens generated (not counting the end-of-generation token)."""
    generation_ms: float
    """Time from the end of the prompt to the end of generation."""
    ttft_ms: float
    """Time to the first generated token (prompt + first sample)."""
    seed: int
    """The sampler seed used (pass it back to reproduce the output)."""
    draft: DraftStats | None = None
    """MTP drafting counts (None when the call did not draft)."""
    prompt_tokens_cached: int = 0
    """Prompt tokens served from the cache (known once the request has a slot; while the prompt is
    evaluated, ``prompt_tokens_cached + prompt_tokens_evaluated`` of ``prompt_tokens`` are done)."""
    prompt_tokens_restored: int = 0
    """Of the cached prompt tokens, those restored from an engine's host-memory prompt cache."""
    prompt_tokens_copied: int = 0
    """Of the cached prompt tokens, those copied from another slot of an engine."""
    queue_ms: float = 0.0
    """Time an engine's request waited for a slot (0 for a call on a context)."""

    @property
    def prompt_tps(self) -> float:
        """Prompt tokens evaluated per second."""
        return self.prompt_tokens_evaluated / (self.prompt_ms / 1e3) if self.prompt_ms > 0 else 0.0

    @property
    def generation_tps(self) -> float:
        """Generated tokens per second."""
        return self.generated_tokens / (self.generation_ms / 1e3) if self.generation_ms > 0 else 0.0

    def __str__(self) -> str:
        s = (f"prompt: {self.prompt_tokens} tokens ({self.prompt_tokens_evaluated} evaluated) "
             f"{self.prompt_tps:.1f} tok/s | generation: {self.generated_tokens} tokens "
             f"{self.generation_tps:.1f} tok/s | ttft {self.ttft_ms:.0f} ms")
        return f"{s} | {self.draft}" if self.draft is not None else s


@dataclasses.dataclass(frozen=True)
class DraftStats:
    """What multi-token prediction did in one call: drafts made by the MTP heads and how many the model kept."""

    draft_max: int
    """The draft length asked for (tokens drafted per step at most)."""
    steps: int
    """Verification steps that carried a draft."""
    drafted: int
    """Tokens drafted."""
    accepted: int
    """Drafted tokens the model kept (each equal to its own sample at that position)."""
    proposed_by_position: tuple[int, ...]
    """Drafts made at each draft position (1st, 2nd, 3rd token of a draft)."""
    accepted_by_position: tuple[int, ...]
    """Drafts kept at each draft position."""

    @property
    def acceptance(self) -> float:
        """Kept / drafted (0 when nothing was drafted)."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def acceptance_by_position(self) -> tuple[float, ...]:
        """Kept / drafted at each draft position."""
        return tuple(a / p if p else 0.0 for a, p in zip(self.accepted_by_position, self.proposed_by_position))

    @property
    def mean_accepted(self) -> float:
        """Drafted tokens kept per verification step."""
        return self.accepted / self.steps if self.steps else 0.0

    def __str__(self) -> str:
        per = ", ".join(f"{a:.2f}" for a in self.acceptance_by_position)
        return (f"draft {self.draft_max}: {self.accepted}/{self.drafted} accepted ({self.acceptance:.2f}; "
                f"by position {per})")


@dataclasses.dataclass(frozen=True)
class Completion:
    """The result of a non-streaming :meth:`~step35.Model.generate`."""

    text: str
    """The generated text (stop string excluded)."""
    tokens: list[int]
    """The generated token ids."""
    finish_reason: str
    """``"stop"`` (end of generation or a stop string), ``"length"`` (max_tokens or a full context), ``"cancelled"``."""
    stats: GenerationStats
    """Timings and token counts."""


class CompletionStream:
    """Iterator over generated text pieces (each a whole number of characters).

    Iterating runs the native token loop until the next piece is ready.
    ``close()`` (or leaving a ``with`` block, or dropping the stream) stops
    generation within one token and frees the context for the next call.
    After the stream ends, :attr:`finish_reason`, :attr:`stats` and
    :attr:`tokens` describe the call.
    """

    def __init__(self, native: Any, seed: int, context: Any):
        self._native = native
        self._seed = seed
        self._context = context  # keeps the context (or engine) alive while streaming
        # The generator must not reference self: a cycle would keep an abandoned
        # stream (and the context it holds busy) alive until the next GC pass.
        self._iter = _pieces(native)

    def __iter__(self) -> CompletionStream:
        return self

    def __next__(self) -> str:
        return next(self._iter)

    def __aiter__(self) -> CompletionStream:
        return self

    async def __anext__(self) -> str:
        """The next piece, for ``async for``: the native loop runs in a worker thread."""
        import asyncio

        piece = await asyncio.to_thread(next, self._iter, None)
        if piece is None:
            raise StopAsyncIteration
        return piece

    def close(self) -> None:
        """Stop generating and free the context (idempotent)."""
        self._iter.close()
        self._native.close()

    def __enter__(self) -> CompletionStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        native = getattr(self, "_native", None)
        if native is not None:
            native.close()

    @property
    def finished(self) -> bool:
        """True once generation has ended (or the stream was closed)."""
        return bool(self._native.finished)

    @property
    def finish_reason(self) -> str | None:
        """Why generation ended (None while it runs)."""
        return finish_reason(self._native) if self._native.finished else None

    @property
    def stop_sequence(self) -> str | None:
        """The stop string that ended generation (None when it ended another way, or still runs)."""
        return self._native.stop_sequence if self._native.finished else None

    @property
    def tokens(self) -> list[int]:
        """Token ids generated so far."""
        return list(self._native.tokens)

    @property
    def stats(self) -> GenerationStats:
        """Counts and timings (final once the stream has ended)."""
        return _stats(self._native, self._seed)


def _pieces(native: Any) -> Iterator[str]:
    """Text pieces from the native loop; the context is freed however iteration ends."""
    try:
        while not native.finished:
            piece = native.step(False)
            if piece:
                yield piece
    finally:
        native.close()


def finish_reason(native: Any) -> str:
    """How a native request ended, by name: "stop", "length", "cancelled", "error" ("" while it runs)."""
    name: str = native.finish_reason.name
    return "" if name == "running" else name


def _stats(native: Any, seed: int) -> GenerationStats:
    st = native.stats()
    draft = None
    if st.draft_max:
        draft = DraftStats(draft_max=st.draft_max, steps=st.draft_steps, drafted=st.draft_tokens,
                           accepted=st.draft_accepted, proposed_by_position=tuple(st.draft_proposed_by_position),
                           accepted_by_position=tuple(st.draft_accepted_by_position))
    return GenerationStats(
        prompt_tokens=st.prompt_tokens, prompt_tokens_evaluated=st.prompt_tokens_evaluated, prompt_ms=st.prompt_ms,
        generated_tokens=st.generated_tokens, generation_ms=st.generation_ms, ttft_ms=st.ttft_ms, seed=seed,
        draft=draft, prompt_tokens_cached=st.prompt_tokens_cached, prompt_tokens_restored=st.prompt_tokens_restored,
        prompt_tokens_copied=st.prompt_tokens_copied, queue_ms=st.queue_ms,
    )


def start(context: Context, prompt: list[int], *, max_tokens: int | None, sampling: SamplingParams,
          stop: str | Sequence[str] | None, render_special: bool = True,
          constraint: Any = None, draft: int = 0) -> tuple[Any, int]:
    """Create the native generation (validated) on ``context``; returns it and the seed used.

    ``constraint``: a grammar and/or reasoning budget (see :mod:`step35.generation.constraints`).
    ``draft``: MTP draft length (0: off; see :func:`step35.generation.mtp.check_draft`).
    """
    native_sampling, seed = sampling._native(context._core)
    native_sampling.constraint = constraint
    native = context._core.generate(context._handle, prompt, check_max_tokens(max_tokens), native_sampling,
                                    check_stop(stop), render_special, draft)
    return native, seed


def run(context: Context, prompt: list[int], *, stream: bool, max_tokens: int | None, sampling: SamplingParams,
        stop: str | Sequence[str] | None, constraint: Any = None, draft: int = 0) -> Completion | CompletionStream:
    """Generate from ``prompt`` token ids on ``context``, streaming or not."""
    native, seed = start(context, prompt, max_tokens=max_tokens, sampling=sampling, stop=stop, constraint=constraint,
                         draft=draft)
    return result(native, seed, stream=stream, owner=context)


def result(native: Any, seed: int, *, stream: bool, owner: Any,
           stream_type: type[CompletionStream] | None = None) -> Completion | CompletionStream:
    """The stream over a started native generation, or its whole :class:`Completion`.

    ``native`` is anything with the generation protocol (``step``, ``close``,
    ``finished``, ``finish_reason``, ``tokens``, ``stats``): a single-stream
    generation or an engine request. ``owner`` is kept alive by the stream.
    """
    if stream:
        return (stream_type or CompletionStream)(native, seed, owner)
    try:
        text = native.step(True)
    finally:
        native.close()
    return Completion(text=text, tokens=list(native.tokens), finish_reason=finish_reason(native),
                      stats=_stats(native, seed))
