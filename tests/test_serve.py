"""``step35 serve``: the OpenAI-compatible HTTP server, tested with the official ``openai`` client.

Two kinds of test:

* **Live** (most of them): a session fixture starts ``python -m step35 serve``
  as a subprocess on a free loopback port with the F32 tiny model (4 slots, an
  API key, a small body limit), waits for it to say it is ready, and stops it
  with SIGTERM at the end (checking that it exits cleanly). These run the real
  engine, so they show what a client sees: chat and completions, streaming or
  not, ``include_usage``, every error status, 8 concurrent streams that equal
  the same requests run alone, a disconnect that frees its slot, and the
  second turn of a chat served from the slot's cache.
* **In-process** (``CannedEngine``): the random tiny model never writes a tool
  call, so the tool-call path is tested on a canned model output. The canned
  text goes through step35's real chat parsing (:class:`step35.chat.openai.ChatStream`
  over a stream of fixed pieces), the real ASGI app (``create_app``), and the
  official client over httpx's ASGI transport, which parses two tool calls into
  its own types. Only the model is replaced. The real model with ``tools`` is
  checked for shape only (``test_tools_on_the_real_model_have_the_right_shape``).
  A full queue (429) is also shown in-process, where it is deterministic, and
  again live on a one-slot server (slow).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

for _name in ("openai", "httpx", "starlette", "uvicorn", "sse_starlette", "prometheus_client"):
    pytest.importorskip(_name, reason="the server extra and the client are not installed: "
                                      "pip install 'step35[server]' openai httpx (tests/requirements.txt)")

import httpx  # noqa: E402
import openai  # noqa: E402
import step35  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from step35.generation import GenerationStats, SamplingParams  # noqa: E402
from step35.requests import render_chat  # noqa: E402

KEY = "test-key-123"
MODEL = "tiny32"
TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                       "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "get_time", "description": "Current time in a time zone",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}}},
]


# --------------------------------------------------------------------------- the live server


class Server:
    """A running ``step35 serve`` subprocess."""

    def __init__(self, proc: subprocess.Popen, log: Path, url: str) -> None:
        self.proc = proc
        self.log = log
        self.url = url
        self.base_url = f"{url}/v1"

    def client(self, **kw: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=kw.pop("api_key", KEY), max_retries=0,
                             timeout=kw.pop("timeout", 120), **kw)

    def aclient(self, **kw: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=kw.pop("api_key", KEY), max_retries=0,
                                  timeout=kw.pop("timeout", 120), **kw)

    def http(self, key: str | None = KEY) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics: ``name{label="v",...}`` (labels sorted) -> value."""
        with self.http() as h:
            r = h.get("/metrics")
        assert r.status_code == 200, r.text
        out = {}
        for family in text_string_to_metric_families(r.text):
            for s in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return out

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(model: Path, tmp: Path, *args: str, timeout: float = 180) -> Server:
    """Start ``python -m step35 serve`` on a free port; returns once it has said where it listens."""
    log = tmp / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "step35", "serve", "-m", str(model), "--port", "0", *args],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        for line in text.splitlines():
            if line.startswith("step35 serve: ") and " on http://" in line:
                url = line.split(" on ", 1)[1].split()[0].removesuffix("/v1")
                return Server(proc, log, url)
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    pytest.fail(f"step35 serve did not start (exit status {proc.returncode}):\n{log.read_text(errors='replace')}")


def stop_server(server: Server, timeout: float = 30) -> int:
    """SIGTERM, then wait (kill after ``timeout``); returns the exit status."""
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
    try:
        return server.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()
        raise


