"""The cache of built test models: :func:`model_path` builds a model once and reuses it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import tempfile
from typing import Any

from ..gguf.files import split_paths
from .build import BUILDER_VERSION, agent_links, build_model, build_mtp_sidecar
from .specs import ModelSpec, resolve_spec, trunk_spec, vocab


def cache_dir() -> pathlib.Path:
    """Model cache directory: ``$STEP35_CACHE/models`` or ``~/.cache/step35/models``."""
    root = os.environ.get("STEP35_CACHE")
    base = pathlib.Path(root).expanduser() if root else pathlib.Path.home() / ".cache" / "step35"
    return base / "models"


def _cache_key(spec: ModelSpec, seed: int, n_split: int, legacy_fork_keys: bool) -> str:
    fields: dict[str, Any] = {"spec": dataclasses.asdict(spec), "seed": seed, "n_split": n_split,
                              "legacy": legacy_fork_keys, "builder": BUILDER_VERSION, "sources": vocab().digest}
    if spec.trunk == "agent":  # the links its output head is made of (other keys stay as they were)
        fields["agent"] = [list(link) for link in agent_links()]
    payload = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def mtp_sidecar_paths(size: str | ModelSpec = "tiny-mtp", seed: int = 0) -> tuple[pathlib.Path, pathlib.Path]:
    """A cached trunk-only model and the ``mtp-*.gguf`` sidecar with its heads (the two files llama.cpp's
    converter writes with ``--no-mtp`` and ``--mtp``), built on first use, side by side."""
    spec = resolve_spec(size)
    trunk = model_path(trunk_spec(spec), seed)
    sidecar = trunk.with_name("mtp-" + trunk.name)
    if not sidecar.is_file():
        tmp = trunk.with_name(f".{sidecar.name}.{os.getpid()}.build")
        build_mtp_sidecar(tmp, spec, seed=seed)
        os.replace(tmp, sidecar)
    return trunk, sidecar


def model_path(size: str | ModelSpec = "tiny", seed: int = 0, *, n_split: int = 1,
               legacy_fork_keys: bool = False) -> pathlib.Path:
    """Return the path of a cached model, building it on first use.

    The file name is keyed by a hash of the spec, seed, split count, builder version
    and the tokenizer/template sources, so changed inputs never reuse stale files.
    The model is built in a private temporary directory and moved into place with
    ``os.replace`` (the first split last), so concurrent callers are safe. For a
    split set the first file is returned (what llama.cpp should be given).
    """
    spec = resolve_spec(size)
    key = _cache_key(spec, seed, n_split, legacy_fork_keys)
    d = cache_dir()
    stem = f"step35-{spec.name}-seed{seed}{'-fork' if legacy_fork_keys else ''}-{key}"
    final = split_paths(d / f"{stem}.gguf", n_split)
    if all(p.is_file() for p in final):
        return final[0]
    d.mkdir(parents=True, exist_ok=True)
    tmpdir = pathlib.Path(tempfile.mkdtemp(prefix=".build-", dir=d))
    try:
        built = build_model(tmpdir / f"{stem}.gguf", spec, seed=seed, n_split=n_split,
                            legacy_fork_keys=legacy_fork_keys)
        for src, dst in reversed(list(zip(built, final))):
            os.replace(src, dst)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return final[0]


#: The quantization each size is benchmarked in (``bench_model_path``).
BENCH_QUANT: dict[str, str | None] = {"tiny": None, "small": None, "mid": "Q4_K_S", "mid-mtp": "Q4_K_S"}


def bench_model_path(size: str = "tiny", quant: str | None = "default", seed: int = 0) -> pathlib.Path:
    """A cached benchmark model: ``size`` built by :func:`model_path`, then quantized with llama.cpp.

    ``quant="default"`` uses :data:`BENCH_QUANT` (``mid`` -> ``Q4_K_S``, as users
    run Step 3.5 Flash); ``None`` keeps the builder's F16. The quantized file is
    cached beside the original and reused.
    """
    src = model_path(size, seed)
    q = BENCH_QUANT.get(size) if quant == "default" else quant
    if not q:
        return src
    dst = src.with_name(f"{src.stem}-{q.upper()}.gguf")
    if not dst.is_file():
        from ..tools.quantize import quantize

        quantize(src, dst, q)
    return dst
