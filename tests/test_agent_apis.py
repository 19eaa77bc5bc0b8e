"""The agent APIs of ``step35 serve``: Anthropic Messages and OpenAI Responses, with the official SDKs.

Live tests run ``step35 serve`` on the built-in ``tiny-agent`` model, whose
answers end: it reasons :data:`~step35.testing.AGENT_REASONING`, answers
:data:`~step35.testing.AGENT_ANSWER` and stops, at any temperature, so every
reply here is known in advance. Tool calls are forced by ``tool_choice``
(constrained decoding writes them). In-process tests (the real app over
httpx's ASGI transport, with the canned engine of ``test_serve.py``) show the
cases a real model cannot produce on demand: a full queue, a closed engine,
and a tool call the model wrote wrong, mid-stream.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

for _name in ("anthropic", "openai", "httpx", "starlette", "uvicorn", "sse_starlette"):
    pytest.importorskip(_name, reason="the server extra and the SDKs are not installed (tests/requirements.txt)")

import anthropic  # noqa: E402
import httpx  # noqa: E402
import openai  # noqa: E402
import step35  # noqa: E402
from step35 import testing  # noqa: E402
from test_serve import KEY, CannedEngine, Server, start_server, stop_server  # noqa: E402

AGENT_NAME = "step35-agent"
WEATHER = {"name": "get_weather", "description": "Current weather of a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
                            "required": ["city"]}}
WEATHER_FN = {"type": "function", "name": "get_weather", "description": WEATHER["description"],
              "parameters": WEATHER["input_schema"]}
GREEDY = {"temperature": 0}


@pytest.fixture(scope="session")
def agent_model() -> Path:
    return testing.model_path("tiny-agent")


@pytest.fixture(scope="module")
def agent_server(agent_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``step35 serve`` on the tiny-agent model: 2 slots of 20k tokens, an API key, a 4 MiB body limit."""
    s = start_server(agent_model, tmp_path_factory.mktemp("agents"), "-np", "2", "-c", "20480", "--api-key", KEY,
                     "--alias", AGENT_NAME, "--max-body-bytes", str(4 << 20), "--log-level", "warning")
    try:
        yield s
    finally:
        assert stop_server(s) == 0, s.log_text()


def claude(server: Server, **kw: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=kw.pop("api_key", KEY), max_retries=0, timeout=120, **kw)


def codex(server: Server, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=kw.pop("api_key", KEY), max_retries=0, timeout=120, **kw)


def user(text: str = "Say hello.") -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def total_prompt(usage: Any) -> int:
    """All prompt tokens of an Anthropic usage (evaluated + served from the cache)."""
    return usage.input_tokens + (usage.cache_read_input_tokens or 0)


# --------------------------------------------------------------------------- Anthropic Messages, live


def test_messages_create_answers_with_thinking_and_text(agent_server: Server) -> None:
    with claude(agent_server) as c:
        m = c.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=user(), extra_body=GREEDY)
    assert m.model == "claude-sonnet-4-5" and m.role == "assistant" and m.type == "message"
    assert [b.type for b in m.content] == ["thinking", "text"]
    assert m.content[0].thinking == testing.AGENT_REASONING and m.content[0].signature.startswith("s35r1.")
    assert m.content[1].text == testing.AGENT_ANSWER
    assert m.stop_reason == "end_turn" and m.stop_sequence is None
    assert m.usage.output_tokens > 0 and total_prompt(m.usage) > 5 and m.usage.cache_creation_input_tokens == 0


def test_messages_stream_follows_anthropics_event_sequence(agent_server: Server) -> None:
    with claude(agent_server) as c:
        events = list(c.messages.create(model="m", max_tokens=64, messages=user("Stream it."), stream=True,
                                        extra_body=GREEDY))
        with c.messages.stream(model="m", max_tokens=64, messages=user("Stream it."), extra_body=GREEDY) as s:
            final = s.get_final_message()
    kinds = [e.type if e.type != "content_block_delta" else e.delta.type for e in events]
    n_think = kinds.count("thinking_delta")
    n_text = kinds.count("text_delta")
    assert n_think >= 1 and n_text >= 1
    # (the SDK drops ping events; test_curl_reads_both_streams sees the one after message_start)
    assert kinds == (["message_start", "content_block_start"] + ["thinking_delta"] * n_think
                     + ["signature_delta", "content_block_stop", "content_block_start"] + ["text_delta"] * n_text
                     + ["content_block_stop", "message_delta", "message_stop"])
    starts = [e for e in events if e.type == "content_block_start"]
    assert [s.index for s in starts] == [0, 1] and [s.content_block.type for s in starts] == ["thinking", "text"]
    assert "".join(e.delta.thinking for e in events if kinds[events.index(e)] == "thinking_delta") \
        == testing.AGENT_REASONING
    delta = next(e for e in events if e.type == "message_delta")
    assert delta.delta.stop_reason == "end_turn" and delta.usage.output_tokens > 0
    assert [b.type for b in final.content] == ["thinking", "text"] and final.content[1].text == testing.AGENT_ANSWER
    assert final.content[0].signature.startswith("s35r1.")


