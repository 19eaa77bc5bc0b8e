"""The Anthropic Messages protocol (``/v1/messages``, ``/v1/messages/count_tokens``), as Claude Code speaks it.

Requests: ``system`` (a string or text blocks), ``messages`` whose content
is a string or blocks (``text``; ``tool_use`` and ``thinking`` /
``redacted_thinking`` from the assistant; ``tool_result`` from the user, its
content a string or blocks, with ``is_error``), ``tools`` with
``input_schema``, ``tool_choice`` (``auto``, ``any``, ``tool``, ``none``, and
``disable_parallel_tool_use``), ``stop_sequences``, ``max_tokens``,
``temperature``, ``top_p``, ``top_k``, ``thinking`` (``enabled`` with
``budget_tokens``: the reasoning budget; ``disabled``: no reasoning;
``adaptive``: the model decides). ``image`` and ``document`` blocks get a 400
naming them: the model reads text only. ``cache_control``, ``metadata``,
``context_management``, ``output_config`` and other unknown fields are
accepted and ignored, as are the ``anthropic-version`` and ``anthropic-beta``
headers and the ``?beta=true`` query.

Answers: ``thinking`` (its ``signature`` seals the reasoning, see
:mod:`.reasoning`), ``text`` and ``tool_use`` blocks; ``stop_reason``
``end_turn``, ``max_tokens``, ``stop_sequence`` or ``tool_use``; ``usage``
with ``cache_read_input_tokens`` = prompt tokens served from the cache (and
``input_tokens`` = those evaluated). Streams follow Anthropic's event
sequence: ``message_start``, ``ping``, then per block ``content_block_start``,
``content_block_delta`` (``thinking_delta`` + ``signature_delta``,
``text_delta``, ``input_json_delta``), ``content_block_stop``, then
``message_delta`` and ``message_stop``; a failure mid-stream is an ``error``
event. Errors have Anthropic's shape.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from .errors import APIError, bad
from .events import (
    Answer,
    Event,
    Failed,
    Finished,
    Progress,
    ReasoningDelta,
    Started,
    TextDelta,
    ToolCallDone,
    ToolCallStart,
    Usage,
)
from .reasoning import ReasoningSeal
from .request import ChatRequest, check_type, max_tokens_of, optional, sampling_of, stop_of

__all__ = ["Messages", "anthropic_error"]

#: Anthropic's error type for each HTTP status this server answers.
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 405: "invalid_request_error", 413: "request_too_large",
               429: "rate_limit_error", 500: "api_error", 501: "api_error", 503: "overloaded_error",
               529: "overloaded_error"}
#: Request fields an engine ValueError may name.
PARAMS = frozenset({"messages", "system", "tools", "tool_choice", "max_tokens", "stop_sequences", "temperature",
                    "top_p", "top_k", "thinking", "model"})
_UNSUPPORTED_BLOCKS = {"image": "images", "document": "documents", "search_result": "search results",
                       "container_upload": "container uploads"}
_STOP_REASONS = {"tool_calls": "tool_use", "length": "max_tokens"}


def anthropic_error(err: APIError) -> dict[str, Any]:
    """Anthropic's error body."""
    return {"type": "error", "error": {"type": ERROR_TYPES.get(err.status, "api_error"), "message": err.message}}


def _usage(usage: Usage) -> dict[str, Any]:
    return {"input_tokens": usage.evaluated_tokens, "output_tokens": usage.completion_tokens,
            "cache_read_input_tokens": usage.cached_tokens, "cache_creation_input_tokens": 0}


def _stop_reason(finished: Finished) -> str:
    if finished.reason == "stop" and finished.stop_sequence is not None:
        return "stop_sequence"
    return _STOP_REASONS.get(finished.reason, "end_turn")


