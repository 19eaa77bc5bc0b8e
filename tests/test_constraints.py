"""Constrained decoding: GBNF grammars, JSON Schema answers, enforced tool_choice, the reasoning budget.

The tiny model has random weights: left alone it never closes its reasoning
and never writes JSON or a tool call, so every valid output below is the
grammar's doing. It samples at temperature 1 with fixed seeds.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
import step35
from schema_corpus import CORPUS, UNSUPPORTED
from step35.generation.constraints import answer_grammar
from step35.chat.toolcalls import THINK_CLOSE

SEEDS = range(20)
USER = [{"role": "user", "content": "Answer in JSON."}]
TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "maxLength": 10},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
            "unit": {"type": "string", "enum": ["C", "F"]}},
            "required": ["city", "days"]}}},
    {"type": "function", "function": {
        "name": "add", "description": "Add numbers",
        "parameters": {"type": "object", "properties": {
            "numbers": {"type": "array", "items": {"type": "integer"}, "maxItems": 3},
            "exact": {"type": "boolean"}},
            "required": ["numbers"]}}},
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


def _json_answer(reply: dict[str, Any]) -> Any:
    message = reply["choices"][0]["message"]
    return json.loads(message["content"])


@pytest.fixture(scope="module")
def engine(tiny_model):
    with step35.Engine(tiny_model, slots=4) as e:
        yield e


def _chat_all(engine, seeds, **kwargs) -> list[dict[str, Any]]:
    """Every seed's chat, run at once on the engine (each request has its own seed), streamed and merged."""
    streams = [engine.chat(USER, stream=True, temperature=1.0, seed=s, **kwargs) for s in seeds]
    replies = []
    for stream in streams:
        content, reasoning, calls, reason = "", "", {}, None
        for chunk in stream:
            choice = chunk["choices"][0]
            delta = choice["delta"]
            content += delta.get("content") or ""
            reasoning += delta.get("reasoning_content") or ""
            for c in delta.get("tool_calls") or []:
                call = calls.setdefault(c["index"], {"name": "", "arguments": ""})
                call["name"] += c["function"].get("name") or ""
                call["arguments"] += c["function"].get("arguments") or ""
            reason = choice["finish_reason"] or reason
        replies.append({"content": content, "reasoning": reasoning, "calls": list(calls.values()),
                        "finish_reason": reason})
    return replies


# ---- generate(grammar=...) -------------------------------------------------

def test_a_gbnf_grammar_decides_every_token(tiny_model) -> None:
    grammar = 'root ::= ("yes" | "no") " " [0-9] [0-9]?'
    outs = {tiny_model.generate("Is it?", max_tokens=32, temperature=1.0, seed=s, grammar=grammar).text
            for s in SEEDS}
    import re

    assert all(re.fullmatch(r"(yes|no) [0-9][0-9]?", o) for o in outs), outs
    assert len(outs) > 3  # the model still chooses: the grammar only forbids


def test_greedy_under_a_grammar_is_reproducible_and_streams_the_same(tiny_model) -> None:
    grammar = step35.json_schema_to_grammar(CORPUS["object-typed"])
    whole = tiny_model.generate("x", max_tokens=200, temperature=0, grammar=grammar)
    pieces = "".join(tiny_model.generate("x", max_tokens=200, temperature=0, grammar=grammar, stream=True))
    assert whole.finish_reason == "stop"
    assert pieces == whole.text
    jsonschema.validate(json.loads(whole.text), CORPUS["object-typed"])


@pytest.mark.parametrize("settings", [{"temperature": 0}, {"temperature": 1.0, "top_k": 40},
                                      {"temperature": 0.7, "top_k": 5, "top_p": 0.9, "min_p": 0.05}])
def test_the_fast_draw_under_a_grammar_is_the_full_chains(tiny_model, settings) -> None:
    """Under a grammar the token is drawn first (greedy as an argmax, top-k over the k best)
    and then checked. A presence penalty of 1e-30 leaves every float32 logit as it is but
    draws with llama.cpp's chain over the whole vocabulary: the tokens must be the same."""
    grammar = step35.json_schema_to_grammar(CORPUS["extraction"])
    for seed in range(6):
        kw = dict(settings, max_tokens=120, seed=seed, grammar=grammar)
        fast = tiny_model.generate("x", **kw)
        full = tiny_model.generate("x", presence_penalty=1e-30, **kw)
        assert fast.tokens == full.tokens, seed


