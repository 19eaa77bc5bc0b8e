"""HTTP errors of ``step35 serve``, independent of the wire protocol that reports them.

An :class:`APIError` carries a status, a message, the request field at fault
and a machine-readable code; each protocol adapter writes it in its own shape
(OpenAI's ``{"error": {...}}``, Anthropic's ``{"type": "error", ...}``).
:func:`from_exception` maps what the engine raises to the right status.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from jinja2.exceptions import TemplateError

from ..chat.toolcalls import ToolCallParseError
from ..errors import ClosedError, ContextOverflowError, QueueFullError, Step35Error

__all__ = ["APIError", "ENGINE_ERRORS", "bad", "from_exception"]

#: What the engine raises for a request it refuses or cannot finish (mapped by :func:`from_exception`).
ENGINE_ERRORS = (Step35Error, ValueError, TypeError, TemplateError)

_PARAM_RE = re.compile(r"[A-Za-z_]\w*(?:\[\d+\]|\.[A-Za-z_]\w*)*")


class APIError(Exception):
    """An HTTP error: status, message, OpenAI error ``type``, the request field at fault and a code."""

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
        """OpenAI's error body."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(param: str | None, message: str, code: str | None = None) -> APIError:
    """A 400 naming the request field ``param``."""
    return APIError(400, message, param=param, code=code)


def _param_of(message: str, params: frozenset[str]) -> str | None:
    """The request field an engine ``ValueError`` message starts with (``"top_p must be..."`` -> ``top_p``)."""
    m = _PARAM_RE.match(message)
    if m is None:
        return None
    name = m.group(0)
    root = re.split(r"[.\[]", name, maxsplit=1)[0]
    return name if root in params else None


def from_exception(e: BaseException, prompt_field: str, params: frozenset[str] = frozenset()) -> APIError:
    """The HTTP error for an exception of the engine (submitting a request or while it runs).

    ``prompt_field`` names the request field holding the prompt (for a context
    overflow); ``params`` are the field names an engine ValueError may start with.
    Anything else is re-raised.
    """
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
        param = _param_of(message, params)
        if param is not None and param.startswith("template_kwargs"):  # its name in the request body
            param = "chat_" + param
        return APIError(400, message, param=param)
    if isinstance(e, TemplateError):
        return APIError(400, f"the chat template refused the conversation: {e}", param=prompt_field)
    if isinstance(e, Step35Error):
        return APIError(500, f"{type(e).__name__}: {e}", type="server_error")
    raise e
