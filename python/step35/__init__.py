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

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

from . import errors
from ._runtime.backends import BackendReport, backends
from ._version import __version__
from .engine import Engine, EngineStream
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
from .generation.constraints import json_schema_to_grammar
from .generation.params import SamplingParams
from .generation.stream import Completion, CompletionStream, DraftStats, GenerationStats
from .model import Model
from .tools.quantize import QUANT_TYPES, quantize

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

#: Public modules whose home is a subpackage, by the name ``step35`` gives them (``step35.fit``,
#: ``import step35.fit``, ``from step35.hub import resolve_model`` keep working).
MODULE_HOMES = {
    "fit": "step35.tools.fit", "hub": "step35.tools.hub", "rpc": "step35.tools.rpc",
    "presets": "step35.tools.presets", "bench": "step35.tools.bench", "mtp": "step35.generation.mtp",
    "constraints": "step35.generation.constraints", "toolcalls": "step35.chat.toolcalls",
    "chat_template": "step35.chat.template", "plugins": "step35._runtime.plugins",
}
# Imported on first use (they pull in numpy): name -> module, and the module's attribute (None: the module).
_LAZY: dict[str, tuple[str, str | None]] = {
    "testing": ("step35.testing", None),
    **{name: (home, None) for name, home in MODULE_HOMES.items()},
    "Context": ("step35.context", "Context"),
    "ContextParams": ("step35.context", "ContextParams"),
}


def __getattr__(name: str):
    # `step35.testing` imports numpy/gguf: load it only when asked for.
    if name in _LAZY:
        module, attr = _LAZY[name]
        mod = importlib.import_module(module)
        return mod if attr is None else getattr(mod, attr)
    raise AttributeError(f"module 'step35' has no attribute {name!r}")


class _ModuleHomes(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``step35.<name>`` of :data:`MODULE_HOMES` as the module at its home (the same object)."""

    def find_spec(self, fullname: str, path: object = None,
                  target: object = None) -> importlib.machinery.ModuleSpec | None:
        prefix, _, name = fullname.partition(".")
        if prefix != __name__ or name not in MODULE_HOMES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = importlib.import_module(MODULE_HOMES[spec.name.partition(".")[2]])
        spec.loader_state = module.__spec__  # the import sets __spec__ to this alias's spec: kept to put back
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run (the module was imported at its home); its own spec is put back."""
        module.__spec__ = module.__spec__.loader_state


if not any(isinstance(f, _ModuleHomes) for f in sys.meta_path):
    sys.meta_path.append(_ModuleHomes())
