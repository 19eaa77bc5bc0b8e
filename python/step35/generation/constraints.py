"""Constrained decoding: grammars, JSON Schema answers, enforced tool calls, a reasoning budget.

Everything here is decided in Python and carried out by llama.cpp's own
machinery: the grammar sampler, libcommon's JSON Schema -> GBNF converter and
grammar builder, and libcommon's reasoning-budget sampler (see
``csrc/constraint.cpp``). Sampling stays "sample first, check after": the
token drawn by the usual chain is checked against the grammar, and only a
rejected token makes the grammar filter the whole vocabulary.

Step 3.5 reasons first: the chat prompt ends in ``<think>\\n``, so the model
writes its reasoning, then ``</think>``, then the answer. A chat constraint is
therefore a *lazy* grammar that starts at ``</think>`` and
leaves the reasoning free; the reasoning budget forces ``</think>`` after N
reasoning tokens, so a model that never closes its reasoning still reaches
the constrained answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._runtime import backends as _backends
from ..chat.toolcalls import (
    CALL_CLOSE,
    CALL_OPEN,
    FUNC_CLOSE,
    FUNC_OPEN,
    PARAM_CLOSE,
    PARAM_OPEN,
    THINK_CLOSE,
    THINK_OPEN,
)
from ..errors import GrammarError

if TYPE_CHECKING:
    from ..model import Model

__all__ = ["json_schema_to_grammar", "check_reasoning_budget", "response_schema", "answer_grammar",
           "for_generate", "for_chat"]

#: What a spent reasoning budget forces: the end tag on a line of its own.
THINK_FORCED = "\n" + THINK_CLOSE
#: Whitespace allowed between the end of reasoning and the answer (bounded, so a
#: model cannot wander off in blank space).
_GAP = "[ \\t\\n]{0,4}"


def _core() -> Any:
    return _backends.core()


def json_schema_to_grammar(schema: Mapping[str, Any] | bool) -> str:
    """GBNF for a JSON Schema, made by llama.cpp's converter.

    Raises:
        GrammarError: the converter cannot express the schema (its message
            names the schema path and the feature).
        TypeError: ``schema`` is not JSON.
    """
    return str(_core().json_schema_to_grammar(_schema_json(schema)))


#: The keywords llama.cpp's converter enforces (common/json-schema.cpp at the pin), and
#: the containers and annotations that need no enforcing. Anything else (uniqueItems,
#: multipleOf, not, if/then, contains, minProperties, ...) the converter would skip
#: without a word, and an answer could break it: such a schema is refused instead.
_ENFORCED = frozenset({
    "type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems", "maxItems",
    "minLength", "maxLength", "pattern", "format", "enum", "const", "anyOf", "oneOf", "allOf", "$ref",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"})
_CONTAINERS = frozenset({"$defs", "definitions"})
_ANNOTATIONS = frozenset({
    "title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated", "readOnly",
    "writeOnly", "name", "strict", "discriminator", "nullable"})
#: String formats the converter turns into grammar (any other would be a plain string).
_FORMATS = frozenset({"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"})
_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def _check_enforceable(schema: Any, path: str = "#") -> None:
    """GrammarError naming the path and the keyword of anything the converter would not enforce."""
    if not isinstance(schema, Mapping):
        return  # booleans, and shapes the converter itself refuses with their path
    for key, value in schema.items():
        where = f"{path}/{key}"
        if key in _ANNOTATIONS:
            continue
        if key not in _ENFORCED and key not in _CONTAINERS:
            raise GrammarError(f"JSON schema error at {path}: {key!r} is not supported by llama.cpp's JSON Schema "
                               f"converter (it would be ignored, and the answer might not satisfy it)")
        if key == "format" and value not in _FORMATS:
            raise GrammarError(f"JSON schema error at {where}: format {value!r} is not supported "
                               f"(supported: {', '.join(sorted(_FORMATS))})")
        if key in _BOUNDS:
            types = schema.get("type")
            if types != "integer" and not (isinstance(types, list) and types == ["integer"]):
                raise GrammarError(f"JSON schema error at {where}: bounds are enforced for integers only "
                                   f'(give "type": "integer", or drop {key!r})')
        if key in ("properties", "$defs", "definitions") and isinstance(value, Mapping):
            for name, sub in value.items():
                _check_enforceable(sub, f"{where}/{name}")
        elif key in ("anyOf", "oneOf", "allOf", "prefixItems") and isinstance(value, list):
            for i, sub in enumerate(value):
                _check_enforceable(sub, f"{where}/{i}")
        elif key in ("items", "additionalProperties"):
            _check_enforceable(value, where)


def _schema_json(schema: Any, path: str = "#") -> str:
    """``schema`` as JSON text for the converter, once checked (``path``: where it sits, for messages)."""
    if not isinstance(schema, (Mapping, bool)):
        raise TypeError(f"a JSON Schema must be a dict (or a bool), not {type(schema).__name__}")
    _check_enforceable(schema, path)
    try:
        return json.dumps(schema)
    except (TypeError, ValueError) as e:
        raise TypeError(f"the JSON Schema is not JSON-serializable: {e}") from None


def check_reasoning_budget(value: Any) -> int | None:
    """``reasoning_budget`` validated: None (no budget), -1 (unlimited), 0 (no reasoning) or N tokens."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not -1 <= value < 2**31:
        raise ValueError(f"reasoning_budget must be -1 (unlimited), 0 (no reasoning) or a number of tokens, "
                         f"got {value!r}")
    return value


