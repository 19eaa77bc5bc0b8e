"""One event stream from the engine, whatever the wire protocol.

:func:`engine_events` turns a running engine request (a chat stream of
``chat.completion.chunk`` dicts, or a completion stream of text pieces) into
typed events: reasoning and text deltas, tool calls, prompt-evaluation
progress, and one :class:`Finished` with the usage. Each protocol adapter
translates these events into its own wire format; :class:`Answer` collects
them for a non-streaming reply.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Union

import anyio.to_thread

__all__ = ["Answer", "Event", "Failed", "Finished", "Progress", "ReasoningDelta", "Started", "TextDelta",
           "ToolCallDone",
           "ToolCallStart", "Usage", "engine_events", "usage_of"]


@dataclass(frozen=True)
class Started:
    """The request is queued: its prompt has ``prompt_tokens`` tokens, ``cached_tokens`` of them
    known so far to come from the cache (final in :class:`Finished`)."""

    prompt_tokens: int
    cached_tokens: int


@dataclass(frozen=True)
class ReasoningDelta:
    """More of the model's reasoning (the text before ``</think>``)."""

    text: str


@dataclass(frozen=True)
class TextDelta:
    """More of the answer's text."""

    text: str


@dataclass(frozen=True)
class ToolCallStart:
    """The model began tool call number ``index`` (0-based) of function ``name``; ``id`` is the parser's."""

    index: int
    id: str
    name: str


@dataclass(frozen=True)
class ToolCallDone:
    """Tool call ``index`` is complete: its arguments as a JSON object text, typed by the tool's schema."""

    index: int
    arguments: str


@dataclass(frozen=True)
class Progress:
    """Prompt evaluation so far: ``processed`` of the ``total`` prompt tokens are in the cache,
    ``cached`` of them were there before the request came."""

    total: int
    cached: int
    processed: int
    elapsed_ms: float

    def as_dict(self) -> dict[str, Any]:
        """llama-server's ``prompt_progress`` object."""
        return {"total": self.total, "cache": self.cached, "processed": self.processed,
                "time_ms": round(self.elapsed_ms, 3)}


@dataclass(frozen=True)
class Usage:
    """Token counts of one request: ``prompt_tokens`` in all, ``cached_tokens`` of them served from the
    cache (not evaluated), ``completion_tokens`` generated, ``reasoning_tokens`` of those spent reasoning;
    ``timings`` is llama-server's timings object."""

    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    reasoning_tokens: int = 0
    timings: dict[str, Any] = field(default_factory=dict)

    @property
    def evaluated_tokens(self) -> int:
        """Prompt tokens evaluated for this request."""
        return self.prompt_tokens - self.cached_tokens


@dataclass(frozen=True)
class Finished:
    """The end: ``reason`` is ``stop``, ``length`` or ``tool_calls`` (a stop with tool calls);
    ``stop_sequence`` the stop string that ended it, if one did."""

    reason: str
    stop_sequence: str | None
    usage: Usage


@dataclass(frozen=True)
class Failed:
    """The request failed after its answer began (the engine's error, as the HTTP error it maps to)."""

    error: Any  #: a step35.serving.errors.APIError


Event = Union[Failed, Started, ReasoningDelta, TextDelta, ToolCallStart, ToolCallDone, Progress, Finished]


def usage_of(stats: Any, reasoning_tokens: int = 0) -> Usage:
    """The :class:`Usage` of a request from its stream's stats."""
    prompt = int(stats.prompt_tokens)
    evaluated = int(stats.prompt_tokens_evaluated)
    timings: dict[str, Any] = {"prompt_n": evaluated, "prompt_ms": float(stats.prompt_ms),
                               "predicted_n": int(stats.generated_tokens),
                               "predicted_ms": float(stats.generation_ms), "ttft_ms": float(stats.ttft_ms),
                               "cache_n": prompt - evaluated,
                               "cache_ram_n": int(getattr(stats, "prompt_tokens_restored", 0) or 0),
                               "cache_slot_copy_n": int(getattr(stats, "prompt_tokens_copied", 0) or 0)}
    for name, attr in (("prompt_per_second", "prompt_tps"), ("predicted_per_second", "generation_tps")):
        value = getattr(stats, attr, None)
        if isinstance(value, (int, float)):
            timings[name] = float(value)
    seed = getattr(stats, "seed", None)
    if isinstance(seed, int):
        timings["seed"] = seed
    return Usage(prompt_tokens=prompt, cached_tokens=max(0, prompt - evaluated),
                 completion_tokens=int(stats.generated_tokens), reasoning_tokens=reasoning_tokens, timings=timings)