def _blocks(content: Any, where: str) -> list[Mapping[str, Any]]:
    """Content as a list of blocks (a string is one text block)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list) or not all(isinstance(b, Mapping) for b in content):
        raise bad(where, f"{where} must be a string or a list of content blocks")
    return content


def _refuse_block(block: Mapping[str, Any], where: str) -> None:
    kind = block.get("type")
    if kind in _UNSUPPORTED_BLOCKS:
        raise bad(where, f"{where} is a {kind!r} block: {_UNSUPPORTED_BLOCKS[kind]} are not supported, "
                         "this model reads text only")
    raise bad(where, f"{where} has an unknown content block type {kind!r}")


def _text(block: Mapping[str, Any], where: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise bad(f"{where}.text", f"{where}.text must be a string")
    return text


def _joined_text(content: Any, where: str) -> str:
    """The text of a string or of text blocks (system prompts, tool results)."""
    parts = []
    for j, block in enumerate(_blocks(content, where)):
        if block.get("type") != "text":
            _refuse_block(block, f"{where}[{j}]")
        parts.append(_text(block, f"{where}[{j}]"))
    return "\n\n".join(parts)


class Messages:
    """``/v1/messages``: requests to :class:`ChatRequest`, events to Anthropic messages and streams."""

    route = "/v1/messages"
    prompt_field = "messages"
    params = PARAMS
    counts_reasoning = False

    def __init__(self, served_name: str, seal: ReasoningSeal, *, counting: bool = False) -> None:
        self.served_name = served_name
        self.seal = seal
        self._counting = counting

    def counting(self) -> Messages:
        """This protocol for ``/v1/messages/count_tokens`` (no ``max_tokens`` needed)."""
        return Messages(self.served_name, self.seal, counting=True)

    # -- requests ---------------------------------------------------------------
    def parse(self, body: Mapping[str, Any], defaults: Mapping[str, Any]) -> ChatRequest:
        """The request of a ``/v1/messages`` body (APIError 400 naming the field when bad)."""
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise bad("messages", "messages is required: a list of {role, content} messages")
        if self._counting:
            max_tokens = None
        else:
            if body.get("max_tokens") is None:
                raise bad("max_tokens", "max_tokens is required: the most tokens to generate")
            max_tokens = max_tokens_of(body, "max_tokens", None)
        stream = optional(body, "stream", bool, False)
        model = optional(body, "model", str)
        req = ChatRequest(messages=self._messages(body.get("system"), messages),
                          sampling=sampling_of(body, defaults, ("temperature", "top_p", "top_k")),
                          max_tokens=max_tokens, stop=stop_of(body, "stop_sequences"), stream=bool(stream),
                          progress=bool(body.get("return_progress")) and bool(stream), model=model)
        req.reasoning_budget, display = self._thinking(body.get("thinking"), defaults)
        req.show_reasoning = display != "omitted"
        self._tools(body, req)
        return req

    @staticmethod
    def _thinking(thinking: Any, defaults: Mapping[str, Any]) -> tuple[int | None, str]:
        """(reasoning budget, display) of the ``thinking`` field."""
        default = defaults.get("reasoning_budget")
        if thinking is None:
            return (None if default is None else int(default)), "summarized"
        if not isinstance(thinking, Mapping):
            raise bad("thinking", "thinking must be an object with a type: enabled, disabled or adaptive")
        kind = thinking.get("type")
        display = thinking.get("display") or "summarized"
        if kind == "disabled":
            return 0, display
        if kind == "adaptive":
            return (None if default is None else int(default)), display
        if kind == "enabled":
            budget = thinking.get("budget_tokens")
            if budget is None:
                return (None if default is None else int(default)), display
            check_type("thinking.budget_tokens", budget, int)
            if budget < 0:
                raise bad("thinking.budget_tokens", "thinking.budget_tokens must be >= 0")
            return int(budget), display
        raise bad("thinking.type", f"thinking.type must be enabled, disabled or adaptive, got {kind!r}")

    def _messages(self, system: Any, messages: list[Any]) -> list[dict[str, Any]]:
        """Anthropic messages as the chat template's (OpenAI-shaped) messages."""
        out: list[dict[str, Any]] = []
        if system is not None and system != "" and system != []:
            out.append({"role": "system", "content": _joined_text(system, "system")})
        for i, message in enumerate(messages):
            where = f"messages[{i}]"
            if not isinstance(message, Mapping):
                raise bad(where, f"{where} must be an object with role and content")
            role = message.get("role")
            blocks = _blocks(message.get("content"), f"{where}.content")
            if role == "user":
                out += self._user(blocks, f"{where}.content")
            elif role == "assistant":
                out.append(self._assistant(blocks, f"{where}.content"))
            elif role == "system":  # Claude Code sends its environment as a system message in the conversation
                out.append({"role": "system", "content": _joined_text(blocks, f"{where}.content")})
            else:
                raise bad(f"{where}.role", f"{where}.role must be user, assistant or system, got {role!r}")
        return out

    @staticmethod
    def _user(blocks: list[Mapping[str, Any]], where: str) -> list[dict[str, Any]]:
        """A user turn: its tool results become tool messages, its text a user message, in order."""
        out: list[dict[str, Any]] = []
        texts: list[str] = []
        for j, block in enumerate(blocks):
            at = f"{where}[{j}]"
            kind = block.get("type")
            if kind == "text":
                texts.append(_text(block, at))
            elif kind == "tool_result":
                if texts:
                    out.append({"role": "user", "content": "\n\n".join(texts)})
                    texts = []
                tool_use_id = block.get("tool_use_id")
                if not isinstance(tool_use_id, str):
                    raise bad(f"{at}.tool_use_id", f"{at}.tool_use_id must be the id of a tool_use block")
                content = block.get("content")
                text = "" if content is None else _joined_text(content, f"{at}.content")
                if block.get("is_error"):
                    text = f"Error: {text}"
                out.append({"role": "tool", "tool_call_id": tool_use_id, "content": text})
            else:
                _refuse_block(block, at)
        if texts:
            out.append({"role": "user", "content": "\n\n".join(texts)})
        return out

    def _assistant(self, blocks: list[Mapping[str, Any]], where: str) -> dict[str, Any]:
        """An assistant turn: thinking (when its seal holds), text and tool calls."""
        reasoning: list[str] = []
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        for j, block in enumerate(blocks):
            at = f"{where}[{j}]"
            kind = block.get("type")
            if kind == "text":
                texts.append(_text(block, at))
            elif kind == "thinking":
                text = self.seal.open(block.get("signature"), where=at)
                if text is not None:
                    reasoning.append(text)
            elif kind == "redacted_thinking":
                continue  # this server never redacts; nothing in it can be rendered
            elif kind == "tool_use":
                name, args = block.get("name"), block.get("input", {})
                if not isinstance(name, str) or not isinstance(args, Mapping):
                    raise bad(at, f"{at} must have a name and an input object")
                calls.append({"id": str(block.get("id") or f"toolu_{j}"), "type": "function",
                              "function": {"name": name, "arguments": dict(args)}})
            else:
                _refuse_block(block, at)
        message: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
        if reasoning:
            message["reasoning_content"] = "\n".join(reasoning)
        if calls:
            message["tool_calls"] = calls
        return message

    @staticmethod
    def _tools(body: Mapping[str, Any], req: ChatRequest) -> None:
        """``tools`` and ``tool_choice``: client tools become function tools; server tools are skipped."""
        tools = body.get("tools")
        if tools is not None and not isinstance(tools, list):
            raise bad("tools", "tools must be a list of tools")
        functions = []
        for i, tool in enumerate(tools or ()):
            if not isinstance(tool, Mapping) or not isinstance(tool.get("name"), str):
                raise bad(f"tools[{i}]", f"tools[{i}] must be an object with a name")
            if tool.get("type") not in (None, "custom") or "input_schema" not in tool:
                req.skipped_tools.append(f"{tool['name']} ({tool.get('type')})")
                continue
            function: dict[str, Any] = {"name": tool["name"], "parameters": tool["input_schema"]}
            if isinstance(tool.get("description"), str):
                function["description"] = tool["description"]
            functions.append({"type": "function", "function": function})
        choice = body.get("tool_choice")
        if choice is not None and not isinstance(choice, Mapping):
            raise bad("tool_choice", "tool_choice must be an object with a type: auto, any, tool or none")
        choice = choice or {"type": "auto"}
        kind = choice.get("type")
        if kind == "auto":
            req.tool_choice = "auto"
        elif kind == "any":
            req.tool_choice = "required"
        elif kind == "none":
            req.tool_choice = "none"
        elif kind == "tool":
            if not isinstance(choice.get("name"), str):
                raise bad("tool_choice.name", 'tool_choice {"type": "tool"} needs the name of a tool')
            req.tool_choice = {"type": "function", "function": {"name": choice["name"]}}
        else:
            raise bad("tool_choice.type", f"tool_choice.type must be auto, any, tool or none, got {kind!r}")
        if kind not in ("auto", "none") and not functions:
            raise bad("tool_choice", f"tool_choice {kind!r} needs tools")
        req.tools = functions or None
        disable = choice.get("disable_parallel_tool_use")
        if disable is not None:
            req.parallel_tool_calls = not check_type("tool_choice.disable_parallel_tool_use", disable, bool)

    # -- answers ----------------------------------------------------------------
    def error_body(self, err: APIError) -> dict[str, Any]:
        """Anthropic's error body."""
        return anthropic_error(err)

    def _thinking_block(self, req: ChatRequest, text: str) -> dict[str, Any]:
        shown = text if req.show_reasoning else ""
        return {"type": "thinking", "thinking": shown, "signature": self.seal.seal(text)}

    def _head(self, req: ChatRequest) -> dict[str, Any]:
        return {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
                "model": req.model or self.served_name}

    def reply(self, req: ChatRequest, answer: Answer) -> dict[str, Any]:
        """The ``message`` object of a whole answer."""
        finished = answer.finished
        assert finished is not None
        content: list[dict[str, Any]] = []
        if answer.reasoning:
            content.append(self._thinking_block(req, answer.reasoning))
        if answer.text:
            content.append({"type": "text", "text": answer.text})
        for call in answer.whole_calls:
            content.append({"type": "tool_use", "id": _tool_use_id(), "name": call["name"],
                            "input": Answer.arguments(call)})
        return dict(self._head(req), content=content, stop_reason=_stop_reason(finished),
                    stop_sequence=finished.stop_sequence, usage=_usage(finished.usage))

    async def stream(self, req: ChatRequest, events: AsyncIterator[Event]) -> AsyncIterator[dict[str, str]]:
        """Anthropic's event sequence for one message."""
        blocks = _BlockWriter(self, req)
        async for event in events:
            if isinstance(event, Started):
                usage = Usage(event.prompt_tokens, event.cached_tokens, 0)
                message = dict(self._head(req), content=[], stop_reason=None, stop_sequence=None,
                               usage=dict(_usage(usage), output_tokens=0))
                yield _event("message_start", {"type": "message_start", "message": message})
                yield _event("ping", {"type": "ping"})
            elif isinstance(event, Failed):
                yield _event("error", anthropic_error(event.error))
                return
            elif isinstance(event, Progress):
                yield _event("prompt_progress", {"type": "prompt_progress", **event.as_dict()})
            elif isinstance(event, Finished):
                for item in blocks.close():
                    yield item
                delta = {"stop_reason": _stop_reason(event), "stop_sequence": event.stop_sequence}
                yield _event("message_delta", {"type": "message_delta", "delta": delta,
                                               "usage": _usage(event.usage)})
                yield _event("message_stop", {"type": "message_stop"})
            else:
                for item in blocks.add(event):
                    yield item


