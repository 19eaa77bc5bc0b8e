"""A small GGUF writer: the header (metadata and tensor table), then each tensor's data.

Writes what :mod:`step35.gguf.reader` reads, with the same value-type table.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from .reader import ARRAY, GGUF_MAGIC, SCALAR_FORMATS, STRING

#: The GGUF version written.
VERSION = 3
#: Where each tensor's data starts, and the data section itself (``general.alignment``'s default).
ALIGNMENT = 32


@dataclass(frozen=True)
class KV:
    """One metadata entry: key, GGUF value type, value (and the element type of an array)."""

    key: str
    vtype: int
    value: Any
    subtype: int | None = None


@dataclass(frozen=True)
class Tensor:
    """One entry of the tensor table: name, shape (ggml order), ggml type id and data size in bytes."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    nbytes: int


def _pack_str(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _pack_kv(kv: KV) -> bytes:
    out = [_pack_str(kv.key), struct.pack("<I", kv.vtype)]
    if kv.vtype == STRING:
        out.append(_pack_str(kv.value))
    elif kv.vtype == ARRAY:
        assert kv.subtype is not None
        out.append(struct.pack("<IQ", kv.subtype, len(kv.value)))
        if kv.subtype == STRING:
            out.extend(_pack_str(s) for s in kv.value)
        else:
            fmt = SCALAR_FORMATS[kv.subtype]
            out.append(struct.pack("<" + fmt[1] * len(kv.value), *kv.value))
    else:
        out.append(struct.pack(SCALAR_FORMATS[kv.vtype], kv.value))
    return b"".join(out)


def _pad(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def write_gguf(f: BinaryIO, kvs: Sequence[KV], tensors: Sequence[Tensor], data: Iterable[bytes] | None) -> None:
    """Write one GGUF file to ``f``; ``data`` yields each tensor's bytes, in the table's order.

    ``data=None`` writes the header only and extends the file (sparsely: no disk
    space used) to the size the tensor data would take.
    """
    head = [struct.pack("<4sIQQ", GGUF_MAGIC, VERSION, len(tensors), len(kvs))]
    head += [_pack_kv(kv) for kv in kvs]
    off = 0
    for t in tensors:
        head.append(_pack_str(t.name))
        head.append(struct.pack("<I", len(t.shape)))
        head.append(struct.pack("<" + "Q" * len(t.shape), *t.shape))
        head.append(struct.pack("<IQ", t.ggml_type, off))
        off += _pad(t.nbytes)
    blob = b"".join(head)
    f.write(blob)
    f.write(b"\0" * (_pad(len(blob)) - len(blob)))
    if data is None:
        f.truncate(_pad(len(blob)) + off)
        return
    for t, b in zip(tensors, data, strict=True):
        if len(b) != t.nbytes:
            raise ValueError(f"{t.name}: {len(b)} bytes, expected {t.nbytes}")
        f.write(b)
        f.write(b"\0" * (_pad(len(b)) - len(b)))