@pytest.fixture(scope="session")
def server(tiny32_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``step35 serve`` on the F32 tiny model: 4 slots of 1024 tokens, an API key, a 64 KiB body limit."""
    s = start_server(tiny32_path, tmp_path_factory.mktemp("serve"), "-np", "4", "-c", "1024", "--api-key", KEY,
                     "--alias", MODEL, "--max-body-bytes", "65536", "--log-level", "warning")
    try:
        with s.http(key=None) as h:
            assert h.get("/health").status_code == 200
        yield s
    finally:
        rc = stop_server(s)
    if sys.platform != "win32":  # there, SIGTERM is TerminateProcess: no clean shutdown to check
        assert rc == 0, f"step35 serve exited with {rc} after SIGTERM:\n{s.log_text()}"
        assert "stopped (SIGTERM)" in s.log_text()


def hello(text: str = "Hello!") -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


# --------------------------------------------------------------------------- live: basics


def test_health_and_models(server: Server) -> None:
    with server.http(key=None) as h:
        r = h.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["slots"] == 4
    with server.client() as c:
        models = c.models.list()
        assert [m.id for m in models.data] == [MODEL]
        assert c.models.retrieve(MODEL).id == MODEL


def test_chat_non_streaming(server: Server) -> None:
    with server.client() as c:
        r = c.chat.completions.create(model=MODEL, messages=hello(), max_tokens=12, temperature=0.7, seed=11,
                                      user="someone", n=1, logprobs=False)
    assert r.object == "chat.completion" and r.model == MODEL
    choice = r.choices[0]
    assert choice.finish_reason in ("stop", "length")
    assert choice.message.role == "assistant"
    text = (choice.message.content or "") + (getattr(choice.message, "reasoning_content", None) or "")
    assert text
    assert 0 < r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.prompt_tokens_details.cached_tokens is not None


def test_chat_streaming_without_usage(server: Server) -> None:
    with server.client() as c:
        stream = c.chat.completions.create(model=MODEL, messages=hello(), max_tokens=12, temperature=0.7, seed=12,
                                           stream=True)
        chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(len(ch.choices) == 1 for ch in chunks)  # no usage chunk without include_usage
    assert all(ch.usage is None for ch in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert all(ch.choices[0].finish_reason is None for ch in chunks[:-1])
    text = "".join((ch.choices[0].delta.content or "") + (getattr(ch.choices[0].delta, "reasoning_content", None)
                                                         or "") for ch in chunks)
    assert text
    assert len({ch.id for ch in chunks}) == 1


def test_chat_streaming_include_usage(server: Server) -> None:
    with server.client() as c:
        stream = c.chat.completions.create(model=MODEL, messages=hello(), max_completion_tokens=9, temperature=0.7,
                                           seed=13, stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None  # the usage chunk comes last, with no choices
    assert 0 < last.usage.completion_tokens <= 9
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(ch.usage is None for ch in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")


def test_streaming_equals_non_streaming_at_temperature_0(server: Server) -> None:
    with server.client() as c:
        whole = c.chat.completions.create(model=MODEL, messages=hello("Stream or not"), max_tokens=16,
                                          temperature=0).choices[0].message
        chunks = list(c.chat.completions.create(model=MODEL, messages=hello("Stream or not"), max_tokens=16,
                                                temperature=0, stream=True))
    content = "".join(ch.choices[0].delta.content or "" for ch in chunks)
    reasoning = "".join(getattr(ch.choices[0].delta, "reasoning_content", None) or "" for ch in chunks)
    assert (content or None, reasoning or None) == (whole.content, getattr(whole, "reasoning_content", None))


def test_sampling_fields_seed_and_stop(server: Server) -> None:
    with server.client() as c:
        kw = dict(model=MODEL, prompt="Once upon a time", max_tokens=24)
        sampled = dict(temperature=1.2, top_p=0.9, seed=1234, extra_body={"top_k": 50, "min_p": 0.01,
                                                                           "repeat_penalty": 1.1})
        a = c.completions.create(**kw, **sampled).choices[0]
        b = c.completions.create(**kw, **sampled).choices[0]
        assert a.text and a.text == b.text  # the same seed gives the same output
        greedy = c.completions.create(**kw, temperature=0).choices[0]
        stop = greedy.text[len(greedy.text) // 2:][:3]
        assert stop
        cut = c.completions.create(**kw, temperature=0, stop=[stop]).choices[0]
        assert cut.text == greedy.text[:greedy.text.find(stop)] and cut.finish_reason == "stop"
        pieces = list(c.completions.create(**kw, temperature=0, stream=True))
    assert "".join(p.choices[0].text for p in pieces) == greedy.text
    assert pieces[-1].choices[0].finish_reason == greedy.finish_reason


def test_tools_on_the_real_model_have_the_right_shape(server: Server) -> None:
    """The real tiny model with tools: a well-formed answer (it writes no real call: random weights)."""
    with server.client() as c:
        for tool_choice in ("auto", {"type": "function", "function": {"name": "get_time"}}):
            r = c.chat.completions.create(model=MODEL, messages=hello("What time is it in Rome?"), tools=TOOLS,
                                          tool_choice=tool_choice, max_tokens=16, temperature=0.7, seed=3)
            choice = r.choices[0]
            assert choice.finish_reason in ("stop", "length", "tool_calls")
            assert choice.message.tool_calls is None or isinstance(choice.message.tool_calls, list)


# --------------------------------------------------------------------------- live: structured output

ANSWER = {"type": "object", "properties": {
    "label": {"enum": ["yes", "no"]}, "score": {"type": "integer", "minimum": 0, "maximum": 9}},
    "required": ["label", "score"], "additionalProperties": False}
BOUNDED_TOOLS = [{"type": "function", "function": {
    "name": "set_alarm", "description": "Set an alarm",
    "parameters": {"type": "object", "properties": {
        "hour": {"type": "integer", "minimum": 0, "maximum": 23},
        "label": {"type": "string", "maxLength": 6}}, "required": ["hour", "label"]}}}]


def test_response_format_json_schema_through_the_client(server: Server) -> None:
    """The random model answers valid JSON under the schema, streaming or not (the budget ends its reasoning)."""
    jsonschema = pytest.importorskip("jsonschema")
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER}}
    with server.client() as c:
        for seed in range(3):
            r = c.chat.completions.create(model=MODEL, messages=hello(), response_format=fmt,  # type: ignore[arg-type]
                                          temperature=1.0, seed=seed, max_tokens=200,
                                          extra_body={"reasoning_budget": 3})
            assert r.choices[0].finish_reason == "stop"
            jsonschema.validate(json.loads(r.choices[0].message.content or ""), ANSWER)
            stream = c.chat.completions.create(model=MODEL, messages=hello(), response_format=fmt,  # type: ignore[arg-type]
                                               temperature=1.0, seed=seed, max_tokens=200, stream=True,
                                               extra_body={"reasoning_budget": 3})
            text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
            assert json.loads(text) == json.loads(r.choices[0].message.content or "")


def test_required_tool_choice_through_the_client(server: Server) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    with server.client() as c:
        for seed in range(3):
            r = c.chat.completions.create(model=MODEL, messages=hello("Wake me at seven."), tools=BOUNDED_TOOLS,  # type: ignore[arg-type]
                                          tool_choice="required", parallel_tool_calls=False, temperature=1.0,
                                          seed=seed, max_tokens=300, extra_body={"reasoning_budget": 2})
            choice = r.choices[0]
            assert choice.finish_reason == "tool_calls"
            assert choice.message.tool_calls and len(choice.message.tool_calls) == 1
            for call in choice.message.tool_calls:
                assert call.function.name == "set_alarm"
                jsonschema.validate(json.loads(call.function.arguments),
                                    BOUNDED_TOOLS[0]["function"]["parameters"])


def test_a_tool_call_that_max_tokens_cuts_is_left_out(server: Server) -> None:
    """A forced call that max_tokens cuts: "length", and only whole calls (here: none) in the message."""
    with server.client() as c:
        for stream in (False, True):
            kw = dict(model=MODEL, messages=hello("Wake me at seven."), tools=BOUNDED_TOOLS, tool_choice="required",
                      temperature=0, max_tokens=12, extra_body={"reasoning_budget": 0})
            if stream:
                chunks = list(c.chat.completions.create(**kw, stream=True))  # type: ignore[call-overload]
                reason = next(ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason)
                calls = [t for ch in chunks if ch.choices for t in ch.choices[0].delta.tool_calls or []]
            else:
                choice = c.chat.completions.create(**kw).choices[0]  # type: ignore[call-overload]
                reason, calls = choice.finish_reason, choice.message.tool_calls or []
            assert reason == "length" and calls == [], (stream, reason, calls)


def test_completions_take_a_json_schema(server: Server) -> None:
    with server.client() as c:
        r = c.completions.create(model=MODEL, prompt="x", max_tokens=100, temperature=1.0, seed=1,
                                 extra_body={"json_schema": ANSWER})
        assert r.choices[0].finish_reason == "stop"
        assert json.loads(r.choices[0].text)["label"] in ("yes", "no")
        with pytest.raises(openai.BadRequestError) as e:
            c.completions.create(model=MODEL, prompt="x", max_tokens=1, extra_body={"grammar": "root ::= ("})
        assert "parse" in _error(e.value)["message"]


# --------------------------------------------------------------------------- live: errors


def _error(e: openai.APIStatusError) -> dict[str, Any]:
    body = e.body
    assert isinstance(body, dict) and set(body) >= {"message", "type", "param", "code"}, body
    return body


def test_missing_or_wrong_key_is_401_everywhere_but_health(server: Server) -> None:
    for key in (None, "wrong"):
        with server.http(key=key) as h:
            assert h.get("/health").status_code == 200
            for method, path in (("GET", "/v1/models"), ("GET", "/metrics"), ("POST", "/v1/chat/completions"),
                                 ("POST", "/v1/completions"), ("GET", "/v1/models/" + MODEL)):
                r = h.request(method, path, json={"model": MODEL, "messages": hello(), "prompt": "x"})
                assert r.status_code == 401, (key, path, r.text)
                assert r.json()["error"]["type"] == "authentication_error"
    with server.client(api_key="wrong") as c, pytest.raises(openai.AuthenticationError):
        c.chat.completions.create(model=MODEL, messages=hello(), max_tokens=1)


def test_malformed_json_is_400(server: Server) -> None:
    with server.http() as h:
        for body in (b"{not json", b"[1, 2]", b'{"messages": NaN}',
                     b'{"messages": ' + b"[" * 20000 + b"]" * 20000 + b"}"):  # deeper than Python's json parses
            r = h.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
            assert r.status_code == 400, r.text
            assert r.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(("extra", "param"), [
    ({"temperature": -1}, "temperature"),
    ({"top_p": "high"}, "top_p"),
    ({"max_tokens": -5}, "max_tokens"),
    ({"seed": 2**40}, "seed"),
    ({"n": 2}, "n"),
    ({"logprobs": True}, "logprobs"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "string", "pattern": "[a-z]+"}}}}, "response_format"),
    ({"reasoning_budget": -3}, "reasoning_budget"),
    ({"parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"stop": 7}, "stop"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
    ({"messages": "hi"}, "messages"),
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}, "tools": TOOLS}, "tool_choice"),
    ({"tools": [{"type": "function"}]}, "tools[0].function"),
    ({"top_k": 1.5}, "top_k"),
])
def test_bad_parameter_is_400_naming_it(server: Server, extra: dict[str, Any], param: str) -> None:
    body = {"model": MODEL, "messages": hello(), "max_tokens": 2, **extra}
    with server.http() as h:
        r = h.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param, err
    assert err["type"] == "invalid_request_error" and err["message"]


def test_bad_parameter_through_the_client(server: Server) -> None:
    with server.client() as c:
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model=MODEL, messages=hello(), temperature=-1)
        assert _error(e.value)["param"] == "temperature"
        with pytest.raises(openai.BadRequestError) as e:
            c.completions.create(model=MODEL, prompt=["one", "two"])
        assert _error(e.value)["param"] == "prompt"
        with pytest.raises(openai.BadRequestError) as e:
            c.completions.create(model=MODEL, prompt="x", echo=True)
        assert _error(e.value)["param"] == "echo"


def test_any_model_name_is_served_and_listed_names_are_the_aliases(server: Server) -> None:
    # Agents send their own model names (claude-sonnet-..., gpt-5-codex): the one model answers to all,
    # and says which name the client asked for; /v1/models lists the --alias names only.
    with server.client() as c:
        reply = c.chat.completions.create(model="gpt-nonexistent", messages=hello(), max_tokens=1)
        assert reply.model == "gpt-nonexistent" and reply.choices[0].finish_reason in ("length", "stop")
        assert c.completions.create(model="claude-x", prompt="x", max_tokens=1).model == "claude-x"
        assert [m.id for m in c.models.list().data] == [MODEL]
        with pytest.raises(openai.NotFoundError) as e:
            c.models.retrieve("gpt-nonexistent")
        assert _error(e.value)["code"] == "model_not_found"


def test_body_over_the_limit_is_413(server: Server) -> None:
    big = hello("x" * 70_000)  # the fixture's limit is 64 KiB
    with server.client() as c:
        with pytest.raises(openai.APIStatusError) as e:
            c.chat.completions.create(model=MODEL, messages=big, max_tokens=1)
    assert e.value.status_code == 413
    with server.http() as h:  # no Content-Length: the limit holds while the body is read
        def chunks() -> Iterator[bytes]:
            yield b'{"model": "tiny32", "messages": [{"role": "user", "content": "'
            for _ in range(100):
                yield b"y" * 1000
            yield b'"}]}'
        r = h.post("/v1/chat/completions", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_prompt_longer_than_a_slot_is_400(server: Server) -> None:
    with server.client() as c, pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model=MODEL, prompt=list(range(1, 1500)), max_tokens=1)  # slots hold 1024 tokens
    assert _error(e.value)["code"] == "context_length_exceeded"


# --------------------------------------------------------------------------- live: concurrency, cache, metrics


PROMPTS = [f"Request number {i}: tell me about {topic}." for i, topic in enumerate(
    ["cats", "the sea", "mountains", "bread", "rivers", "music", "stars", "trains"])]


async def _stream_chat(client: openai.AsyncOpenAI, text: str, max_tokens: int) -> tuple[tuple[str, str], str | None]:
    """``((reasoning, content), finish_reason)`` of one streamed greedy chat."""
    stream = await client.chat.completions.create(model=MODEL, messages=hello(text), max_tokens=max_tokens,
                                                  temperature=0, stream=True)
    reasoning, content, reason = [], [], None
    async with stream:
        async for ch in stream:
            d = ch.choices[0].delta
            reasoning.append(getattr(d, "reasoning_content", None) or "")
            content.append(d.content or "")
            reason = ch.choices[0].finish_reason or reason
    return ("".join(reasoning), "".join(content)), reason


@pytest.mark.slow
def test_eight_concurrent_streams_equal_each_request_alone(server: Server) -> None:
    n = 24

    async def alone() -> list[tuple[tuple[str, str], str | None]]:
        async with server.aclient() as c:
            return [await _stream_chat(c, p, n) for p in PROMPTS]

    async def together() -> tuple[list[tuple[tuple[str, str], str | None]], float]:
        async with server.aclient() as c:
            t0 = time.perf_counter()
            outs = await asyncio.gather(*(_stream_chat(c, p, n) for p in PROMPTS))
            return list(outs), time.perf_counter() - t0

    reference = asyncio.run(alone())
    outs, seconds = asyncio.run(together())
    assert all(reason in ("stop", "length") for _, reason in outs)  # every stream completed
    assert all(reasoning + content for (reasoning, content), _ in outs)
    assert [text for text, _ in outs] == [text for text, _ in reference]
    print(f"8 concurrent streams x {n} tokens on 4 slots: {seconds:.2f} s")


@pytest.mark.slow
def test_disconnect_mid_stream_frees_the_slot(server: Server) -> None:
    before = server.metrics()
    body = {"model": MODEL, "messages": hello("Keep talking"), "stream": True, "temperature": 0.8, "seed": 5}
    with server.http() as h, h.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        lines = 0
        for line in r.iter_lines():
            lines += line.startswith("data: ")
            if lines >= 5:
                break  # leaving the block closes the connection mid-stream
    deadline = time.monotonic() + 10
    while True:
        m = server.metrics()
        if m["step35_requests_running"] == 0 and m["step35_requests_waiting"] == 0:
            break
        assert time.monotonic() < deadline, f"the slot was not freed: {m}"
        time.sleep(0.05)
    key = 'step35_completions_total{finish_reason="disconnected",route="/v1/chat/completions"}'
    assert m.get(key, 0) == before.get(key, 0) + 1
    # Without a limit the request would have run to the slot's 1024 tokens.
    assert m["step35_generated_tokens_total"] - before["step35_generated_tokens_total"] < 1000
    with server.client() as c:  # the next request runs
        r2 = c.chat.completions.create(model=MODEL, messages=hello("Next"), max_tokens=4, temperature=0)
    assert r2.choices[0].finish_reason in ("stop", "length")


@pytest.mark.slow
def test_a_client_that_gives_up_on_a_non_streaming_answer_frees_its_slot(server: Server) -> None:
    before = server.metrics()
    with server.client(timeout=0.5) as c, pytest.raises(openai.APITimeoutError):
        c.chat.completions.create(model=MODEL, messages=hello("Write a lot"), temperature=0.8, seed=6)
    deadline = time.monotonic() + 10
    while (m := server.metrics())["step35_requests_running"] != 0:
        assert time.monotonic() < deadline, f"the slot was not freed: {m}"
        time.sleep(0.05)
    key = 'step35_completions_total{finish_reason="disconnected",route="/v1/chat/completions"}'
    assert m.get(key, 0) == before.get(key, 0) + 1


def _prompt_ids(model: step35.Model, messages: list[dict[str, Any]]) -> list[int]:
    """The token ids the engine evaluates for ``messages`` (rendered and tokenized as chat() does)."""
    prompt, add_bos = render_chat(model, messages, None)
    return model.tokenize(prompt, add_special=add_bos, parse_special=True)


def test_second_turn_evaluates_only_its_new_tokens(server: Server, tiny32_path: Path, record_property: Any) -> None:
    """Turn 2 reuses every token it shares with turn 1 from the slot's cache.

    The Step 3.5 template drops the reasoning of earlier assistant turns, so
    turn 2 shares turn 1's prompt up to ``<|im_start|>assistant\n`` (not the
    ``<think>\n`` after it); everything from there on is new.
    """
    history = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}]
    with server.client() as c:
        first = c.chat.completions.create(model=MODEL, messages=history, max_tokens=12, temperature=0)
        turn1 = list(history)
        msg = first.choices[0].message
        history.append({"role": "assistant", "content": msg.content or "",
                        "reasoning_content": getattr(msg, "reasoning_content", None) or ""})
        history.append({"role": "user", "content": "And another one?"})
        second = c.chat.completions.create(model=MODEL, messages=history, max_tokens=12, temperature=0)
    with step35.Model(tiny32_path, vocab_only=True) as vocab:
        ids1, ids2 = _prompt_ids(vocab, turn1), _prompt_ids(vocab, history)
    shared = next((i for i, (a, b) in enumerate(zip(ids1, ids2, strict=False)) if a != b), min(len(ids1), len(ids2)))
    u1, u2 = first.usage, second.usage
    assert (u1.prompt_tokens, u2.prompt_tokens) == (len(ids1), len(ids2))
    evaluated = second.model_extra["timings"]["prompt_n"]
    cached = u2.prompt_tokens_details.cached_tokens
    record_property("turn2_prompt_tokens", u2.prompt_tokens)
    record_property("turn2_evaluated", evaluated)
    record_property("turn2_cached", cached)
    print(f"turn 1: {u1.prompt_tokens} prompt tokens; turn 2: {u2.prompt_tokens} prompt tokens "
          f"({shared} shared with turn 1), {evaluated} evaluated, {cached} cached")
    assert evaluated + cached == u2.prompt_tokens
    assert cached >= shared  # every token shared with turn 1 came from the slot's cache
    assert evaluated <= u2.prompt_tokens - shared  # only the new ones were computed


def test_metrics(server: Server) -> None:
    with server.client() as c:
        c.chat.completions.create(model=MODEL, messages=hello("Metrics"), max_tokens=3, temperature=0)
        with pytest.raises(openai.NotFoundError):
            c.models.retrieve("nope")
    m = server.metrics()
    for name in ("step35_slots", "step35_requests_running", "step35_requests_waiting",
                 "step35_prompt_tokens_evaluated_total", "step35_prompt_tokens_cached_total",
                 "step35_generated_tokens_total", "step35_requests_finished_total"):
        assert name in m, name
    assert m["step35_slots"] == 4
    assert m["step35_generated_tokens_total"] > 0 and m["step35_prompt_tokens_evaluated_total"] > 0
    assert m['step35_time_to_first_token_seconds_count{route="/v1/chat/completions"}'] > 0
    assert m['step35_http_requests_total{route="/v1/chat/completions",status="200"}'] > 0
    assert m['step35_http_requests_total{route="/v1/models",status="404"}'] > 0


# --------------------------------------------------------------------------- live: a one-slot server


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM is TerminateProcess on Windows")
def test_full_queue_is_429_and_sigterm_stops_in_flight_requests(tiny32_path: Path, tmp_path: Path) -> None:
    s = start_server(tiny32_path, tmp_path, "-np", "1", "--max-waiting", "1", "-c", "4096",
                     "--shutdown-timeout", "3", "--log-level", "warning")
    try:
        long_body = {"model": tiny32_path.name, "messages": hello("Talk for a long time"), "stream": True,
                     "temperature": 0.8, "seed": 9}
        with httpx.Client(base_url=s.url, timeout=60) as h1, httpx.Client(base_url=s.url, timeout=60) as h2:
            with h1.stream("POST", "/v1/chat/completions", json=long_body) as running:
                it = running.iter_lines()
                assert next(it).startswith("data: ")  # it holds the only slot
                waiting: dict[str, Any] = {}

                def wait_in_queue() -> None:
                    waiting["r"] = h2.post("/v1/completions", json={"prompt": "queued", "max_tokens": 2})

                t = threading.Thread(target=wait_in_queue)
                t.start()
                deadline = time.monotonic() + 10
                while s.metrics()["step35_requests_waiting"] < 1:
                    assert time.monotonic() < deadline
                    time.sleep(0.02)
                with s.client(api_key="none") as c, pytest.raises(openai.RateLimitError) as e:
                    c.chat.completions.create(model=tiny32_path.name, messages=hello(), max_tokens=1)
                assert int(e.value.response.headers["Retry-After"]) >= 1
                assert _error(e.value)["code"] == "queue_full"
                t0 = time.monotonic()
                s.proc.send_signal(signal.SIGTERM)
                rest = list(it)  # the stream ends (its generation is cancelled)
                assert "data: [DONE]" not in rest
            t.join(timeout=30)
            assert s.proc.wait(timeout=30) == 0
            assert time.monotonic() - t0 < 15
            assert "stopped (SIGTERM)" in s.log_text()
    finally:
        stop_server(s)


# --------------------------------------------------------------------------- in-process: canned model output


class CannedStream:
    """A fixed model output, streamed in fixed pieces (stands in for an engine stream)."""

    def __init__(self, pieces: list[str], prompt_tokens: int = 20, cached: int = 0) -> None:
        self._pieces = list(pieces)
        self._i = 0
        self.closed = False
        self._prompt_tokens = prompt_tokens
        self._cached = cached

    def __iter__(self) -> CannedStream:
        return self

    def __next__(self) -> str:
        if self.closed or self._i >= len(self._pieces):
            raise StopIteration
        self._i += 1
        return self._pieces[self._i - 1]

    def __aiter__(self) -> CannedStream:
        return self

    async def __anext__(self) -> str:
        await asyncio.sleep(0)
        try:
            return next(self)
        except StopIteration:
            raise StopAsyncIteration from None

    def close(self) -> None:
        self.closed = True

    @property
    def finish_reason(self) -> str | None:
        return "stop" if self._i >= len(self._pieces) else None

    @property
    def stats(self) -> GenerationStats:
        return GenerationStats(prompt_tokens=self._prompt_tokens,
                               prompt_tokens_evaluated=self._prompt_tokens - self._cached, prompt_ms=1.0,
                               generated_tokens=self._i, generation_ms=2.0, ttft_ms=1.5, seed=7,
                               prompt_tokens_cached=self._cached)


class CannedEngine:
    """The engine interface the server uses, answering every request with one canned output.

    Arguments are validated as the engine does (sampling settings, tools,
    tool_choice) and recorded in :attr:`calls`; chat output goes through
    step35's real :class:`~step35.chat.openai.ChatStream` (reasoning and tool-call parsing).
    """

    def __init__(self, pieces: list[str], *, queue_full: bool = False) -> None:
        self.pieces = pieces
        self.queue_full = queue_full
        self.calls: list[dict[str, Any]] = []
        self.streams: list[CannedStream] = []

    def _start(self, kwargs: dict[str, Any]) -> CannedStream:
        self.calls.append(dict(kwargs, thread=threading.current_thread().name))
        SamplingParams(**{k: v for k, v in kwargs.items() if k in SamplingParams.__dataclass_fields__})
        if self.queue_full:
            e = step35.errors.QueueFullError("4 requests are already waiting for a slot")
            e.retry_after = 2.5
            raise e
        stream = CannedStream(self.pieces, cached=5)
        self.streams.append(stream)
        return stream

    def chat(self, messages: list[dict[str, Any]], tools: Any = None, tool_choice: Any = "auto", *,
             stream: bool = False, **kwargs: Any) -> Any:
        from step35.chat.openai import ChatStream, select_tools

        assert stream, "the server always streams"
        chosen = select_tools(tools, tool_choice)
        canned = self._start(dict(kwargs, messages=messages, tools=tools, tool_choice=tool_choice))
        return ChatStream(canned, chosen, "canned.gguf")  # type: ignore[arg-type]

    def generate(self, prompt: Any, *, stream: bool = False, **kwargs: Any) -> Any:
        assert stream, "the server always streams"
        return self._start(dict(kwargs, prompt=prompt))

    def metrics(self) -> dict[str, int]:
        return {"slots": 2, "running": 0, "waiting": 0, "prompt_tokens_evaluated": 15, "prompt_tokens_cached": 5,
                "generated_tokens": 3, "requests_finished": 1}


TWO_CALLS = ["I should call", " both tools.\n</think>\n\nLet me check.\n<tool_", "call>\n<function=get_weather>\n",
             "<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>\n",
             "<tool_call>\n<function=get_time>\n<parameter=tz>\nEurope/Rome\n</parameter>\n</function>\n</tool_call>"]


def in_process(engine: Any, body: Any, **app_kwargs: Any) -> Any:
    """Run ``body(client, http)`` against ``create_app(engine)`` over httpx's ASGI transport."""
    from step35.serving import create_app

    app = create_app(engine, model_name="canned", api_key=KEY, **app_kwargs)

    async def main() -> Any:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://step35.test",
                                     headers={"Authorization": f"Bearer {KEY}"}) as http:
            client = openai.AsyncOpenAI(base_url="http://step35.test/v1", api_key=KEY, http_client=http,
                                        max_retries=0)
            return await body(client, http)

    return asyncio.run(main())