def test_stop_sequences_and_max_tokens_say_why_they_stopped(agent_server: Server) -> None:
    with claude(agent_server) as c:
        stopped = c.messages.create(model="m", max_tokens=64, messages=user(), stop_sequences=["nothing", " from"],
                                    thinking={"type": "disabled"}, extra_body=GREEDY)
        cut = c.messages.create(model="m", max_tokens=3, messages=user(), extra_body=GREEDY)
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == " from"
    assert [b.type for b in stopped.content] == ["text"]
    assert stopped.content[0].text == testing.AGENT_ANSWER.split(" from")[0]
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 3


def test_thinking_settings_map_to_the_reasoning_budget(agent_server: Server) -> None:
    with claude(agent_server) as c:
        off = c.messages.create(model="m", max_tokens=64, messages=user(), thinking={"type": "disabled"},
                                extra_body=GREEDY)
        budget = c.messages.create(model="m", max_tokens=64, messages=user(), extra_body=GREEDY,
                                   thinking={"type": "enabled", "budget_tokens": 2})
        omitted = c.messages.create(model="m", max_tokens=64, messages=user(), extra_body=GREEDY,
                                    thinking={"type": "adaptive", "display": "omitted"})
    assert [b.type for b in off.content] == ["text"] and off.content[0].text == testing.AGENT_ANSWER
    # two tokens of reasoning, then the budget closes it
    assert budget.content[0].type == "thinking" and len(budget.content[0].thinking) < len(testing.AGENT_REASONING)
    assert testing.AGENT_REASONING.startswith(budget.content[0].thinking)
    # "omitted": no reasoning text, but the signature still carries it back
    assert omitted.content[0].type == "thinking" and omitted.content[0].thinking == ""
    assert omitted.content[0].signature.startswith("s35r1.") and omitted.content[1].text == testing.AGENT_ANSWER


def _anthropic_turn(c: anthropic.Anthropic, messages: list[dict[str, Any]], forced: bool) -> Any:
    choice = {"type": "tool", "name": "get_weather"} if forced else {"type": "auto"}
    return c.messages.create(model="m", max_tokens=128, system=[{"type": "text", "text": "You are a weather bot."}],
                             messages=messages, tools=[WEATHER], tool_choice=choice, extra_body=GREEDY)


def test_a_tool_loop_of_four_turns_evaluates_only_the_new_tokens(agent_server: Server) -> None:
    """Forced tool_use -> tool_result, three times, then an answer; the thinking goes back each turn."""
    messages: list[dict[str, Any]] = user("Weather in Paris?")
    totals, cached, reasoning_tokens = [], [], len(agent_server_tokens(testing.AGENT_REASONING))
    with claude(agent_server) as c:
        for turn in range(4):
            m = _anthropic_turn(c, messages, forced=turn < 3)
            totals.append(total_prompt(m.usage))
            cached.append(m.usage.cache_read_input_tokens)
            count = c.messages.count_tokens(model="m", system=[{"type": "text", "text": "You are a weather bot."}],
                                            messages=messages, tools=[WEATHER])
            assert count.input_tokens == totals[-1]  # what the server evaluated or served from the cache
            if turn < 3:
                assert m.stop_reason == "tool_use"
                call = m.content[-1]
                assert call.type == "tool_use" and call.name == "get_weather"
                assert call.input["city"] in ("Paris", "Rome")
                assert call.id.startswith("toolu_")
                result = {"type": "tool_result", "tool_use_id": call.id,
                          "content": [{"type": "text", "text": f"Sunny, {18 + turn} C"}]}
                messages += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in m.content]},
                             {"role": "user", "content": [result]}]
            else:
                assert m.stop_reason == "end_turn" and m.content[-1].text == testing.AGENT_ANSWER
    for n in range(1, 4):
        added = totals[n] - totals[n - 1]
        evaluated = totals[n] - cached[n]
        # the previous prompt and the reasoning the model wrote after it come from the cache
        assert cached[n] >= totals[n - 1] + reasoning_tokens, (n, totals, cached)
        assert evaluated <= added - reasoning_tokens


