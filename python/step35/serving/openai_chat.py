"""The OpenAI chat completions and completions protocol (``/v1/chat/completions``, ``/v1/completions``).

Request fields: ``messages`` (or ``prompt``), ``tools``/``tool_choice``,
``parallel_tool_calls``, ``reasoning_content`` in messages, ``stream`` and
``stream_options.include_usage``, ``seed``, ``stop``, ``max_tokens`` /
``max_completion_tokens``, ``temperature``, ``top_p``, ``presence_penalty``,
``frequency_penalty``, ``response_format``, and as extra body fields ``top_k``,
``min_p``, ``repeat_penalty``, ``repeat_last_n``, ``chat_template_kwargs``,
llama-server's reasoning budget names and ``return_progress``. Fields that do
not change the answer (``user``, ``n=1``, ``logprobs=false``, ``store``, ...)
are accepted and ignored; those that would (``n>1``, ``logprobs=true``, ...)
are refused with 400 naming them. Errors have OpenAI's shape.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from ..errors import GrammarError
from ..generation.constraints import json_schema_to_grammar, response_schema
from .errors import APIError, bad
from .events import (
    Answer,
    Event,
    Failed,
    Finished,
    Progress,
    ReasoningDelta,
    TextDelta,
    ToolCallDone,
    ToolCallStart,
    Usage,
)
from .request import SAMPLING_FIELDS, ChatRequest, check_type, max_tokens_of, refuse_unless, sampling_of, stop_of

__all__ = ["ChatCompletions", "Completions", "chat_request", "completion_request", "dumps", "openai_error",
           "openai_usage"]

#: Top-level request fields whose name may start an engine ValueError's message (so it becomes ``param``).
PARAMS = frozenset(SAMPLING_FIELDS) | {"messages", "tools", "tool_choice", "stop", "max_tokens",
                                       "max_completion_tokens", "prompt", "chat_template_kwargs",
                                       "template_kwargs", "model", "stream", "stream_options",
                                       "response_format", "reasoning_budget", "grammar", "json_schema",
                                       "parallel_tool_calls"}
_REASONING_BUDGET_FIELDS = ("reasoning_budget", "reasoning_budget_tokens", "thinking_budget_tokens")


def dumps(obj: Any) -> str:
    """Compact JSON for an event stream."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def openai_error(err: APIError) -> dict[str, Any]:
    """OpenAI's error body."""
    return err.body()


def openai_usage(usage: Usage) -> dict[str, Any]:
    """OpenAI ``usage``, with the prompt tokens served from the cache."""
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens}}


# --------------------------------------------------------------------------- requests


def _stream_flags(body: Mapping[str, Any]) -> tuple[bool, bool]:
    """``(stream, include_usage)`` of a request."""
    stream = body.get("stream")
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise bad("stream", f"stream must be true or false, got {stream!r}")
    options = body.get("stream_options")
    include_usage: Any = None
    if options is not None:
        if not isinstance(options, dict):
            raise bad("stream_options", f"stream_options must be an object, got {options!r}")
        include_usage = options.get("include_usage")
        if include_usage is not None and not isinstance(include_usage, bool):
            raise bad("stream_options.include_usage",
                      f"stream_options.include_usage must be true or false, got {include_usage!r}")
    return stream, bool(include_usage) and stream


def reasoning_budget_of(body: Mapping[str, Any], defaults: Mapping[str, Any]) -> int | None:
    """llama-server's reasoning budget fields (-1 unlimited, 0 none, N tokens), else the server default."""
    for name in _REASONING_BUDGET_FIELDS:
        budget = body.get(name)
        if budget is not None:
            check_type(name, budget, int)
            if budget < -1:
                raise bad(name, f"{name} must be -1 (unlimited), 0 (no reasoning) or a number of tokens")
            return int(budget)
    value = defaults.get("reasoning_budget")
    return None if value is None else int(value)


def _common(body: Mapping[str, Any], defaults: Mapping[str, Any], *, default_max_tokens: int | None) -> ChatRequest:
    """The fields both routes share (sampling, stop, max_tokens, stream flags, reasoning budget)."""
    stream, include_usage = _stream_flags(body)
    max_field = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    default = defaults.get("max_tokens")
    req = ChatRequest(sampling=sampling_of(body, defaults, SAMPLING_FIELDS),
                      max_tokens=max_tokens_of(body, max_field, default_max_tokens if default is None else default),
                      stop=stop_of(body, "stop"), stream=stream, include_usage=include_usage,
                      reasoning_budget=reasoning_budget_of(body, defaults),
                      progress=bool(body.get("return_progress")) and stream)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad("model", f"model must be a string, got {model!r}")
    req.model = model
    refuse_unless(body, "n", lambda v: v == 1, "this server returns one choice per request (n=1)")
    refuse_unless(body, "logit_bias", lambda v: v == {}, "logit_bias is not implemented")
    return req


