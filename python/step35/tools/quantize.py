"""Quantize a GGUF with llama.cpp's quantizer.

Example::

    >>> step35.tools.quantize("model-f16.gguf", "model-Q4_K_S.gguf", "Q4_K_S")

The output is written to a temporary file next to ``dst`` and renamed into
place only when quantization succeeded, so a failure or Ctrl-C never leaves a
half-written model behind, and an existing ``dst`` is never replaced unless
``overwrite=True``.

Importance matrices: IQ4_XS (and the other formats here) work without one;
llama.cpp only insists on an imatrix for the 1-2 bit IQ1/IQ2 formats, which
are not offered yet.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from ..gguf.files import model_files

__all__ = ["quantize", "QUANT_TYPES"]


class _FileTypes(Mapping[str, int]):
    """Target format -> llama_ftype, the numbers from ``gguf.constants.LlamaFileType``
    (read on first lookup, so that ``import step35`` does not import numpy)."""

    _NAMES = ("F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q4_K_M", "Q4_K_S", "Q4_0",
              "IQ4_XS", "IQ4_NL", "Q3_K_M")

    def __getitem__(self, key: str) -> int:
        if key not in self._NAMES:
            raise KeyError(key)
        from gguf.constants import LlamaFileType

        return int(LlamaFileType["ALL_F32" if key == "F32" else f"MOSTLY_{key}"])

    def __iter__(self) -> Iterator[str]:
        return iter(self._NAMES)

    def __len__(self) -> int:
        return len(self._NAMES)

    def __repr__(self) -> str:
        return repr(dict(self))


#: Supported target formats -> llama_ftype.
QUANT_TYPES: Mapping[str, int] = _FileTypes()


def quantize(src: str | os.PathLike[str], dst: str | os.PathLike[str], type: str, *, threads: int = 0,
             allow_requantize: bool = False, quantize_output: bool = True, pure: bool = False,
             overwrite: bool = False) -> Path:
    """Write a ``type``-quantized copy of the GGUF at ``src`` to ``dst``.

    Args:
        src: the input GGUF (F32/F16/BF16; a quantized one needs ``allow_requantize``).
            A split set's first part quantizes the whole set into one file.
        dst: the output file.
        type: one of :data:`QUANT_TYPES` (case-insensitive): ``Q8_0``, ``Q4_K_S``,
            ``Q4_K_M``, ``IQ4_XS``, ...
        threads: quantization threads (0 = all cores).
        allow_requantize: accept an already-quantized input (loses quality).
        quantize_output: quantize ``output.weight`` too (llama.cpp's default).
        pure: use ``type`` for every tensor (no per-tensor mixture, as llama.cpp's ``--pure``).
        overwrite: replace an existing ``dst``.

    Returns:
        The path of the written file.

    Raises:
        ValueError: unknown type, ``dst`` is ``src``, bad threads.
        FileExistsError: ``dst`` exists and ``overwrite`` is False.
        QuantizeError: llama.cpp failed (its reason is in the message).
    """
    key = type.upper() if isinstance(type, str) else type
    if key not in QUANT_TYPES:
        raise ValueError(f"unknown quantization type {type!r}: expected one of {', '.join(QUANT_TYPES)}")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise ValueError(f"threads must be an int >= 0, got {threads!r}")
    src_path = model_files(src)[0]
    dst_path = Path(os.fspath(dst)).expanduser()
    if dst_path.resolve() in {f.resolve() for f in model_files(src)}:
        raise ValueError(f"dst {dst_path} is the input model; choose another output path")
    if dst_path.exists() and not overwrite:
        raise FileExistsError(errno.EEXIST, "output exists (pass overwrite=True to replace it)", str(dst_path))
    if not dst_path.parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, "output directory does not exist", str(dst_path.parent))

    from .._runtime.backends import core

    fd, tmp = tempfile.mkstemp(prefix=f".{dst_path.name}.", suffix=".part", dir=dst_path.parent)
    os.close(fd)
    try:
        core().quantize(str(src_path), tmp, QUANT_TYPES[key], threads, allow_requantize, quantize_output, pure,
                        False)
        os.replace(tmp, dst_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dst_path