def response_schema(response_format: Any) -> dict[str, Any] | bool | None:
    """The JSON Schema an OpenAI ``response_format`` asks for (None: free text).

    ``{"type": "text"}`` is free text; ``{"type": "json_object"}`` any JSON
    object; ``{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}``
    that schema. ValueError names what is malformed.
    """
    if response_format is None:
        return None
    if not isinstance(response_format, Mapping):
        raise ValueError(f"response_format must be an object, not {type(response_format).__name__}")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        schema = response_format.get("schema")  # llama-server also takes a schema here
        return dict(schema) if isinstance(schema, Mapping) else {"type": "object"}
    if kind == "json_schema":
        wrapper = response_format.get("json_schema")
        if not isinstance(wrapper, Mapping):
            raise ValueError('response_format.json_schema must be an object with a "schema"')
        schema = wrapper.get("schema", {})
        if isinstance(schema, bool):
            return schema
        if not isinstance(schema, Mapping):
            raise ValueError("response_format.json_schema.schema must be a JSON Schema object")
        return dict(schema) or {"type": "object"}
    raise ValueError(f'response_format.type must be "text", "json_object" or "json_schema", got {kind!r}')


# ---- grammars ---------------------------------------------------------------

def _lit(text: str) -> str:
    return str(_core().gbnf_literal(text))