def chat_request(body: Mapping[str, Any], defaults: Mapping[str, Any]) -> ChatRequest:
    """The :class:`ChatRequest` of a ``/v1/chat/completions`` body (APIError 400 when bad).

    ``messages``, ``tools`` and ``tool_choice`` are checked by the engine
    itself (the chat template's validation), whose ValueError names the field.
    """
    messages = body.get("messages")
    if messages is None:
        raise bad("messages", "messages is required: a list of chat messages")
    if not isinstance(messages, list):
        raise bad("messages", f"messages must be a list of chat messages, got {type(messages).__name__}")
    req = _common(body, defaults, default_max_tokens=None)
    req.messages = messages
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise bad("tools", f"tools must be a list of tools, got {type(tools).__name__}")
        req.tools = tools or None
    tool_choice = body.get("tool_choice")
    if tool_choice is not None:
        req.tool_choice = tool_choice
        if not req.tools and tool_choice not in ("auto", "none"):
            raise bad("tool_choice", f"tool_choice={json.dumps(tool_choice)} needs tools")
    template_kwargs = body.get("chat_template_kwargs")
    if template_kwargs is not None:
        if not isinstance(template_kwargs, dict):
            raise bad("chat_template_kwargs", "chat_template_kwargs must be an object of template variables")
        req.template_kwargs = template_kwargs or None
    refuse_unless(body, "logprobs", lambda v: v is False, "token log-probabilities are not implemented")
    refuse_unless(body, "top_logprobs", lambda v: v == 0, "token log-probabilities are not implemented")
    response_format = body.get("response_format")
    if response_format is not None:
        try:
            if response_schema(response_format) is not None:
                req.response_format = response_format
        except ValueError as e:
            raise bad("response_format", str(e)) from None
    parallel = body.get("parallel_tool_calls")
    if parallel is not None:
        req.parallel_tool_calls = check_type("parallel_tool_calls", parallel, bool)
    refuse_unless(body, "modalities", lambda v: v == ["text"], "this model answers in text only")
    refuse_unless(body, "audio", lambda v: False, "this model answers in text only")
    refuse_unless(body, "functions", lambda v: v == [], "the deprecated functions field is not supported: use tools")
    refuse_unless(body, "function_call", lambda v: v == "none",
                  "the deprecated function_call field is not supported: use tool_choice")
    return req


def completion_request(body: Mapping[str, Any], defaults: Mapping[str, Any]) -> ChatRequest:
    """The :class:`ChatRequest` of a ``/v1/completions`` body (APIError 400 when bad)."""
    prompt = body.get("prompt")
    if prompt is None:
        raise bad("prompt", "prompt is required: a string or a list of token ids")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, list):
        if not prompt or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in prompt):
            raise bad("prompt", "prompt must be a string, a list of token ids, or a list of one of them "
                                "(several prompts per request are not supported: send one request each)")
    elif not isinstance(prompt, str):
        raise bad("prompt", f"prompt must be a string or a list of token ids, got {type(prompt).__name__}")
    req = _common(body, defaults, default_max_tokens=16)  # OpenAI's default for completions
    req.prompt = prompt
    grammar, schema = body.get("grammar"), body.get("json_schema")  # llama-server's fields
    if grammar is not None and schema is not None:
        raise bad("grammar", "give grammar or json_schema, not both")
    if grammar is not None:
        if not isinstance(grammar, str):
            raise bad("grammar", f"grammar must be GBNF text, got {type(grammar).__name__}")
        req.grammar = grammar
    elif schema is not None:
        if not isinstance(schema, (dict, bool)):
            raise bad("json_schema", f"json_schema must be a JSON Schema object, got {type(schema).__name__}")
        try:
            req.grammar = json_schema_to_grammar(schema)
        except GrammarError as e:
            raise bad("json_schema", f"json_schema cannot be enforced: {e}") from None
    refuse_unless(body, "echo", lambda v: v is False, "echoing the prompt is not implemented")
    refuse_unless(body, "suffix", lambda v: v == "", "insertion (suffix) is not implemented")
    refuse_unless(body, "best_of", lambda v: v == 1, "this server returns one choice per request (best_of=1)")
    refuse_unless(body, "logprobs", lambda v: v is False or v == 0, "token log-probabilities are not implemented")
    return req


# --------------------------------------------------------------------------- answers


def _side_event(head: dict[str, Any], event: Progress | Failed) -> dict[str, str]:
    """A chunk with prompt progress (llama-server's shape), or the error that ends a stream."""
    if isinstance(event, Failed):
        return {"data": dumps(openai_error(event.error))}
    return {"data": dumps(dict(head, choices=[], prompt_progress=event.as_dict()))}


