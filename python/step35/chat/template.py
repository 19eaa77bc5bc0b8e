"""Render a GGUF's Jinja chat template the way Hugging Face transformers does.

``llama_chat_apply_template`` does not run Jinja, so the prompt is rendered here
with jinja2, configured like transformers' ``apply_chat_template``: an
``ImmutableSandboxedEnvironment`` with ``trim_blocks``/``lstrip_blocks``, the
loop-controls extension, a ``tojson`` filter that does not HTML-escape
(``ensure_ascii=False`` by default, ``indent``/``separators``/``sort_keys``
options), and the ``raise_exception`` and ``strftime_now`` globals.

Two input fixes are applied before rendering, on copies (the caller's objects
are never mutated), as llama.cpp does for Step 3.5:

* message ``content`` (including text parts) and ``reasoning_content`` are
  stripped of leading/trailing whitespace: leftover whitespace drives the model
  into reasoning loops;
* tool-call ``arguments`` given as a JSON string are decoded to an object,
  since the template iterates over them (``arguments|items``).

Requires ``jinja2>=3.1``.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

__all__ = [
    "render_chat",
    "compile_template",
    "prepare_messages",
    "validate_messages",
    "validate_tools",
]

ROLES = ("system", "user", "assistant", "tool")

#: Characters a function or parameter name cannot contain (they would break the
#: ``<function=NAME>`` / ``<parameter=NAME>`` markup).
_BAD_NAME = re.compile(r"[\s<>]")


# --------------------------------------------------------------------------- rendering


def _raise_exception(message: str) -> None:
    """Template global ``raise_exception``: abort rendering with the template's message."""
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | str | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    """Template filter ``tojson``: plain ``json.dumps``, without Jinja's HTML escaping."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    """Template global ``strftime_now``: the current local time, formatted."""
    return datetime.now().strftime(fmt)


def _generation_extension() -> type:
    """An extension that accepts transformers' ``{% generation %}`` blocks and renders their body."""
    from jinja2 import nodes
    from jinja2.ext import Extension

    class GenerationTags(Extension):
        """``{% generation %}...{% endgeneration %}`` renders as its body (no mask tracking)."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            """Parse the block and return its body unchanged."""
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body, lineno=lineno)

    return GenerationTags


@functools.lru_cache(maxsize=8)
def compile_template(template: str) -> Any:
    """Compile a chat template (cached) in a transformers-compatible sandbox."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_generation_extension(), loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)


def render_chat(template: str, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None,
                add_generation_prompt: bool = True, bos_token: str = "", eos_token: str = "",
                **extra: Any) -> str:
    """Render ``messages`` (and ``tools``) with a chat template into a prompt string.

    Messages and tools are validated first (:func:`validate_messages`,
    :func:`validate_tools`; ``ValueError`` on malformed input), then prepared
    (:func:`prepare_messages`). ``extra`` is passed to the template as further
    variables. For Step 3.5 the prompt with ``add_generation_prompt`` ends in
    ``<|im_start|>assistant\\n<think>\\n``. Template errors raise
    ``jinja2.TemplateError``.
    """
    validate_messages(messages)
    if tools is not None:
        validate_tools(tools)
    rendered: str = compile_template(template).render(
        messages=prepare_messages(messages), tools=copy.deepcopy(tools) if tools else None,
        add_generation_prompt=add_generation_prompt, bos_token=bos_token, eos_token=eos_token, **extra)
    return rendered


