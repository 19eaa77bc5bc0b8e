"""Parsing model output: reasoning, content and qwen3-coder style tool calls, batch and streaming."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from step35.chat import template as chat_template
from step35.chat import toolcalls
from step35._runtime.data import chat_template_path
from step35.chat.toolcalls import ChatStreamParser, ToolCallParseError, merge_deltas, parse_output

# The template the installed package ships (see test_chat_template.py).
TEMPLATE = chat_template_path().read_text(encoding="utf-8")


def _fn(name: str, props: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": name,
                                             "parameters": {"type": "object", "properties": props or {}}}}


TOOLS = [
    _fn("get_weather", {"city": {"type": "string"}, "days": {"type": "integer"}}),
    _fn("write_file", {"path": {"type": "string"}, "content": {"type": "string"}}),
    _fn("configure", {"enabled": {"type": "boolean"}, "ratio": {"type": "number"}, "count": {"type": "integer"},
                      "tags": {"type": "array", "items": {"type": "string"}}, "options": {"type": "object"},
                      "nothing": {"type": "null"}}),
    _fn("search", {"query": {"type": "string"}, "limit": {"type": ["integer", "null"]},
                   "mode": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                   "level": {"enum": [1, 2, 3]}, "anything": {}}),
    _fn("list_files"),
]


def call(index: int, name: str, **args: Any) -> dict[str, Any]:
    """The expected OpenAI-shaped call."""
    return {"id": f"call_{index}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)}}


def msg(content: str = "", reasoning: str = "", calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The expected parsed message."""
    return {"role": "assistant", "content": content, "reasoning_content": reasoning, "tool_calls": calls or []}


def tc(name: str, *params: tuple[str, str]) -> str:
    """A well-formed call block as the model writes it."""
    body = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in params)
    return f"<tool_call>\n<function={name}>\n{body}</function>\n</tool_call>"


WEATHER_PARIS = tc("get_weather", ("city", "Paris"), ("days", "3"))

