"""Parse what Step 3.5 Flash writes after the generation prompt.

The chat template ends the prompt with ``<|im_start|>assistant\\n<think>\\n``, so
the model's output is *reasoning*, then ``</think>``, then *content* that may
contain tool calls in the qwen3-coder XML style::

    <tool_call>
    <function=NAME>
    <parameter=ARG>
    VALUE
    </parameter>
    ...
    </function>
    </tool_call>

Several calls may follow each other; all are returned. Parameter values are
typed by the tool's JSON schema: ``string`` parameters keep the raw text (minus
exactly one leading and one trailing newline, which belong to the format);
other types are parsed as JSON, with a fallback for Python literals
(``True``/``False``/``None``, single-quoted containers) that the template itself
produces when it renders past calls.

Whitespace: reasoning and content are returned stripped of leading/trailing
whitespace (the template adds its own newlines around them when they are sent
back), and content is the text outside the tool-call blocks, concatenated.

One implementation: :class:`ChatStreamParser` reads the output piece by piece;
:func:`parse_output` and :func:`parse_tool_calls` feed it the whole text and
merge its deltas. Malformed output, decided case by case:

* recovered: a missing ``</parameter>`` (the value ends at the next
  ``<parameter=``, ``</function>`` or ``</tool_call>``, as vLLM's qwen3-coder
  parser does); a missing ``</function>`` when ``</tool_call>`` follows; a
  missing ``</tool_call>`` after a complete ``</function>`` (at the end of the
  output, or before another ``<tool_call>``/``<function=``, or before ordinary
  text, which becomes content); several ``<function=...>`` in one block; an
  empty ``<tool_call></tool_call>`` (ignored); a non-string value that is not
  JSON (kept as the raw string); a parameter the schema does not declare
  (typed by inference: JSON if it parses to a non-string, else the raw text);
  a repeated parameter (the last value wins); a leading ``<think>`` in the
  output (dropped).
* :class:`ToolCallParseError`: a function name the tools do not declare; text
  other than ``<function=...>`` right after ``<tool_call>`` or stray text
  inside ``<function>``; a name or parameter tag with ``<`` or a newline
  before its ``>``; output that ends inside a call (an unterminated tag or
  value, or no ``</function>`` and no ``</tool_call>``: usually the token limit).

With no tools (``None`` or ``[]``) nothing is parsed as a tool call, as in
llama.cpp. With tools, ``<tool_call>`` also ends the reasoning when the model
forgets ``</think>`` (llama.cpp does the same).
"""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..errors import Step35Error

__all__ = [
    "ToolCallParseError",
    "split_reasoning",
    "parse_tool_calls",
    "parse_output",
    "merge_deltas",
    "ChatStreamParser",
]

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
FUNC_OPEN = "<function="
FUNC_CLOSE = "</function>"
PARAM_OPEN = "<parameter="
PARAM_CLOSE = "</parameter>"

#: Tags that may follow ``<tool_call>`` or ``</function>`` inside a block.
_BLOCK_TAGS = (FUNC_OPEN, CALL_CLOSE, CALL_OPEN)
#: Tags that may follow ``<function=NAME>`` or a parameter inside a function.
_FUNC_TAGS = (PARAM_OPEN, FUNC_CLOSE, CALL_CLOSE)
#: What ends a parameter value (only ``</parameter>`` is consumed with it).
_VALUE_ENDS = (PARAM_CLOSE, PARAM_OPEN, FUNC_CLOSE, CALL_CLOSE)

_MISSING = object()


class ToolCallParseError(Step35Error, ValueError):
    """The model's tool-call markup could not be parsed (see the module docstring)."""

    #: The output ended inside a call (the markup so far was well formed).
    truncated: bool = False


# --------------------------------------------------------------------------- schemas