def _check_two_calls(calls: Any) -> None:
    assert [type(c).__name__ for c in calls] == ["ChatCompletionMessageFunctionToolCall"] * 2 or all(
        hasattr(c, "function") for c in calls)
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0].function.arguments) == {"city": "Paris", "days": 3}  # typed by the schema
    assert json.loads(calls[1].function.arguments) == {"tz": "Europe/Rome"}
    assert all(c.type == "function" for c in calls) and calls[0].id != calls[1].id


def test_two_tool_calls_non_streaming_parsed_by_the_client() -> None:
    engine = CannedEngine(TWO_CALLS)
    messages = [{"role": "user", "content": "Weather in Paris and time in Rome?"},
                {"role": "assistant", "content": "", "reasoning_content": "earlier thoughts"},
                {"role": "user", "content": "Please."}]

    async def body(client: openai.AsyncOpenAI, http: httpx.AsyncClient) -> Any:
        return await client.chat.completions.create(model="canned", messages=messages, tools=TOOLS,
                                                    tool_choice="auto", temperature=0.5, seed=1)

    r = in_process(engine, body)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    _check_two_calls(choice.message.tool_calls)
    assert choice.message.content == "Let me check."
    assert choice.message.reasoning_content == "I should call both tools."
    assert r.usage.prompt_tokens == 20 and r.usage.prompt_tokens_details.cached_tokens == 5
    call = engine.calls[0]
    assert call["tools"] == TOOLS and call["tool_choice"] == "auto" and call["seed"] == 1
    assert call["messages"][1]["reasoning_content"] == "earlier thoughts"  # passed on to the chat template
    assert engine.streams[0].closed


