"""The OpenAI Responses protocol (``/v1/responses``, ``/v1/responses/input_tokens``), as Codex CLI speaks it.

Requests: ``input`` as a string or a list of items (``message`` with roles
``user``, ``assistant``, ``system`` and ``developer`` and parts
``input_text``/``output_text``; ``function_call``; ``function_call_output``;
``reasoning``), ``instructions``, ``function`` tools (tools of other types
are skipped, named in the ``X-Step35-Skipped-Tools`` header and the log, never
refused), ``tool_choice``, ``parallel_tool_calls``, ``max_output_tokens``,
``temperature``, ``top_p``, ``reasoning.effort`` (a reasoning budget:
:data:`EFFORT_BUDGETS`), ``text.format`` (``json_schema`` and
``json_object`` through the grammar constraints), ``include``
(``reasoning.encrypted_content``), ``store`` and ``previous_response_id``
(a bounded in-memory store, :class:`ResponseStore`).

Answers: ``reasoning`` items (the text as ``reasoning_text`` content and,
when asked, sealed as ``encrypted_content``, see :mod:`.reasoning`),
``message`` items with ``output_text``, ``function_call`` items; status
``completed``, or ``incomplete`` with ``incomplete_details``; ``usage`` with
``input_tokens_details.cached_tokens`` and
``output_tokens_details.reasoning_tokens``. Streams carry
``sequence_number`` on every event: ``response.created``,
``response.in_progress``, ``response.output_item.added``/``.done``,
``response.content_part.added``/``.done``,
``response.reasoning_text.delta``/``.done``,
``response.output_text.delta``/``.done``,
``response.function_call_arguments.delta``/``.done``, then
``response.completed``, ``response.incomplete`` or ``response.failed``.
"""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from collections import OrderedDict
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
    TextDelta,
    ToolCallDone,
    ToolCallStart,
    Usage,
)
from .openai_chat import dumps, openai_error, reasoning_budget_of
from .reasoning import ReasoningSeal
from .request import SAMPLING_FIELDS, ChatRequest, check_type, max_tokens_of, optional, sampling_of

__all__ = ["EFFORT_BUDGETS", "ResponseStore", "Responses"]

#: ``reasoning.effort`` -> reasoning budget in tokens (None: unlimited).
EFFORT_BUDGETS: dict[str, int | None] = {"none": 0, "minimal": 512, "low": 2048, "medium": 8192,
                                         "high": None, "xhigh": None}
#: Request fields an engine ValueError may name.
PARAMS = frozenset(SAMPLING_FIELDS) | {"input", "instructions", "tools", "tool_choice", "max_output_tokens",
                                       "text", "reasoning", "parallel_tool_calls", "model"}
_ENCRYPTED = "reasoning.encrypted_content"
_UNSUPPORTED_PARTS = {"input_image": "images", "input_file": "files", "input_audio": "audio"}


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


class ResponseStore:
    """The most recent stored responses, for ``previous_response_id``: least recently used out first
    once their JSON passes ``max_bytes``. Thread-safe."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[list[dict[str, Any]], int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, response_id: str, conversation: list[dict[str, Any]]) -> None:
        """Keep the whole conversation up to and including a response's output items."""
        size = len(json.dumps(conversation, ensure_ascii=False))
        if size > self.max_bytes:
            return
        with self._lock:
            self._items[response_id] = (conversation, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, dropped) = self._items.popitem(last=False)
                self._bytes -= dropped

    def get(self, response_id: str) -> list[dict[str, Any]] | None:
        """The conversation items of a stored response (None when unknown or dropped)."""
        with self._lock:
            entry = self._items.get(response_id)
            if entry is None:
                return None
            self._items.move_to_end(response_id)
            return copy.deepcopy(entry[0])

    @property
    def bytes(self) -> int:
        """JSON bytes held."""
        return self._bytes