def prepare_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Deep copies of ``messages`` with stripped text and decoded tool-call arguments."""
    out = copy.deepcopy([dict(m) for m in messages])
    for message in out:
        message["content"] = _strip_content(message.get("content"))
        if isinstance(message.get("reasoning_content"), str):
            message["reasoning_content"] = message["reasoning_content"].strip()
        for call in message.get("tool_calls") or ():
            fn = call.get("function", call)
            if isinstance(fn.get("arguments"), str):
                fn["arguments"] = json.loads(fn["arguments"])
    return out


def _strip_content(content: Any) -> Any:
    """A content value with its text (or every text part's text) stripped."""
    if isinstance(content, str):
        return content.strip()
    if isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                part["text"] = part["text"].strip()
    return content


# --------------------------------------------------------------------------- validation


def validate_messages(messages: Any) -> None:
    """Check an OpenAI-style message list; raise ``ValueError`` naming the bad index/field.

    Roles are ``system``/``user``/``assistant``/``tool``; ``content`` is a
    string, None or a list of ``{"type": "text", "text": str}``;
    ``reasoning_content`` a string or None; ``tool_calls`` (assistant only) a
    list of ``{"id"?, "type"?: "function", "function": {"name": str,
    "arguments": dict | JSON-object string}}``.
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ValueError(f"messages must be a list of dicts, got {type(messages).__name__}")
    if not messages:
        raise ValueError("messages must not be empty")
    for i, message in enumerate(messages):
        _validate_message(f"messages[{i}]", message)


def _validate_message(where: str, message: Any) -> None:
    """Check one message."""
    if not isinstance(message, Mapping):
        raise ValueError(f"{where} must be a dict, got {type(message).__name__}")
    role = message.get("role")
    if role not in ROLES:
        raise ValueError(f"{where}.role must be one of {', '.join(ROLES)}; got {role!r}")
    _validate_content(f"{where}.content", message.get("content"))
    if message.get("reasoning_content") is not None and not isinstance(message["reasoning_content"], str):
        raise ValueError(f"{where}.reasoning_content must be a string or None")
    for key in ("name", "tool_call_id"):
        if message.get(key) is not None and not isinstance(message[key], str):
            raise ValueError(f"{where}.{key} must be a string")
    calls = message.get("tool_calls")
    if calls is None:
        return
    if role != "assistant":
        raise ValueError(f"{where}.tool_calls: only assistant messages can have tool calls (role is {role!r})")
    if isinstance(calls, (str, bytes, Mapping)) or not isinstance(calls, Sequence):
        raise ValueError(f"{where}.tool_calls must be a list")
    for j, call in enumerate(calls):
        _validate_tool_call(f"{where}.tool_calls[{j}]", call)


def _validate_content(where: str, content: Any) -> None:
    """Check a ``content`` value: string, None or a list of text parts."""
    if content is None or isinstance(content, str):
        return
    if isinstance(content, (bytes, Mapping)) or not isinstance(content, Sequence):
        raise ValueError(f"{where} must be a string, None or a list of text parts; got {type(content).__name__}")
    for k, part in enumerate(content):
        if not isinstance(part, Mapping) or part.get("type") != "text":
            raise ValueError(f"{where}[{k}] must be a {{'type': 'text', 'text': ...}} part; got {part!r}")
        if not isinstance(part.get("text"), str):
            raise ValueError(f"{where}[{k}].text must be a string")


def _validate_tool_call(where: str, call: Any) -> None:
    """Check one assistant tool call (OpenAI shape)."""
    if not isinstance(call, Mapping):
        raise ValueError(f"{where} must be a dict")
    if call.get("type", "function") != "function":
        raise ValueError(f"{where}.type must be 'function'; got {call.get('type')!r}")
    if call.get("id") is not None and not isinstance(call["id"], str):
        raise ValueError(f"{where}.id must be a string")
    fn = call.get("function")
    if not isinstance(fn, Mapping):
        raise ValueError(f"{where}.function must be a dict with 'name' and 'arguments'")
    _validate_name(f"{where}.function.name", fn.get("name"))
    args = fn.get("arguments")
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError as e:
            raise ValueError(f"{where}.function.arguments is not valid JSON: {e}") from None
    if not isinstance(args, Mapping):
        raise ValueError(f"{where}.function.arguments must be an object (dict or JSON string); "
                         f"got {type(args).__name__}")


def _validate_name(where: str, name: Any) -> None:
    """Check a function or parameter name usable in the XML-ish call markup."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where} must be a non-empty string")
    if _BAD_NAME.search(name):
        raise ValueError(f"{where} {name!r} must not contain whitespace, '<' or '>'")


def validate_tools(tools: Any) -> None:
    """Check OpenAI-style tools; raise ``ValueError`` naming the bad index/field.

    Each tool is ``{"type": "function", "function": {"name": str,
    "description"?: str, "parameters": JSON-schema object}}``; names are unique.
    """
    if isinstance(tools, (str, bytes, Mapping)) or not isinstance(tools, Sequence):
        raise ValueError(f"tools must be a list of dicts, got {type(tools).__name__}")
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, Mapping):
            raise ValueError(f"{where} must be a dict")
        if tool.get("type") != "function":
            raise ValueError(f"{where}.type must be 'function'; got {tool.get('type')!r}")
        fn = tool.get("function")
        if not isinstance(fn, Mapping):
            raise ValueError(f"{where}.function must be a dict")
        _validate_name(f"{where}.function.name", fn.get("name"))
        if fn["name"] in seen:
            raise ValueError(f"{where}.function.name {fn['name']!r} is used by an earlier tool")
        seen.add(fn["name"])
        if fn.get("description") is not None and not isinstance(fn["description"], str):
            raise ValueError(f"{where}.function.description must be a string")
        _validate_parameters(f"{where}.function.parameters", fn.get("parameters"))


def _validate_parameters(where: str, schema: Any) -> None:
    """Check a tool's ``parameters``: a JSON schema of type object."""
    if not isinstance(schema, Mapping):
        raise ValueError(f"{where} must be a JSON-schema object (a dict)")
    if schema.get("type", "object") != "object":
        raise ValueError(f"{where}.type must be 'object'; got {schema.get('type')!r}")
    props = schema.get("properties", {})
    if not isinstance(props, Mapping):
        raise ValueError(f"{where}.properties must be a dict")
    for name, prop in props.items():
        _validate_name(f"{where}.properties key", name)
        if not isinstance(prop, Mapping):
            raise ValueError(f"{where}.properties[{name!r}] must be a dict (a JSON schema)")
    required = schema.get("required", [])
    if isinstance(required, (str, bytes)) or not isinstance(required, Sequence) or \
            not all(isinstance(r, str) for r in required):
        raise ValueError(f"{where}.required must be a list of strings")
