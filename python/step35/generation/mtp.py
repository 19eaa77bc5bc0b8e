"""Multi-token prediction (MTP): Step 3.5's own speculative decoding.

Step 3.5 Flash carries three MTP ("NextN") heads after its 45 layers. Each
head guesses one more token from the trunk's last hidden state; the model then
checks the guesses in one batch and keeps them up to the first one it would
not have produced itself. Output is unchanged (greedy output is the same token
for token, and a seeded sample is the same sample); only the speed changes.

The heads come either in the model's own GGUF (``blk.N.nextn.*`` with
``step35.nextn_predict_layers``) or in a separate ``mtp-*.gguf`` sidecar, the
file llama.cpp's converter writes with ``--mtp``::

    model = step35.Model("Step-3.5-Flash-Q4_K_S.gguf", mtp="auto")   # heads if the file has them
    model = step35.Model("trunk.gguf", mtp="mtp-trunk.gguf")        # heads from a sidecar
    out = model.generate("...", draft=2)                             # up to 2 drafted tokens per step
    print(out.stats.draft)                                           # drafted, accepted, by position

Drafting runs llama.cpp's own MTP driver (``common_speculative``, "draft-mtp",
one head per draft position as ``llama-server --spec-type draft-mtp`` runs it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

from ..errors import InvalidModelError
from ..gguf.files import model_files
from ..gguf.reader import GGUFHeader, read_header

__all__ = ["MAX_DRAFT", "SIDECAR_PREFIX", "MTPOption", "check_draft", "file_heads", "is_sidecar", "resolve"]

#: Step 3.5 has three MTP heads; one drafted token per head at most.
MAX_DRAFT = 3
#: The file-name prefix of an MTP-only sidecar (llama.cpp's converter, ``--mtp``).
SIDECAR_PREFIX = "mtp-"

#: What ``Model(mtp=...)`` takes: False (no heads), True (heads required),
#: "auto" (heads if available), or the path of a sidecar file.
MTPOption = Union[bool, str, "os.PathLike[str]"]

# metadata that must agree between a model and the sidecar of its heads
_SIDECAR_KEYS = ("embedding_length", "block_count", "nextn_predict_layers", "vocab_size", "expert_count",
                 "attention.key_length", "attention.value_length")


def _nextn(header: GGUFHeader) -> int:
    v = header.metadata.get(f"{header.architecture}.nextn_predict_layers", 0)
    return int(v) if isinstance(v, int) and not isinstance(v, bool) and v > 0 else 0


def file_heads(path: str | os.PathLike[str]) -> int:
    """MTP heads stored in the model file (every part of a split set): 0 when it has none."""
    files = model_files(path)
    header = read_header(files[0])
    n = _nextn(header)
    if not n:
        return 0
    n_layer = int(header.metadata.get(f"{header.architecture}.block_count", 0)) - n
    want = f"blk.{n_layer}.nextn.eh_proj.weight"
    headers = [header] + [read_header(f) for f in files[1:]]
    return n if any(t.name == want for h in headers for t in h.tensors) else 0


def is_sidecar(header: GGUFHeader) -> bool:
    """Whether a GGUF holds MTP heads without the trunk (an ``mtp-*.gguf`` sidecar)."""
    return _nextn(header) > 0 and not any(t.name == "blk.0.attn_norm.weight" for t in header.tensors)


def check_draft(draft: Any, heads: int) -> int:
    """``draft`` validated against the heads loaded; None means 1 when there are heads, else 0."""
    if draft is None:
        return 1 if heads else 0
    if isinstance(draft, bool) or not isinstance(draft, int) or not 0 <= draft <= MAX_DRAFT:
        raise ValueError(f"draft must be an int from 0 (off) to {MAX_DRAFT} (Step 3.5 has {MAX_DRAFT} MTP heads), "
                         f"got {draft!r}")
    if draft and not heads:
        raise ValueError(f"draft={draft} needs MTP heads: load the model with mtp=True (its file holds them) or "
                         "mtp='path/to/mtp-*.gguf' (a sidecar), or pass draft=0")
    if draft > heads:
        raise ValueError(f"draft={draft} but the model has {heads} MTP head(s): at most one drafted token per head")
    return draft


def _scalar(header: GGUFHeader, key: str) -> Any:
    if key == "vocab_size":
        tokens = header.metadata.get("tokenizer.ggml.tokens")
        return len(tokens) if isinstance(tokens, list) else None
    return header.metadata.get(f"{header.architecture}.{key}")


def _check_sidecar(model: GGUFHeader, model_path: Path, sidecar: GGUFHeader, sidecar_path: Path) -> None:
    if not is_sidecar(sidecar):
        what = "has no MTP heads" if not _nextn(sidecar) else "holds a whole model, not only MTP heads"
        raise InvalidModelError(f"{sidecar_path}: {what}; an MTP sidecar is the mtp-*.gguf file llama.cpp's "
                                "converter writes with --mtp")
    if sidecar.architecture != model.architecture:
        raise InvalidModelError(f"{sidecar_path}: its heads are for architecture {sidecar.architecture!r}, the "
                                f"model {model_path.name} is {model.architecture!r}")
    for key in _SIDECAR_KEYS:
        a, b = _scalar(model, key), _scalar(sidecar, key)
        if key in ("block_count", "nextn_predict_layers") and not _nextn(model):
            # a trunk-only file (converted with --no-mtp) has neither the heads nor their count
            a = b if key == "nextn_predict_layers" else (a or 0) + _nextn(sidecar)
        if a != b:
            raise InvalidModelError(f"{sidecar_path}: {key} is {b!r} but {model_path.name} has {a!r}: the sidecar "
                                    "belongs to another model")


def heads_for(path: str | os.PathLike[str], mtp: MTPOption, sidecar: Path | None = None) -> bool | Path:
    """``mtp`` resolved for the model file ``path``: True (the file's own heads), a sidecar's path, or False.

    ``sidecar``: a repo's ``mtp-*.gguf``, downloaded with the model (maybe not beside it), used when
    ``mtp`` is True or "auto" and the file has no heads of its own; otherwise the sidecar is the one
    ``mtp`` names or the one lying beside the file (:func:`resolve`). What :class:`~step35.Model`
    and the memory plan get.
    """
    if mtp is False or mtp is None:
        return False
    if sidecar is not None and (mtp is True or mtp == "auto") and not file_heads(path):
        mtp = sidecar
    first = model_files(path)[0]
    own, found = resolve(first, read_header(first), mtp)
    return found or own


def resolve(path: Path, header: GGUFHeader, mtp: MTPOption) -> tuple[bool, Path | None]:
    """How to load the heads for ``Model(path, mtp=mtp)``: (load the file's own heads, sidecar path or None).

    ``True`` and ``"auto"`` use the file's own heads, else an ``mtp-<name>``
    sidecar next to it; ``True`` raises when there is neither.
    """
    if is_sidecar(header):
        raise InvalidModelError(f"{path}: this file holds only MTP heads (a sidecar); load the model's own file "
                                f"and pass this one as mtp={str(path)!r}")
    if mtp is False or mtp is None:
        return False, None
    if mtp is True or mtp == "auto":
        if file_heads(path):
            return True, None
        beside = path.with_name(SIDECAR_PREFIX + path.name)
        if beside.is_file():
            _check_sidecar(header, path, read_header(beside), beside)
            return False, beside
        if mtp is True:
            raise InvalidModelError(f"{path}: the file has no MTP heads and there is no {beside.name} beside it; "
                                    "download a file with heads (see step35.tools.presets) or pass the sidecar as "
                                    "mtp='path/to/mtp-*.gguf'")
        return False, None
    if isinstance(mtp, (str, os.PathLike)):
        sidecar = Path(os.fspath(mtp)).expanduser()
        if not sidecar.is_file():
            raise FileNotFoundError(f"MTP sidecar not found: {sidecar}")
        _check_sidecar(header, path, read_header(sidecar), sidecar)
        return False, sidecar
    raise ValueError(f"mtp must be True, False, 'auto' or the path of an mtp-*.gguf sidecar, got {mtp!r}")