def test_two_tool_calls_streaming_parsed_by_the_client() -> None:
    engine = CannedEngine(TWO_CALLS)

    async def body(client: openai.AsyncOpenAI, http: httpx.AsyncClient) -> Any:
        chunks = []
        stream = await client.chat.completions.create(model="canned", messages=hello("Weather and time?"),
                                                      tools=TOOLS, stream=True, seed=2, temperature=0.5,
                                                      stream_options={"include_usage": True})
        async with stream:
            async for ch in stream:
                chunks.append(ch)
        async with client.chat.completions.stream(model="canned", messages=hello("Again"), tools=TOOLS,
                                                  seed=3, temperature=0.5) as s:
            final = await s.get_final_completion()
        return chunks, final

    chunks, final = in_process(engine, body)
    reasoning = "".join(getattr(ch.choices[0].delta, "reasoning_content", None) or "" for ch in chunks if ch.choices)
    assert reasoning == "I should call both tools."
    calls: dict[int, dict[str, str]] = {}
    for ch in chunks:
        for part in (ch.choices[0].delta.tool_calls or []) if ch.choices else []:
            c = calls.setdefault(part.index, {"id": "", "name": "", "arguments": ""})
            c["id"] += part.id or ""
            c["name"] += part.function.name or ""
            c["arguments"] += part.function.arguments or ""
    assert [c["name"] for c in calls.values()] == ["get_weather", "get_time"]
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris", "days": 3}
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "tool_calls"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(TWO_CALLS)
    # The client's own stream helper accumulates the deltas into its ChatCompletion types.
    assert final.choices[0].finish_reason == "tool_calls"
    _check_two_calls(final.choices[0].message.tool_calls)


