"""step35: run StepFun's Step 3.5 Flash locally, from Python, on llama.cpp.

Quick start::

    import step35
    print(step35.backends())                 # what can run here
    path = step35.testing.model_path("tiny")  # a built-in tiny Step 3.5 model
    with step35.Model(path) as model:
        print(model.architecture, model.n_params, model.tokenize("Hello"))
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import errors
from ._backends import BackendReport, backends
from .errors import (
    BackendLoadError,
    Cancelled,
    ClosedError,
    InvalidModelError,
    ModelLoadError,
    Step35Error,
    TokenizeError,
)
from .model import Model

__all__ = [
    "__version__",
    "Model",
    "backends",
    "BackendReport",
    "errors",
    "Step35Error",
    "ModelLoadError",
    "InvalidModelError",
    "BackendLoadError",
    "ClosedError",
    "TokenizeError",
    "Cancelled",
    "testing",
]


def __getattr__(name: str):
    # `step35.testing` imports numpy/gguf: load it only when asked for.
    if name == "testing":
        import importlib

        return importlib.import_module(".testing", __name__)
    raise AttributeError(f"module 'step35' has no attribute {name!r}")
