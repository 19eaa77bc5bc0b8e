"""The ASGI app of ``step35 serve``: what every route shares, written once.

The API key check, body limits, JSON parsing, metrics, server-sent events
(with keep-alive pings), disconnects and the engine hand-off live here; each
wire protocol is an adapter (:mod:`.openai_chat`, :mod:`.responses`,
:mod:`.anthropic`) that turns a request body into a
:class:`~step35.serving.request.ChatRequest` and the engine's
:mod:`events <.events>` into its own answer, stream and error shapes.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping, MutableMapping, Sequence
from typing import Any, Protocol

import anyio
import anyio.to_thread
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .._runtime.limits import MAX_BODY_BYTES
from .anthropic import Messages
from .errors import ENGINE_ERRORS, APIError, bad, from_exception
from .events import Answer, Event, Failed, Finished, ReasoningDelta, TextDelta, ToolCallStart, engine_events
from .metrics import Metrics, Tracker
from .openai_chat import ChatCompletions, Completions
from .reasoning import ReasoningSeal
from .request import ChatRequest
from .responses import Responses, ResponseStore

__all__ = ["DEFAULT_MAX_BODY_BYTES", "INLINE_BODY_BYTES", "ROUTES", "create_app"]

#: Largest request body accepted by default (a long agent conversation is a few MiB of JSON).
DEFAULT_MAX_BODY_BYTES = MAX_BODY_BYTES
#: Requests whose body is at most this many bytes are templated and tokenized on the event loop
#: (well under a millisecond); larger ones in a worker thread, so that they never stall other streams.
INLINE_BODY_BYTES = 16 * 1024
#: Seconds between prompt-progress events of a stream that asked for them.
PROGRESS_SECONDS = 0.5

#: The routes the server answers (without the ``/v1``-less aliases).
ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/responses/input_tokens",
          "/v1/messages", "/v1/messages/count_tokens", "/v1/models", "/health", "/metrics")

log = logging.getLogger("step35.serve")


class Adapter(Protocol):
    """What the app needs of a wire protocol."""

    route: str
    prompt_field: str
    params: frozenset[str]
    counts_reasoning: bool  #: its usage reports reasoning tokens (counted by tokenizing the reasoning)

    def parse(self, body: Mapping[str, Any], defaults: Mapping[str, Any]) -> ChatRequest: ...
    def error_body(self, err: APIError) -> dict[str, Any]: ...
    def reply(self, req: ChatRequest, answer: Answer) -> dict[str, Any]: ...
    def stream(self, req: ChatRequest, events: AsyncIterator[Event]) -> AsyncIterator[dict[str, str]]: ...


def _route_of(path: str) -> str:
    """The metrics label of a request path (a ``/v1``-less alias counts as its route)."""
    for candidate in (path, "/v1" + path):
        if candidate in ROUTES:
            return candidate
    if path.startswith(("/v1/models/", "/models/")):
        return "/v1/models"
    return "other"


class _Service:
    def __init__(self, engine: Any, *, model_name: str, aliases: Sequence[str], max_body_bytes: int,
                 defaults: Mapping[str, Any], metrics: Metrics, ping_seconds: float, seal: ReasoningSeal,
                 store: ResponseStore) -> None:
        self.engine = engine
        self.model_name = model_name
        self.names = list(dict.fromkeys(aliases or [model_name]))
        self.max_body_bytes = max_body_bytes
        self.defaults = dict(defaults)
        self.metrics = metrics
        self.ping_seconds = ping_seconds
        self.created = int(time.time())
        self.chat_completions = ChatCompletions(model_name)
        self.completions = Completions(model_name)
        self.messages = Messages(model_name, seal)
        self.responses = Responses(model_name, seal, store)
        model = getattr(engine, "model", None)
        tokenize = getattr(model, "tokenize", None)
        self.count_tokens = (lambda text: len(tokenize(text, add_special=False, parse_special=False))) \
            if callable(tokenize) else None

    def adapter_for(self, path: str) -> Adapter:
        """The protocol whose error shape a path answers with."""
        route = _route_of(path)
        if route.startswith("/v1/messages") or path.startswith(("/v1/messages", "/messages")):
            return self.messages
        return self.chat_completions

    def error_response(self, path: str, err: APIError) -> Response:
        return JSONResponse(self.adapter_for(path).error_body(err), status_code=err.status, headers=err.headers)

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
            raise bad(None, f"the request body is not valid JSON: {e}", code="invalid_json") from None
        except RecursionError:
            raise bad(None, "the request body nests arrays or objects too deeply to parse",
                      code="invalid_json") from None
        if not isinstance(body, dict):
            raise bad(None, f"the request body must be a JSON object, got {type(body).__name__}",
                      code="invalid_json")
        return body, len(data)

    async def _parse(self, request: Request, adapter: Adapter) -> tuple[ChatRequest, int]:
        body, size = await self.json_body(request)
        req = adapter.parse(body, self.defaults)
        if req.skipped_tools:
            log.info("step35 serve: %s: skipped tools this server cannot run: %s", adapter.route,
                     ", ".join(req.skipped_tools))
        return req, size

    async def _submit(self, req: ChatRequest, adapter: Adapter, inline: bool) -> Any:
        """Queue a request; templating and tokenizing run here when ``inline`` (a small request),
        else in a worker thread."""
        try:
            if inline:
                return req.submit(self.engine)
            return await anyio.to_thread.run_sync(req.submit, self.engine)
        except ENGINE_ERRORS as e:
            raise from_exception(e, adapter.prompt_field, adapter.params) from None

    async def _tracked(self, events: AsyncIterator[Event], adapter: Adapter, tracker: Tracker,
                       ended: list[str]) -> AsyncIterator[Event]:
        """The events, with the time of the first output and the end recorded, and an engine
        error turned into a :class:`Failed` event for the adapter to report in its own way."""
        try:
            async for event in events:
                if isinstance(event, (ReasoningDelta, TextDelta, ToolCallStart)):
                    tracker.output()
                elif isinstance(event, Finished):
                    ended.append(event.reason)
                yield event
        except ENGINE_ERRORS as e:
            ended.insert(0, "error")
            try:
                err = from_exception(e, adapter.prompt_field, adapter.params)
            except Exception as other:  # unexpected: reported to the client, and logged with its traceback
                log.exception("step35 serve: unexpected error in a stream")
                err = APIError(500, f"{type(other).__name__}: {other}", type="server_error")
            yield Failed(err)

    async def _sse(self, adapter: Adapter, req: ChatRequest, stream: Any,
                   tracker: Tracker) -> AsyncIterator[dict[str, str]]:
        ended: list[str] = []
        events = engine_events(stream, count_tokens=self.count_tokens if adapter.counts_reasoning else None,
                               progress_every=PROGRESS_SECONDS if req.progress else None)
        try:
            async for item in adapter.stream(req, self._tracked(events, adapter, tracker, ended)):
                yield item
        finally:
            stream.close()
            await events.aclose()
            tracker.end(ended[0] if ended else "disconnected")

    async def _collect(self, request: Request, events: AsyncIterator[Event], answer: Answer) -> bool:
        """Collect ``events`` into ``answer``, or stop when the client goes away (then False)."""
        state = {"disconnected": False}
        failure: list[BaseException] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch_disconnect, request, tg.cancel_scope, state)
            try:
                async for event in events:
                    answer.add(event)
            except ENGINE_ERRORS as e:  # raised below, not as an ExceptionGroup of the task group
                failure.append(e)
            tg.cancel_scope.cancel()
        if failure:
            raise failure[0]
        return not state["disconnected"]

    @staticmethod
    async def _watch_disconnect(request: Request, scope: Any, state: dict[str, bool]) -> None:
        """Cancel ``scope`` when the client of a non-streaming request goes away."""
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                state["disconnected"] = True
                scope.cancel()
                return

    async def handle(self, request: Request, adapter: Adapter) -> Response:
        """One generation request through ``adapter``: streamed or whole."""
        tracker = Tracker(self.metrics, adapter.route)
        req, size = await self._parse(request, adapter)
        stream = await self._submit(req, adapter, inline=size <= INLINE_BODY_BYTES)
        headers = {"X-Step35-Skipped-Tools": ", ".join(req.skipped_tools)} if req.skipped_tools else {}
        if req.stream:
            return EventSourceResponse(self._sse(adapter, req, stream, tracker), ping=self.ping_seconds,
                                       headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers})
        answer = Answer()
        events = engine_events(stream, count_tokens=self.count_tokens if adapter.counts_reasoning else None)
        try:
            finished = await self._collect(request, events, answer)
        except ENGINE_ERRORS as e:
            tracker.end("error")
            raise from_exception(e, adapter.prompt_field, adapter.params) from None
        finally:
            stream.close()
            await events.aclose()
        if not finished or answer.finished is None:
            tracker.end("disconnected")
            return Response(status_code=499)
        if answer.text or answer.reasoning or answer.calls:
            tracker.output()
        tracker.end(answer.finished.reason)
        return JSONResponse(adapter.reply(req, answer), headers=headers)

    async def count(self, request: Request, adapter: Adapter, shape: str) -> Response:
        """The prompt tokens a request would evaluate, without generating (Anthropic's and OpenAI's shapes)."""
        req, size = await self._parse(request, adapter)
        if req.messages is None:
            raise bad(adapter.prompt_field, "only chat requests can be counted")
        counter = getattr(self.engine, "prompt_tokens", None)
        if counter is None:
            raise APIError(501, "this engine cannot count prompt tokens", type="server_error")
        kwargs = {k: v for k, v in req.chat_arguments().items() if k in ("tools", "tool_choice", "template_kwargs")}
        try:
            if size <= INLINE_BODY_BYTES:
                ids = counter(req.messages, **kwargs)
            else:
                ids = await anyio.to_thread.run_sync(lambda: counter(req.messages, **kwargs))
        except ENGINE_ERRORS as e:
            raise from_exception(e, adapter.prompt_field, adapter.params) from None
        n = len(ids)
        body: dict[str, Any] = {"input_tokens": n}
        if shape == "openai":
            body = {"object": "response.input_tokens", "input_tokens": n}
        return JSONResponse(body)

    # -- routes -----------------------------------------------------------------
    async def chat(self, request: Request) -> Response:
        return await self.handle(request, self.chat_completions)

    async def completion(self, request: Request) -> Response:
        return await self.handle(request, self.completions)

    async def message(self, request: Request) -> Response:
        return await self.handle(request, self.messages)

    async def count_message_tokens(self, request: Request) -> Response:
        return await self.count(request, self.messages.counting(), "anthropic")

    async def response(self, request: Request) -> Response:
        return await self.handle(request, self.responses)

    async def count_response_tokens(self, request: Request) -> Response:
        return await self.count(request, self.responses, "openai")

    async def health(self, request: Request) -> Response:
        metrics = getattr(self.engine, "metrics", None)
        body: dict[str, Any] = {"status": "ok"}
        if metrics is not None:
            m = metrics()
            body.update({k: m[k] for k in ("slots", "running", "waiting") if k in m})
        return JSONResponse(body)

    async def metrics_route(self, request: Request) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def _model_card(self, name: str, anthropic: bool) -> dict[str, Any]:
        card: dict[str, Any] = {"id": name, "object": "model", "created": self.created, "owned_by": "step35"}
        if anthropic:
            card.update(type="model", display_name=name,
                        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created)))
        return card

    async def models(self, request: Request) -> Response:
        anthropic = "anthropic-version" in request.headers
        body: dict[str, Any] = {"object": "list", "data": [self._model_card(n, anthropic) for n in self.names]}
        if anthropic:
            body.update(has_more=False, first_id=self.names[0], last_id=self.names[-1])
        return JSONResponse(body)

    async def model(self, request: Request) -> Response:
        name = request.path_params["model"]
        if name not in self.names and name != self.model_name:
            raise APIError(404, f"the model {name!r} is not listed: this server lists {', '.join(self.names)} "
                                "(and answers requests naming any model)", param="model", code="model_not_found")
        return JSONResponse(self._model_card(name, "anthropic-version" in request.headers))


class _Gate:
    """ASGI middleware: API key check (every route but /health) and per-route status counts."""

    def __init__(self, app: Any, api_key: str | None, metrics: Metrics, service: _Service) -> None:
        self.app = app
        self.key = api_key.encode() if api_key else None
        self.metrics = metrics
        self.service = service

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        route = _route_of(path)
        status: list[int] = []

        async def counting_send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            if self.key is not None and route != "/health" and not self._authorized(scope):
                err = APIError(401, "a valid API key is required: send it as 'Authorization: Bearer KEY' "
                                    "or 'x-api-key: KEY'", type="authentication_error", code="invalid_api_key",
                               headers={"WWW-Authenticate": "Bearer"})
                await self.service.error_response(path, err)(scope, receive, counting_send)
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


def create_app(engine: Any, *, model_name: str, aliases: Sequence[str] = (), api_key: str | None = None,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, defaults: Mapping[str, Any] | None = None,
               ping_seconds: float = 15.0, reasoning_key: bytes | str | None = None,
               store_mib: float = 64.0) -> Starlette:
    """The ASGI application of ``step35 serve`` (run it with uvicorn or any ASGI server).

    Args:
        engine: a :class:`step35.Engine` (anything with its ``chat``,
            ``generate``, ``prompt_tokens`` and ``metrics`` methods: every
            request is sent with ``stream=True``, and the stream is iterated
            with ``async for`` when it supports it, else in a worker thread).
        model_name: the model's name; requests may name any model (agents
            send their own names) and get this one.
        aliases: the names ``/v1/models`` lists (default: ``model_name``).
        api_key: when set, every route except ``/health`` requires
            ``Authorization: Bearer <api_key>`` or ``x-api-key``, else 401.
        max_body_bytes: larger request bodies get 413.
        defaults: sampling settings (``temperature``, ``top_k``, ..., ``seed``),
            ``max_tokens`` and ``reasoning_budget`` used when a request does
            not give them. Without a ``max_tokens`` default, chat answers run
            to the end of generation (or of the slot's context) and
            completions stop at 16 tokens, as OpenAI's do.
        ping_seconds: interval of the keep-alive comments of event streams
            (they also keep a stream alive while a long prompt is evaluated).
        reasoning_key: key of the seals on reasoning handed to clients
            (default: ``STEP35_REASONING_KEY``, else random per process).
        store_mib: bound of the in-memory store of Responses API answers
            that ``previous_response_id`` can name (least recently used first out).

    The engine's lifetime is the caller's: the app never closes it.
    """
    if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int) or max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be a positive int, got {max_body_bytes!r}")
    if api_key is not None and (not isinstance(api_key, str) or not api_key):
        raise ValueError("api_key must be a non-empty string or None")
    if not isinstance(model_name, str) or not model_name:
        raise ValueError("model_name must be a non-empty string")
    metrics = Metrics(engine)
    service = _Service(engine, model_name=model_name, aliases=aliases, max_body_bytes=max_body_bytes,
                       defaults=defaults or {}, metrics=metrics, ping_seconds=ping_seconds,
                       seal=ReasoningSeal(reasoning_key), store=ResponseStore(int(store_mib * 1024 * 1024)))
    routes = []
    for prefix in ("/v1", ""):
        routes += [
            Route(f"{prefix}/chat/completions", service.chat, methods=["POST"]),
            Route(f"{prefix}/completions", service.completion, methods=["POST"]),
            Route(f"{prefix}/responses", service.response, methods=["POST"]),
            Route(f"{prefix}/responses/input_tokens", service.count_response_tokens, methods=["POST"]),
            Route(f"{prefix}/messages", service.message, methods=["POST"]),
            Route(f"{prefix}/messages/count_tokens", service.count_message_tokens, methods=["POST"]),
            Route(f"{prefix}/models", service.models, methods=["GET"]),
            Route(f"{prefix}/models/{{model:path}}", service.model, methods=["GET"]),
        ]
    routes += [Route("/health", service.health, methods=["GET"]),
               Route("/metrics", service.metrics_route, methods=["GET"])]

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, APIError)
        return service.error_response(request.url.path, exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = {404: "not_found_error"}.get(exc.status_code, "invalid_request_error")
        message = exc.detail if exc.status_code != 404 else f"no route {request.method} {request.url.path}"
        return service.error_response(request.url.path, APIError(exc.status_code, str(message), type=kind,
                                                                 headers=getattr(exc, "headers", None)))

    app = Starlette(routes=routes, exception_handlers={APIError: api_error, HTTPException: http_error})
    app.state.service = service
    app.state.metrics_registry = metrics.registry
    app.add_middleware(_Gate, api_key=api_key, metrics=metrics, service=service)  # type: ignore[arg-type]
    return app