# Grammars for the whole-vocabulary check: JSON from the corpus, non-ASCII ranges
# (tokens ending inside a UTF-8 sequence), negated classes, a token element.
MASK_GRAMMARS = {
    "object": step35.json_schema_to_grammar(CORPUS["object-typed"]),
    "extraction": step35.json_schema_to_grammar(CORPUS["extraction"]),
    "unicode": r'root ::= [a-zα-ω ]{1,6} ("é" | "ü" | [\u4e00-\u9fff])+ [^\x00-\x7f]* "."',
    "negated": r'root ::= "\"" [^"\\a-m]{0,12} "\"" ws "end" ws' + "\nws ::= [ \\t\\n]*",
    "token": 'root ::= [0-9]{1,3} <[13]> "x"* | "y"',
}


@pytest.mark.parametrize("name", sorted(MASK_GRAMMARS))
def test_the_whole_vocabulary_mask_is_llama_cpps_per_token_answer(tiny_model, name: str) -> None:
    """The grammar sampler answers for the whole vocabulary through a token trie (patch
    0011); asked a token at a time it takes llama.cpp's own per-candidate path. After
    prefixes of seeded answers under the grammar, both must allow exactly the same tokens."""
    from step35.generation.constraints import _core

    grammar = MASK_GRAMMARS[name]
    constraint = _core().Constraint(tiny_model._handle, grammar)
    checked = 0
    for seed in range(3):
        tokens = tiny_model.generate("x", max_tokens=24, temperature=1.0, seed=seed, grammar=grammar).tokens
        for cut in sorted({0, 1, len(tokens) // 2, len(tokens) - 1}):
            if cut > len(tokens) or cut < 0:
                continue
            whole = constraint.allowed(tokens[:cut])
            assert whole == constraint.allowed(tokens[:cut], one_by_one=True), (name, seed, cut)
            assert tokens[cut:cut + 1] == [] or tokens[cut] in whole
            checked += 1
    assert checked >= 6


def test_allowed_needs_a_grammar_and_an_accepted_prefix(tiny_model) -> None:
    from step35.generation.constraints import _core

    with pytest.raises(ValueError, match="no grammar"):
        _core().Constraint(tiny_model._handle, "").allowed([])
    digits = _core().Constraint(tiny_model._handle, "root ::= [0-9]+")
    assert digits.allowed([]) and all(tiny_model.detokenize([t])[:1].isdigit() for t in digits.allowed([]))
    with pytest.raises(step35.GrammarError, match="rejected the prefix"):
        digits.allowed(tiny_model.tokenize("abc", add_special=False))


def test_malformed_gbnf_is_a_grammar_error_with_llama_cpps_reason(tiny_model) -> None:
    with pytest.raises(step35.GrammarError, match="does not parse") as info:
        tiny_model.generate("x", max_tokens=4, grammar='root ::= "unterminated')
    assert "llama.cpp said" in str(info.value)
    assert isinstance(info.value, ValueError)
    # the context is free for the next call
    assert tiny_model.generate("x", max_tokens=2, temperature=0).finish_reason == "length"


def test_grammar_output_is_always_valid_utf8(tiny_model) -> None:
    """Regression (llama.cpp/patches/0002): tokens that are broken UTF-8 (a lead byte
    without its continuation bytes, 0xF8-0xFF, overlong forms) are not characters."""
    grammar = 'root ::= [^\\x00-\\x7F]{8}'  # non-ASCII only: byte-fragment tokens are a large share
    for seed in range(40):  # before the patch, 5 of these 40 answers were not UTF-8
        out = tiny_model.generate("x", max_tokens=80, temperature=1.0, seed=seed, grammar=grammar)
        assert out.finish_reason == "stop"
        raw = b"".join(tiny_model.token_to_piece(t, special=True) for t in out.tokens)
        assert len(raw.decode("utf-8")) == 8, raw  # strict: raises on bytes that are not UTF-8


def test_a_grammar_must_be_text(tiny_model) -> None:
    with pytest.raises(TypeError, match="GBNF"):
        tiny_model.generate("x", max_tokens=4, grammar={"type": "object"})  # type: ignore[arg-type]


# ---- JSON Schema -----------------------------------------------------------

@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_a_schema_the_converter_cannot_express_is_named(tiny_model, name: str) -> None:
    schema, word = UNSUPPORTED[name]
    with pytest.raises(step35.GrammarError, match=word):
        step35.json_schema_to_grammar(schema)
    with pytest.raises(step35.GrammarError, match=word):
        tiny_model.chat(USER, max_tokens=4, response_format={"type": "json_schema",
                                                              "json_schema": {"name": "x", "schema": schema}})


def test_the_corpus_converts_entirely() -> None:
    assert len(CORPUS) >= 50
    for name, schema in CORPUS.items():
        assert "root ::=" in step35.json_schema_to_grammar(schema), name


@pytest.mark.parametrize("bad, field", [
    ("json", "must be an object"),
    ({"type": "xml"}, "response_format.type"),
    ({"type": "json_schema"}, "response_format.json_schema"),
    ({"type": "json_schema", "json_schema": {"schema": []}}, "schema must be"),
])
def test_a_malformed_response_format_is_a_value_error(tiny_model, bad: Any, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        tiny_model.chat(USER, max_tokens=4, response_format=bad)


@pytest.mark.slow
def test_every_answer_of_the_schema_corpus_validates(engine) -> None:
    """Each schema, 20 seeds at temperature 1, a reasoning budget of 4 tokens."""
    failures = []
    for name, schema in CORPUS.items():
        fmt = {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}
        for seed, reply in zip(SEEDS, _chat_all(engine, SEEDS, response_format=fmt, reasoning_budget=4,
                                                 max_tokens=600)):
            try:
                jsonschema.validate(json.loads(reply["content"]), schema)
            except (ValueError, jsonschema.ValidationError) as e:
                failures.append(f"{name} seed {seed} ({reply['finish_reason']}): {reply['content']!r}: {e}")
    assert not failures, "\n".join(failures[:10])


def test_json_answers_stream_and_match_the_non_streamed_reply(tiny_model, engine) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "c", "schema": CORPUS["classification"]}}
    whole = tiny_model.chat(USER, max_tokens=300, temperature=1.0, seed=7, response_format=fmt, reasoning_budget=3)
    streamed = _chat_all(engine, [7], response_format=fmt, reasoning_budget=3, max_tokens=300)[0]
    assert _json_answer(whole) == json.loads(streamed["content"])
    jsonschema.validate(_json_answer(whole), CORPUS["classification"])
    assert whole["choices"][0]["finish_reason"] == "stop"


def test_json_object_is_an_object(tiny_model) -> None:
    # An object with free-form keys may run long on a random model: a cut answer
    # must still be the start of an object.
    reply = tiny_model.chat(USER, max_tokens=200, temperature=0, response_format={"type": "json_object"},
                            reasoning_budget=0)
    content = reply["choices"][0]["message"]["content"]
    assert content.lstrip().startswith("{")
    if reply["choices"][0]["finish_reason"] == "stop":
        assert isinstance(json.loads(content), dict)


# ---- the reasoning budget --------------------------------------------------

@pytest.mark.parametrize("budget", [0, 1, 5, 17])
def test_the_reasoning_budget_bounds_the_reasoning(tiny_model, budget: int) -> None:
    reply = tiny_model.chat(USER, max_tokens=60, temperature=1.0, seed=3, reasoning_budget=budget)
    message = reply["choices"][0]["message"]
    reasoning = message["reasoning_content"] or ""
    # the budget counts tokens; the reasoning text re-tokenized may differ by a token at its edges
    assert len(tiny_model.tokenize(reasoning, add_special=False)) <= budget + 1, reasoning
    out = tiny_model.chat(USER, max_tokens=budget + 8, temperature=1.0, seed=3, reasoning_budget=budget,
                          stream=False)
    assert out["choices"][0]["finish_reason"] in ("length", "stop")


def test_without_a_budget_the_random_model_never_closes_its_reasoning(tiny_model) -> None:
    reply = tiny_model.chat(USER, max_tokens=60, temperature=1.0, seed=3)
    assert not reply["choices"][0]["message"]["content"]  # so the budget above is what closes it


def test_a_budget_on_generate_counts_from_the_prompts_think_tag(tiny_model) -> None:
    prompt = tiny_model.chat_prompt(USER)
    assert prompt.endswith("<think>\n")
    out = tiny_model.generate(prompt, max_tokens=30, temperature=1.0, seed=1, reasoning_budget=4,
                              add_special=False)
    head, sep, _ = out.text.partition(THINK_CLOSE)
    assert sep, out.text
    assert len(tiny_model.tokenize(head, add_special=False)) <= 4 + 1


@pytest.mark.parametrize("bad", [-2, 1.5, "4", True])
def test_a_bad_reasoning_budget_is_a_value_error(tiny_model, bad: Any) -> None:
    with pytest.raises(ValueError, match="reasoning_budget"):
        tiny_model.chat(USER, max_tokens=4, reasoning_budget=bad)


# ---- tool_choice -----------------------------------------------------------

def _check_calls(calls: list[dict[str, str]], names: set[str]) -> None:
    assert calls
    for call in calls:
        assert call["name"] in names
        jsonschema.validate(json.loads(call["arguments"]), SCHEMAS[call["name"]])


def _check_chained_calls(reply: dict[str, Any], names: set[str]) -> None:
    """A reply under a forced tool choice with parallel calls on.

    The random model chains calls, and how many depends on its samples, which
    depend on how the engine happened to batch the requests. A chain that
    reaches ``max_tokens`` ends with ``length``, the call it cut left out:
    every call streamed is whole and valid either way.
    """
    assert reply["finish_reason"] in ("tool_calls", "length"), reply
    _check_calls(reply["calls"], names)


@pytest.mark.slow
def test_required_tool_choice_always_calls_a_tool_with_valid_arguments(engine) -> None:
    # parallel calls are on: the random model chains up to ~30 of them before it ends
    replies = _chat_all(engine, SEEDS, tools=TOOLS, tool_choice="required", reasoning_budget=4, max_tokens=4000)
    for reply in replies:
        _check_chained_calls(reply, set(SCHEMAS))


@pytest.mark.slow
def test_a_named_tool_choice_calls_exactly_that_function(engine) -> None:
    choice = {"type": "function", "function": {"name": "add"}}
    replies = _chat_all(engine, SEEDS, tools=TOOLS, tool_choice=choice, reasoning_budget=2, max_tokens=4000)
    for reply in replies:
        _check_chained_calls(reply, {"add"})


def test_tool_choice_none_makes_no_call(engine) -> None:
    replies = _chat_all(engine, range(8), tools=TOOLS, tool_choice="none", reasoning_budget=2, max_tokens=40)
    assert all(not r["calls"] for r in replies)


def test_one_call_when_parallel_calls_are_off(tiny_model) -> None:
    for seed in range(5):
        reply = tiny_model.chat(USER, tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
                                max_tokens=300, temperature=1.0, seed=seed, reasoning_budget=1)
        calls = reply["choices"][0]["message"]["tool_calls"]
        assert len(calls) == 1
        jsonschema.validate(json.loads(calls[0]["function"]["arguments"]), SCHEMAS[calls[0]["function"]["name"]])


def test_naming_a_tool_that_is_not_offered_is_a_value_error(tiny_model) -> None:
    with pytest.raises(ValueError, match="not among the tools"):
        tiny_model.chat(USER, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}})