def _tool_function(tool: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ``function`` part of an OpenAI tool (a bare function dict is accepted too)."""
    fn = tool.get("function", tool) if isinstance(tool, Mapping) else None
    if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
        raise ValueError(f"not an OpenAI function tool: {tool!r}")
    return fn


def _schema_types(schema: Any) -> frozenset[str] | None:
    """JSON types a schema allows, or None when it does not say (anything goes)."""
    if not isinstance(schema, Mapping):
        return None
    types: set[str] = set()
    declared = schema.get("type")
    if isinstance(declared, str):
        types.add(declared)
    elif isinstance(declared, list):
        types.update(t for t in declared if isinstance(t, str))
    for key in ("anyOf", "oneOf"):
        for sub in schema.get(key) or ():
            sub_types = _schema_types(sub)
            if sub_types is None:
                return None
            types |= sub_types
    values = list(schema.get("enum") or ()) + ([schema["const"]] if "const" in schema else [])
    if not types and values:
        types.update(_json_type(v) for v in values)
    if not types and "properties" in schema:
        types.add("object")
    if not types and "items" in schema:
        types.add("array")
    return frozenset(types) if types else None


def _json_type(value: Any) -> str:
    """The JSON schema type name of a decoded JSON value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _type_allowed(value: Any, types: frozenset[str]) -> bool:
    """Whether a decoded value fits one of the (non-string) schema types."""
    kind = _json_type(value)
    if kind in types:
        return True
    return kind == "integer" and "number" in types or (
        kind == "number" and "integer" in types and float(value).is_integer())


class _ToolIndex:
    """Function names and per-parameter types of a tool list."""

    def __init__(self, tools: Sequence[Mapping[str, Any]] | None) -> None:
        self.params: dict[str, dict[str, frozenset[str] | None]] = {}
        for tool in tools or ():
            fn = _tool_function(tool)
            params = fn.get("parameters")
            props = params.get("properties") if isinstance(params, Mapping) else None
            self.params[fn["name"]] = {
                str(k): _schema_types(v) for k, v in (props or {}).items()
            } if isinstance(props, Mapping) else {}

    def __bool__(self) -> bool:
        return bool(self.params)

    def check_name(self, name: str) -> None:
        """Raise :class:`ToolCallParseError` for a function no tool declares."""
        if name not in self.params:
            known = ", ".join(sorted(self.params)) or "none"
            raise ToolCallParseError(f"the model called an unknown function {name!r} (tools: {known})")

    def convert(self, function: str, param: str, raw: str) -> Any:
        """Turn a raw parameter text into its typed value."""
        value = raw[1:] if raw.startswith("\n") else raw
        value = value[:-1] if value.endswith("\n") else value
        types = self.params.get(function, {}).get(param)
        if types == frozenset({"string"}):
            return value
        parsed = _loads_lenient(value.strip())
        if parsed is _MISSING:
            return value
        if types is None or "string" in types:
            # a string-or-something parameter only takes the JSON reading when it is not a string
            others = frozenset(types - {"string"}) if types else None
            fits = others is None or _type_allowed(parsed, others)
            return parsed if fits and not isinstance(parsed, str) else value
        return parsed


def _reject_constant(name: str) -> Any:
    """``json.loads`` hook: NaN/Infinity are not JSON."""
    raise ValueError(name)


_PY_CONSTANTS = {"True": True, "False": False, "None": None}


def _loads_lenient(text: str) -> Any:
    """JSON, else a Python literal made of JSON-compatible values, else ``_MISSING``."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        pass
    if text in _PY_CONSTANTS:
        return _PY_CONSTANTS[text]
    if not text or text[0] not in "[{'\"(-0123456789":
        return _MISSING
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return _MISSING
    return _as_json(value)


def _as_json(value: Any) -> Any:
    """A Python literal as a JSON value (tuples become lists), or ``_MISSING``."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _MISSING
    if isinstance(value, (list, tuple)):
        items = [_as_json(v) for v in value]
        return _MISSING if any(v is _MISSING for v in items) else items
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        out = {k: _as_json(v) for k, v in value.items()}
        return _MISSING if any(v is _MISSING for v in out.values()) else out
    return _MISSING


def _make_call(index: int, id_prefix: str, name: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI-shaped tool call."""
    return {
        "id": f"{id_prefix}{index}",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)},
    }


def _tag_name(text: str, start: int) -> tuple[str | None, int]:
    """Read ``NAME>`` from ``start``: (name, index after ``>``), or (None, -1) if unterminated.

    A ``<`` or newline before the ``>`` is malformed markup.
    """
    for i in range(start, len(text)):
        ch = text[i]
        if ch == ">":
            name = text[start:i].strip()
            if not name:
                raise ToolCallParseError(f"empty name in tag near {text[max(0, start - 11):i + 1]!r}")
            return name, i + 1
        if ch in "<\n":
            raise ToolCallParseError(f"malformed tag {text[max(0, start - 11):i + 1]!r}: no '>' after the name")
    return None, -1


def _truncated(where: str) -> ToolCallParseError:
    """The error for output that stops inside a tool call (``truncated`` set: a cut, not bad markup)."""
    e = ToolCallParseError(f"the output ends inside a tool call ({where}); was it cut off by the token limit?")
    e.truncated = True
    return e


def _starts_a_tag(text: str, tags: Sequence[str]) -> bool:
    """True if ``text`` is a proper, non-empty prefix of one of ``tags`` (a tag cut short)."""
    return bool(text) and any(len(text) < len(t) and t.startswith(text) for t in tags)


# --------------------------------------------------------------------------- whole outputs


def split_reasoning(text: str, *, tool_call_ends_reasoning: bool = False) -> tuple[str, str]:
    """Split raw model output into ``(reasoning, content)``, both stripped.

    Everything up to the first ``</think>`` is reasoning; without ``</think>``
    all of it is (the model is still thinking). A leading ``<think>`` is dropped.
    With ``tool_call_ends_reasoning``, a ``<tool_call>`` before any
    ``</think>`` also ends the reasoning and starts the content.
    """
    body = text.lstrip()
    body = body[len(THINK_OPEN):] if body.startswith(THINK_OPEN) else text
    end = body.find(THINK_CLOSE)
    cut = end + len(THINK_CLOSE)
    if tool_call_ends_reasoning:
        call = body.find(CALL_OPEN)
        if call != -1 and (end == -1 or call < end):
            end, cut = call, call
    if end == -1:
        return body.strip(), ""
    return body[:end].strip(), body[cut:].strip()


def parse_tool_calls(content: str, tools: Sequence[Mapping[str, Any]] | None, *,
                     id_prefix: str = "call_", cut: bool = False) -> tuple[str, list[dict[str, Any]]]:
    """Extract the tool calls from the content part of the output.

    Returns ``(content_without_calls, calls)``: the text outside the call
    blocks (stripped) and every call, OpenAI-shaped
    (``{"id": "call_0", "type": "function", "function": {"name", "arguments"}}``
    with ``arguments`` a JSON string). With no tools, nothing is parsed.
    Raises :class:`ToolCallParseError` on markup it cannot recover from.
    ``cut``: the token limit ended the output (see :meth:`ChatStreamParser.finish`).
    (:class:`ChatStreamParser` over the whole content, its deltas merged.)
    """
    parser = ChatStreamParser(tools, id_prefix=id_prefix, reasoning=False)
    message = merge_deltas([*parser.feed(content), *parser.finish(cut=cut)])
    return message["content"], message["tool_calls"]


def parse_output(text: str, tools: Sequence[Mapping[str, Any]] | None = None, *,
                 id_prefix: str = "call_", cut: bool = False) -> dict[str, Any]:
    """Parse a complete generation into an assistant message.

    Returns ``{"role": "assistant", "content": str, "reasoning_content": str,
    "tool_calls": list}`` (empty strings/list when absent): :func:`merge_deltas`
    over :class:`ChatStreamParser`'s deltas for the whole text, so a streamed
    and a complete generation are parsed by the same code. ``cut``: the token
    limit ended the output, so a call it ends inside is left out, not an error
    (see :meth:`ChatStreamParser.finish`).
    """
    parser = ChatStreamParser(tools, id_prefix=id_prefix)
    return merge_deltas([*parser.feed(text), *parser.finish(cut=cut)])


def merge_deltas(deltas: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Accumulate streamed deltas into the message :func:`parse_output` returns."""
    content: list[str] = []
    reasoning: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    for delta in deltas:
        content.append(delta.get("content") or "")
        reasoning.append(delta.get("reasoning_content") or "")
        for part in delta.get("tool_calls") or ():
            call = calls.setdefault(part["index"], {"id": "", "type": "function",
                                                    "function": {"name": "", "arguments": ""}})
            call["id"] = part.get("id", call["id"])
            call["type"] = part.get("type", call["type"])
            fn = part.get("function") or {}
            call["function"]["name"] += fn.get("name") or ""
            call["function"]["arguments"] += fn.get("arguments") or ""
    return {"role": "assistant", "content": "".join(content), "reasoning_content": "".join(reasoning),
            "tool_calls": [calls[i] for i in sorted(calls)]}


# --------------------------------------------------------------------------- streaming


def _partial_suffix(text: str, tags: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of one of ``tags``."""
    best = 0
    for tag in tags:
        for n in range(min(len(tag) - 1, len(text)), best, -1):
            if text.endswith(tag[:n]):
                best = n
                break
    return best


def _find_first(text: str, tags: Sequence[str], start: int = 0) -> tuple[int, str]:
    """Position and tag of the earliest occurrence of any of ``tags`` (or (-1, ''))."""
    hits = [(i, tag) for tag in tags if (i := text.find(tag, start)) != -1]
    return min(hits) if hits else (-1, "")


class _Stripped:
    """Emit a text stream without its leading and trailing whitespace.

    Whitespace is held back until non-whitespace follows it; what is held at
    the end is dropped.
    """

    def __init__(self) -> None:
        self.started = False
        self.pending = ""

    def push(self, text: str) -> str:
        """The part of ``text`` that can be emitted now."""
        if not self.started:
            text = text.lstrip()
            if not text:
                return ""
            self.started = True
        body = text.rstrip()
        if not body:
            self.pending += text
            return ""
        out = self.pending + body
        self.pending = text[len(body):]
        return out


# stream states
_START, _REASONING, _CONTENT, _BLOCK, _FUNCTION, _VALUE = range(6)


class ChatStreamParser:
    """Turn streamed model output into OpenAI chat-completion chunk deltas.

    Feed the detokenized pieces as they come; each call returns the deltas
    that are certain so far: ``{"reasoning_content": str}``,
    ``{"content": str}`` or ``{"tool_calls": [{"index", "id", "type",
    "function": {"name", "arguments"}}]}``. A tool call comes whole (id, name
    and arguments in one delta) when its function closes, so a call that the
    token limit cuts is never half announced. Text that could
    still turn into a tag (``</thi``, ``<tool_ca``) and trailing whitespace
    are held back until the next piece decides. Merged with
    :func:`merge_deltas`, the deltas always equal :func:`parse_output` of the
    whole text, however it was split. After a :class:`ToolCallParseError` the
    parser must not be used again.
    """

    def __init__(self, tools: Sequence[Mapping[str, Any]] | None = None, *, id_prefix: str = "call_",
                 reasoning: bool = True) -> None:
        """Parse against ``tools`` (OpenAI tool dicts; None or [] means no tool parsing).
        ``reasoning=False``: the output is content from its start (no reasoning part)."""
        self._index = _ToolIndex(tools)
        self._id_prefix = id_prefix
        self._reasoning_ends = (THINK_CLOSE, CALL_OPEN) if self._index else (THINK_CLOSE,)
        self._state = _START if reasoning else _CONTENT
        self._buf = ""
        self._scanned = 0  # how far _VALUE has searched _buf for an end tag
        self._reasoning = _Stripped()
        self._content = _Stripped()
        self._out: list[dict[str, Any]] = []
        self._n_calls = 0
        self._function: str | None = None
        self._args: dict[str, Any] = {}
        self._param: str | None = None
        self._block_has_function = False
        self._finished = False
        self._cut = False  # finish(cut=True): the token limit ended the output

    def feed(self, piece: str) -> list[dict[str, Any]]:
        """Add the next piece of output; return the deltas it makes certain."""
        if self._finished:
            raise ValueError("ChatStreamParser.feed() after finish()")
        self._buf += piece
        self._run(final=False)
        return self._take()

    def finish(self, *, cut: bool = False) -> list[dict[str, Any]]:
        """End of output: flush what was held back.

        An output that ends inside a tool call raises :class:`ToolCallParseError`,
        unless ``cut`` says the token limit ended it (``finish_reason`` "length"):
        then the calls before are kept and the unfinished one is left out, as is
        the start of a tag (``<tool_ca``) at the very end.
        """
        if not self._finished:
            self._finished, self._cut = True, cut
            try:
                self._run(final=True)
            except ToolCallParseError as e:
                if not (cut and e.truncated):
                    raise
                self._function, self._args, self._buf = None, {}, ""  # the cut call: left out
        return self._take()

    def _take(self) -> list[dict[str, Any]]:
        """Hand over the deltas collected so far."""
        out, self._out = self._out, []
        return out

    def _emit_text(self, key: str, text: str) -> None:
        """Queue reasoning/content text (through its whitespace stripper)."""
        text = (self._reasoning if key == "reasoning_content" else self._content).push(text)
        if text:
            if self._out and set(self._out[-1]) == {key}:
                self._out[-1][key] += text
            else:
                self._out.append({key: text})

    def _run(self, final: bool) -> None:
        """Advance the state machine as far as the buffer allows."""
        steps = {_START: self._start, _REASONING: self._in_reasoning, _CONTENT: self._in_content,
                 _BLOCK: self._in_block, _FUNCTION: self._in_function, _VALUE: self._in_value}
        while steps[self._state](final):
            pass

    def _consume(self, n: int) -> None:
        """Drop the first ``n`` characters of the buffer."""
        self._buf = self._buf[n:]

    def _skip_space(self) -> None:
        """Drop leading whitespace from the buffer."""
        self._buf = self._buf.lstrip()

    def _undecided(self, tags: Sequence[str], final: bool) -> bool:
        """True while the buffer is empty or a proper prefix of one of ``tags`` (more input decides)."""
        if final:
            return False
        return not self._buf or _starts_a_tag(self._buf, tags)

    def _start(self, final: bool) -> bool:
        """Drop an optional leading ``<think>``."""
        self._skip_space()
        if self._buf.startswith(THINK_OPEN):
            self._consume(len(THINK_OPEN))
        elif self._undecided((THINK_OPEN,), final):
            return False
        self._state = _REASONING
        return True

    def _in_reasoning(self, final: bool) -> bool:
        """Reasoning text until ``</think>`` (or ``<tool_call>`` when tools are given)."""
        at, tag = _find_first(self._buf, self._reasoning_ends)
        if at == -1:
            keep = 0 if final and not self._cut else _partial_suffix(self._buf, self._reasoning_ends)
            self._emit_text("reasoning_content", self._buf[:len(self._buf) - keep])
            self._consume(len(self._buf) - keep)
            if final:
                self._buf = ""  # (cut: the start of a tag the token limit cut off is dropped)
            return False
        self._emit_text("reasoning_content", self._buf[:at])
        self._consume(at + len(tag))
        self._state = _CONTENT if tag == THINK_CLOSE else self._open_block()
        return True

    def _in_content(self, final: bool) -> bool:
        """Content text until ``<tool_call>`` (everything, without tools)."""
        tags = (CALL_OPEN,) if self._index else ()
        at, _ = _find_first(self._buf, tags)
        if at == -1:
            keep = 0 if final and not self._cut else _partial_suffix(self._buf, tags)
            self._emit_text("content", self._buf[:len(self._buf) - keep])
            self._consume(len(self._buf) - keep)
            if final:
                self._buf = ""  # (cut: the start of a tag the token limit cut off is dropped)
            return False
        self._emit_text("content", self._buf[:at])
        self._consume(at + len(CALL_OPEN))
        self._state = self._open_block()
        return True

    def _open_block(self) -> int:
        """Enter a ``<tool_call>`` block; return the new state."""
        self._block_has_function = False
        return _BLOCK

    def _in_block(self, final: bool) -> bool:
        """Inside ``<tool_call>``, outside any function."""
        self._skip_space()
        if self._undecided(_BLOCK_TAGS, final):
            return False
        if self._buf.startswith(FUNC_OPEN):
            return self._open_function(final)
        if self._buf.startswith(CALL_CLOSE):
            self._consume(len(CALL_CLOSE))
            self._state = _CONTENT
        elif self._buf.startswith(CALL_OPEN):
            self._consume(len(CALL_OPEN))
        elif not self._block_has_function and (not self._buf or _starts_a_tag(self._buf, _BLOCK_TAGS)):
            raise _truncated(f"{self._buf!r} after <tool_call>" if self._buf else "nothing after <tool_call>")
        elif self._block_has_function:
            self._state = _CONTENT  # missing </tool_call>: the rest is content again
            return bool(self._buf)
        else:
            raise ToolCallParseError(
                f"expected <function=NAME> after <tool_call>, got {self._buf[:20]!r}")
        return True

    def _open_function(self, final: bool) -> bool:
        """``<function=NAME>``: a call starts (it is emitted when it closes)."""
        name, end = _tag_name(self._buf, len(FUNC_OPEN))
        if name is None:
            if final:
                raise _truncated("unterminated <function= tag")
            return False
        self._index.check_name(name)
        self._consume(end)
        self._function, self._args = name, {}
        self._state = _FUNCTION
        return True

    def _in_function(self, final: bool) -> bool:
        """Inside ``<function=NAME>``, between parameters."""
        self._skip_space()
        if self._undecided(_FUNC_TAGS, final):
            return False
        if self._buf.startswith(PARAM_OPEN):
            param, end = _tag_name(self._buf, len(PARAM_OPEN))
            if param is None:
                if final:
                    raise _truncated("unterminated <parameter= tag")
                return False
            self._consume(end)
            self._param, self._scanned, self._state = param, 0, _VALUE
            return True
        for tag, state in ((FUNC_CLOSE, _BLOCK), (CALL_CLOSE, _CONTENT)):
            if self._buf.startswith(tag):
                self._consume(len(tag))
                self._close_function()
                self._state = state
                return True
        if not self._buf or _starts_a_tag(self._buf, _FUNC_TAGS):
            raise _truncated(f"no </function> for {self._function!r}")
        raise ToolCallParseError(f"unexpected text in <function={self._function}>: {self._buf[:20]!r}")

    def _close_function(self) -> None:
        """Emit the finished call, whole."""
        assert self._function is not None
        call = _make_call(self._n_calls, self._id_prefix, self._function, self._args)
        self._out.append({"tool_calls": [{"index": self._n_calls, **call}]})
        self._n_calls += 1
        self._block_has_function = True
        self._function = None

    def _in_value(self, final: bool) -> bool:
        """A parameter value, buffered until one of its end tags."""
        start = max(0, self._scanned - max(map(len, _VALUE_ENDS)) + 1)
        at, tag = _find_first(self._buf, _VALUE_ENDS, start)
        if at == -1:
            if final:
                raise _truncated("unterminated parameter value")
            self._scanned = len(self._buf)
            return False
        assert self._function is not None and self._param is not None
        self._args[self._param] = self._index.convert(self._function, self._param, self._buf[:at])
        self._consume(at + (len(tag) if tag == PARAM_CLOSE else 0))
        self._state = _FUNCTION
        return True