def _text_parts(content: Any, where: str) -> str:
    """The text of a message's content (a string or text parts)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad(where, f"{where} must be a string or a list of content parts")
    texts = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind in ("input_text", "output_text", "text", "summary_text", "reasoning_text") \
                and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        elif kind in _UNSUPPORTED_PARTS:
            raise bad(at, f"{at} is an {kind!r} part: {_UNSUPPORTED_PARTS[kind]} are not supported, "
                          "this model reads text only")
        else:
            raise bad(at, f"{at} is not a text part (type {kind!r})")
    return "\n\n".join(texts)


class Responses:
    """``/v1/responses``: requests to :class:`ChatRequest`, events to Responses objects and streams."""

    route = "/v1/responses"
    prompt_field = "input"
    params = PARAMS
    counts_reasoning = True

    def __init__(self, served_name: str, seal: ReasoningSeal, store: ResponseStore) -> None:
        self.served_name = served_name
        self.seal = seal
        self.store = store

    # -- requests ---------------------------------------------------------------
    def parse(self, body: Mapping[str, Any], defaults: Mapping[str, Any]) -> ChatRequest:
        """The request of a ``/v1/responses`` body (APIError 400 naming the field when bad)."""
        for field, why in (("background", "background responses are not supported"),
                           ("conversation", "conversations are not stored by this server: "
                                            "send the history in input, or use previous_response_id"),
                           ("prompt", "prompt templates are not supported")):
            if body.get(field) not in (None, False):
                raise bad(field, f"{field} is not supported: {why}", code="unsupported_parameter")
        items = self._items(body)
        stream = optional(body, "stream", bool, False)
        model = optional(body, "model", str)
        include = body.get("include") or []
        if not isinstance(include, list):
            raise bad("include", "include must be a list of strings")
        req = ChatRequest(messages=self._messages(body.get("instructions"), items),
                          sampling=sampling_of(body, defaults, SAMPLING_FIELDS),
                          max_tokens=max_tokens_of(body, "max_output_tokens", defaults.get("max_tokens")),
                          stream=bool(stream), progress=bool(body.get("return_progress")) and bool(stream),
                          model=model, reasoning_budget=self._budget(body, defaults))
        req.protocol_state = {"items": items, "include_sealed": _ENCRYPTED in include,
                              "store": body.get("store") is not False, "echo": self._echo(body)}
        self._tools(body, req)
        self._format(body, req)
        return req

    def _items(self, body: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The conversation's items: a stored response's (``previous_response_id``), then ``input``'s."""
        items: list[dict[str, Any]] = []
        previous = body.get("previous_response_id")
        if previous is not None:
            check_type("previous_response_id", previous, str)
            stored = self.store.get(previous)
            if stored is None:
                raise bad("previous_response_id", f"no stored response {previous!r}: this server keeps the "
                          f"most recent responses in memory ({self.store.max_bytes // (1 << 20)} MiB, "
                          "step35 serve --response-store-mib) and forgets them when it restarts; "
                          "send the whole conversation in input instead")
            items += stored
        given = body.get("input")
        if given is None:
            raise bad("input", "input is required: a string or a list of items")
        if isinstance(given, str):
            items.append({"type": "message", "role": "user", "content": given})
        elif isinstance(given, list) and all(isinstance(i, Mapping) for i in given):
            items += [dict(i) for i in given]
        else:
            raise bad("input", "input must be a string or a list of items")
        return items

    def _messages(self, instructions: Any, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Items as the chat template's (OpenAI chat) messages: an assistant turn's reasoning, text and
        function calls are one assistant message."""
        out: list[dict[str, Any]] = []
        if instructions is not None:
            check_type("instructions", instructions, str)
            if instructions:
                out.append({"role": "system", "content": instructions})
        turn: dict[str, Any] | None = None  # the assistant message being gathered

        def assistant(stage: int) -> dict[str, Any]:
            # stage: 0 reasoning, 1 text, 2 calls; an item of an earlier stage starts a new turn
            nonlocal turn
            if turn is None or turn["_stage"] > stage:
                turn = {"role": "assistant", "content": "", "_stage": stage}
                out.append(turn)
            turn["_stage"] = stage
            return turn

        for i, item in enumerate(items):
            where = f"input[{i}]"
            kind = item.get("type") or ("message" if "role" in item else None)
            if kind == "message":
                role = item.get("role")
                text = _text_parts(item.get("content"), f"{where}.content")
                if role == "assistant":
                    message = assistant(1)
                    message["content"] += text
                    continue
                if role not in ("user", "system", "developer"):
                    raise bad(f"{where}.role", f"{where}.role must be user, assistant, system or developer")
                turn = None
                out.append({"role": "system" if role == "developer" else role, "content": text})
            elif kind == "reasoning":
                text = self._reasoning(item, where)
                if text is not None:
                    message = assistant(0)
                    message["reasoning_content"] = (message.get("reasoning_content", "") + "\n" + text).lstrip("\n")
            elif kind == "function_call":
                name, args = item.get("name"), item.get("arguments")
                if not isinstance(name, str) or not isinstance(args, str):
                    raise bad(where, f"{where} must have a name and arguments (a JSON text)")
                try:
                    parsed = json.loads(args or "{}")
                except ValueError:
                    raise bad(f"{where}.arguments", f"{where}.arguments is not valid JSON") from None
                if not isinstance(parsed, dict):
                    raise bad(f"{where}.arguments", f"{where}.arguments must be a JSON object")
                call_id = item.get("call_id") or item.get("id") or f"call_{i}"
                assistant(2).setdefault("tool_calls", []).append(
                    {"id": str(call_id), "type": "function", "function": {"name": name, "arguments": parsed}})
            elif kind == "function_call_output":
                output = item.get("output")
                text = output if isinstance(output, str) else _text_parts(output, f"{where}.output")
                turn = None
                out.append({"role": "tool", "tool_call_id": str(item.get("call_id")), "content": text})
            elif kind == "additional_tools":
                continue  # tools, taken by _tools
            elif kind == "item_reference":
                raise bad(where, f"{where}: item references are not supported; send the item itself")
            else:
                raise bad(f"{where}.type", f"{where}.type {kind!r} is not supported: this server takes "
                          "message, reasoning, function_call and function_call_output items")
        for message in out:
            message.pop("_stage", None)
        return out

    def _reasoning(self, item: Mapping[str, Any], where: str) -> str | None:
        """A reasoning item's text: its seal's when it has one (which must hold), else its content's."""
        if item.get("encrypted_content"):
            return self.seal.open(item["encrypted_content"], where=where)
        content = item.get("content")
        if content:
            return _text_parts(content, f"{where}.content")
        return None

    @staticmethod
    def _budget(body: Mapping[str, Any], defaults: Mapping[str, Any]) -> int | None:
        reasoning = body.get("reasoning")
        if reasoning is None:
            return reasoning_budget_of(body, defaults)
        if not isinstance(reasoning, Mapping):
            raise bad("reasoning", "reasoning must be an object, e.g. {\"effort\": \"medium\"}")
        effort = reasoning.get("effort")
        if effort is None:
            return reasoning_budget_of(body, defaults)
        if effort not in EFFORT_BUDGETS:
            raise bad("reasoning.effort", f"reasoning.effort must be one of {', '.join(EFFORT_BUDGETS)}, "
                                          f"got {effort!r}")
        return EFFORT_BUDGETS[effort]

    @staticmethod
    def _tools(body: Mapping[str, Any], req: ChatRequest) -> None:
        """Function tools, from ``tools`` and ``additional_tools`` items, namespaces flattened; other
        kinds are skipped (and named)."""
        tools = body.get("tools")
        if tools is not None and not isinstance(tools, list):
            raise bad("tools", "tools must be a list of tools")
        given = [(f"tools[{i}]", t, None) for i, t in enumerate(tools or ())]
        for i, item in enumerate(req.protocol_state["items"]):
            if item.get("type") == "additional_tools" and isinstance(item.get("tools"), list):
                given += [(f"input[{i}].tools[{j}]", t, None) for j, t in enumerate(item["tools"])]
        functions: list[dict[str, Any]] = []
        namespaces: dict[str, str] = {}
        while given:
            where, tool, namespace = given.pop(0)
            if not isinstance(tool, Mapping):
                raise bad(where, f"{where} must be an object")
            if tool.get("type") == "namespace" and isinstance(tool.get("tools"), list):
                given[:0] = [(f"{where}.tools[{j}]", t, str(tool.get("name") or ""))
                             for j, t in enumerate(tool["tools"])]
                continue
            if tool.get("type") != "function":
                req.skipped_tools.append(str(tool.get("name") or tool.get("type")))
                continue
            if not isinstance(tool.get("name"), str):
                raise bad(f"{where}.name", f"{where}.name must be a string")
            function: dict[str, Any] = {"name": tool["name"],
                                        "parameters": tool.get("parameters") or {"type": "object", "properties": {}}}
            if isinstance(tool.get("description"), str):
                function["description"] = tool["description"]
            functions.append({"type": "function", "function": function})
            if namespace:
                namespaces[tool["name"]] = namespace
        req.protocol_state["namespaces"] = namespaces
        req.tools = functions or None
        choice = body.get("tool_choice")
        if choice is None or choice == "auto" or (isinstance(choice, Mapping) and choice.get("type") in
                                                  ("allowed_tools", "auto")):
            req.tool_choice = "auto"
        elif choice in ("none", "required"):
            req.tool_choice = choice
        elif isinstance(choice, Mapping) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
            req.tool_choice = {"type": "function", "function": {"name": choice["name"]}}
        else:
            raise bad("tool_choice", 'tool_choice must be "auto", "none", "required" or '
                                     '{"type": "function", "name": ...}')
        if req.tool_choice not in ("auto", "none") and not functions:
            raise bad("tool_choice", "tool_choice needs function tools")
        parallel = body.get("parallel_tool_calls")
        if parallel is not None:
            req.parallel_tool_calls = check_type("parallel_tool_calls", parallel, bool)

    @staticmethod
    def _format(body: Mapping[str, Any], req: ChatRequest) -> None:
        text = body.get("text")
        if text is None:
            return
        if not isinstance(text, Mapping):
            raise bad("text", "text must be an object, e.g. {\"format\": {\"type\": \"text\"}}")
        fmt = text.get("format")
        if fmt is None:
            return
        if not isinstance(fmt, Mapping):
            raise bad("text.format", "text.format must be an object with a type")
        kind = fmt.get("type")
        if kind == "text":
            return
        if kind == "json_object":
            req.response_format = {"type": "json_object"}
        elif kind == "json_schema":
            schema = fmt.get("schema")
            if not isinstance(schema, (Mapping, bool)):
                raise bad("text.format.schema", "text.format.schema must be a JSON Schema object")
            req.response_format = {"type": "json_schema",
                                   "json_schema": {"name": fmt.get("name") or "output", "schema": schema}}
        else:
            raise bad("text.format.type", f"text.format.type must be text, json_object or json_schema, got {kind!r}")

    @staticmethod
    def _echo(body: Mapping[str, Any]) -> dict[str, Any]:
        """The request settings a response object repeats."""
        return {"instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
                "metadata": body.get("metadata") or {}, "parallel_tool_calls": body.get("parallel_tool_calls", True),
                "previous_response_id": body.get("previous_response_id"),
                "reasoning": {"effort": (body.get("reasoning") or {}).get("effort"), "summary": None},
                "temperature": body.get("temperature"), "top_p": body.get("top_p"),
                "text": body.get("text") or {"format": {"type": "text"}},
                "tool_choice": body.get("tool_choice") or "auto", "tools": body.get("tools") or [],
                "store": body.get("store") is not False, "truncation": "disabled", "user": body.get("user")}

    # -- answers ----------------------------------------------------------------
    def error_body(self, err: APIError) -> dict[str, Any]:
        """OpenAI's error body."""
        return openai_error(err)

    def _response(self, req: ChatRequest, response_id: str, created: int, status: str,
                  output: list[dict[str, Any]], usage: Usage | None, **more: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"id": response_id, "object": "response", "created_at": created, "status": status,
                                "error": None, "incomplete_details": None, "model": req.model or self.served_name,
                                "output": output, **req.protocol_state["echo"]}
        body["usage"] = None if usage is None else {
            "input_tokens": usage.prompt_tokens, "input_tokens_details": {"cached_tokens": usage.cached_tokens},
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
            "total_tokens": usage.prompt_tokens + usage.completion_tokens}
        body.update(more)
        return body

    def _reasoning_item(self, req: ChatRequest, item_id: str, text: str) -> dict[str, Any]:
        item: dict[str, Any] = {"type": "reasoning", "id": item_id, "summary": [],
                                "content": [{"type": "reasoning_text", "text": text}]}
        if req.protocol_state["include_sealed"]:
            item["encrypted_content"] = self.seal.seal(text)
        return item

    @staticmethod
    def _message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
        return {"type": "message", "id": item_id, "status": status, "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}

    @staticmethod
    def _call_item(req: ChatRequest, item_id: str, call_id: str, name: str, arguments: str,
                   status: str = "completed") -> dict[str, Any]:
        item = {"type": "function_call", "id": item_id, "call_id": call_id, "name": name, "arguments": arguments,
                "status": status}
        namespace = req.protocol_state.get("namespaces", {}).get(name)
        if namespace:
            item["namespace"] = namespace
        return item

    def _ending(self, finished: Finished) -> tuple[str, dict[str, Any]]:
        if finished.reason == "length":
            return "incomplete", {"incomplete_details": {"reason": "max_output_tokens"}}
        return "completed", {}

    def _keep(self, req: ChatRequest, response_id: str, output: list[dict[str, Any]]) -> None:
        if req.protocol_state["store"]:
            items = req.protocol_state["items"]
            self.store.put(response_id, items + [dict(o, encrypted_content=self.seal.seal(_reasoning_text(o)))
                                                 if o["type"] == "reasoning" else o for o in output])

    def reply(self, req: ChatRequest, answer: Answer) -> dict[str, Any]:
        """The ``response`` object of a whole answer."""
        finished = answer.finished
        assert finished is not None
        output: list[dict[str, Any]] = []
        if answer.reasoning:
            output.append(self._reasoning_item(req, _id("rs"), answer.reasoning))
        if answer.text:
            output.append(self._message_item(_id("msg"), answer.text))
        for call in answer.whole_calls:
            output.append(self._call_item(req, _id("fc"), _id("call"), call["name"], call["arguments"]))
        response_id = _id("resp")
        status, more = self._ending(finished)
        self._keep(req, response_id, output)
        return self._response(req, response_id, int(time.time()), status, output, finished.usage, **more)

    async def stream(self, req: ChatRequest, events: AsyncIterator[Event]) -> AsyncIterator[dict[str, str]]:
        """The Responses event stream of one answer."""
        writer = _StreamWriter(self, req)
        yield writer.event("response.created", response=writer.snapshot("in_progress"))
        yield writer.event("response.in_progress", response=writer.snapshot("in_progress"))
        async for event in events:
            if isinstance(event, Failed):
                for item in writer.fail(event.error):
                    yield item
                return
            if isinstance(event, Finished):
                for item in writer.finish(event):
                    yield item
                return
            for item in writer.add(event):
                yield item


def _reasoning_text(item: Mapping[str, Any]) -> str:
    return "".join(part.get("text", "") for part in item.get("content") or ())


class _StreamWriter:
    """Output items of one streamed response, opened and closed as the events come."""

    def __init__(self, protocol: Responses, req: ChatRequest) -> None:
        self.protocol = protocol
        self.req = req
        self.id = _id("resp")
        self.created = int(time.time())
        self.sequence = 0
        self.output: list[dict[str, Any]] = []
        self.open: dict[str, Any] | None = None  # the item being written
        self.text = ""
        self.calls: dict[int, dict[str, Any]] = {}

    def event(self, name: str, **fields: Any) -> dict[str, str]:
        data = {"type": name, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return {"event": name, "data": dumps(data)}

    def snapshot(self, status: str, usage: Usage | None = None, **more: Any) -> dict[str, Any]:
        return self.protocol._response(self.req, self.id, self.created, status, list(self.output), usage, **more)

    def _where(self) -> dict[str, Any]:
        assert self.open is not None
        return {"item_id": self.open["id"], "output_index": len(self.output)}

    def _start(self, item: dict[str, Any], part: dict[str, Any] | None) -> list[dict[str, str]]:
        out = self.close()
        self.open, self.text = item, ""
        out.append(self.event("response.output_item.added", output_index=len(self.output), item=item))
        if part is not None:
            out.append(self.event("response.content_part.added", **self._where(), content_index=0, part=part))
        return out

    def close(self) -> list[dict[str, str]]:
        """Finish the open item."""
        item = self.open
        if item is None:
            return []
        out: list[dict[str, str]] = []
        where = self._where()
        if item["type"] == "reasoning":
            done = self.protocol._reasoning_item(self.req, item["id"], self.text)
            part = {"type": "reasoning_text", "text": self.text}
            out.append(self.event("response.reasoning_text.done", **where, content_index=0, text=self.text))
            out.append(self.event("response.content_part.done", **where, content_index=0, part=part))
        elif item["type"] == "message":
            done = self.protocol._message_item(item["id"], self.text)
            part = done["content"][0]
            out.append(self.event("response.output_text.done", **where, content_index=0, text=self.text,
                                  logprobs=[]))
            out.append(self.event("response.content_part.done", **where, content_index=0, part=part))
        else:
            done = dict(item, status="completed")
        out.append(self.event("response.output_item.done", output_index=where["output_index"], item=done))
        self.output.append(done)
        self.open = None
        return out

    def add(self, event: Event) -> list[dict[str, str]]:
        """The events one engine event makes."""
        out: list[dict[str, str]] = []
        if isinstance(event, ReasoningDelta):
            if self.open is None or self.open["type"] != "reasoning":
                out += self._start({"type": "reasoning", "id": _id("rs"), "summary": [], "content": []},
                                   {"type": "reasoning_text", "text": ""})
            self.text += event.text
            out.append(self.event("response.reasoning_text.delta", **self._where(), content_index=0,
                                  delta=event.text))
        elif isinstance(event, TextDelta):
            if self.open is None or self.open["type"] != "message":
                out += self._start({"type": "message", "id": _id("msg"), "status": "in_progress",
                                    "role": "assistant", "content": []},
                                   {"type": "output_text", "text": "", "annotations": [], "logprobs": []})
            self.text += event.text
            out.append(self.event("response.output_text.delta", **self._where(), content_index=0,
                                  delta=event.text, logprobs=[]))
        elif isinstance(event, ToolCallStart):
            item = self.protocol._call_item(self.req, _id("fc"), _id("call"), event.name, "", status="in_progress")
            out += self._start(item, None)
        elif isinstance(event, ToolCallDone) and self.open is not None and self.open["type"] == "function_call":
            self.open["arguments"] = event.arguments
            where = self._where()
            out.append(self.event("response.function_call_arguments.delta", **where, delta=event.arguments))
            out.append(self.event("response.function_call_arguments.done", **where, arguments=event.arguments,
                                  name=self.open["name"]))
            out += self.close()
        elif isinstance(event, Progress):
            out.append(self.event("response.prompt_progress", **event.as_dict()))
        return out

    def finish(self, finished: Finished) -> list[dict[str, str]]:
        """The open item's end, then ``response.completed`` or ``response.incomplete``."""
        if self.open is not None and self.open["type"] == "function_call":
            self.open = None  # a call cut by the token limit is left out
        out = self.close()
        status, more = self.protocol._ending(finished)
        self.protocol._keep(self.req, self.id, self.output)
        name = "response.completed" if status == "completed" else "response.incomplete"
        out.append(self.event(name, response=self.snapshot(status, finished.usage, **more)))
        return out

    def fail(self, error: APIError) -> list[dict[str, str]]:
        """``response.failed`` with the error."""
        self.open = None
        return [self.event("response.failed", response=self.snapshot(
            "failed", error={"code": error.code or error.type, "message": error.message}))]
