"""step35: run StepFun's Step 3.5 Flash locally, from Python, on llama.cpp.

Quick start::

    import step35
    print(step35.backends())                 # what can run here
    path = step35.testing.model_path("tiny")  # a built-in tiny Step 3.5 model
    with step35.Model(path) as model:
        print(model.architecture, model.n_params, model.tokenize("Hello"))
        print(model.generate("Hello", max_tokens=16, temperature=0).text)
        reply = model.chat([{"role": "user", "content": "Hi!"}], max_tokens=64)
"""

from __future__ import annotations

from . import errors
from ._backends import BackendReport, backends
from ._version import __version__
from .errors import (
    BackendLoadError,
    Cancelled,
    ClosedError,
    ContextBusyError,
    ContextError,
    ContextOverflowError,
    DecodeError,
    GrammarError,
    InvalidModelError,
    MemoryFitError,
    ModelLoadError,
    PluginUnavailable,
    QuantizeError,
    QueueFullError,
    RPCError,
    Step35Error,
    TokenizeError,
)
from .constraints import json_schema_to_grammar
from .engine import Engine, EngineStream
from .generation import Completion, CompletionStream, DraftStats, GenerationStats, SamplingParams
from .model import Model
from .quantize import QUANT_TYPES, quantize

__all__ = [
    "__version__",
    "Model",
    "Engine",
    "EngineStream",
    "backends",
    "BackendReport",
    "errors",
    "Step35Error",
    "ModelLoadError",
    "InvalidModelError",
    "BackendLoadError",
    "PluginUnavailable",
    "ClosedError",
    "TokenizeError",
    "Cancelled",
    "ContextError",
    "ContextBusyError",
    "ContextOverflowError",
    "DecodeError",
    "QuantizeError",
    "QueueFullError",
    "GrammarError",
    "MemoryFitError",
    "RPCError",
    "json_schema_to_grammar",
    "Context",
    "ContextParams",
    "SamplingParams",
    "Completion",
    "CompletionStream",
    "GenerationStats",
    "DraftStats",
    "quantize",
    "QUANT_TYPES",
    "testing",
    "fit",
    "plugins",
    "presets",
    "rpc",
    "mtp",
]

# Imported on first use (they pull in numpy): name -> submodule.
_LAZY = {"testing": ".testing", "fit": ".fit", "presets": ".presets", "rpc": ".rpc", "mtp": ".mtp",
         "Context": ".context", "ContextParams": ".context"}
_LAZY_MODULES = {"testing", "fit", "presets", "rpc", "mtp"}


def __getattr__(name: str):
    # `step35.testing` imports numpy/gguf: load it only when asked for.
    if name in _LAZY:
        import importlib

        mod = importlib.import_module(_LAZY[name], __name__)
        return mod if name in _LAZY_MODULES else getattr(mod, name)
    raise AttributeError(f"module 'step35' has no attribute {name!r}")
