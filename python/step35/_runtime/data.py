"""Files the package ships in ``step35/data/``: the Step 3.5 Flash chat template and the GPT-2 vocabulary.

A wheel carries them; in a source checkout they come from the materialized
llama.cpp source (``llama.cpp/source/models``).
"""

from __future__ import annotations

import pathlib

VOCAB_FILE = "ggml-vocab-gpt-2.gguf"
TEMPLATE_FILE = "StepFun3.5-Flash.jinja"


def _data_file(name: str, fallback: pathlib.Path) -> pathlib.Path:
    candidates: list[pathlib.Path] = []
    try:
        from importlib import resources

        res = resources.files("step35").joinpath("data", name)
        if res.is_file():
            return pathlib.Path(str(res))
        candidates.append(pathlib.Path(str(res)))
    except (ImportError, TypeError):  # package not importable as such (e.g. loaded from a path)
        pass
    here = pathlib.Path(__file__).resolve()
    for p in (here.parent.parent / "data" / name, fallback):
        if p.is_file():
            return p
        candidates.append(p)
    raise FileNotFoundError(
        f"{name} not found; looked in: " + ", ".join(str(c) for c in dict.fromkeys(candidates))
        + ". Install the step35 wheel (it ships step35/data/) or materialize llama.cpp/source in the repo."
    )


def _repo_root() -> pathlib.Path:
    return pathlib.Path(__file__).resolve().parents[3]


def vocab_path() -> pathlib.Path:
    """Path of ``ggml-vocab-gpt-2.gguf`` (package data, else the repo's llama.cpp source)."""
    return _data_file(VOCAB_FILE, _repo_root() / "llama.cpp" / "source" / "models" / VOCAB_FILE)


def chat_template_path() -> pathlib.Path:
    """Path of the Step 3.5 Flash chat template (package data, else the repo's llama.cpp source)."""
    return _data_file(
        TEMPLATE_FILE, _repo_root() / "llama.cpp" / "source" / "models" / "templates" / TEMPLATE_FILE)