#: (raw output after the generation prompt, expected parse_output(raw, TOOLS))
CORPUS: dict[str, tuple[str, dict[str, Any]]] = {
    "plain_answer": ("The user greets me.\n</think>\n\nHello there!",
                     msg("Hello there!", "The user greets me.")),
    "still_thinking": ("Let me think about < and </ and <tool", msg("", "Let me think about < and </ and <tool")),
    "empty_reasoning": ("\n</think>\n\nHi", msg("Hi")),
    "leading_think_tag": ("  <think>\nR\n</think>\nC", msg("C", "R")),
    "markup_like_text": ("if a<b then </thinking> is not it\n</think>\nUse x<y, <b>bold</b> and <tool_cal!",
                         msg("Use x<y, <b>bold</b> and <tool_cal!", "if a<b then </thinking> is not it")),
    "call_right_after_think": ("Need weather.\n</think>\n" + WEATHER_PARIS,
                               msg("", "Need weather.", [call(0, "get_weather", city="Paris", days=3)])),
    "content_before_call": ("R\n</think>\n\nLet me check.\n\n" + WEATHER_PARIS,
                            msg("Let me check.", "R", [call(0, "get_weather", city="Paris", days=3)])),
    "two_calls_back_to_back": (
        "R</think>" + WEATHER_PARIS + tc("get_weather", ("city", "Oslo")),
        msg("", "R", [call(0, "get_weather", city="Paris", days=3), call(1, "get_weather", city="Oslo")])),
    "three_calls_with_newlines": (
        "R\n</think>\n\nOn it.\n" + WEATHER_PARIS + "\n" + tc("list_files") + "\n\n"
        + tc("write_file", ("path", "a.txt"), ("content", "hi")) + "\n",
        msg("On it.", "R", [call(0, "get_weather", city="Paris", days=3), call(1, "list_files"),
                            call(2, "write_file", path="a.txt", content="hi")])),
    "multiline_string_values": (
        "R\n</think>\n" + tc("write_file", ("path", " spaced name.py "),
                             ("content", "\ndef f(x):\n    if x < 1:\n        return '<tag>'\n    return x\n\n")),
        msg("", "R", [call(0, "write_file", path=" spaced name.py ",
                           content="\ndef f(x):\n    if x < 1:\n        return '<tag>'\n    return x\n\n")])),
    "typed_values": (
        "R\n</think>\n" + tc("configure", ("enabled", "true"), ("ratio", "0.25"), ("count", "-7"),
                             ("tags", '["a", "b"]'), ("options", '{"k": [1, {"x": null}], "s": "é"}'),
                             ("nothing", "null")),
        msg("", "R", [call(0, "configure", enabled=True, ratio=0.25, count=-7, tags=["a", "b"],
                           options={"k": [1, {"x": None}], "s": "é"}, nothing=None)])),
    "python_style_values": (
        "R\n</think>\n" + tc("configure", ("enabled", "False"), ("options", "{'a': True, 'b': None, 'c': (1, 2)}"),
                             ("tags", "['x']"), ("nothing", "None")),
        msg("", "R", [call(0, "configure", enabled=False, options={"a": True, "b": None, "c": [1, 2]},
                           tags=["x"], nothing=None)])),
    "strings_that_look_like_json_stay_strings": (
        "R\n</think>\n" + tc("get_weather", ("city", "123"), ("days", "2")) + tc("write_file", ("content", "true"),
                                                                                ("path", '"quoted"')),
        msg("", "R", [call(0, "get_weather", city="123", days=2),
                      call(1, "write_file", content="true", path='"quoted"')])),
    "union_enum_and_untyped_values": (
        "R\n</think>\n" + tc("search", ("query", "null"), ("limit", "null"), ("mode", "fast"), ("level", "2"),
                             ("anything", "[1]"), ("undeclared", "42")) + tc("search", ("limit", "5"), ("mode", "3"),
                                                                             ("anything", "free text")),
        msg("", "R", [call(0, "search", query="null", limit=None, mode="fast", level=2, anything=[1], undeclared=42),
                      call(1, "search", limit=5, mode=3, anything="free text")])),
    "non_json_value_for_typed_param_kept_raw": (
        "R\n</think>\n" + tc("get_weather", ("city", "Rome"), ("days", "three")),
        msg("", "R", [call(0, "get_weather", city="Rome", days="three")])),
    "unicode_and_empty_values": (
        "R\n</think>\n" + tc("get_weather", ("city", "Zürich 🌧")) + tc("write_file", ("path", ""), ("content", "")),
        msg("", "R", [call(0, "get_weather", city="Zürich 🌧"), call(1, "write_file", path="", content="")])),
    "text_after_calls_is_content": (
        "R\n</think>\nFirst." + WEATHER_PARIS + "\nDone.",
        msg("First.\nDone.", "R", [call(0, "get_weather", city="Paris", days=3)])),
    "tool_call_ends_unclosed_reasoning": (
        "I will call the tool.\n" + WEATHER_PARIS,
        msg("", "I will call the tool.", [call(0, "get_weather", city="Paris", days=3)])),
    "duplicate_parameter_last_wins": (
        "R</think>" + tc("get_weather", ("city", "A"), ("city", "B")), msg("", "R", [call(0, "get_weather", city="B")])),
    "spaces_inside_tags": (
        "R</think><tool_call><function= get_weather ><parameter= city >Paris</parameter></function></tool_call>",
        msg("", "R", [call(0, "get_weather", city="Paris")])),
    # recovered malformed markup
    "missing_parameter_close": (
        "R</think><tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n<parameter=days>\n2\n</function>\n"
        "</tool_call>", msg("", "R", [call(0, "get_weather", city="Paris", days=2)])),
    "missing_function_close": (
        "R</think><tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</tool_call>\nok",
        msg("ok", "R", [call(0, "get_weather", city="Paris")])),
    "missing_tool_call_close_at_end": (
        "R</think><tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n",
        msg("", "R", [call(0, "get_weather", city="Paris")])),
    "missing_tool_call_close_between_calls": (
        "R</think><tool_call>\n<function=list_files>\n</function>\n" + WEATHER_PARIS,
        msg("", "R", [call(0, "list_files"), call(1, "get_weather", city="Paris", days=3)])),
    "missing_tool_call_close_then_text": (
        "R</think><tool_call>\n<function=list_files>\n</function>\nAll done.",
        msg("All done.", "R", [call(0, "list_files")])),
    "two_functions_in_one_block": (
        "R</think><tool_call>\n<function=list_files>\n</function>\n<function=get_weather>\n<parameter=city>\nX\n"
        "</parameter>\n</function>\n</tool_call>",
        msg("", "R", [call(0, "list_files"), call(1, "get_weather", city="X")])),
    "empty_block_ignored": ("R</think>Before <tool_call>\n</tool_call> after", msg("Before  after", "R")),
}