def test_a_response_format_and_a_forced_call_are_refused_together(tiny_model) -> None:
    with pytest.raises(ValueError, match="cannot both"):
        tiny_model.chat(USER, tools=TOOLS, tool_choice="required", response_format={"type": "json_object"})


def test_a_tool_argument_that_cannot_be_enforced_is_named(tiny_model) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "code": {"type": "string", "pattern": "^[A-Z]{3}$"}}, "required": ["code"]}}}]
    with pytest.raises(step35.GrammarError, match="tools cannot be enforced.*properties/code.*'pattern'"):
        tiny_model.chat(USER, tools=tools, tool_choice="required", max_tokens=4)
    tools[0]["function"]["parameters"]["properties"]["code"] = {"type": "integer", "multipleOf": 3}
    with pytest.raises(step35.GrammarError, match="properties/code: 'multipleOf'"):
        tiny_model.chat(USER, tools=tools, tool_choice="required", max_tokens=4)
    # "auto" does not constrain, so nothing is refused
    tiny_model.chat(USER, tools=tools, tool_choice="auto", max_tokens=2)


def test_the_tool_grammar_is_the_templates_call_format() -> None:
    grammar, patterns = answer_grammar(None, TOOLS[:1], reasoning=True)
    assert patterns == ["</think>"]
    for literal in ('"<tool_call>\\n"', '"<function=get_weather>\\n"', '"<parameter=city>\\n"',
                    '"\\n</parameter>\\n"', '"</function>\\n"', '"</tool_call>"'):
        assert literal in grammar, literal