def _tool_rules(tools: Sequence[Mapping[str, Any]], parallel: bool) -> tuple[list[tuple[str, str]],
                                                                              list[tuple[str, str]]]:
    """Schemas and rules of a grammar for one or more Step 3.5 tool calls.

    The format is the chat template's (Qwen3-Coder XML), the one
    :mod:`step35.chat.toolcalls` parses. Required parameters come in the schema's order, then any optional ones.
    Values are typed as :mod:`step35.chat.toolcalls` reads them: a string parameter
    is raw text (an enum or const is one of its values, maxLength bounds it),
    anything else JSON under the parameter's schema.
    """
    schemas: list[tuple[str, str]] = []
    rules: list[tuple[str, str]] = []
    alternatives = []
    for i, tool in enumerate(tools):
        fn = tool["function"]
        params = fn.get("parameters") or {}
        props = params.get("properties") or {}
        required = [p for p in params.get("required", []) if p in props]
        optional = [p for p in props if p not in required]
        arg_rules = {}
        for j, (pname, pschema) in enumerate(props.items()):
            value = f"x-t{i}-v{j}"
            where = f"#/tools/{i}/function/parameters/properties/{pname}"
            string_rule = _raw_string_rule(pschema if isinstance(pschema, Mapping) else {}, where)
            if string_rule is not None:
                rules.append((value, string_rule))
            else:
                schemas.append((value, _schema_json(pschema if isinstance(pschema, (Mapping, bool)) else {}, where)))
                value = "{{" + value + "}}"  # the converter names it (see answer_grammar)
            name = f"x-t{i}-a{j}"
            open_tag, close_tag = _lit(f"{PARAM_OPEN}{pname}>\n"), _lit(f"\n{PARAM_CLOSE}\n")
            rules.append((name, f"{open_tag} {value} {close_tag}"))
            arg_rules[pname] = name
        body = " ".join(arg_rules[p] for p in required)
        if optional:
            body += " (" + " | ".join(arg_rules[p] for p in optional) + ")*"
        fname = f"x-t{i}"
        open_tag, close_tag = _lit(f"{FUNC_OPEN}{fn['name']}>\n"), _lit(f"{FUNC_CLOSE}\n")
        rules.append((fname, f"{open_tag} {body} {close_tag}"))
        alternatives.append(fname)
    choice = " | ".join(alternatives)
    rules.append(("x-call", f"{_lit(CALL_OPEN + chr(10))} ({choice}) {_lit(CALL_CLOSE)}"))
    rules.append(("x-calls", f"x-call ({_GAP} x-call)*" if parallel else "x-call"))
    return schemas, rules


def _raw_string_rule(schema: Mapping[str, Any], path: str) -> str | None:
    """GBNF for a string parameter written raw (None: the value is JSON)."""
    types = schema.get("type")
    if "enum" in schema or "const" in schema:
        values = schema.get("enum", [schema.get("const")])
        if values and all(isinstance(v, str) for v in values):
            return " | ".join(_lit(v) for v in values)
        return None
    if types != "string":
        return None
    for key in ("pattern", "format"):
        if key in schema:
            raise GrammarError(f"JSON schema error at {path}: a string argument is written raw in a tool call, "
                               f"and its {key!r} cannot be enforced there (use an enum or maxLength)")
    lo = int(schema.get("minLength", 0))
    hi = schema.get("maxLength")
    # Raw text never holds "<" (it would end the value); its length is bounded when the schema says so.
    char = '[^<\\x00]'
    return f"{char}{{{lo},{int(hi)}}}" if hi is not None else f"{char}{{{lo},}}"


def answer_grammar(json_schema: Mapping[str, Any] | bool | None, tools: Sequence[Mapping[str, Any]] | None, *,
                   reasoning: bool, parallel_tool_calls: bool = True) -> tuple[str, list[str]]:
    """The grammar of a constrained chat answer, and its trigger patterns.

    ``json_schema``: the answer is one JSON value under it. ``tools``: the
    answer is one or more tool calls (``tool_choice`` "required" or a named
    function). With ``reasoning``, the grammar starts where the reasoning ends
    (at ``</think>``) and is lazy: the patterns returned trigger it. Raises GrammarError when a schema cannot be
    expressed.
    """
    if json_schema is not None:
        schemas, rules = [("x-answer", _schema_json(json_schema))], []
        answer = "{{x-answer}}"
    elif tools:
        schemas, rules = _tool_rules(tools, parallel_tool_calls)
        answer = "x-calls"
    else:
        raise ValueError("answer_grammar needs a schema or tools")
    patterns: list[str] = []
    if reasoning:
        rules.insert(0, ("root", f"{_lit(THINK_CLOSE)} {_GAP} {answer}"))
        patterns.append(re.escape(THINK_CLOSE))
    else:
        rules.insert(0, ("root", f"{_GAP} {answer}"))
    # Rules refer to a schema's rule as {{name}}; the converter names it (a primitive schema
    # is its shared rule, e.g. "boolean").
    grammar, names = _core().build_grammar(schemas, rules)
    for name, _ in rules:
        if names[name] != name:  # a clash with a converter rule: refuse rather than mis-reference
            raise GrammarError(f"internal grammar rule {name!r} was renamed to {names[name]!r}")
    return str(grammar), patterns