#: Output the parser reports with ToolCallParseError (match on the message).
ERRORS: dict[str, tuple[str, str]] = {
    "unknown_function": ("R</think>" + tc("get_wether", ("city", "Paris")), "unknown function 'get_wether'"),
    "truncated_in_value": ("R</think><tool_call>\n<function=get_weather>\n<parameter=city>\nPar", "ends inside"),
    "truncated_without_function_close": (
        "R</think><tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n", "ends inside"),
    "truncated_after_tool_call": ("R</think>Let me see. <tool_call>\n", "ends inside"),
    "truncated_function_tag": ("R</think><tool_call>\n<function=get_wea", "ends inside"),
    "truncated_function_tag_start": ("R</think><tool_call>\n<fun", "ends inside"),
    "truncated_parameter_tag": ("R</think><tool_call>\n<function=get_weather>\n<parameter=ci", "ends inside"),
    "hermes_json_instead_of_xml": ('R</think><tool_call>\n{"name": "get_weather", "arguments": {}}\n</tool_call>',
                                   "expected <function=NAME>"),
    "stray_text_in_function": ("R</think><tool_call>\n<function=get_weather>\ncity=Paris\n</function></tool_call>",
                               "unexpected text"),
    "newline_in_function_tag": ("R</think><tool_call>\n<function=get_weather\n<parameter=city>\nx\n</parameter>",
                                "malformed tag"),
    "lt_in_parameter_tag": ("R</think><tool_call>\n<function=get_weather>\n<parameter=city<x>\nx", "malformed tag"),
}


def stream(text: str, pieces: list[str], tools: Any = TOOLS) -> dict[str, Any]:
    """Feed ``pieces`` to a ChatStreamParser and merge its deltas."""
    assert "".join(pieces) == text
    parser = ChatStreamParser(tools)
    deltas = [d for piece in pieces for d in parser.feed(piece)]
    deltas += parser.finish()
    for d in deltas:
        assert len(d) == 1 and next(iter(d.values())), d
    return merge_deltas(deltas)


