"""A small, strict reader of GGUF headers (metadata and tensor table).

Reads only the header, never the tensor data, from any binary file object, so
it works on local files and on the byte ranges fetched of a Hub file. Corrupt
or truncated input raises :class:`~step35.errors.InvalidModelError`; it never
tries to allocate more than the file could hold.
"""

from __future__ import annotations

import functools
import io
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import InvalidModelError

GGUF_MAGIC = b"GGUF"


#: GGUF metadata value types: the scalar ones' ``struct`` formats, by type id, then the two others.
SCALAR_FORMATS = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d",
}


STRING, ARRAY = 8, 9


_MAX_COUNT = 1 << 40


@dataclass(frozen=True)
class TensorInfo:
    """One entry of a GGUF tensor table."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int

    @property
    def n_elements(self) -> int:
        """Number of elements."""
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        """Size of the tensor's data in bytes, from ggml's block sizes."""
        block, size = _ggml_type_sizes()[self.ggml_type]
        return self.n_elements // block * size


@dataclass
class GGUFHeader:
    """The parsed header of one GGUF file."""

    version: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo] = field(default_factory=list)
    header_size: int = 0

    @property
    def architecture(self) -> str | None:
        """``general.architecture``, if present."""
        arch = self.metadata.get("general.architecture")
        return arch if isinstance(arch, str) else None


@functools.lru_cache(maxsize=1)
def _ggml_type_sizes() -> dict[int, tuple[int, int]]:
    """ggml type id -> (block size, bytes per block), for the types llama.cpp can read (gguf-py's table)."""
    from gguf.constants import GGML_QUANT_SIZES

    return {int(t): v for t, v in GGML_QUANT_SIZES.items()}


class _Reader:
    def __init__(self, f: BinaryIO, name: str, limit: int | None):
        self.f, self.name, self.limit, self.pos = f, name, limit, 0

    def take(self, n: int) -> bytes:
        if n < 0 or (self.limit is not None and self.pos + n > self.limit):
            raise InvalidModelError(f"{self.name} is truncated or corrupt (header runs past the end of the file)")
        b = self.f.read(n)
        if len(b) != n:
            raise InvalidModelError(f"{self.name} is truncated or corrupt (header runs past the end of the file)")
        self.pos += n
        return b

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def count(self, what: str) -> int:
        n = self.unpack("<Q")
        if n > _MAX_COUNT or (self.limit is not None and n > self.limit):
            raise InvalidModelError(f"{self.name} is corrupt: implausible {what} count {n}")
        return n

    def string(self, what: str | None = None) -> str:
        """A GGUF string; ``what`` names it when it must be valid UTF-8 (keys), else bad bytes are replaced."""
        raw = self.take(self.count("string length"))
        if what is None:
            return raw.decode("utf-8", errors="replace")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidModelError(f"{self.name} is corrupt: a {what} is not UTF-8 ({raw[:40]!r})") from None

    def value(self, vtype: int, depth: int = 0) -> Any:
        if vtype in SCALAR_FORMATS:
            return self.unpack(SCALAR_FORMATS[vtype])
        if vtype == STRING:
            return self.string()
        if vtype == ARRAY and depth < 4:
            itype = self.unpack("<I")
            n = self.count("array length")
            if itype in SCALAR_FORMATS:
                fmt = SCALAR_FORMATS[itype]
                size = struct.calcsize(fmt)
                data = self.take(n * size)
                return list(struct.unpack(f"<{n}{fmt[1]}", data))
            return [self.value(itype, depth + 1) for _ in range(n)]
        raise InvalidModelError(f"{self.name} is corrupt: unknown metadata value type {vtype}")


def read_header(source: str | os.PathLike[str] | BinaryIO, *, name: str | None = None) -> GGUFHeader:
    """Parse the GGUF header of a path or binary file object.

    Raises :class:`InvalidModelError` naming the file when it is not GGUF or
    is truncated/corrupt.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        with open(path, "rb", buffering=1 << 20) as f:
            return read_header(f, name=name or str(path))
    f = source
    label = name or getattr(f, "name", "<stream>")
    limit = None
    try:
        cur = f.tell()
        f.seek(0, os.SEEK_END)
        limit = f.tell() - cur
        f.seek(cur)
    except (OSError, AttributeError, io.UnsupportedOperation):
        pass
    r = _Reader(f, str(label), limit)
    magic = f.read(4)
    r.pos = len(magic)
    if magic != GGUF_MAGIC:
        raise InvalidModelError(
            f"{label} is not a GGUF file (it starts with {magic!r}, GGUF files start with b'GGUF'). "
            "Pass a .gguf model file."
        )
    version = r.unpack("<I")
    if version not in (2, 3):
        raise InvalidModelError(f"{label}: unsupported GGUF version {version} (llama.cpp reads 2 and 3)")
    n_tensors = r.count("tensor")
    n_kv = r.count("metadata")
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = r.string("metadata key")
        metadata[key] = r.value(r.unpack("<I"))
    tensors = []
    for _ in range(n_tensors):
        tname = r.string()
        n_dims = r.unpack("<I")
        if n_dims > 8:
            raise InvalidModelError(f"{label} is corrupt: tensor {tname!r} has {n_dims} dimensions")
        shape = tuple(r.unpack("<Q") for _ in range(n_dims))
        ttype = r.unpack("<I")
        if ttype not in _ggml_type_sizes():
            raise InvalidModelError(f"{label} is corrupt: tensor {tname!r} has ggml type {ttype}, which this "
                                    "llama.cpp does not know (or no longer supports)")
        offset = r.unpack("<Q")
        tensors.append(TensorInfo(tname, shape, ttype, offset))
    return GGUFHeader(version, metadata, tensors, r.pos)


# Keys written only by the early StepFun llama.cpp fork; upstream cannot load these files.
_FORK_ERA_KEYS = ("swiglu_limits", "swiglu_limits_shared", "rope.scaling.apply_mask")


_UPSTREAM_GGUFS = "stepfun-ai/Step-3.5-Flash-GGUF-Q4_K_S (Q4_K_S) or ubergarm/Step-3.5-Flash-GGUF (IQ4_XS)"


def check_model_header(header: GGUFHeader, path: str | os.PathLike[str]) -> None:
    """Raise :class:`InvalidModelError` naming ``path`` unless the header describes a model llama.cpp may load.

    It must name its architecture and that architecture's layer count, and not
    be an early-fork Step 3.5 GGUF (:func:`reject_fork_era`).
    """
    arch = header.architecture
    if arch is None:
        raise InvalidModelError(f"{path} has no general.architecture (a string): it is not a model GGUF")
    if not isinstance(header.metadata.get(f"{arch}.block_count"), int):
        raise InvalidModelError(f"{path} has no {arch}.block_count: not a {arch!r} model llama.cpp can load "
                                "(unknown architecture, or a corrupt header)")
    reject_fork_era(header, path)


def reject_fork_era(header: GGUFHeader, path: str | os.PathLike[str]) -> None:
    """Raise :class:`InvalidModelError` for a GGUF written by the early StepFun llama.cpp fork.

    Upstream llama.cpp ignores that fork's keys and would run such a model without its clamps.
    """
    arch = header.architecture
    fork = [k for k in header.metadata if arch and any(k == f"{arch}.{suffix}" for suffix in _FORK_ERA_KEYS)]
    if fork:
        raise InvalidModelError(
            f"{path} was written by the early StepFun llama.cpp fork (it has {', '.join(fork)}), "
            f"which upstream llama.cpp cannot load. Download an upstream-format GGUF instead, "
            f"e.g. {_UPSTREAM_GGUFS}."
        )