def agent_server_tokens(text: str) -> list[int]:
    """Tokens of ``text`` in the tiny-agent model's vocabulary (the GPT-2 BPE)."""
    with step35.Model(testing.model_path("tiny-agent"), context={"n_ctx": 256}) as model:
        return model.tokenize(text, add_special=False, parse_special=False)


def test_thinking_with_a_bad_signature_is_dropped(agent_server: Server) -> None:
    messages: list[dict[str, Any]] = user("Weather in Rome?")
    with claude(agent_server) as c:
        first = _anthropic_turn(c, messages, forced=True)
        call = first.content[-1]
        result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Rain"}]}
        blocks = [b.model_dump(exclude_none=True) for b in first.content]
        forged = [dict(b, signature=b["signature"][:-4] + "AAAA") if b["type"] == "thinking" else b for b in blocks]
        kept = _anthropic_turn(c, messages + [{"role": "assistant", "content": blocks}, result], forced=False)
        dropped = _anthropic_turn(c, messages + [{"role": "assistant", "content": forged}, result], forced=False)
        count_forged = c.messages.count_tokens(model="m", system=[{"type": "text", "text": "You are a weather bot."}],
                                               messages=messages + [{"role": "assistant", "content": forged}, result],
                                               tools=[WEATHER])
    reasoning = len(agent_server_tokens(testing.AGENT_REASONING))
    assert total_prompt(dropped.usage) == count_forged.input_tokens
    assert total_prompt(kept.usage) >= total_prompt(dropped.usage) + reasoning  # the reasoning was not rendered
    assert "dropped the reasoning of messages[1].content[0]" in agent_server.log_text()


def test_anthropic_errors_have_anthropics_shape(agent_server: Server) -> None:
    with claude(agent_server) as c:
        with pytest.raises(anthropic.BadRequestError) as e:
            c.messages.create(model="m", max_tokens=8, messages=[{"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"}}]}])
        assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "invalid_request_error"
        assert "messages[0].content[1]" in e.value.message and "image" in e.value.message
        with pytest.raises(anthropic.BadRequestError) as e:
            c.messages.create(model="m", max_tokens=8, messages=[{"role": "user", "content": [
                {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}]}])
        assert "document" in e.value.message
        with pytest.raises(anthropic.BadRequestError) as e:
            c.messages.create(model="m", max_tokens=8, messages=user(), thinking={"type": "sideways"})  # type: ignore
        assert "thinking.type" in e.value.message
    with claude(agent_server, api_key="wrong") as c, pytest.raises(anthropic.AuthenticationError) as auth:
        c.messages.create(model="m", max_tokens=8, messages=user())
    assert auth.value.body["error"]["type"] == "authentication_error"
    with httpx.Client(base_url=agent_server.url, timeout=60) as h:
        ok = h.post("/v1/messages?beta=true", headers={"x-api-key": KEY, "anthropic-version": "2023-06-01",
                                                       "anthropic-beta": "interleaved-thinking-2025-05-14"},
                    json={"model": "m", "max_tokens": 4, "messages": user(), "metadata": {"user_id": "u"},
                          "context_management": {"edits": []}, "output_config": {"effort": "low"},
                          "system": [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}]})
        missing = h.post("/v1/messages", headers={"x-api-key": KEY}, json={"model": "m", "messages": user()})
        nowhere = h.post("/v1/messages/batches", headers={"x-api-key": KEY}, json={})
        big = h.post("/v1/messages", headers={"x-api-key": KEY},
                     content=json.dumps({"model": "m", "max_tokens": 1, "messages": user("x" * (5 << 20))}))
    assert ok.status_code == 200, ok.text
    assert missing.status_code == 400 and missing.json()["error"]["message"].startswith("max_tokens")
    assert nowhere.status_code == 404 and nowhere.json()["error"]["type"] == "not_found_error"
    assert big.status_code == 413 and big.json() == {"type": "error", "error": {
        "type": "request_too_large", "message": big.json()["error"]["message"]}}


