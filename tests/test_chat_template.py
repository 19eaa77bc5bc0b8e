"""The Jinja chat layer: rendering like transformers, trimming, validation (pure Python)."""

from __future__ import annotations

import copy
import json
from datetime import datetime
from typing import Any

import jinja2
import pytest
from jinja2.ext import loopcontrols
from jinja2.sandbox import SecurityError

from step35.chat import template as chat_template
from step35._runtime.data import chat_template_path

# The template the installed package ships (step35/data/, installed from the pinned
# llama.cpp's models/templates/): found in a wheel's clean test venv too, where
# there is no source tree beside tests/ (tests/conftest.py).
TEMPLATE_PATH = chat_template_path()
TEMPLATE = TEMPLATE_PATH.read_text(encoding="utf-8")

GEN_PROMPT = "<|im_start|>assistant\n<think>\n"

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city"]}}}
SEARCH = {"type": "function", "function": {
    "name": "search", "description": "Search the web for «anything»",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"},
                                                    "filters": {"type": "object"}, "exact": {"type": "boolean"}}}}}
TOOLS = [WEATHER, SEARCH]


def _call(name: str, call_id: str, **args: Any) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}


#: Conversations already in the form the template receives (trimmed, dict arguments).
CORPUS: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]] | None]] = {
    "user_only": ([{"role": "user", "content": "Hello!"}], None),
    "system_prompt": ([{"role": "system", "content": "You are terse."},
                       {"role": "user", "content": "Hi"}], None),
    "multi_turn_past_reasoning": ([
        {"role": "system", "content": "Be helpful."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4", "reasoning_content": "Simple arithmetic."},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "6", "reasoning_content": "Again simple."},
        {"role": "user", "content": "Thanks, ünïcödé ✓"},
    ], None),
    "reasoning_inline_in_content": ([
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nA"},
    ], None),
    "tools_no_system": ([{"role": "user", "content": "Weather in Paris?"}], TOOLS),
    "tools_with_system": ([{"role": "system", "content": "Use tools."},
                           {"role": "user", "content": "Weather in Paris?"}], TOOLS),
    "one_tool_call_and_response": ([
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "reasoning_content": "Need the tool.",
         "tool_calls": [_call("get_weather", "call_0", city="Paris", days=2)]},
        {"role": "tool", "tool_call_id": "call_0", "content": '{"temp": 21}'},
    ], TOOLS),
    "two_tool_calls_two_responses": ([
        {"role": "user", "content": "Weather in Paris and Oslo, then search."},
        {"role": "assistant", "content": "Checking both.", "reasoning_content": "Two cities.",
         "tool_calls": [_call("get_weather", "a", city="Paris"),
                        _call("search", "b", query="Oslo weather", filters={"lang": "no", "n": [1, 2]},
                              exact=True)]},
        {"role": "tool", "tool_call_id": "a", "content": "sunny"},
        {"role": "tool", "tool_call_id": "b", "content": "rainy"},
        {"role": "assistant", "content": "Paris is sunny, Oslo rainy.", "reasoning_content": "Summarize."},
        {"role": "user", "content": "Thanks"},
    ], TOOLS),
    "tool_response_then_generation": ([
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [_call("get_weather", "x", city="Rome")]},
        {"role": "tool", "content": "hot"},
    ], TOOLS),
    "content_parts": ([{"role": "user", "content": [{"type": "text", "text": "part one"},
                                                    {"type": "text", "text": "part two"}]}], None),
    "observation_system_message": ([{"role": "user", "content": "go"},
                                    {"role": "system", "content": "obs", "name": "observation"}], None),
}


def _reference_render(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                      add_generation_prompt: bool, bos_token: str) -> str:
    """An independent renderer: plain jinja2 with transformers' documented settings."""
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env.from_string(TEMPLATE).render(messages=messages, tools=tools, bos_token=bos_token, eos_token="",
                                            add_generation_prompt=add_generation_prompt)


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("case", sorted(CORPUS))
def test_matches_reference_renderer(case: str, add_generation_prompt: bool) -> None:
    messages, tools = CORPUS[case]
    got = chat_template.render_chat(TEMPLATE, messages, tools=tools, bos_token="<s>",
                                    add_generation_prompt=add_generation_prompt)
    assert got == _reference_render(messages, tools, add_generation_prompt, "<s>")
    assert got.startswith("<s><|im_start|>")
    if add_generation_prompt:
        assert got.endswith("<|im_end|>\n" + GEN_PROMPT)
    else:
        assert got.endswith("<|im_end|>\n") and not got.endswith(GEN_PROMPT)


