"""OpenAI-shaped chat on top of generation, with Step 3.5 reasoning and tool calls.

The GGUF's own Jinja chat template renders the conversation (see
:mod:`step35.chat.template`); the prompt ends in ``<think>\\n``, so the model
first writes its reasoning, then ``</think>``, then the answer and any tool
calls, which :mod:`step35.chat.toolcalls` parses into OpenAI ``tool_calls`` typed by
each tool's JSON schema.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..generation.params import SamplingParams
from ..generation.stream import CompletionStream, GenerationStats, _stats, finish_reason, start
from .template import render_chat, validate_tools
from .toolcalls import ChatStreamParser, parse_output

if TYPE_CHECKING:
    from ..context import Context

__all__ = ["ChatStream", "build_prompt", "check_template_kwargs", "select_tools"]


def select_tools(tools: Sequence[Mapping[str, Any]] | None, tool_choice: Any) -> list[dict[str, Any]] | None:
    """The tools to render and parse for ``tool_choice``.

    ``"auto"`` (default) and ``"required"`` offer every tool; ``"none"``
    offers none; ``{"type": "function", "function": {"name": N}}`` offers only
    N. "required" and a named function are enforced by constrained decoding
    (:func:`step35.generation.constraints.for_chat`): the answer is one or more calls
    whose arguments follow the tool's schema.
    """
    if tools is None:
        if tool_choice not in (None, "auto", "none"):
            raise ValueError("tool_choice needs tools")
        return None
    validate_tools(tools)
    tools = [dict(t) for t in tools]
    if tool_choice in (None, "auto", "required"):
        return tools
    if tool_choice == "none":
        return None
    if isinstance(tool_choice, Mapping):
        name = (tool_choice.get("function") or {}).get("name") if tool_choice.get("type") == "function" else None
        if not isinstance(name, str):
            raise ValueError('tool_choice must be "auto", "none", "required" or '
                             '{"type": "function", "function": {"name": ...}}')
        chosen = [t for t in tools if t["function"]["name"] == name]
        if not chosen:
            raise ValueError(f"tool_choice names {name!r}, which is not among the tools")
        return chosen
    raise ValueError(f'tool_choice must be "auto", "none", "required" or a function choice, got {tool_choice!r}')


#: Variables the chat call itself gives the template; ``template_kwargs`` may not set them.
TEMPLATE_VARIABLES = ("messages", "tools", "add_generation_prompt", "bos_token", "eos_token")


def check_template_kwargs(template_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """``template_kwargs`` of :meth:`step35.Model.chat` as a dict (ValueError/TypeError naming what is wrong)."""
    if template_kwargs is None:
        return {}
    if not isinstance(template_kwargs, Mapping):
        raise TypeError(f"template_kwargs must be a dict of template variables, not {type(template_kwargs).__name__}")
    for key in template_kwargs:
        if not isinstance(key, str) or not key.isidentifier():
            raise ValueError(f"template_kwargs keys must be variable names, got {key!r}")
        if key in TEMPLATE_VARIABLES:
            raise ValueError(f"template_kwargs may not set {key!r}: chat() gives the template "
                             f"{', '.join(TEMPLATE_VARIABLES)} itself")
    return dict(template_kwargs)


def build_prompt(template: str, messages: Sequence[Mapping[str, Any]], tools: list[dict[str, Any]] | None, *,
                 bos_token: str, eos_token: str, **extra: Any) -> str:
    """The rendered prompt (render_chat validates messages and tools first; ValueError on bad input)."""
    return render_chat(template, messages, tools=tools, add_generation_prompt=True,  # type: ignore[arg-type]
                       bos_token=bos_token, eos_token=eos_token, **extra)


def _usage(stats: GenerationStats) -> dict[str, int]:
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.generated_tokens,
            "total_tokens": stats.prompt_tokens + stats.generated_tokens,
            "prompt_tokens_details": {"cached_tokens": stats.prompt_tokens - stats.prompt_tokens_evaluated}}


def _timings(stats: GenerationStats) -> dict[str, float]:
    return {"prompt_n": stats.prompt_tokens_evaluated, "prompt_ms": stats.prompt_ms,
            "prompt_per_second": stats.prompt_tps, "predicted_n": stats.generated_tokens,
            "predicted_ms": stats.generation_ms, "predicted_per_second": stats.generation_tps,
            "ttft_ms": stats.ttft_ms, "seed": stats.seed}


def _finish_reason(native_reason: str, tool_calls: list[Any]) -> str:
    if tool_calls and native_reason == "stop":
        return "tool_calls"
    return native_reason


def complete(context: Context, prompt: list[int], tools: list[dict[str, Any]] | None, *, model_name: str,
             max_tokens: int | None, sampling: SamplingParams, stop: Any, constraint: Any = None,
             draft: int = 0) -> dict[str, Any]:
    """Run a non-streaming chat completion and return the OpenAI-shaped response."""
    native, seed = start(context, prompt, max_tokens=max_tokens, sampling=sampling, stop=stop, constraint=constraint,
                         draft=draft)
    return response(native, seed, tools, model_name=model_name)


def response(native: Any, seed: int, tools: list[dict[str, Any]] | None, *, model_name: str) -> dict[str, Any]:
    """Run a started native generation to its end; the OpenAI ``chat.completion`` dict."""
    try:
        text = native.step(True)
    finally:
        native.close()
    stats = _stats(native, seed)
    reason = finish_reason(native)
    message = parse_output(text, tools, cut=reason == "length")
    calls = message["tool_calls"]
    out_message: dict[str, Any] = {"role": "assistant", "content": message["content"] or None,
                                   "reasoning_content": message["reasoning_content"] or None}
    if calls:
        out_message["tool_calls"] = calls
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
        "model": model_name,
        "choices": [{"index": 0, "message": out_message,
                     "finish_reason": _finish_reason(reason, calls)}],
        "usage": _usage(stats), "timings": _timings(stats),
    }


class _ChunkMaker:
    """Builds ``chat.completion.chunk`` dicts for one stream."""

    def __init__(self, model_name: str) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.model = model_name
        self.tool_calls = False

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}], **extra}

    def deltas(self, deltas: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for d in deltas:
            if "tool_calls" in d:
                self.tool_calls = True
                d = {"tool_calls": [dict(c, function=dict(c["function"])) for c in d["tool_calls"]]}
            yield self.chunk(d)


def _last_chunks(stream: CompletionStream, parser: ChatStreamParser, maker: _ChunkMaker) -> Iterator[dict[str, Any]]:
    """What follows the last piece: the parser's held-back deltas, then the chunk with the finish reason
    (a call that the token limit cut is left out: "length", with the calls before it)."""
    reason = stream.finish_reason or "stop"
    yield from maker.deltas(parser.finish(cut=reason == "length"))
    stats = stream.stats
    if maker.tool_calls and reason == "stop":
        reason = "tool_calls"
    yield maker.chunk({}, reason, usage=_usage(stats), timings=_timings(stats))


def _chunks(stream: CompletionStream, parser: ChatStreamParser, maker: _ChunkMaker) -> Iterator[dict[str, Any]]:
    """The chunk sequence of one streamed chat completion (closes ``stream`` however it ends)."""
    try:
        yield maker.chunk({"role": "assistant"})
        for piece in stream:
            yield from maker.deltas(parser.feed(piece))
        yield from _last_chunks(stream, parser, maker)
    finally:
        stream.close()


async def _achunks(stream: CompletionStream, parser: ChatStreamParser,
                   maker: _ChunkMaker) -> AsyncIterator[dict[str, Any]]:
    """:func:`_chunks` for ``async for`` (pieces come from the stream's async iteration)."""
    try:
        yield maker.chunk({"role": "assistant"})
        async for piece in stream:
            for chunk in maker.deltas(parser.feed(piece)):
                yield chunk
        for chunk in _last_chunks(stream, parser, maker):
            yield chunk
    finally:
        stream.close()


class ChatStream:
    """Iterator of OpenAI ``chat.completion.chunk`` dicts.

    The first chunk carries ``{"role": "assistant"}``; then ``reasoning_content``,
    ``content`` and ``tool_calls`` deltas; the last chunk has ``finish_reason``
    and ``usage``. ``close()`` (or dropping the stream) stops generation within
    one token and frees the context. :attr:`stats` is available once the stream
    has ended.
    """

    def __init__(self, stream: CompletionStream, tools: list[dict[str, Any]] | None, model_name: str):
        self._stream = stream
        self._tools = tools
        self._model_name = model_name
        self._iter = _chunks(stream, ChatStreamParser(tools), _ChunkMaker(model_name))
        self._aiter: AsyncIterator[dict[str, Any]] | None = None

    def __iter__(self) -> ChatStream:
        return self

    def __next__(self) -> dict[str, Any]:
        return next(self._iter)

    def __aiter__(self) -> ChatStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        """The next chunk, for ``async for`` (use one way of iterating per stream)."""
        if self._aiter is None:
            self._aiter = _achunks(self._stream, ChatStreamParser(self._tools), _ChunkMaker(self._model_name))
        return await self._aiter.__anext__()

    def close(self) -> None:
        """Stop generating and free the context (idempotent)."""
        self._iter.close()
        self._stream.close()

    def __enter__(self) -> ChatStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def stats(self) -> GenerationStats:
        """Counts and timings of the call."""
        return self._stream.stats

    @property
    def finish_reason(self) -> str | None:
        """Why generation ended (``stop``, ``length``, ...; None while it runs), before tool calls are counted."""
        return self._stream.finish_reason

    @property
    def stop_sequence(self) -> str | None:
        """The stop string that ended generation (None when it ended another way, or still runs)."""
        return self._stream.stop_sequence