def test_a_tool_call_the_model_botched_is_a_server_error() -> None:
    engine = CannedEngine(["</think>\n<tool_call>\n<function=launch_rockets>\n</function>\n</tool_call>"])

    async def body(client: openai.AsyncOpenAI, http: httpx.AsyncClient) -> Any:
        with pytest.raises(openai.InternalServerError) as e:
            await client.chat.completions.create(model="canned", messages=hello(), tools=TOOLS)
        stream = await client.chat.completions.create(model="canned", messages=hello(), tools=TOOLS, stream=True)
        with pytest.raises(openai.APIError) as e2:
            async with stream:
                async for _ in stream:
                    pass
        return e.value, e2.value

    err, streamed = in_process(engine, body)
    assert _error(err)["code"] == "tool_call_parse_error" and "launch_rockets" in err.message
    assert "launch_rockets" in streamed.message
    assert all(s.closed for s in engine.streams)


def test_full_queue_is_429_with_retry_after_in_process() -> None:
    async def body(client: openai.AsyncOpenAI, http: httpx.AsyncClient) -> Any:
        with pytest.raises(openai.RateLimitError) as e:
            await client.chat.completions.create(model="canned", messages=hello(), max_tokens=1)
        raw = await http.post("/v1/completions", json={"prompt": "x"})
        return e.value, raw

    err, raw = in_process(CannedEngine(["x"], queue_full=True), body)
    assert err.status_code == 429 and err.response.headers["Retry-After"] == "3"  # 2.5 s, rounded up
    assert _error(err)["type"] == "rate_limit_error"
    assert raw.status_code == 429 and raw.headers["Retry-After"] == "3"