def _tool_use_id() -> str:
    return f"toolu_{uuid.uuid4().hex[:24]}"


def _event(name: str, data: dict[str, Any]) -> dict[str, str]:
    return {"event": name, "data": json.dumps(data, ensure_ascii=False, separators=(",", ":"))}


class _BlockWriter:
    """Opens, fills and closes the content blocks of one streamed message."""

    def __init__(self, protocol: Messages, req: ChatRequest) -> None:
        self.protocol = protocol
        self.req = req
        self.index = -1
        self.kind: str | None = None
        self.reasoning: list[str] = []
        self.omit = not req.show_reasoning

    def _open(self, kind: str, block: dict[str, Any]) -> list[dict[str, str]]:
        out = self.close()
        self.index += 1
        self.kind = kind
        out.append(_event("content_block_start", {"type": "content_block_start", "index": self.index,
                                                  "content_block": block}))
        return out

    def _delta(self, delta: dict[str, Any]) -> dict[str, str]:
        return _event("content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta})

    def close(self) -> list[dict[str, str]]:
        """Close the open block (a thinking block gets its signature first)."""
        if self.kind is None:
            return []
        out = []
        if self.kind == "thinking":
            seal = self.protocol.seal.seal("".join(self.reasoning))
            out.append(self._delta({"type": "signature_delta", "signature": seal}))
            self.reasoning = []
        out.append(_event("content_block_stop", {"type": "content_block_stop", "index": self.index}))
        self.kind = None
        return out

    def add(self, event: Event) -> list[dict[str, str]]:
        """The events one engine event makes."""
        out: list[dict[str, str]] = []
        if isinstance(event, ReasoningDelta):
            if self.kind != "thinking":
                out += self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            self.reasoning.append(event.text)
            if not self.omit:
                out.append(self._delta({"type": "thinking_delta", "thinking": event.text}))
        elif isinstance(event, TextDelta):
            if self.kind != "text":
                out += self._open("text", {"type": "text", "text": ""})
            out.append(self._delta({"type": "text_delta", "text": event.text}))
        elif isinstance(event, ToolCallStart):
            out += self._open("tool_use", {"type": "tool_use", "id": _tool_use_id(), "name": event.name,
                                           "input": {}})
        elif isinstance(event, ToolCallDone):
            out.append(self._delta({"type": "input_json_delta", "partial_json": event.arguments}))
            out += self.close()
        return out