def _uses_httpx2() -> bool:
    """Whether this anthropic SDK is built on httpx2 (newer releases) rather than httpx."""
    return "httpx2" in type(anthropic.DefaultAsyncHttpxClient).__module__ or any(
        "httpx2" in c.__module__ for c in type.mro(anthropic.DefaultAsyncHttpxClient))


def _in_process_anthropic(engine: Any, body: Any) -> Any:
    from step35.serving import create_app

    app = create_app(engine, model_name="canned", api_key=KEY)
    client_http = pytest.importorskip("httpx2") if _uses_httpx2() else httpx

    async def main() -> Any:
        async with client_http.AsyncClient(transport=client_http.ASGITransport(app=app),
                                           base_url="http://step35.test") as http:
            client = anthropic.AsyncAnthropic(base_url="http://step35.test", api_key=KEY, http_client=http,
                                              max_retries=0)
            return await body(client)

    return asyncio.run(main())


def test_anthropic_429_503_and_a_mid_stream_error() -> None:
    async def create(c: anthropic.AsyncAnthropic) -> Any:
        return await c.messages.create(model="m", max_tokens=8, messages=user())

    with pytest.raises(anthropic.RateLimitError) as full:
        _in_process_anthropic(CannedEngine(["x"], queue_full=True), create)
    assert full.value.body["error"]["type"] == "rate_limit_error" and full.value.response.headers["retry-after"] == "3"

    class Closed(CannedEngine):
        def chat(self, *a: Any, **kw: Any) -> Any:
            raise step35.errors.ClosedError("the engine is closed")

    with pytest.raises(anthropic.InternalServerError) as closed:
        _in_process_anthropic(Closed(["x"]), create)
    assert closed.value.status_code == 503 and closed.value.body["error"]["type"] == "overloaded_error"

    async def stream(c: anthropic.AsyncAnthropic) -> list[str]:
        seen = []
        with pytest.raises(anthropic.APIStatusError) as e:
            async with c.messages.stream(model="m", max_tokens=8, messages=user(),
                                         tools=[WEATHER]) as s:  # type: ignore[list-item]
                async for event in s:
                    seen.append(event.type)
        assert "cannot be parsed" in str(e.value)
        return seen

    bad_call = ["Thinking.</think>", "Let me look.", "<tool_call>\n<function=no_such_tool>\n"]
    seen = _in_process_anthropic(CannedEngine(bad_call), stream)
    assert seen[:2] == ["message_start", "content_block_start"] and "text" in seen


# --------------------------------------------------------------------------- OpenAI Responses, live


def test_responses_create_answers_with_reasoning_and_text(agent_server: Server) -> None:
    with codex(agent_server) as c:
        r = c.responses.create(model="gpt-5-codex", input="Say hello.", temperature=0,
                               include=["reasoning.encrypted_content"], instructions="Be brief.")
    assert r.status == "completed" and r.model == "gpt-5-codex"
    assert [o.type for o in r.output] == ["reasoning", "message"]
    assert r.output[0].content[0].text == testing.AGENT_REASONING
    assert r.output[0].encrypted_content.startswith("s35r1.")
    assert r.output_text == testing.AGENT_ANSWER
    reasoning = len(agent_server_tokens(testing.AGENT_REASONING))
    assert r.usage.output_tokens_details.reasoning_tokens == reasoning
    assert r.usage.output_tokens > reasoning and r.usage.input_tokens > 5