def test_defaults_fill_what_a_request_leaves_out() -> None:
    engine = CannedEngine(["plain text"])

    async def body(client: openai.AsyncOpenAI, http: httpx.AsyncClient) -> Any:
        await client.chat.completions.create(model="canned", messages=hello())
        await client.chat.completions.create(model="canned", messages=hello(), temperature=0.1, max_tokens=3,
                                             extra_body={"top_k": 5, "chat_template_kwargs": {"x": 1}})
        r = await client.completions.create(model="canned", prompt=[1, 2, 3])
        return r

    r = in_process(engine, body, defaults={"temperature": 0.3, "top_k": 7, "seed": 42, "max_tokens": None})
    first, second, third = engine.calls
    assert (first["temperature"], first["top_k"], first["seed"], first["max_tokens"]) == (0.3, 7, 42, None)
    assert (second["temperature"], second["top_k"], second["max_tokens"]) == (0.1, 5, 3)
    assert second["template_kwargs"] == {"x": 1}
    assert third["prompt"] == [1, 2, 3] and third["max_tokens"] == 16  # OpenAI's default for completions
    assert r.choices[0].text == "plain text" and r.choices[0].finish_reason == "stop"


def test_small_requests_are_queued_on_the_event_loop_large_ones_in_a_worker_thread() -> None:
    from step35.serving import INLINE_BODY_BYTES

    engine = CannedEngine(["plain text"])

    async def body(client: openai.AsyncOpenAI, http: httpx.AsyncClient) -> Any:
        await client.chat.completions.create(model="canned", messages=hello())
        await client.chat.completions.create(model="canned", messages=hello("x" * INLINE_BODY_BYTES))
        return threading.current_thread().name

    loop_thread = in_process(engine, body)
    small, large = engine.calls
    assert small["thread"] == loop_thread
    assert large["thread"] != loop_thread and len(large["messages"][-1]["content"]) == INLINE_BODY_BYTES


