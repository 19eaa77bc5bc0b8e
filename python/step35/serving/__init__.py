"""``step35 serve``: OpenAI- and Anthropic-compatible HTTP serving over :class:`step35.Engine`.

Routes (each also without the ``/v1`` prefix, as llama-server has them):

* ``POST /v1/chat/completions`` and ``POST /v1/completions`` (OpenAI chat
  completions and completions: :mod:`.openai_chat`);
* ``POST /v1/responses`` and ``POST /v1/responses/input_tokens`` (OpenAI
  Responses, as Codex CLI speaks it: :mod:`.responses`);
* ``POST /v1/messages`` and ``POST /v1/messages/count_tokens`` (Anthropic
  Messages, as Claude Code speaks it: :mod:`.anthropic`);
* ``GET /v1/models`` (and ``/v1/models/{id}``), ``GET /health``, ``GET /metrics``
  (Prometheus text format).

The one model answers to any ``model`` name a request gives (agents send
their own); ``/v1/models`` lists the server's names (``--alias``). Each
protocol adapter translates its requests into one internal request
(:class:`~.request.ChatRequest`) and the engine's one event stream
(:mod:`.events`) into its own answers, streams and errors; the API key,
limits, metrics, server-sent events (with keep-alive pings and, on request,
prompt-evaluation progress) and shutdown are shared (:mod:`.app`). Errors
name the field at fault: malformed JSON or a bad parameter 400, a wrong key
401, an unknown route 404, a body over the limit 413, a full wait queue 429
with ``Retry-After``, the engine shutting down 503, a tool call the model
wrote that cannot be parsed 500 (mid-stream: an error event).

Every request runs as a stream on the engine, so a client that goes away
(mid-stream, or while waiting for a non-streaming answer) closes its stream,
which frees its slot within one engine step.

Needs the ``server`` extra: ``pip install 'step35[server]'`` (Starlette, uvicorn,
sse-starlette, prometheus-client). ``import step35`` never imports any of it.
"""

from __future__ import annotations

try:
    import anyio  # noqa: F401
    import prometheus_client  # noqa: F401
    import sse_starlette  # noqa: F401
    import starlette  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised by tests/test_serve.py in a subprocess
    raise ImportError(f"step35 serve needs the server extra, which is not installed (missing: {e.name}): "
                      f"pip install 'step35[server]'", name=e.name) from e

from .app import DEFAULT_MAX_BODY_BYTES, INLINE_BODY_BYTES, ROUTES, create_app
from .errors import APIError
from .openai_chat import chat_request, completion_request
from .reasoning import KEY_ENV, ReasoningSeal
from .responses import EFFORT_BUDGETS
from .runner import run, url_of

__all__ = ["APIError", "DEFAULT_MAX_BODY_BYTES", "EFFORT_BUDGETS", "INLINE_BODY_BYTES", "KEY_ENV", "ROUTES",
           "ReasoningSeal", "chat_request", "completion_request", "create_app", "run", "url_of"]