# ---- the native constraint ---------------------------------------------------

def _reasoning_args(model: Model, budget: int | None, prefill: Sequence[int]) -> dict[str, Any]:
    def toks(text: str) -> list[int]:
        return model.tokenize(text, add_special=False, parse_special=True)

    return {"reasoning_budget": -1 if budget is None else budget, "reasoning_start": toks(THINK_OPEN),
            "reasoning_end": [toks(THINK_CLOSE)], "reasoning_forced": toks(THINK_FORCED),
            "reasoning_prefill": list(prefill)}


def for_generate(model: Model, prompt: Sequence[int], grammar: str | None, reasoning_budget: int | None) -> Any:
    """The native constraint of a :meth:`~step35.Model.generate` call (None: unconstrained).

    A user grammar applies from the first generated token. The reasoning
    budget counts from a ``<think>`` in the prompt (or in the output).
    """
    budget = check_reasoning_budget(reasoning_budget)
    if grammar is not None and not isinstance(grammar, str):
        raise TypeError(f"grammar must be GBNF text, not {type(grammar).__name__}")
    if not grammar and budget is None:
        return None
    kwargs: dict[str, Any] = {}
    if budget is not None:
        kwargs = _reasoning_args(model, budget, prompt)
    return _core().Constraint(model._handle, grammar or "", **kwargs)


def for_chat(model: Model, prompt_text: str, tools: Sequence[Mapping[str, Any]] | None, tool_choice: Any,
             response_format: Any, reasoning_budget: int | None, parallel_tool_calls: bool = True) -> Any:
    """The native constraint of a chat call (None: unconstrained).

    ``tools`` are the tools offered after ``tool_choice`` (see
    :func:`step35.chat.openai.select_tools`): "required" and a named function make
    the answer tool calls; ``response_format`` makes it JSON under a schema.
    "auto" leaves the answer free.
    """
    budget = check_reasoning_budget(reasoning_budget)
    schema = response_schema(response_format)
    forced_tools = tools if tools and tool_choice not in (None, "auto", "none") else None
    if schema is not None and forced_tools:
        raise ValueError("response_format and a required tool call cannot both be enforced: "
                         'use tool_choice="auto" with a response_format')
    reasoning = prompt_text.rstrip().endswith(THINK_OPEN)
    if schema is None and not forced_tools:
        if budget is None:
            return None
        return _core().Constraint(model._handle, "", **_reasoning_args(model, budget, _tail(model, prompt_text)))
    try:
        grammar, patterns = answer_grammar(schema, forced_tools, reasoning=reasoning,
                                           parallel_tool_calls=parallel_tool_calls)
    except GrammarError as e:  # say which request field holds the schema
        field = "response_format" if schema is not None else "tools"
        raise GrammarError(f"{field} cannot be enforced: {e}") from None
    if not reasoning:
        return _core().Constraint(model._handle, grammar)
    return _core().Constraint(model._handle, grammar, lazy=True, trigger_patterns=patterns,
                              **_reasoning_args(model, budget, _tail(model, prompt_text)))


def _tail(model: Model, prompt_text: str) -> list[int]:
    """The tokens of the prompt's open reasoning tag (the budget sampler starts counting after it)."""
    at = prompt_text.rfind(THINK_OPEN)
    return model.tokenize(prompt_text[at:], add_special=False, parse_special=True) if at >= 0 else []