TOOLS_PREAMBLE_TAIL = (
    "\n</tools>\n\nIf you choose to call a function ONLY reply in the following format with NO suffix:\n\n"
    "<tool_call>\n<function=example_function_name>\n<parameter=example_parameter_1>\nvalue_1\n</parameter>\n"
    "<parameter=example_parameter_2>\nThis is the value for the second parameter\nthat can span\nmultiple lines\n"
    "</parameter>\n</function>\n</tool_call>\n\n<IMPORTANT>\nReminder:\n"
    "- Function calls MUST follow the specified format: an inner <function=...>\n...\n</function> block must be "
    "nested within <tool_call>\n...\n</tool_call> XML tags\n- Required parameters MUST be specified\n"
    "</IMPORTANT><|im_end|>\n")


def test_golden_system_prompt() -> None:
    messages, tools = CORPUS["system_prompt"]
    got = chat_template.render_chat(TEMPLATE, messages, tools=tools, bos_token="<s>")
    assert got == ("<s><|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                   "<|im_start|>assistant\n<think>\n")


def test_golden_past_reasoning_is_dropped_before_the_last_query() -> None:
    got = chat_template.render_chat(TEMPLATE, CORPUS["multi_turn_past_reasoning"][0])
    assert got == ("<|im_start|>system\nBe helpful.<|im_end|>\n"
                   "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
                   "<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n6<|im_end|>\n"
                   "<|im_start|>user\nThanks, ünïcödé ✓<|im_end|>\n<|im_start|>assistant\n<think>\n")


def test_golden_tool_call_and_consecutive_tool_responses() -> None:
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "reasoning_content": "Need tool.",
         "tool_calls": [{"id": "c0", "type": "function",
                         "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 2}'}}]},
        {"role": "tool", "content": '{"temp": 20}'},
        {"role": "tool", "content": "second"},
    ]
    got = chat_template.render_chat(TEMPLATE, messages, tools=[WEATHER], bos_token="<s>")
    assert got == (
        "<s><|im_start|>system\nS\n\n# Tools\n\nYou have access to the following functions in JSONSchema "
        "format:\n\n<tools>\n"
        '{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city", '
        '"parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": '
        '"integer"}}, "required": ["city"]}}}'
        + TOOLS_PREAMBLE_TAIL +
        "<|im_start|>user\nWeather?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nNeed tool.\n</think>\n"
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
        "<parameter=days>\n2\n</parameter>\n</function>\n</tool_call><|im_end|>\n"
        "<|im_start|>tool_response\n<tool_response>{\"temp\": 20}</tool_response>"
        "<tool_response>second</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n<think>\n")


def test_two_calls_render_back_to_back_with_typed_values() -> None:
    messages, tools = CORPUS["two_tool_calls_two_responses"]
    got = chat_template.render_chat(TEMPLATE, messages[:4], tools=tools)  # turns after the last user query
    assert ("<|im_start|>assistant\n<think>\nTwo cities.\n</think>\nChecking both.<tool_call>\n"
            "<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>"
            "<tool_call>\n<function=search>\n<parameter=query>\nOslo weather\n</parameter>\n"
            '<parameter=filters>\n{"lang": "no", "n": [1, 2]}\n</parameter>\n'
            "<parameter=exact>\nTrue\n</parameter>\n</function>\n</tool_call><|im_end|>\n") in got
    assert "<|im_start|>tool_response\n<tool_response>sunny</tool_response><tool_response>rainy</tool_response>" \
           "<|im_end|>\n" in got
    # once a newer user query follows, the turn's reasoning is no longer rendered
    later = chat_template.render_chat(TEMPLATE, messages, tools=tools)
    assert "<|im_start|>assistant\nChecking both.<tool_call>\n<function=get_weather>" in later
    assert "Two cities." not in later and "Summarize." not in later


def test_generation_prompt_is_exactly_the_think_opener() -> None:
    with_prompt = chat_template.render_chat(TEMPLATE, [{"role": "user", "content": "x"}])
    without = chat_template.render_chat(TEMPLATE, [{"role": "user", "content": "x"}], add_generation_prompt=False)
    assert with_prompt == without + "<|im_start|>assistant\n<think>\n"


def test_content_and_reasoning_are_trimmed_without_mutating_input() -> None:
    messy = [
        {"role": "system", "content": "  Be helpful.\n\n"},
        {"role": "user", "content": [{"type": "text", "text": "\n Weather? "}]},
        {"role": "assistant", "content": "\n\nOn it. ", "reasoning_content": "\n  Need tool.\n\n",
         "tool_calls": [{"id": "c", "type": "function",
                         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "content": "  sunny\n"},
    ]
    before = copy.deepcopy(messy)
    clean = [
        {"role": "system", "content": "Be helpful."},
        {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
        {"role": "assistant", "content": "On it.", "reasoning_content": "Need tool.",
         "tool_calls": [{"id": "c", "type": "function",
                         "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "sunny"},
    ]
    assert chat_template.render_chat(TEMPLATE, messy, tools=TOOLS) == \
        chat_template.render_chat(TEMPLATE, clean, tools=TOOLS) == _reference_render(clean, TOOLS, True, "")
    assert messy == before


def test_string_and_dict_arguments_render_the_same() -> None:
    as_dict = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "search", "arguments": {"query": "ü", "exact": False}}}]}]
    as_str = copy.deepcopy(as_dict)
    as_str[1]["tool_calls"][0]["function"]["arguments"] = '{"query": "\\u00fc", "exact": false}'
    a = chat_template.render_chat(TEMPLATE, as_dict, tools=TOOLS)
    assert a == chat_template.render_chat(TEMPLATE, as_str, tools=TOOLS)
    assert "<parameter=query>\nü\n</parameter>\n<parameter=exact>\nFalse\n</parameter>" in a


def test_extra_variables_reach_the_template() -> None:
    assert chat_template.render_chat("{{ greeting }} {{ messages|length }}", [{"role": "user", "content": "x"}],
                                     greeting="hi") == "hi 1"


# --- the environment matches transformers' ---------------------------------------------------

ONE = [{"role": "user", "content": "x"}]


def test_tojson_does_not_escape_and_takes_options() -> None:
    tmpl = "{{ {'b': '<é>', 'a': [1]}|tojson }}|{{ {'b': 1, 'a': 2}|tojson(indent=2, sort_keys=True) }}|" \
           "{{ 'é'|tojson(ensure_ascii=True) }}|{{ [1, 2]|tojson(separators=(',', ':')) }}"
    assert chat_template.render_chat(tmpl, ONE) == \
        '{"b": "<é>", "a": [1]}|{\n  "a": 2,\n  "b": 1\n}|"\\u00e9"|[1,2]'


def test_raise_exception_strftime_now_loopcontrols_and_trim() -> None:
    with pytest.raises(jinja2.TemplateError, match="bad role"):
        chat_template.render_chat("{{ raise_exception('bad role') }}", ONE)
    before = datetime.now().year
    year = chat_template.render_chat("{{ strftime_now('%Y') }}", ONE)
    assert year in {str(before), str(datetime.now().year)}  # a run across New Year's midnight
    assert chat_template.render_chat(
        "{% for i in range(9) %}{% if i == 3 %}{% break %}{% endif %}{% if i == 1 %}{% continue %}{% endif %}"
        "{{ i }}{% endfor %}", ONE) == "02"
    assert chat_template.render_chat("  {% if true %}\nA\n  {% endif %}\nB", ONE) == "A\nB"
    assert chat_template.render_chat("{% generation %}gen{% endgeneration %}", ONE) == "gen"


def test_sandbox_is_immutable() -> None:
    with pytest.raises(SecurityError):
        chat_template.render_chat("{% set x = [] %}{{ x.append(1) }}", ONE)
    with pytest.raises(SecurityError):
        chat_template.render_chat("{{ ''.__class__.__mro__ }}", ONE)


# --- validation ---------------------------------------------------------------------------------

BAD_MESSAGES = [
    ("not a list", "messages must be a list"),
    ([], "must not be empty"),
    (["hi"], r"messages\[0\] must be a dict"),
    ([{"role": "developer", "content": "x"}], r"messages\[0\]\.role"),
    ([{"content": "x"}], r"messages\[0\]\.role"),
    ([{"role": "user", "content": "x"}, {"role": "user", "content": 3}], r"messages\[1\]\.content"),
    ([{"role": "user", "content": [{"type": "image", "image": "x"}]}], r"messages\[0\]\.content\[0\]"),
    ([{"role": "user", "content": [{"type": "text", "text": 1}]}], r"messages\[0\]\.content\[0\]\.text"),
    ([{"role": "user", "content": {"type": "text", "text": "x"}}], r"messages\[0\]\.content"),
    ([{"role": "assistant", "content": "x", "reasoning_content": ["r"]}], r"messages\[0\]\.reasoning_content"),
    ([{"role": "user", "content": "x", "tool_calls": []}], r"messages\[0\]\.tool_calls: only assistant"),
    ([{"role": "assistant", "tool_calls": {"function": {}}}], r"messages\[0\]\.tool_calls must be a list"),
    ([{"role": "assistant", "tool_calls": [{"type": "function"}]}], r"messages\[0\]\.tool_calls\[0\]\.function"),
    ([{"role": "assistant", "tool_calls": [{"type": "code", "function": {"name": "f", "arguments": {}}}]}],
     r"tool_calls\[0\]\.type"),
    ([{"role": "assistant", "tool_calls": [{"function": {"name": "", "arguments": {}}}]}],
     r"tool_calls\[0\]\.function\.name"),
    ([{"role": "assistant", "tool_calls": [{"function": {"name": "a b", "arguments": {}}}]}],
     r"tool_calls\[0\]\.function\.name"),
    ([{"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]}], r"tool_calls\[0\]\.function\.arguments"),
    ([{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}],
     r"tool_calls\[0\]\.function\.arguments is not valid JSON"),
    ([{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]}],
     r"tool_calls\[0\]\.function\.arguments must be an object"),
    ([{"role": "tool", "content": "x", "tool_call_id": 5}], r"messages\[0\]\.tool_call_id"),
]


@pytest.mark.parametrize(("messages", "match"), BAD_MESSAGES, ids=[m for _, m in BAD_MESSAGES])
def test_validate_messages_rejects(messages: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        chat_template.validate_messages(messages)
    with pytest.raises(ValueError, match=match):
        chat_template.render_chat(TEMPLATE, messages)


def test_validate_accepts_the_corpus() -> None:
    for messages, tools in CORPUS.values():
        chat_template.validate_messages(messages)
        if tools is not None:
            chat_template.validate_tools(tools)


def _tool(**fn: Any) -> dict[str, Any]:
    return {"type": "function", "function": fn}


BAD_TOOLS = [
    ({"type": "function"}, "tools must be a list"),
    (["x"], r"tools\[0\] must be a dict"),
    ([{"function": {"name": "f", "parameters": {}}}], r"tools\[0\]\.type"),
    ([{"type": "function"}], r"tools\[0\]\.function must be a dict"),
    ([_tool(parameters={})], r"tools\[0\]\.function\.name"),
    ([_tool(name="f<x>", parameters={})], r"tools\[0\]\.function\.name"),
    ([_tool(name="f", parameters={}), _tool(name="f", parameters={})], r"tools\[1\]\.function\.name 'f' is used"),
    ([_tool(name="f", description=3, parameters={})], r"tools\[0\]\.function\.description"),
    ([_tool(name="f")], r"tools\[0\]\.function\.parameters must be a JSON-schema object"),
    ([_tool(name="f", parameters={"type": "array"})], r"tools\[0\]\.function\.parameters\.type"),
    ([_tool(name="f", parameters={"type": "object", "properties": []})], r"parameters\.properties must be"),
    ([_tool(name="f", parameters={"type": "object", "properties": {"a": 1}})], r"properties\['a'\]"),
    ([_tool(name="f", parameters={"type": "object", "properties": {"a b": {}}})], r"properties key"),
    ([_tool(name="f", parameters={"type": "object", "required": "a"})], r"parameters\.required"),
]


@pytest.mark.parametrize(("tools", "match"), BAD_TOOLS, ids=[m for _, m in BAD_TOOLS])
def test_validate_tools_rejects(tools: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        chat_template.validate_tools(tools)
    with pytest.raises(ValueError, match=match):
        chat_template.render_chat(TEMPLATE, ONE, tools=tools)