def test_openai_error_bodies_for_unknown_routes_and_methods() -> None:
    async def body(client: openai.AsyncOpenAI, http: httpx.AsyncClient) -> Any:
        return await http.get("/v1/nothing-here"), await http.get("/v1/chat/completions")

    missing, wrong_method = in_process(CannedEngine(["x"]), body)
    assert missing.status_code == 404 and missing.json()["error"]["message"]
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["message"]


def test_create_app_checks_its_arguments() -> None:
    from step35.serving import create_app

    with pytest.raises(ValueError, match="max_body_bytes"):
        create_app(CannedEngine([]), model_name="m", max_body_bytes=0)
    with pytest.raises(ValueError, match="api_key"):
        create_app(CannedEngine([]), model_name="m", api_key="")


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))


def test_import_step35_does_not_import_the_server_stack() -> None:
    r = _python("import sys, step35, step35.cli; step35.cli.build_parser(); "
                "print(sorted(m for m in ('starlette', 'uvicorn', 'sse_starlette', 'prometheus_client', 'fastapi') "
                "if m in sys.modules))")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_serve_without_the_extra_says_how_to_install_it() -> None:
    r = _python("import sys; sys.modules['uvicorn'] = None\n"
                "from step35.cli import main; sys.exit(main(['serve']))")
    assert r.returncode == 1
    assert "pip install 'step35[server]'" in r.stderr and "uvicorn" in r.stderr