def _progress(stream: Any, started: float) -> Progress:
    stats = stream.stats
    total, evaluated = int(stats.prompt_tokens), int(stats.prompt_tokens_evaluated)
    cached = int(getattr(stats, "prompt_tokens_cached", 0) or 0)
    loop = asyncio.get_running_loop()
    return Progress(total=total, cached=cached, processed=min(total, cached + evaluated),
                    elapsed_ms=(loop.time() - started) * 1000.0)


_END = object()


async def _items(stream: Any, progress_every: float | None) -> AsyncIterator[Any]:
    """The stream's items (a sync-only stream is stepped in a worker thread); with ``progress_every``,
    a :class:`Progress` whenever that many seconds pass without one, until the first item."""
    if not hasattr(stream, "__aiter__"):
        it = iter(stream)
        while True:
            item = await anyio.to_thread.run_sync(next, it, _END)
            if item is _END:
                return
            yield item
    it = stream.__aiter__()
    if progress_every is None:
        async for item in it:
            yield item
        return
    loop = asyncio.get_running_loop()
    started = loop.time()
    first = True
    while True:
        step = asyncio.ensure_future(it.__anext__())
        try:
            while first:
                done, _ = await asyncio.wait({step}, timeout=progress_every)
                if done:
                    break
                yield _progress(stream, started)
            item = await step
        except StopAsyncIteration:
            return
        finally:
            if not step.done():
                step.cancel()
        if first and isinstance(item, dict) and _is_output(item):
            first = False
        yield item


def _is_output(chunk: dict[str, Any]) -> bool:
    return any(c.get("finish_reason") or any(k != "role" for k in (c.get("delta") or {}))
               for c in chunk.get("choices") or ())


async def engine_events(stream: Any, *, count_tokens: Callable[[str], int] | None = None,
                        progress_every: float | None = None) -> AsyncIterator[Event]:
    """The events of an engine request's ``stream`` (``Engine.chat`` or ``Engine.generate`` with
    ``stream=True``), ending with one :class:`Finished`.

    ``count_tokens`` (text -> tokens) counts the reasoning tokens; ``progress_every`` (seconds)
    asks for :class:`Progress` events while the prompt is evaluated. The stream is closed however
    iteration ends; engine errors propagate.
    """
    reasoning: list[str] = []
    calls = False
    try:
        stats = stream.stats
        yield Started(int(stats.prompt_tokens), int(getattr(stats, "prompt_tokens_cached", 0) or 0))
        async for item in _items(stream, progress_every):
            if isinstance(item, Progress):
                yield item
                continue
            if isinstance(item, str):
                if item:
                    yield TextDelta(item)
                continue
            for choice in item.get("choices") or ():
                delta = choice.get("delta") or {}
                if delta.get("reasoning_content"):
                    reasoning.append(delta["reasoning_content"])
                    yield ReasoningDelta(delta["reasoning_content"])
                if delta.get("content"):
                    yield TextDelta(delta["content"])
                for call in delta.get("tool_calls") or ():
                    calls = True
                    fn = call.get("function") or {}
                    if "id" in call:
                        yield ToolCallStart(int(call["index"]), str(call["id"]), str(fn.get("name")))
                    if fn.get("arguments"):
                        yield ToolCallDone(int(call["index"]), str(fn["arguments"]))
        n_reasoning = count_tokens("".join(reasoning)) if reasoning and count_tokens is not None else 0
        reason = stream.finish_reason or "stop"
        if calls and reason == "stop":
            reason = "tool_calls"
        yield Finished(reason=reason, stop_sequence=getattr(stream, "stop_sequence", None),
                       usage=usage_of(stream.stats, n_reasoning))
    finally:
        stream.close()


@dataclass
class Answer:
    """A whole answer collected from events: reasoning, text, tool calls, and how it ended."""

    reasoning: str = ""
    text: str = ""
    calls: list[dict[str, Any]] = field(default_factory=list)  #: {"index", "id", "name", "arguments"}
    finished: Finished | None = None

    def add(self, event: Event) -> None:
        """Take one event."""
        if isinstance(event, ReasoningDelta):
            self.reasoning += event.text
        elif isinstance(event, TextDelta):
            self.text += event.text
        elif isinstance(event, ToolCallStart):
            self.calls.append({"index": event.index, "id": event.id, "name": event.name, "arguments": None})
        elif isinstance(event, ToolCallDone):
            for call in self.calls:
                if call["index"] == event.index:
                    call["arguments"] = event.arguments
        elif isinstance(event, Finished):
            self.finished = event

    @property
    def whole_calls(self) -> list[dict[str, Any]]:
        """The tool calls whose arguments are complete (a call cut by ``max_tokens`` is left out)."""
        return [c for c in self.calls if c["arguments"] is not None]

    @staticmethod
    def arguments(call: dict[str, Any]) -> dict[str, Any]:
        """A whole call's arguments as a dict."""
        value = json.loads(call["arguments"])
        return value if isinstance(value, dict) else {}