def test_a_chat_that_max_tokens_cuts_keeps_the_calls_before_the_cut(tiny_model) -> None:
    """Forced tool calls, parallel calls on: the random model chains calls until ``max_tokens`` cuts
    one. ``Model.chat`` answers ``length`` with every whole call before the cut (each valid), and
    no exception, streamed or not. (Each path is checked on its own: a cached prompt prefix can
    change the sampled tokens at temperature 1.)"""
    cut = {"whole": 0, "streamed": 0}
    for seed in range(6):
        kw = dict(tools=TOOLS, tool_choice="required", max_tokens=256, temperature=1.0, seed=seed,
                  reasoning_budget=4)
        choice = tiny_model.chat(USER, **kw)["choices"][0]
        assert choice["finish_reason"] in ("length", "tool_calls"), choice
        cut["whole"] += choice["finish_reason"] == "length"
        _check_calls([c["function"] for c in choice["message"].get("tool_calls") or []], set(SCHEMAS))
        streamed: dict[int, dict[str, str]] = {}
        reason = None
        for chunk in tiny_model.chat(USER, stream=True, **kw):
            for c in chunk["choices"][0]["delta"].get("tool_calls") or []:
                assert c["index"] not in streamed  # a call comes whole, once
                streamed[c["index"]] = {"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
            reason = chunk["choices"][0]["finish_reason"] or reason
        assert reason in ("length", "tool_calls")
        cut["streamed"] += reason == "length"
        _check_calls(list(streamed.values()), set(SCHEMAS))
    assert cut["whole"] > 0 and cut["streamed"] > 0, cut  # the case this is about happened