def test_responses_stream_events_carry_sequence_numbers(agent_server: Server) -> None:
    with codex(agent_server) as c:
        events = list(c.responses.create(model="m", input=[
            {"type": "message", "role": "developer", "content": "Be brief."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say hello."}]}],
            temperature=0, stream=True))
        with c.responses.stream(model="m", input="Say hello.", temperature=0) as s:
            final = s.get_final_response()
    kinds = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    n_r, n_t = kinds.count("response.reasoning_text.delta"), kinds.count("response.output_text.delta")
    assert n_r >= 1 and n_t >= 1
    assert kinds == (["response.created", "response.in_progress", "response.output_item.added",
                      "response.content_part.added"] + ["response.reasoning_text.delta"] * n_r
                     + ["response.reasoning_text.done", "response.content_part.done", "response.output_item.done",
                        "response.output_item.added", "response.content_part.added"]
                     + ["response.output_text.delta"] * n_t
                     + ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                        "response.completed"])
    ids = {e.response.id for e in events if hasattr(e, "response")}
    assert len(ids) == 1
    assert final.output_text == testing.AGENT_ANSWER and final.status == "completed"


#: Its own system prompt: a prompt that another conversation's checkpoint serves in part starts with a window
#: restored from that checkpoint, and may evaluate the last tokens of its earlier prompt again next turn.
CODEX_INSTRUCTIONS = "You are a weather bot for the Codex tests."


def _codex_turn(c: openai.OpenAI, items: list[Any], forced: bool) -> Any:
    return c.responses.create(model="m", input=items, tools=[WEATHER_FN],  # type: ignore[list-item]
                              tool_choice={"type": "function", "name": "get_weather"} if forced else "auto",
                              include=["reasoning.encrypted_content"], store=False, temperature=0,
                              instructions=CODEX_INSTRUCTIONS)


def test_a_function_call_loop_of_four_turns_evaluates_only_the_new_tokens(agent_server: Server) -> None:
    items: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    totals, cached = [], []
    reasoning = len(agent_server_tokens(testing.AGENT_REASONING))
    with codex(agent_server) as c:
        for turn in range(4):
            r = _codex_turn(c, items, forced=turn < 3)
            totals.append(r.usage.input_tokens)
            cached.append(r.usage.input_tokens_details.cached_tokens)
            count = c.responses.input_tokens.count(model="m", input=items, tools=[WEATHER_FN],  # type: ignore
                                                   instructions=CODEX_INSTRUCTIONS)
            assert count.input_tokens == totals[-1]
            if turn < 3:
                assert [o.type for o in r.output] == ["reasoning", "function_call"]
                call = r.output[1]
                assert call.name == "get_weather" and json.loads(call.arguments)["city"] in ("Paris", "Rome")
                # the reasoning item goes back as the client got it (encrypted_content is what counts)
                items += [o.model_dump(exclude_none=True) for o in r.output]
                items.append({"type": "function_call_output", "call_id": call.call_id, "output": f"{18 + turn} C"})
            else:
                assert r.output_text == testing.AGENT_ANSWER
    for n in range(1, 4):
        assert cached[n] >= totals[n - 1] + reasoning, (n, totals, cached)
        assert totals[n] - cached[n] <= totals[n] - totals[n - 1] - reasoning


def test_json_schema_output_follows_the_schema(agent_server: Server) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]},
                                               "confidence": {"type": "integer", "minimum": 0, "maximum": 9}},
              "required": ["answer", "confidence"], "additionalProperties": False}
    with codex(agent_server) as c:
        r = c.responses.create(model="m", input="Is it sunny?", temperature=0, max_output_tokens=200,
                               text={"format": {"type": "json_schema", "name": "verdict", "schema": schema,
                                                "strict": True}})
    assert r.status == "completed"
    jsonschema.validate(json.loads(r.output_text), schema)


def test_max_output_tokens_makes_the_response_incomplete(agent_server: Server) -> None:
    with codex(agent_server) as c:
        r = c.responses.create(model="m", input="Say hello.", temperature=0, max_output_tokens=2)
        events = [e.type for e in c.responses.create(model="m", input="Say hello.", temperature=0,
                                                     max_output_tokens=2, stream=True)]
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 2
    assert events[-1] == "response.incomplete" and "response.completed" not in events


def test_previous_response_id_continues_a_stored_conversation(agent_server: Server) -> None:
    with codex(agent_server) as c:
        first = c.responses.create(model="m", input="Say hello.", temperature=0)
        second = c.responses.create(model="m", input="Again.", previous_response_id=first.id, temperature=0)
        with pytest.raises(openai.BadRequestError) as e:
            c.responses.create(model="m", input="x", previous_response_id="resp_unknown")
    assert second.output_text == testing.AGENT_ANSWER
    # the stored turn is in the new prompt, and the first prompt comes from the cache but for its last two
    # tokens, "<think>" "\n": the template renders no reasoning for a turn before the last user message
    answer = len(agent_server_tokens(testing.AGENT_ANSWER))
    assert second.usage.input_tokens > first.usage.input_tokens + answer
    assert second.usage.input_tokens_details.cached_tokens == first.usage.input_tokens - 2
    assert e.value.body["param"] == "previous_response_id"  # type: ignore[index]


