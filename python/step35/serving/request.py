"""The one internal request every wire protocol is translated into, and the field checks they share.

A :class:`ChatRequest` holds what the engine needs (messages or a prompt,
tools and tool choice, sampling, stop strings, constraints, reasoning
settings); :meth:`ChatRequest.submit` queues it. The helpers check one JSON
field each and raise a 400 :class:`~step35.serving.errors.APIError` naming it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import bad

__all__ = ["ChatRequest", "SAMPLING_FIELDS", "check_type", "max_tokens_of", "optional", "sampling_of",
           "stop_of", "refuse_unless"]

#: Sampling settings a request may carry, with the JSON type each must have.
SAMPLING_FIELDS: dict[str, type] = {
    "temperature": float, "top_p": float, "min_p": float, "repeat_penalty": float,
    "presence_penalty": float, "frequency_penalty": float, "top_k": int, "repeat_last_n": int, "seed": int,
}


@dataclass
class ChatRequest:
    """One request in the engine's terms, whatever protocol it came in.

    Exactly one of ``messages`` (a chat: OpenAI-shaped messages, rendered by
    the model's chat template) and ``prompt`` (a plain continuation) is set.
    """

    messages: list[dict[str, Any]] | None = None
    prompt: str | list[int] | None = None
    tools: list[dict[str, Any]] | None = None  #: OpenAI function tools
    tool_choice: Any = "auto"
    parallel_tool_calls: bool = True
    sampling: dict[str, Any] = field(default_factory=dict)  #: SamplingParams fields
    max_tokens: int | None = None
    stop: list[str] | None = None
    response_format: dict[str, Any] | None = None  #: OpenAI chat response_format
    grammar: str | None = None  #: GBNF (plain completions)
    reasoning_budget: int | None = None
    template_kwargs: dict[str, Any] | None = None
    show_reasoning: bool = True  #: hand the reasoning text to the client (else only its seal)
    stream: bool = False
    include_usage: bool = False  #: OpenAI chat/completions streams: a last chunk with the usage
    progress: bool = False  #: stream prompt-evaluation progress (llama-server's ``return_progress``)
    model: str | None = None  #: the model name the client asked for (echoed back)
    skipped_tools: list[str] = field(default_factory=list)  #: tools of kinds this server cannot offer
    protocol_state: dict[str, Any] = field(default_factory=dict)  #: what the protocol adapter keeps per request

    def chat_arguments(self) -> dict[str, Any]:
        """Keyword arguments of ``Engine.chat`` (without ``stream``)."""
        assert self.messages is not None
        kwargs: dict[str, Any] = dict(self.sampling, max_tokens=self.max_tokens)
        for name in ("stop", "response_format", "reasoning_budget", "template_kwargs"):
            if getattr(self, name) is not None:
                kwargs[name] = getattr(self, name)
        if self.tools:
            kwargs["tools"] = self.tools
            kwargs["parallel_tool_calls"] = self.parallel_tool_calls
        if self.tool_choice is not None and (self.tools or self.tool_choice != "auto"):
            kwargs["tool_choice"] = self.tool_choice
        return kwargs

    def submit(self, engine: Any) -> Any:
        """Queue the request on ``engine``; its stream (engine errors propagate)."""
        if self.messages is not None:
            return engine.chat(self.messages, stream=True, **self.chat_arguments())
        kwargs: dict[str, Any] = dict(self.sampling, max_tokens=self.max_tokens)
        for name in ("stop", "grammar", "reasoning_budget"):
            if getattr(self, name) is not None:
                kwargs[name] = getattr(self, name)
        return engine.generate(self.prompt, stream=True, **kwargs)


def check_type(field: str, value: Any, kind: type) -> Any:
    """``value`` of JSON type ``kind`` (an int is a number too; a bool is neither), else 400 naming ``field``."""
    if kind in (bool, str):
        ok = isinstance(value, kind)
    else:  # a bool is an int to Python, not a number to JSON
        ok = not isinstance(value, bool) and isinstance(value, int if kind is int else (int, float))
    if not ok:
        what = {int: "an integer", bool: "true or false", str: "a string"}.get(kind, "a number")
        raise bad(field, f"{field} must be {what}, got {value!r}")
    if kind is float and not math.isfinite(value):
        raise bad(field, f"{field} must be a finite number, got {value!r}")
    return value


def optional(body: Mapping[str, Any], field: str, kind: type, default: Any = None) -> Any:
    """``body[field]`` checked to be of ``kind``; ``default`` when missing or null."""
    value = body.get(field)
    return default if value is None else check_type(field, value, kind)


def refuse_unless(body: Mapping[str, Any], field: str, allowed: Callable[[Any], bool], why: str) -> None:
    """400 naming ``field`` when it is given and ``allowed(value)`` is false."""
    value = body.get(field)
    if value is not None and not allowed(value):
        raise bad(field, f"{field}={json.dumps(value)} is not supported: {why}", code="unsupported_parameter")


def sampling_of(body: Mapping[str, Any], defaults: Mapping[str, Any], fields: Iterable[str],
                names: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The sampling settings among ``fields`` that ``body`` gives, else the server's ``defaults``.

    ``names`` maps a body field to its :data:`SAMPLING_FIELDS` name when they differ.
    A seed of -1 is llama.cpp's "random seed" (the same as none).
    """
    names = names or {}
    out: dict[str, Any] = {}
    for body_field in fields:
        name = names.get(body_field, body_field)
        kind = SAMPLING_FIELDS[name]
        value = body.get(body_field)
        if value is None:
            if defaults.get(name) is not None:
                out[name] = defaults[name]
            continue
        check_type(body_field, value, kind)
        if name == "seed" and value == -1:
            continue
        out[name] = float(value) if kind is float else value
    covered = {names.get(f, f) for f in fields}
    for name, value in defaults.items():  # server defaults of settings this protocol has no field for
        if name in SAMPLING_FIELDS and name not in covered and value is not None:
            out[name] = value
    return out


def max_tokens_of(body: Mapping[str, Any], field: str, default: int | None) -> int | None:
    """``body[field]`` as a token limit (>= 0), else ``default``."""
    value = body.get(field)
    if value is None:
        return default
    check_type(field, value, int)
    if value < 0:
        raise bad(field, f"{field} must be >= 0, got {value}")
    return int(value)


def stop_of(body: Mapping[str, Any], field: str) -> list[str] | None:
    """Stop strings from a string or a list of strings (empty ones dropped), or None."""
    stop = body.get(field)
    if stop is None:
        return None
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise bad(field, f"{field} must be a string or a list of strings, got {stop!r}")
    stop = [s for s in stop if s]
    return stop or None
