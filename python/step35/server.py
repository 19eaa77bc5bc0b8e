"""``step35 serve``: an OpenAI-compatible HTTP server over :class:`step35.Engine`.

Routes (each also without the ``/v1`` prefix, as llama-server has them):

* ``POST /v1/chat/completions``: chat, streaming (server-sent events) or not,
  with ``tools``/``tool_choice``, ``reasoning_content`` in messages and deltas,
  ``stream_options.include_usage``, ``seed``, ``stop``, ``max_tokens`` /
  ``max_completion_tokens``, ``temperature``, ``top_p``, ``presence_penalty``,
  ``frequency_penalty``, and as extra body fields ``top_k``, ``min_p``,
  ``repeat_penalty``, ``repeat_last_n`` and ``chat_template_kwargs``;
* ``POST /v1/completions``: plain continuation of a prompt (a string or token ids);
* ``GET /v1/models`` (and ``/v1/models/{id}``), ``GET /health``, ``GET /metrics``
  (Prometheus text format).

Errors have OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``:
malformed JSON or a bad parameter is 400 naming the field (``param``), an
unknown model 404, a body over the limit 413, a full wait queue 429 with
``Retry-After``, a missing or wrong key 401 (every route but ``/health``, when
the server has an API key), the engine shutting down 503, a tool call that the
model wrote but that cannot be parsed 500 (mid-stream: an ``error`` event).
OpenAI fields that do not change the answer (``user``, ``n=1``,
``logprobs=false``, ``store``, ...) are accepted and ignored; those that would
(``n>1``, ``logprobs=true``, ``response_format`` other than text, ...) are
refused with 400 naming them.
Unknown fields are ignored, as llama-server and vLLM do.

Every request runs as a stream on the engine, so a client that goes away
(mid-stream, or while waiting for a non-streaming answer) closes its stream,
which frees its slot within one engine step.

Needs the ``server`` extra: ``pip install 'step35[server]'`` (Starlette, uvicorn,
sse-starlette, prometheus-client). ``import step35`` never imports any of it.
"""

from __future__ import annotations

import hmac
import json
import math
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any

try:
    import anyio
    import anyio.to_thread
    import uvicorn
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.exposition import CONTENT_TYPE_LATEST
    from sse_starlette.sse import EventSourceResponse
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route
except ImportError as e:  # pragma: no cover - exercised by tests/test_serve.py in a subprocess
    raise ImportError(f"step35 serve needs the server extra, which is not installed (missing: {e.name}): "
                      f"pip install 'step35[server]'", name=e.name) from e

from jinja2.exceptions import TemplateError

from .constraints import json_schema_to_grammar, response_schema
from .errors import ClosedError, ContextOverflowError, GrammarError, QueueFullError, Step35Error
from .toolcalls import ToolCallParseError

__all__ = ["create_app", "run", "APIError", "DEFAULT_MAX_BODY_BYTES", "ROUTES"]

#: Largest request body accepted by default (a long agent conversation is a few MiB of JSON).
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024

#: The routes the server answers (without the ``/v1``-less aliases).
ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics")

#: Time-to-first-token histogram buckets, in seconds.
#: Requests whose body is at most this many bytes are templated and tokenized on the event loop
#: (well under a millisecond); larger ones in a worker thread, so that they never stall other streams.
INLINE_BODY_BYTES = 16 * 1024
#: The GIL switch interval while `run` serves: the event loop, the engine's wake-ups and worker
#: threads hand the GIL to each other many times per token, and Python's default of 5 ms would
#: add up to that much to every hand-off.
SWITCH_INTERVAL = 0.0005
_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

#: Sampling settings a request may carry, with the JSON type each must have.
_SAMPLING_FIELDS: dict[str, type] = {
    "temperature": float, "top_p": float, "min_p": float, "repeat_penalty": float,
    "presence_penalty": float, "frequency_penalty": float, "top_k": int, "repeat_last_n": int, "seed": int,
}

#: Top-level request fields whose name may start an engine ValueError's message (so it becomes ``param``).
_PARAMS = frozenset(_SAMPLING_FIELDS) | {"messages", "tools", "tool_choice", "stop", "max_tokens",
                                         "max_completion_tokens", "prompt", "chat_template_kwargs",
                                         "template_kwargs", "model", "stream", "stream_options",
                                         "response_format", "reasoning_budget", "grammar", "json_schema",
                                         "parallel_tool_calls"}
#: What the engine raises for a request it refuses or cannot finish (mapped by :func:`_from_exception`).
_ENGINE_ERRORS = (Step35Error, ValueError, TypeError, TemplateError)
_PARAM_RE = re.compile(r"[A-Za-z_]\w*(?:\[\d+\]|\.[A-Za-z_]\w*)*")


