"""Exceptions raised by step35.

Every failure in native code arrives as one of these (never as a crash), with a
message that says what happened and, where there is one, what to do about it.
Errors about missing files are the built-in :class:`FileNotFoundError`; invalid
arguments are :class:`ValueError`.
"""

from __future__ import annotations

__all__ = [
    "Step35Error",
    "ModelLoadError",
    "InvalidModelError",
    "BackendLoadError",
    "PluginUnavailable",
    "ClosedError",
    "TokenizeError",
    "Cancelled",
    "BuildError",
    "ContextError",
    "ContextBusyError",
    "ContextOverflowError",
    "DecodeError",
    "QuantizeError",
    "QueueFullError",
    "GrammarError",
    "MemoryFitError",
    "RPCError",
]


class Step35Error(Exception):
    """Base class of every step35 error."""


class ModelLoadError(Step35Error):
    """llama.cpp could not load a model; the message includes llama.cpp's reason."""


class InvalidModelError(ModelLoadError, ValueError):
    """The file is not a GGUF this package can load (not GGUF, truncated, wrong family)."""


class BackendLoadError(Step35Error):
    """A compute backend library could not be loaded (missing driver/runtime, version skew)."""


class PluginUnavailable(BackendLoadError):
    """An installed backend plugin cannot run here (no driver, no runtime); the message says why and what to do."""


class ClosedError(Step35Error, ValueError):
    """The object was used after ``close()``."""


class TokenizeError(Step35Error):
    """Tokenization failed inside llama.cpp."""


class Cancelled(Step35Error):
    """A long operation was stopped by its callback."""


class BuildError(Step35Error):
    """The installed native extension does not match this Python package."""


class ContextError(Step35Error):
    """llama.cpp could not create a context with the requested settings (often: not enough memory)."""


class ContextBusyError(Step35Error):
    """The context is already in use by another call (an unfinished stream, or another thread)."""


class ContextOverflowError(Step35Error, ValueError):
    """The input does not fit in the context; the message gives both sizes."""


class DecodeError(Step35Error):
    """llama.cpp failed while evaluating tokens; the message includes its reason."""


class QueueFullError(Step35Error):
    """An :class:`~step35.Engine`'s wait queue is full; retry after :attr:`retry_after` seconds."""

    retry_after: float = 1.0


class GrammarError(Step35Error, ValueError):
    """A grammar or JSON Schema cannot be used: GBNF that does not parse (llama.cpp's
    reason follows), a schema feature the converter cannot express (named with its
    schema path), or a grammar that allows no token where generation stands."""


class RPCError(Step35Error):
    """An RPC worker (``step35 rpc-server``) cannot be reached, speaks another
    protocol version, or went away while a model ran on it. The message names the
    worker and the reason; a model that lost a worker must be closed and loaded again."""


class QuantizeError(Step35Error):
    """llama.cpp could not quantize the model; the message includes its reason."""


class MemoryFitError(Step35Error, MemoryError):
    """The model and context would not fit in this machine's memory.

    The message holds the plan (what needs how much, where) and what would fit;
    ``.plan`` is the :class:`step35.tools.fit.FitPlan`.
    """

    def __init__(self, message: str, plan: object = None):
        super().__init__(message)
        self.plan = plan