def random_splits(text: str, n: int, seed: int) -> list[list[str]]:
    """``n`` random ways to cut ``text`` into pieces."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 12)))) if len(text) > 1 else []
        bounds = [0, *cuts, len(text)]
        out.append([text[a:b] for a, b in zip(bounds, bounds[1:])])
    return out


def all_splittings(text: str) -> list[list[str]]:
    """Whole text, 1-character pieces, 2-character pieces and random pieces."""
    return [[text], list(text), [text[i:i + 2] for i in range(0, len(text), 2)], *random_splits(text, 30, len(text))]


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_parse_output(case: str) -> None:
    text, expected = CORPUS[case]
    assert parse_output(text, TOOLS) == expected


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_streaming_equals_batch_for_every_split(case: str) -> None:
    text, expected = CORPUS[case]
    for pieces in all_splittings(text):
        assert stream(text, pieces) == expected, pieces


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_malformed_raises_in_batch_and_stream(case: str) -> None:
    text, match = ERRORS[case]
    with pytest.raises(ToolCallParseError, match=match):
        parse_output(text, TOOLS)
    for pieces in all_splittings(text):
        with pytest.raises(ToolCallParseError, match=match):
            stream(text, pieces)


def test_parse_error_is_a_value_error() -> None:
    assert issubclass(ToolCallParseError, ValueError)


# --- the pieces -----------------------------------------------------------------------------------


def test_split_reasoning() -> None:
    assert toolcalls.split_reasoning("a\n</think>\n\nb</think>c") == ("a", "b</think>c")
    assert toolcalls.split_reasoning("  still going ") == ("still going", "")
    assert toolcalls.split_reasoning("<think>x</think>y") == ("x", "y")
    assert toolcalls.split_reasoning("r <tool_call>x</think>y") == ("r <tool_call>x", "y")
    assert toolcalls.split_reasoning("r <tool_call>x</think>y", tool_call_ends_reasoning=True) == \
        ("r", "<tool_call>x</think>y")


def test_parse_tool_calls_on_content() -> None:
    content, calls = toolcalls.parse_tool_calls("Sure.\n" + WEATHER_PARIS, TOOLS, id_prefix="call_abc_")
    assert content == "Sure."
    assert calls == [{"id": "call_abc_0", "type": "function",
                      "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 3}'}}]


@pytest.mark.parametrize("tools", [None, []])
def test_without_tools_nothing_is_a_call(tools: Any) -> None:
    text = "R\n</think>\n" + WEATHER_PARIS
    expected = msg(WEATHER_PARIS, "R")
    assert parse_output(text, tools) == expected
    assert parse_output("R " + WEATHER_PARIS, tools) == msg("", "R " + WEATHER_PARIS)
    assert toolcalls.parse_tool_calls(" x ", tools) == ("x", [])
    for pieces in all_splittings(text):
        assert stream(text, pieces, tools) == expected


def test_stream_holds_back_partial_tags() -> None:
    p = ChatStreamParser(TOOLS)
    assert p.feed("Thinking hard </thi") == [{"reasoning_content": "Thinking hard"}]
    assert p.feed("nk>\n\nAnswer <tool_ca") == [{"content": "Answer"}]
    assert p.feed("ll>\n<function=get_weather>") == []  # a call comes whole, when it closes
    assert p.feed("\n<parameter=city>\nPa") == []
    assert p.feed("ris\n</parameter>\n</function>") == [{"tool_calls": [{
        "index": 0, "id": "call_0", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}]
    assert p.feed("\n</tool_call> <tool") == []
    assert p.feed("box") == [{"content": "  <toolbox"}]  # the space held after "Answer", then " <toolbox"
    assert p.finish() == []
    assert p.finish() == []
    with pytest.raises(ValueError, match="after finish"):
        p.feed("x")


def test_stream_emits_not_tags_and_flushes_held_text_at_finish() -> None:
    p = ChatStreamParser(TOOLS)
    assert p.feed("a <") == [{"reasoning_content": "a"}]
    assert p.feed("b") == [{"reasoning_content": " <b"}]
    assert p.feed(" </th") == []
    assert p.finish() == [{"reasoning_content": " </th"}]


def test_stream_tool_call_deltas_merge_like_openai() -> None:
    text = CORPUS["three_calls_with_newlines"][0]
    p = ChatStreamParser(TOOLS)
    deltas = [d for ch in text for d in p.feed(ch)] + p.finish()
    headers = [d["tool_calls"][0] for d in deltas if "tool_calls" in d and "id" in d["tool_calls"][0]]
    assert [(h["index"], h["id"], h["function"]["name"]) for h in headers] == [
        (0, "call_0", "get_weather"), (1, "call_1", "list_files"), (2, "call_2", "write_file")]
    kinds = [next(iter(d)) for d in deltas]
    assert kinds[0] == "reasoning_content" and kinds.index("content") < kinds.index("tool_calls")


def test_long_value_streams_in_linear_time() -> None:
    big = "x = '<tag>'\n" * 20000
    text = "R</think>" + tc("write_file", ("path", "big.py"), ("content", big))
    p = ChatStreamParser(TOOLS)
    deltas = [d for i in range(0, len(text), 3) for d in p.feed(text[i:i + 3])] + p.finish()
    assert json.loads(merge_deltas(deltas)["tool_calls"][0]["function"]["arguments"])["content"] == big


def test_calls_rendered_by_the_template_parse_back() -> None:
    args = {"enabled": True, "ratio": 1.5, "count": 0, "tags": ["a", "b c"], "options": {"k": "é", "n": None}}
    rendered = chat_template.render_chat(TEMPLATE, [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": "Sure.", "reasoning_content": "Plan.",
         "tool_calls": [{"type": "function", "function": {"name": "configure", "arguments": args}},
                        {"type": "function", "function": {"name": "write_file",
                                                          "arguments": {"path": "p", "content": "l1\n\nl2"}}}]}],
        tools=TOOLS, add_generation_prompt=False)
    assistant = rendered.split("<|im_start|>assistant\n<think>\n", 1)[1].removesuffix("<|im_end|>\n")
    parsed = parse_output(assistant, TOOLS)
    assert parsed["reasoning_content"] == "Plan." and parsed["content"] == "Sure."
    assert [json.loads(c["function"]["arguments"]) for c in parsed["tool_calls"]] == [
        args, {"path": "p", "content": "l1\n\nl2"}]


@pytest.mark.parametrize("name", ["three_calls_with_newlines", "multiline_string_values"])
def test_a_call_the_token_limit_cuts_is_left_out_and_the_calls_before_it_kept(name: str) -> None:
    """Cut the output anywhere inside a call: with ``cut`` (finish_reason "length") the calls before it
    come back and the cut one is left out; without, the parser says the output ends inside a call."""
    text, expected = CORPUS[name]
    starts = [i for i in range(len(text)) if text.startswith("<tool_call>", i)]
    assert len(starts) == len(expected["tool_calls"])
    for k, start in enumerate(starts):
        end = text.index("</function>", start) + len("</function>")
        for at in range(start + 1, end):
            out = parse_output(text[:at], TOOLS, cut=True)
            assert out["tool_calls"] == expected["tool_calls"][:k], (k, text[start:at])
            assert (out["content"], out["reasoning_content"]) == (expected["content"], expected["reasoning_content"])
            if at < start + len("<tool_call>"):  # not a call yet: without the cut, "<tool_c" is text
                assert parse_output(text[:at], TOOLS)["content"].endswith(text[start:at])
                continue
            with pytest.raises(ToolCallParseError, match="cut off by the token limit") as e:
                parse_output(text[:at], TOOLS)
            assert e.value.truncated
    # bad markup stays an error, cut or not
    with pytest.raises(ToolCallParseError, match="expected <function=NAME>") as bad:
        parse_output("R</think><tool_call>oops <function=get_weather>", TOOLS, cut=True)
    assert not bad.value.truncated