# --------------------------------------------------------------------------- errors


class APIError(Exception):
    """An HTTP error answered with OpenAI's error body."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def _bad(param: str | None, message: str, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def _param_of(message: str) -> str | None:
    """The request field an engine ``ValueError`` message starts with (``"top_p must be..."`` -> ``top_p``)."""
    m = _PARAM_RE.match(message)
    if m is None:
        return None
    name = m.group(0)
    root = re.split(r"[.\[]", name, maxsplit=1)[0]
    return name if root in _PARAMS else None


def _from_exception(e: BaseException, prompt_field: str) -> APIError:
    """The HTTP error for an exception of the engine (submitting a request or while it runs)."""
    if isinstance(e, QueueFullError):
        retry = getattr(e, "retry_after", None)
        seconds = max(1, math.ceil(retry)) if isinstance(retry, (int, float)) and math.isfinite(retry) else 1
        return APIError(429, str(e), type="rate_limit_error", code="queue_full",
                        headers={"Retry-After": str(seconds)})
    if isinstance(e, ContextOverflowError):
        return APIError(400, str(e), param=prompt_field, code="context_length_exceeded")
    if isinstance(e, ToolCallParseError):  # the model's output, not the request, is at fault
        return APIError(500, f"the model wrote a tool call that cannot be parsed: {e}", type="server_error",
                        code="tool_call_parse_error")
    if isinstance(e, ClosedError):
        return APIError(503, f"the server is shutting down: {e}", type="server_error", code="shutting_down")
    if isinstance(e, (ValueError, TypeError)):
        message = str(e)
        param = _param_of(message)
        if param is not None and param.startswith("template_kwargs"):  # its name in the request body
            param = "chat_" + param
        return APIError(400, message, param=param)
    if isinstance(e, TemplateError):
        return APIError(400, f"the chat template refused the conversation: {e}", param=prompt_field)
    if isinstance(e, Step35Error):
        return APIError(500, f"{type(e).__name__}: {e}", type="server_error")
    raise e


# --------------------------------------------------------------------------- request validation


def _check_type(field: str, value: Any, kind: type) -> Any:
    """``value`` of JSON type ``kind`` (an int is a number too; a bool is neither), else 400 naming ``field``."""
    ok = not isinstance(value, bool) and (isinstance(value, int) if kind is int else isinstance(value, (int, float)))
    if not ok:
        raise _bad(field, f"{field} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    if kind is float and not math.isfinite(value):
        raise _bad(field, f"{field} must be a finite number, got {value!r}")
    return value


def _get(body: Mapping[str, Any], field: str) -> Any:
    """``body[field]``, None when missing (OpenAI treats ``null`` as not given)."""
    return body.get(field)


def _refuse_unless(body: Mapping[str, Any], field: str, allowed: Callable[[Any], bool], why: str) -> None:
    value = body.get(field)
    if value is not None and not allowed(value):
        raise _bad(field, f"{field}={json.dumps(value)} is not supported: {why}", code="unsupported_parameter")


def _common(body: Mapping[str, Any], defaults: Mapping[str, Any], *, default_max_tokens: int | None) -> dict[str, Any]:
    """The engine keyword arguments both completion routes share (sampling, stop, max_tokens)."""
    kwargs: dict[str, Any] = {}
    for field, kind in _SAMPLING_FIELDS.items():
        value = _get(body, field)
        if value is None:
            if field in defaults and defaults[field] is not None:
                kwargs[field] = defaults[field]
            continue
        _check_type(field, value, kind)
        if field == "seed" and value == -1:
            continue  # llama.cpp's "random seed"
        kwargs[field] = float(value) if kind is float else value
    max_field = "max_completion_tokens" if _get(body, "max_completion_tokens") is not None else "max_tokens"
    max_tokens = _get(body, max_field)
    if max_tokens is None:
        max_tokens = defaults.get("max_tokens")
        if max_tokens is None:
            max_tokens = default_max_tokens
    else:
        _check_type(max_field, max_tokens, int)
        if max_tokens < 0:
            raise _bad(max_field, f"{max_field} must be >= 0, got {max_tokens}")
    kwargs["max_tokens"] = max_tokens
    stop = _get(body, "stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise _bad("stop", f"stop must be a string or a list of strings, got {stop!r}")
        stop = [s for s in stop if s]  # OpenAI ignores empty stop strings
        if stop:
            kwargs["stop"] = stop
    _refuse_unless(body, "n", lambda v: v == 1, "this server returns one choice per request (n=1)")
    _refuse_unless(body, "logit_bias", lambda v: v == {}, "logit_bias is not implemented")
    # llama-server's names for the reasoning budget are accepted too
    for field in ("reasoning_budget", "reasoning_budget_tokens", "thinking_budget_tokens"):
        budget = _get(body, field)
        if budget is not None:
            _check_type(field, budget, int)
            if budget < -1:
                raise _bad(field, f"{field} must be -1 (unlimited), 0 (no reasoning) or a number of tokens")
            kwargs["reasoning_budget"] = budget
            break
    else:
        if defaults.get("reasoning_budget") is not None:
            kwargs["reasoning_budget"] = defaults["reasoning_budget"]
    return kwargs


def _stream_flags(body: Mapping[str, Any]) -> tuple[bool, bool]:
    """``(stream, include_usage)`` of a request."""
    stream = _get(body, "stream")
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _bad("stream", f"stream must be true or false, got {stream!r}")
    options = _get(body, "stream_options")
    include_usage: Any = None
    if options is not None:
        if not isinstance(options, dict):
            raise _bad("stream_options", f"stream_options must be an object, got {options!r}")
        include_usage = options.get("include_usage")
        if include_usage is not None and not isinstance(include_usage, bool):
            raise _bad("stream_options.include_usage",
                       f"stream_options.include_usage must be true or false, got {include_usage!r}")
    return stream, bool(include_usage) and stream


def chat_arguments(body: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The keyword arguments of ``Engine.chat`` for a ``/v1/chat/completions`` body (APIError 400 when bad).

    ``messages``, ``tools`` and ``tool_choice`` are checked by the engine
    itself (the chat template's validation), whose ValueError names the field.
    """
    defaults = defaults or {}
    messages = _get(body, "messages")
    if messages is None:
        raise _bad("messages", "messages is required: a list of chat messages")
    if not isinstance(messages, list):
        raise _bad("messages", f"messages must be a list of chat messages, got {type(messages).__name__}")
    kwargs = _common(body, defaults, default_max_tokens=None)
    kwargs["messages"] = messages
    tools = _get(body, "tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _bad("tools", f"tools must be a list of tools, got {type(tools).__name__}")
        if tools:
            kwargs["tools"] = tools
    tool_choice = _get(body, "tool_choice")
    if tool_choice is not None:
        kwargs["tool_choice"] = tool_choice
        if "tools" not in kwargs and tool_choice not in ("auto", "none"):
            raise _bad("tool_choice", f"tool_choice={json.dumps(tool_choice)} needs tools")
    template_kwargs = _get(body, "chat_template_kwargs")
    if template_kwargs is not None:
        if not isinstance(template_kwargs, dict):
            raise _bad("chat_template_kwargs", "chat_template_kwargs must be an object of template variables")
        if template_kwargs:
            kwargs["template_kwargs"] = template_kwargs
    _refuse_unless(body, "logprobs", lambda v: v is False, "token log-probabilities are not implemented")
    _refuse_unless(body, "top_logprobs", lambda v: v == 0, "token log-probabilities are not implemented")
    response_format = _get(body, "response_format")
    if response_format is not None:
        try:
            if response_schema(response_format) is not None:
                kwargs["response_format"] = response_format
        except ValueError as e:
            raise _bad("response_format", str(e)) from None
    parallel = _get(body, "parallel_tool_calls")
    if parallel is not None:
        if not isinstance(parallel, bool):
            raise _bad("parallel_tool_calls", f"parallel_tool_calls must be true or false, got {parallel!r}")
        kwargs["parallel_tool_calls"] = parallel
    _refuse_unless(body, "modalities", lambda v: v == ["text"], "this model answers in text only")
    _refuse_unless(body, "audio", lambda v: False, "this model answers in text only")
    _refuse_unless(body, "functions", lambda v: v == [], "the deprecated functions field is not supported: use tools")
    _refuse_unless(body, "function_call", lambda v: v == "none",
                   "the deprecated function_call field is not supported: use tool_choice")
    return kwargs


def completion_arguments(body: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The keyword arguments of ``Engine.generate`` for a ``/v1/completions`` body (APIError 400 when bad)."""
    defaults = defaults or {}
    prompt = _get(body, "prompt")
    if prompt is None:
        raise _bad("prompt", "prompt is required: a string or a list of token ids")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, list):
        if not prompt or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in prompt):
            raise _bad("prompt", "prompt must be a string, a list of token ids, or a list of one of them "
                                 "(several prompts per request are not supported: send one request each)")
    elif not isinstance(prompt, str):
        raise _bad("prompt", f"prompt must be a string or a list of token ids, got {type(prompt).__name__}")
    kwargs = _common(body, defaults, default_max_tokens=16)  # OpenAI's default for completions
    kwargs["prompt"] = prompt
    grammar, schema = _get(body, "grammar"), _get(body, "json_schema")  # llama-server's fields
    if grammar is not None and schema is not None:
        raise _bad("grammar", "give grammar or json_schema, not both")
    if grammar is not None:
        if not isinstance(grammar, str):
            raise _bad("grammar", f"grammar must be GBNF text, got {type(grammar).__name__}")
        kwargs["grammar"] = grammar
    elif schema is not None:
        if not isinstance(schema, (dict, bool)):
            raise _bad("json_schema", f"json_schema must be a JSON Schema object, got {type(schema).__name__}")
        try:
            kwargs["grammar"] = json_schema_to_grammar(schema)
        except GrammarError as e:
            raise _bad("json_schema", f"json_schema cannot be enforced: {e}") from None
    _refuse_unless(body, "echo", lambda v: v is False, "echoing the prompt is not implemented")
    _refuse_unless(body, "suffix", lambda v: v == "", "insertion (suffix) is not implemented")
    _refuse_unless(body, "best_of", lambda v: v == 1, "this server returns one choice per request (best_of=1)")
    _refuse_unless(body, "logprobs", lambda v: v is False or v == 0, "token log-probabilities are not implemented")
    return kwargs


# --------------------------------------------------------------------------- streams


_END = object()


async def _aiter(stream: Any) -> AsyncIterator[Any]:
    """Iterate an engine stream asynchronously (a sync-only stream is stepped in a worker thread)."""
    if hasattr(stream, "__aiter__"):
        async for item in stream:
            yield item
        return
    it = iter(stream)
    while True:
        item = await anyio.to_thread.run_sync(next, it, _END)
        if item is _END:
            return
        yield item


def _usage(stats: Any) -> dict[str, Any]:
    """OpenAI ``usage`` from the stream's stats, with the prompt tokens served from the slot's cache."""
    prompt = int(stats.prompt_tokens)
    generated = int(stats.generated_tokens)
    cached = max(0, prompt - int(stats.prompt_tokens_evaluated))
    return {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated,
            "prompt_tokens_details": {"cached_tokens": cached}}


def _timings(stats: Any) -> dict[str, Any]:
    """llama-server's ``timings`` object (``prompt_n`` = prompt tokens evaluated, not served from cache)."""
    out = {"prompt_n": int(stats.prompt_tokens_evaluated), "prompt_ms": float(stats.prompt_ms),
           "predicted_n": int(stats.generated_tokens), "predicted_ms": float(stats.generation_ms),
           "ttft_ms": float(stats.ttft_ms)}
    out["cache_n"] = int(stats.prompt_tokens) - out["prompt_n"]
    for name, attr in (("prompt_per_second", "prompt_tps"), ("predicted_per_second", "generation_tps")):
        value = getattr(stats, attr, None)
        if isinstance(value, (int, float)):
            out[name] = float(value)
    seed = getattr(stats, "seed", None)
    if isinstance(seed, int):
        out["seed"] = seed
    return out


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _has_output(delta: Mapping[str, Any]) -> bool:
    return bool(delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls"))


def _finish_message(deltas: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The assistant message of a non-streaming answer, from the stream's deltas."""
    from .toolcalls import merge_deltas

    merged = merge_deltas(deltas)
    message: dict[str, Any] = {"role": "assistant", "content": merged["content"] or None,
                               "reasoning_content": merged["reasoning_content"] or None}
    if merged["tool_calls"]:
        message["tool_calls"] = merged["tool_calls"]
    return message


# --------------------------------------------------------------------------- metrics


class _EngineCollector:
    """Prometheus collector reading ``engine.metrics()`` at scrape time."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def collect(self) -> Iterable[Any]:
        metrics = getattr(self.engine, "metrics", None)
        if metrics is None:
            return []
        m = metrics()
        out: list[Any] = []
        for name, key, doc in (("step35_slots", "slots", "Sequences the engine decodes at once (-np)."),
                               ("step35_requests_running", "running", "Requests holding a slot."),
                               ("step35_requests_waiting", "waiting", "Requests queued for a slot.")):
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], float(m.get(key, 0)))
            out.append(g)
        for name, key, doc in (
                ("step35_prompt_tokens_evaluated", "prompt_tokens_evaluated", "Prompt tokens computed."),
                ("step35_prompt_tokens_cached", "prompt_tokens_cached", "Prompt tokens served from a slot's cache."),
                ("step35_generated_tokens", "generated_tokens", "Tokens generated."),
                ("step35_requests_finished", "requests_finished", "Requests the engine finished.")):
            c = CounterMetricFamily(name, doc)
            c.add_metric([], float(m.get(key, 0)))
            out.append(c)
        return out


class _Metrics:
    def __init__(self, engine: Any) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_EngineCollector(engine))  # type: ignore[arg-type]
        self.requests = Counter("step35_http_requests", "HTTP requests by route and status code.",
                                ["route", "status"], registry=self.registry)
        self.ttft = Histogram("step35_time_to_first_token_seconds",
                              "From a completion request's arrival to its first generated text "
                              "(includes waiting for a slot).", ["route"], buckets=_TTFT_BUCKETS,
                              registry=self.registry)
        self.duration = Histogram("step35_request_duration_seconds",
                                  "From a completion request's arrival to its end.", ["route"],
                                  buckets=_TTFT_BUCKETS, registry=self.registry)
        self.finished = Counter("step35_completions", "Completion requests by how they ended "
                                "(stop, length, tool_calls, disconnected, error).", ["route", "finish_reason"],
                                registry=self.registry)


class _Tracker:
    """Times one completion request and records how it ended."""

    def __init__(self, metrics: _Metrics, route: str) -> None:
        self.metrics = metrics
        self.route = route
        self.t0 = time.perf_counter()
        self.first = False
        self.done = False

    def output(self) -> None:
        if not self.first:
            self.first = True
            self.metrics.ttft.labels(self.route).observe(time.perf_counter() - self.t0)

    def end(self, reason: str) -> None:
        if self.done:
            return
        self.done = True
        self.metrics.duration.labels(self.route).observe(time.perf_counter() - self.t0)
        self.metrics.finished.labels(self.route, reason).inc()


# --------------------------------------------------------------------------- the app


class _Gate:
    """ASGI middleware: API key check (every route but /health) and per-route status counts."""

    def __init__(self, app: Any, api_key: str | None, metrics: _Metrics) -> None:
        self.app = app
        self.key = api_key.encode() if api_key else None
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        route = path if path in ROUTES else ("/v1" + path if "/v1" + path in ROUTES else "other")
        if route == "other" and path.startswith(("/v1/models/", "/models/")):
            route = "/v1/models"
        status: list[int] = []

        async def counting_send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            if self.key is not None and route != "/health" and not self._authorized(scope):
                await APIError(401, "a valid API key is required: send it as 'Authorization: Bearer KEY'",
                               type="authentication_error", code="invalid_api_key",
                               headers={"WWW-Authenticate": "Bearer"}).response()(scope, receive, counting_send)
                return
            await self.app(scope, receive, counting_send)
        finally:
            self.metrics.requests.labels(route, str(status[0]) if status else "none").inc()

    def _authorized(self, scope: dict[str, Any]) -> bool:
        assert self.key is not None
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key):
                    return True
            elif name == b"x-api-key" and hmac.compare_digest(value.strip(), self.key):
                return True
        return False


class _Service:
    def __init__(self, engine: Any, *, model_name: str, aliases: Sequence[str], max_body_bytes: int,
                 defaults: Mapping[str, Any], metrics: _Metrics, ping_seconds: float) -> None:
        self.engine = engine
        self.model_name = model_name
        self.names = {model_name, *aliases}
        self.max_body_bytes = max_body_bytes
        self.defaults = dict(defaults)
        self.metrics = metrics
        self.ping_seconds = ping_seconds
        self.created = int(time.time())

    # -- helpers ----------------------------------------------------------------
    async def json_body(self, request: Request) -> tuple[dict[str, Any], int]:
        """The request's JSON object and its size in bytes (400 when it is not one, 413 when too large)."""
        limit = self.max_body_bytes
        too_large = APIError(413, f"the request body is larger than this server's limit of {limit} bytes "
                                  "(step35 serve --max-body-bytes)", code="request_too_large")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > limit:
                raise too_large

        def no_constants(name: str) -> Any:
            raise ValueError(f"{name} is not valid JSON")

        try:
            body = json.loads(bytes(data), parse_constant=no_constants)
        except (ValueError, UnicodeDecodeError) as e:
            raise _bad(None, f"the request body is not valid JSON: {e}", code="invalid_json") from None
        except RecursionError:
            raise _bad(None, "the request body nests arrays or objects too deeply to parse",
                       code="invalid_json") from None
        if not isinstance(body, dict):
            raise _bad(None, f"the request body must be a JSON object, got {type(body).__name__}",
                       code="invalid_json")
        return body, len(data)

    def check_model(self, body: Mapping[str, Any]) -> None:
        model = body.get("model")
        if model is None:
            return
        if not isinstance(model, str):
            raise _bad("model", f"model must be a string, got {model!r}")
        if model not in self.names:
            raise APIError(404, f"the model {model!r} does not exist: this server serves {self.model_name!r}",
                           param="model", code="model_not_found")

    async def submit(self, method: Callable[..., Any], *args: Any, prompt_field: str, inline: bool,
                     **kwargs: Any) -> Any:
        """Queue a request on the engine; templating and tokenizing run here when ``inline``
        (a small request), else in a worker thread."""
        try:
            if inline:
                return method(*args, stream=True, **kwargs)
            return await anyio.to_thread.run_sync(lambda: method(*args, stream=True, **kwargs))
        except _ENGINE_ERRORS as e:
            raise _from_exception(e, prompt_field) from None

    def error_event(self, e: BaseException, prompt_field: str) -> dict[str, str]:
        try:
            err = _from_exception(e, prompt_field)
        except Exception as other:  # an unexpected exception: report it to the client, then the log
            err = APIError(500, f"{type(other).__name__}: {other}", type="server_error")
        return {"data": _dumps(err.body())}

    async def watch_disconnect(self, request: Request, scope: Any, state: dict[str, bool]) -> None:
        """Cancel ``scope`` when the client of a non-streaming request goes away."""
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                state["disconnected"] = True
                scope.cancel()
                return

    # -- routes -----------------------------------------------------------------
    async def health(self, request: Request) -> Response:
        metrics = getattr(self.engine, "metrics", None)
        body: dict[str, Any] = {"status": "ok"}
        if metrics is not None:
            m = metrics()
            body.update({k: m[k] for k in ("slots", "running", "waiting") if k in m})
        return JSONResponse(body)

    async def metrics_route(self, request: Request) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def _model_card(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": self.created, "owned_by": "step35"}

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [self._model_card(self.model_name)]})

    async def model(self, request: Request) -> Response:
        name = request.path_params["model"]
        if name not in self.names:
            raise APIError(404, f"the model {name!r} does not exist: this server serves {self.model_name!r}",
                           param="model", code="model_not_found")
        return JSONResponse(self._model_card(name))

    async def _start(self, request: Request, route: str, arguments: Callable[..., dict[str, Any]],
                     method: Callable[..., Any], field: str) -> tuple[_Tracker, Any, bool, bool]:
        """Parse and check a completion request, then queue it: its tracker, stream and stream flags."""
        tracker = _Tracker(self.metrics, route)
        body, size = await self.json_body(request)
        self.check_model(body)
        stream_mode, include_usage = _stream_flags(body)
        kwargs = arguments(body, self.defaults)
        first = kwargs.pop(field)
        stream = await self.submit(method, first, prompt_field=field, inline=size <= INLINE_BODY_BYTES, **kwargs)
        return tracker, stream, stream_mode, include_usage

    def _events(self, events: AsyncIterator[dict[str, str]]) -> Response:
        return EventSourceResponse(events, ping=self.ping_seconds,
                                   headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _run_to_end(self, request: Request, stream: Any, tracker: _Tracker, on_item: Callable[[Any], None],
                          field: str) -> bool:
        """A non-streaming answer: collect it (False, tracked, when the client went away)."""
        try:
            finished = await self._collect(request, stream, on_item)
        except _ENGINE_ERRORS as e:
            tracker.end("error")
            raise _from_exception(e, field) from None
        if not finished:
            tracker.end("disconnected")
        return finished

    async def chat(self, request: Request) -> Response:
        tracker, stream, stream_mode, include_usage = await self._start(
            request, "/v1/chat/completions", chat_arguments, self.engine.chat, "messages")
        if stream_mode:
            return self._events(self._chat_events(stream, include_usage, tracker))
        return await self._chat_response(request, stream, tracker)

    async def _chat_events(self, stream: Any, include_usage: bool, tracker: _Tracker) -> AsyncIterator[dict[str, str]]:
        reason = "disconnected"
        head: dict[str, Any] = {}
        try:
            async for chunk in _aiter(stream):
                chunk = dict(chunk, model=self.model_name)
                chunk.pop("usage", None)
                head = {"id": chunk.get("id"), "object": "chat.completion.chunk", "created": chunk.get("created"),
                        "model": self.model_name}
                for choice in chunk.get("choices") or ():
                    if _has_output(choice.get("delta") or {}):
                        tracker.output()
                    if choice.get("finish_reason"):
                        reason = choice["finish_reason"]
                        chunk["timings"] = _timings(stream.stats)
                if include_usage:
                    chunk["usage"] = None
                yield {"data": _dumps(chunk)}
            if include_usage:
                yield {"data": _dumps(dict(head, choices=[], usage=_usage(stream.stats)))}
            yield {"data": "[DONE]"}
        except _ENGINE_ERRORS as e:
            reason = "error"
            yield self.error_event(e, "messages")
        finally:
            stream.close()
            tracker.end(reason)

    async def _collect(self, request: Request, stream: Any, on_item: Callable[[Any], None]) -> bool:
        """Run ``stream`` to its end, or until the client goes away (then False); closes it either way."""
        state = {"disconnected": False}
        failure: list[BaseException] = []
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.watch_disconnect, request, tg.cancel_scope, state)
                try:
                    async for item in _aiter(stream):
                        on_item(item)
                except _ENGINE_ERRORS as e:  # raised below, not as an ExceptionGroup of the task group
                    failure.append(e)
                tg.cancel_scope.cancel()
        finally:
            stream.close()
        if failure:
            raise failure[0]
        return not state["disconnected"]

    async def _chat_response(self, request: Request, stream: Any, tracker: _Tracker) -> Response:
        deltas: list[Mapping[str, Any]] = []
        head: dict[str, Any] = {}
        reason = ["stop"]

        def on_chunk(chunk: Mapping[str, Any]) -> None:
            head.setdefault("id", chunk.get("id"))
            head.setdefault("created", chunk.get("created"))
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                if _has_output(delta):
                    tracker.output()
                deltas.append(delta)
                if choice.get("finish_reason"):
                    reason[0] = choice["finish_reason"]

        if not await self._run_to_end(request, stream, tracker, on_chunk, "messages"):
            return Response(status_code=499)
        tracker.end(reason[0])
        stats = stream.stats
        return JSONResponse({
            "id": head.get("id") or f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion",
            "created": head.get("created") or int(time.time()), "model": self.model_name,
            "choices": [{"index": 0, "message": _finish_message(deltas), "logprobs": None,
                         "finish_reason": reason[0]}],
            "usage": _usage(stats), "timings": _timings(stats),
        })

    async def completions(self, request: Request) -> Response:
        tracker, stream, stream_mode, include_usage = await self._start(
            request, "/v1/completions", completion_arguments, self.engine.generate, "prompt")
        head = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
                "model": self.model_name}
        if stream_mode:
            return self._events(self._completion_events(stream, head, include_usage, tracker))
        pieces: list[str] = []

        def on_piece(piece: str) -> None:
            if piece:
                tracker.output()
                pieces.append(piece)

        if not await self._run_to_end(request, stream, tracker, on_piece, "prompt"):
            return Response(status_code=499)
        reason = stream.finish_reason or "stop"
        tracker.end(reason)
        stats = stream.stats
        return JSONResponse(dict(head, choices=[{"index": 0, "text": "".join(pieces), "logprobs": None,
                                                 "finish_reason": reason}],
                                 usage=_usage(stats), timings=_timings(stats)))

    async def _completion_events(self, stream: Any, head: dict[str, Any], include_usage: bool,
                                 tracker: _Tracker) -> AsyncIterator[dict[str, str]]:
        reason = "disconnected"
        extra: dict[str, Any] = {"usage": None} if include_usage else {}
        try:
            async for piece in _aiter(stream):
                if not piece:
                    continue
                tracker.output()
                yield {"data": _dumps(dict(head, choices=[{"index": 0, "text": piece, "logprobs": None,
                                                           "finish_reason": None}], **extra))}
            reason = stream.finish_reason or "stop"
            stats = stream.stats
            yield {"data": _dumps(dict(head, choices=[{"index": 0, "text": "", "logprobs": None,
                                                       "finish_reason": reason}], timings=_timings(stats), **extra))}
            if include_usage:
                yield {"data": _dumps(dict(head, choices=[], usage=_usage(stats)))}
            yield {"data": "[DONE]"}
        except _ENGINE_ERRORS as e:
            reason = "error"
            yield self.error_event(e, "prompt")
        finally:
            stream.close()
            tracker.end(reason)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return exc.response()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = {404: "not_found_error", 405: "invalid_request_error"}.get(exc.status_code, "invalid_request_error")
    message = exc.detail if exc.status_code != 404 else f"no route {request.method} {request.url.path}"
    return APIError(exc.status_code, str(message), type=kind, code=None,
                    headers=getattr(exc, "headers", None)).response()


def create_app(engine: Any, *, model_name: str, aliases: Sequence[str] = (), api_key: str | None = None,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, defaults: Mapping[str, Any] | None = None,
               ping_seconds: float = 15.0) -> Starlette:
    """The ASGI application of ``step35 serve`` (run it with uvicorn or any ASGI server).

    Args:
        engine: a :class:`step35.Engine` (anything with its ``chat``,
            ``generate`` and ``metrics`` methods: every request is sent with
            ``stream=True``, and the stream is iterated with ``async for`` when
            it supports it, else in a worker thread).
        model_name: the id ``/v1/models`` lists; requests naming another model get 404.
        aliases: further names accepted in a request's ``model`` field.
        api_key: when set, every route except ``/health`` requires
            ``Authorization: Bearer <api_key>`` (or ``x-api-key``), else 401.
        max_body_bytes: larger request bodies get 413.
        defaults: sampling settings (``temperature``, ``top_k``, ..., ``seed``)
            and ``max_tokens`` used when a request does not give them. Without
            a ``max_tokens`` default, chat answers run to the end of generation
            (or of the slot's context) and completions stop at 16 tokens, as
            OpenAI's do.
        ping_seconds: keep-alive comment interval of event streams.

    The engine's lifetime is the caller's: the app never closes it.
    """
    if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int) or max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be a positive int, got {max_body_bytes!r}")
    if api_key is not None and (not isinstance(api_key, str) or not api_key):
        raise ValueError("api_key must be a non-empty string or None")
    if not isinstance(model_name, str) or not model_name:
        raise ValueError("model_name must be a non-empty string")
    metrics = _Metrics(engine)
    service = _Service(engine, model_name=model_name, aliases=aliases, max_body_bytes=max_body_bytes,
                       defaults=defaults or {}, metrics=metrics, ping_seconds=ping_seconds)
    routes = []
    for prefix in ("/v1", ""):
        routes += [
            Route(f"{prefix}/chat/completions", service.chat, methods=["POST"]),
            Route(f"{prefix}/completions", service.completions, methods=["POST"]),
            Route(f"{prefix}/models", service.models, methods=["GET"]),
            Route(f"{prefix}/models/{{model:path}}", service.model, methods=["GET"]),
        ]
    routes += [Route("/health", service.health, methods=["GET"]),
               Route("/metrics", service.metrics_route, methods=["GET"])]
    app = Starlette(routes=routes, exception_handlers={APIError: _api_error, HTTPException: _http_error})
    app.state.service = service
    app.state.metrics_registry = metrics.registry
    app.add_middleware(_Gate, api_key=api_key, metrics=metrics)  # type: ignore[arg-type]
    return app


# --------------------------------------------------------------------------- running it


def url_of(host: str, port: int) -> str:
    """``http://host:port`` (an IPv6 address in brackets)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _Uvicorn(uvicorn.Server):
    """uvicorn's server, telling ``on_ready`` the address it listens on once its socket is bound."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[str, int], None] | None) -> None:
        super().__init__(config)
        self._on_ready = on_ready

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.started and self._on_ready is not None and not self.should_exit:
            host, port = self.config.host, self.config.port
            for server in getattr(self, "servers", ()):
                for sock in server.sockets or ():
                    name = sock.getsockname()
                    if isinstance(name, tuple):
                        port = name[1]
                        break
            self._on_ready(host, port)


def run(app: Any, *, host: str = "127.0.0.1", port: int = 8080, log_level: str = "info",
        shutdown_timeout: float = 10.0, on_ready: Callable[[str, int], None] | None = None,
        switch_interval: float | None = SWITCH_INTERVAL) -> str | None:
    """Serve ``app`` with uvicorn until SIGINT or SIGTERM; returns the signal's name (or None).

    On the signal the server stops accepting connections; event streams end
    at once (their generation is cancelled), other requests get up to
    ``shutdown_timeout`` seconds to finish before they are cancelled too.
    ``on_ready(host, port)`` is called once the socket is bound (``port=0``
    picks a free port; ``on_ready`` gets the real one). ``switch_interval``:
    the GIL switch interval while serving (:func:`sys.setswitchinterval`;
    None keeps the process's), restored afterwards.
    """
    import signal
    import threading

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="off",
                            timeout_graceful_shutdown=math.ceil(max(0.0, shutdown_timeout)),
                            access_log=log_level in ("info", "debug"))
    server = _Uvicorn(config, on_ready)
    # uvicorn re-raises a caught signal with the handler it found once it has
    # shut down; with these handlers that is a no-op here, so the caller gets
    # to close the engine (and return) instead of dying of SIGTERM.
    received: list[int] = []
    main = threading.current_thread() is threading.main_thread()
    signals = [signal.SIGINT, signal.SIGTERM] if main else []
    previous = {sig: signal.signal(sig, lambda sig, frame: received.append(sig)) for sig in signals}
    interval = sys.getswitchinterval()
    if switch_interval is not None:
        sys.setswitchinterval(switch_interval)
    try:
        server.run()
    finally:
        sys.setswitchinterval(interval)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return signal.Signals(received[0]).name if received else None