# --------------------------------------------------------------------------- live: MTP drafting


def test_serve_mtp_drafts(model_cache: Path, tmp_path: Path) -> None:
    """``step35 serve --mtp --draft 2``: two slots draft side by side; each answer is the greedy answer
    without drafting, and /metrics counts the drafts."""
    import dataclasses
    from concurrent.futures import ThreadPoolExecutor

    from step35 import testing

    spec = testing.SIZES["tiny-mtp"]  # heads that agree with the trunk: every draft is kept
    path = testing.model_path(dataclasses.replace(spec, name=spec.name + "-f32", dtype="f32", embd_dtype="f32"))
    questions = ["hi", "count to five"]
    with step35.Model(path) as m:
        want = [m.chat(hello(q), max_tokens=24, temperature=0)["choices"][0]["message"] for q in questions]
    s = start_server(path, tmp_path, "--mtp", "--draft", "2", "-np", "2", "-c", "512", "--api-key", KEY,
                     "--log-level", "warning")
    try:
        assert "MTP drafts 2 per step" in s.log_text()
        client = s.client()

        def ask(q: str) -> Any:
            return client.chat.completions.create(model=MODEL, messages=hello(q), max_tokens=24, temperature=0)

        with ThreadPoolExecutor(2) as pool:
            got = list(pool.map(ask, questions))
        for w, g in zip(want, got):
            assert g.choices[0].message.content == w["content"]
            assert getattr(g.choices[0].message, "reasoning_content", None) == w.get("reasoning_content")
        m = s.metrics()
        assert m["step35_draft_tokens_total"] > 0
        assert m["step35_draft_accepted_total"] == m["step35_draft_tokens_total"]
    finally:
        assert stop_server(s) == 0 or sys.platform == "win32"