def test_tools_of_other_types_are_skipped_and_named(agent_server: Server) -> None:
    with codex(agent_server) as c:
        raw = c.responses.with_raw_response.create(
            model="m", input="Say hello.", temperature=0,
            tools=[{"type": "web_search"}, {"type": "custom", "name": "apply_patch"}, WEATHER_FN])  # type: ignore
    assert raw.headers["x-step35-skipped-tools"] == "web_search, apply_patch"
    assert raw.parse().output_text == testing.AGENT_ANSWER
    with codex(agent_server) as c, pytest.raises(openai.BadRequestError) as e:
        c.responses.create(model="m", input=[{"role": "user", "content": [
            {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}])
    assert "input[0].content[0]" in e.value.message and "image" in e.value.message


# --------------------------------------------------------------------------- a second client: curl


def _curl_events(server: Server, path: str, body: dict[str, Any], *headers: str) -> list[tuple[str, Any]]:
    """``(event, data)`` of a server-sent event stream read by curl (no SDK involved)."""
    args = ["curl", "-sS", "-N", "--max-time", "60", f"{server.url}{path}", "-H", "content-type: application/json"]
    for h in headers:
        args += ["-H", h]
    out = subprocess.run(args + ["-d", json.dumps(body)], capture_output=True, text=True, timeout=90, check=True)
    events, name = [], None
    for line in out.stdout.splitlines():
        if line.startswith("event:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            events.append((name, json.loads(line.split(":", 1)[1])))
            name = None
    return events


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_reads_both_streams(agent_server: Server) -> None:
    anth = _curl_events(agent_server, "/v1/messages", {"model": "m", "max_tokens": 64, "messages": user(),
                                                       "stream": True, "temperature": 0},
                        f"x-api-key: {KEY}", "anthropic-version: 2023-06-01")
    assert [n for n, _ in anth][:2] == ["message_start", "ping"] and [n for n, _ in anth][-2:] == [
        "message_delta", "message_stop"]
    assert all(d["type"] == n for n, d in anth)
    text = "".join(d["delta"].get("text", "") for n, d in anth if n == "content_block_delta")
    assert text == testing.AGENT_ANSWER
    resp = _curl_events(agent_server, "/v1/responses", {"model": "m", "input": "Hi", "stream": True,
                                                        "temperature": 0}, f"authorization: Bearer {KEY}")
    assert [d["sequence_number"] for _, d in resp] == list(range(len(resp)))
    assert all(d["type"] == n for n, d in resp) and resp[-1][0] == "response.completed"
    assert resp[-1][1]["response"]["output"][-1]["content"][0]["text"] == testing.AGENT_ANSWER


# --------------------------------------------------------------------------- keep-alive and progress


class _SlowStream:
    """A canned completion stream whose first piece comes after ``delay`` seconds (a long prompt)."""

    def __init__(self, delay: float) -> None:
        from test_serve import CannedStream

        self.inner = CannedStream(["Hello", " there"], prompt_tokens=4000, cached=1000)
        self.delay = delay
        self.started = False

    def __aiter__(self) -> _SlowStream:
        return self

    async def __anext__(self) -> str:
        if not self.started:
            self.started = True
            await asyncio.sleep(self.delay)
        return await self.inner.__anext__()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class _SlowEngine(CannedEngine):
    def generate(self, prompt: Any, *, stream: bool = False, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        return _SlowStream(0.6)


def test_streams_are_kept_alive_and_report_progress_while_the_prompt_is_evaluated() -> None:
    from step35.serving import create_app

    app = create_app(_SlowEngine([]), model_name="canned", ping_seconds=0.1)

    async def main() -> tuple[str, str]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            quiet = await http.post("/v1/completions", json={"prompt": "x", "stream": True})
            asked = await http.post("/v1/completions", json={"prompt": "x", "stream": True, "return_progress": True})
            return quiet.text, asked.text

    quiet, asked = asyncio.run(main())
    first_data = quiet.index("data:")
    assert quiet[:first_data].count(": ping") >= 2  # comments every 0.1 s before the first token
    assert "prompt_progress" not in quiet
    progress = [json.loads(line[5:])["prompt_progress"] for line in asked.splitlines()
                if line.startswith("data:") and "prompt_progress" in line]
    assert progress and all(p["total"] == 4000 and p["cache"] == 1000 for p in progress)
    assert asked.index("prompt_progress") < asked.index('"text":"Hello"')