class ChatCompletions:
    """``/v1/chat/completions``: ``chat.completion`` objects and ``chat.completion.chunk`` streams."""

    route = "/v1/chat/completions"
    prompt_field = "messages"
    params = PARAMS
    counts_reasoning = False

    def __init__(self, served_name: str) -> None:
        self.served_name = served_name

    def parse(self, body: Mapping[str, Any], defaults: Mapping[str, Any]) -> ChatRequest:
        """The request of a body."""
        return chat_request(body, defaults)

    def error_body(self, err: APIError) -> dict[str, Any]:
        """The error's body in this protocol."""
        return openai_error(err)

    def reply(self, req: ChatRequest, answer: Answer) -> dict[str, Any]:
        """The ``chat.completion`` object of a whole answer."""
        finished = answer.finished
        assert finished is not None
        calls = answer.whole_calls
        message: dict[str, Any] = {"role": "assistant", "content": answer.text or None,
                                   "reasoning_content": answer.reasoning or None}
        if calls:
            message["tool_calls"] = [{"id": c["id"], "type": "function",
                                      "function": {"name": c["name"], "arguments": c["arguments"]}} for c in calls]
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
                "model": req.model or self.served_name,
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finished.reason}],
                "usage": openai_usage(finished.usage), "timings": finished.usage.timings}

    async def stream(self, req: ChatRequest, events: AsyncIterator[Event]) -> AsyncIterator[dict[str, str]]:
        """The chunk stream: a role chunk, deltas, the finish chunk, the usage chunk if asked, ``[DONE]``."""
        head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": req.model or self.served_name}
        extra: dict[str, Any] = {"usage": None} if req.include_usage else {}

        def chunk(delta: dict[str, Any], finish_reason: str | None = None, **more: Any) -> dict[str, str]:
            return {"data": dumps(dict(head, choices=[{"index": 0, "delta": delta, "logprobs": None,
                                                       "finish_reason": finish_reason}], **more, **extra))}

        yield chunk({"role": "assistant"})
        async for event in events:
            if isinstance(event, ReasoningDelta):
                yield chunk({"reasoning_content": event.text})
            elif isinstance(event, TextDelta):
                yield chunk({"content": event.text})
            elif isinstance(event, ToolCallStart):
                yield chunk({"tool_calls": [{"index": event.index, "id": event.id, "type": "function",
                                             "function": {"name": event.name, "arguments": ""}}]})
            elif isinstance(event, ToolCallDone):
                yield chunk({"tool_calls": [{"index": event.index, "function": {"arguments": event.arguments}}]})
            elif isinstance(event, (Progress, Failed)):
                yield _side_event(head, event)
                if isinstance(event, Failed):
                    return
            elif isinstance(event, Finished):
                yield chunk({}, event.reason, timings=event.usage.timings)
                if req.include_usage:
                    yield {"data": dumps(dict(head, choices=[], usage=openai_usage(event.usage)))}
        yield {"data": "[DONE]"}


class Completions(ChatCompletions):
    """``/v1/completions``: ``text_completion`` objects and streams."""

    route = "/v1/completions"
    prompt_field = "prompt"

    def parse(self, body: Mapping[str, Any], defaults: Mapping[str, Any]) -> ChatRequest:
        """The request of a body."""
        return completion_request(body, defaults)

    def reply(self, req: ChatRequest, answer: Answer) -> dict[str, Any]:
        """The ``text_completion`` object of a whole answer."""
        finished = answer.finished
        assert finished is not None
        return {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
                "model": req.model or self.served_name,
                "choices": [{"index": 0, "text": answer.text, "logprobs": None, "finish_reason": finished.reason}],
                "usage": openai_usage(finished.usage), "timings": finished.usage.timings}

    async def stream(self, req: ChatRequest, events: AsyncIterator[Event]) -> AsyncIterator[dict[str, str]]:
        """Text chunks, the finish chunk, the usage chunk if asked, ``[DONE]``."""
        head = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
                "model": req.model or self.served_name}
        extra: dict[str, Any] = {"usage": None} if req.include_usage else {}
        async for event in events:
            if isinstance(event, TextDelta):
                yield {"data": dumps(dict(head, choices=[{"index": 0, "text": event.text, "logprobs": None,
                                                          "finish_reason": None}], **extra))}
            elif isinstance(event, (Progress, Failed)):
                yield _side_event(head, event)
                if isinstance(event, Failed):
                    return
            elif isinstance(event, Finished):
                yield {"data": dumps(dict(head, choices=[{"index": 0, "text": "", "logprobs": None,
                                                          "finish_reason": event.reason}],
                                          timings=event.usage.timings, **extra))}
                if req.include_usage:
                    yield {"data": dumps(dict(head, choices=[], usage=openai_usage(event.usage)))}
        yield {"data": "[DONE]"}
