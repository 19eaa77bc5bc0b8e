"""The facts about GGUF files on disk: the split-set naming (``NAME-0000K-of-0000N.gguf``) and
:func:`model_files`, every file of a model.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

#: A part of a split set, as llama.cpp's ``gguf-split`` names them: ``NAME-0000K-of-0000N.gguf``.
SPLIT_RE = re.compile(r"^(?P<prefix>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def split_name(prefix: str, no: int, count: int) -> str:
    """The name of part ``no`` (from 1) of a ``count``-part split set called ``prefix``."""
    return f"{prefix}-{no:05d}-of-{count:05d}.gguf"


def split_set(name: str) -> tuple[str, list[str]] | None:
    """``(prefix, every part's name)`` of the split set ``name`` belongs to, or None for a single file.

    ``name`` may carry a folder (``Q4_K_S/M-00001-of-00003.gguf``); the parts keep it.
    """
    m = SPLIT_RE.match(name)
    if not m:
        return None
    count = int(m["count"])
    return m["prefix"], [split_name(m["prefix"], i, count) for i in range(1, count + 1)]


def model_files(path: str | os.PathLike[str]) -> list[Path]:
    """All files of the model at ``path``: itself, or every part of a split set.

    Any part of a ``NAME-0000K-of-0000N.gguf`` set names the whole set. Raises
    :class:`FileNotFoundError` listing whatever is missing.
    """
    p = Path(os.fspath(path)).expanduser()
    split = split_set(p.name)
    if split:
        files = [p.with_name(n) for n in split[1]]
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(
                errno.ENOENT,
                f"split model is incomplete: {len(missing)} of {len(files)} parts missing "
                f"({', '.join(f.name for f in missing)})",
                str(p),
            )
        return files
    if p.is_dir():
        raise IsADirectoryError(errno.EISDIR, "expected a .gguf model file, got a directory", str(p))
    if not p.is_file():
        raise FileNotFoundError(errno.ENOENT, "no such model file", str(p))
    return [p]


def split_paths(path: str | os.PathLike[str], n_split: int) -> list[Path]:
    """File names of a split set, as llama.cpp expects them (``NAME-00001-of-0000N.gguf``).

    ``path`` is the name the single-file model would have; its suffix is dropped.
    With ``n_split == 1`` this is just ``[path]``.
    """
    p = Path(path)
    if n_split == 1:
        return [p]
    stem = p.name[: -len(".gguf")] if p.name.endswith(".gguf") else p.name
    return [p.with_name(split_name(stem, i + 1, n_split)) for i in range(n_split)]
