"""Hostile GGUF files, made from a valid one by byte surgery (for test_hostile.py and scripts/hostile_corpus.py).

:class:`Layout` walks a GGUF header and records where every field is, so a
case can overwrite a count, an offset or a type in place, or rebuild the file
with a metadata value or a tensor record replaced. Every case is a function
``(src, dst_dir) -> path to load`` in :data:`CASES`, named for the table.
"""

from __future__ import annotations

import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ALIGNMENT = 32
_SCALAR_SIZE = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
STRING, ARRAY, UINT32, INT32, FLOAT32 = 8, 9, 4, 5, 6


@dataclass
class KV:
    key: str
    start: int  # where the record starts (the key's length)
    vtype_at: int
    value_at: int
    end: int
    vtype: int
    count_at: int | None = None  # arrays: where the element count is
    subtype: int | None = None


@dataclass
class TensorRecord:
    name: str
    start: int
    n_dims_at: int
    dims_at: list[int]
    type_at: int
    offset_at: int
    end: int
    offset: int


@dataclass
class Layout:
    """Where every field of a GGUF header is (byte offsets into the file)."""

    raw: bytes
    n_tensors_at: int = 8
    n_kv_at: int = 16
    kvs: list[KV] = field(default_factory=list)
    tensors: list[TensorRecord] = field(default_factory=list)
    header_end: int = 0
    data_start: int = 0

    @classmethod
    def read(cls, path: Path) -> Layout:
        raw = path.read_bytes()
        lay = cls(raw)
        pos = 24
        n_tensors, n_kv = struct.unpack_from("<QQ", raw, 8)

        def string(p: int) -> tuple[str, int]:
            (n,) = struct.unpack_from("<Q", raw, p)
            return raw[p + 8:p + 8 + n].decode("utf-8"), p + 8 + n

        for _ in range(n_kv):
            start = pos
            key, pos = string(pos)
            vtype_at = pos
            (vtype,) = struct.unpack_from("<I", raw, pos)
            pos += 4
            value_at = pos
            count_at = subtype = None
            if vtype == STRING:
                _, pos = string(pos)
            elif vtype == ARRAY:
                subtype, count = struct.unpack_from("<IQ", raw, pos)
                count_at = pos + 4
                pos += 12
                for _ in range(count):
                    if subtype == STRING:
                        _, pos = string(pos)
                    else:
                        pos += _SCALAR_SIZE[subtype]
            else:
                pos += _SCALAR_SIZE[vtype]
            lay.kvs.append(KV(key, start, vtype_at, value_at, pos, vtype, count_at, subtype))
        for _ in range(n_tensors):
            start = pos
            name, pos = string(pos)
            n_dims_at = pos
            (n_dims,) = struct.unpack_from("<I", raw, pos)
            pos += 4
            dims_at = [pos + 8 * i for i in range(n_dims)]
            pos += 8 * n_dims
            type_at = pos
            offset_at = pos + 4
            (offset,) = struct.unpack_from("<Q", raw, offset_at)
            pos += 12
            lay.tensors.append(TensorRecord(name, start, n_dims_at, dims_at, type_at, offset_at, pos, offset))
        lay.header_end = pos
        lay.data_start = (pos + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT
        return lay

    def kv(self, key: str) -> KV:
        return next(k for k in self.kvs if k.key == key)

    def rebuild(self, kv_blobs: list[bytes], tensor_blobs: list[bytes]) -> bytes:
        """A file with these metadata and tensor records, and the original tensor data."""
        head = self.raw[:8] + struct.pack("<QQ", len(tensor_blobs), len(kv_blobs)) + b"".join(kv_blobs) \
            + b"".join(tensor_blobs)
        pad = (len(head) + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT - len(head)
        return head + b"\0" * pad + self.raw[self.data_start:]

    def blobs(self) -> tuple[list[bytes], list[bytes]]:
        return ([self.raw[k.start:k.end] for k in self.kvs], [self.raw[t.start:t.end] for t in self.tensors])


def pack_str(s: str | bytes) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def kv_blob(key: str, vtype: int, payload: bytes) -> bytes:
    return pack_str(key) + struct.pack("<I", vtype) + payload


def _patched(src: Path, dst: Path, at: int, fmt: str, value: int) -> Path:
    raw = bytearray(src.read_bytes())
    struct.pack_into(fmt, raw, at, value)
    dst.write_bytes(bytes(raw))
    return dst


# --------------------------------------------------------------------------- the cases

Case = Callable[[Path, Path], Path]
CASES: dict[str, Case] = {}


def case(name: str) -> Callable[[Case], Case]:
    def register(fn: Case) -> Case:
        CASES[name] = fn
        return fn
    return register


for _pct in range(5, 100, 5):
    def _truncate(src: Path, d: Path, pct: int = _pct) -> Path:
        raw = src.read_bytes()
        out = d / f"truncated-{pct}.gguf"
        out.write_bytes(raw[:len(raw) * pct // 100])
        return out
    CASES[f"truncated at {_pct}%"] = _truncate

for _bits in (32, 63):
    for _field in ("n_tensors", "n_kv"):
        def _count(src: Path, d: Path, fld: str = _field, bits: int = _bits) -> Path:
            lay = Layout.read(src)
            at = lay.n_tensors_at if fld == "n_tensors" else lay.n_kv_at
            return _patched(src, d / f"{fld}-2^{bits}.gguf", at, "<Q", 2**bits)
        CASES[f"{_field} = 2^{_bits}"] = _count

    def _key_len(src: Path, d: Path, bits: int = _bits) -> Path:
        lay = Layout.read(src)
        return _patched(src, d / f"keylen-2^{bits}.gguf", lay.kvs[0].start, "<Q", 2**bits)
    CASES[f"metadata key length = 2^{_bits}"] = _key_len

    def _str_len(src: Path, d: Path, bits: int = _bits) -> Path:
        lay = Layout.read(src)
        kv = lay.kv("general.architecture")
        return _patched(src, d / f"strlen-2^{bits}.gguf", kv.value_at, "<Q", 2**bits)
    CASES[f"string value length = 2^{_bits}"] = _str_len

    def _arr_len(src: Path, d: Path, bits: int = _bits) -> Path:
        lay = Layout.read(src)
        kv = lay.kv("tokenizer.ggml.tokens")
        assert kv.count_at is not None
        return _patched(src, d / f"arrlen-2^{bits}.gguf", kv.count_at, "<Q", 2**bits)
    CASES[f"token array count = 2^{_bits}"] = _arr_len

    def _name_len(src: Path, d: Path, bits: int = _bits) -> Path:
        lay = Layout.read(src)
        return _patched(src, d / f"namelen-2^{bits}.gguf", lay.tensors[0].start, "<Q", 2**bits)
    CASES[f"tensor name length = 2^{_bits}"] = _name_len


@case("tensor offset past EOF")
def _offset_past_eof(src: Path, d: Path) -> Path:
    lay = Layout.read(src)
    t = lay.tensors[-1]
    return _patched(src, d / "offset-past-eof.gguf", t.offset_at, "<Q", len(lay.raw) * 4 // ALIGNMENT * ALIGNMENT)


@case("tensor offset 2^63")
def _offset_huge(src: Path, d: Path) -> Path:
    lay = Layout.read(src)
    return _patched(src, d / "offset-2^63.gguf", lay.tensors[1].offset_at, "<Q", 2**63)


@case("overlapping tensors")
def _overlap(src: Path, d: Path) -> Path:
    lay = Layout.read(src)
    return _patched(src, d / "overlap.gguf", lay.tensors[1].offset_at, "<Q", lay.tensors[0].offset)


@case("tensor dims whose product overflows")
def _dims_overflow(src: Path, d: Path) -> Path:
    lay = Layout.read(src)
    t = next(t for t in lay.tensors if len(t.dims_at) >= 2)
    raw = bytearray(lay.raw)
    for at in t.dims_at:
        struct.pack_into("<Q", raw, at, 2**40)
    out = d / "dims-overflow.gguf"
    out.write_bytes(bytes(raw))
    return out


@case("tensor dim = 2^63")
def _dim_huge(src: Path, d: Path) -> Path:
    lay = Layout.read(src)
    return _patched(src, d / "dim-2^63.gguf", lay.tensors[0].dims_at[0], "<Q", 2**63)


@case("tensor with 9 dims")
def _many_dims(src: Path, d: Path) -> Path:
    lay = Layout.read(src)
    return _patched(src, d / "dims-9.gguf", lay.tensors[0].n_dims_at, "<I", 9)


@case("unknown ggml type 999")
def _type_unknown(src: Path, d: Path) -> Path:
    lay = Layout.read(src)
    return _patched(src, d / "type-999.gguf", lay.tensors[0].type_at, "<I", 999)


@case("removed ggml type 4 (Q4_2)")
def _type_removed(src: Path, d: Path) -> Path:
    lay = Layout.read(src)
    return _patched(src, d / "type-4.gguf", lay.tensors[0].type_at, "<I", 4)


@case("unknown metadata value type")
def _vtype_unknown(src: Path, d: Path) -> Path:
    lay = Layout.read(src)
    return _patched(src, d / "vtype-99.gguf", lay.kvs[1].vtype_at, "<I", 99)


for _align in (0, 3, 2**31):
    def _bad_alignment(src: Path, d: Path, align: int = _align) -> Path:
        lay = Layout.read(src)
        kvs, tensors = lay.blobs()
        kvs = [b for b, k in zip(kvs, lay.kvs) if k.key != "general.alignment"]
        kvs.append(kv_blob("general.alignment", UINT32, struct.pack("<I", align)))
        out = d / f"alignment-{align}.gguf"
        out.write_bytes(lay.rebuild(kvs, tensors))
        return out
    CASES[f"general.alignment = {_align}"] = _bad_alignment


@case("duplicate tensor names")
def _dup_names(src: Path, d: Path) -> Path:
    lay = Layout.read(src)
    kvs, tensors = lay.blobs()
    first, second = lay.tensors[0], lay.tensors[1]
    tensors[1] = pack_str(first.name) + lay.raw[second.n_dims_at:second.end]
    out = d / "duplicate-names.gguf"
    out.write_bytes(lay.rebuild(kvs, tensors))
    return out


@case("duplicate metadata keys")
def _dup_keys(src: Path, d: Path) -> Path:
    lay = Layout.read(src)
    kvs, tensors = lay.blobs()
    kv = lay.kv("general.architecture")
    kvs.append(lay.raw[kv.start:kv.end])
    out = d / "duplicate-keys.gguf"
    out.write_bytes(lay.rebuild(kvs, tensors))
    return out


def _replace_kv(src: Path, out: Path, key: str, blob: bytes) -> Path:
    lay = Layout.read(src)
    kvs, tensors = lay.blobs()
    i = next(i for i, k in enumerate(lay.kvs) if k.key == key)
    kvs[i] = blob
    out.write_bytes(lay.rebuild(kvs, tensors))
    return out


@case("tokenizer tokens of the wrong type (int32)")
def _tokens_wrong_type(src: Path, d: Path) -> Path:
    lay = Layout.read(src)
    n = struct.unpack_from("<Q", lay.raw, lay.kv("tokenizer.ggml.tokens").count_at)[0]
    blob = kv_blob("tokenizer.ggml.tokens", ARRAY, struct.pack("<IQ", INT32, n) + b"\0" * (4 * n))
    return _replace_kv(src, d / "tokens-int32.gguf", "tokenizer.ggml.tokens", blob)


@case("tokenizer tokens not an array")
def _tokens_scalar(src: Path, d: Path) -> Path:
    blob = kv_blob("tokenizer.ggml.tokens", STRING, pack_str("hello"))
    return _replace_kv(src, d / "tokens-string.gguf", "tokenizer.ggml.tokens", blob)


@case("tokenizer token_type shorter than tokens")
def _token_type_short(src: Path, d: Path) -> Path:
    blob = kv_blob("tokenizer.ggml.token_type", ARRAY, struct.pack("<IQ", INT32, 3) + struct.pack("<3i", 1, 1, 1))
    return _replace_kv(src, d / "token-type-short.gguf", "tokenizer.ggml.token_type", blob)


@case("duplicate token texts")
def _duplicate_tokens(src: Path, d: Path) -> Path:
    lay = Layout.read(src)
    kv = lay.kv("tokenizer.ggml.tokens")
    assert kv.count_at is not None
    n = struct.unpack_from("<Q", lay.raw, kv.count_at)[0]
    pos, texts = kv.count_at + 8, []
    for _ in range(n):
        (length,) = struct.unpack_from("<Q", lay.raw, pos)
        texts.append(lay.raw[pos + 8:pos + 8 + length])
        pos += 8 + length
    texts[1] = texts[0]  # same count, one text twice
    blob = kv_blob("tokenizer.ggml.tokens", ARRAY, struct.pack("<IQ", STRING, n) + b"".join(pack_str(t) for t in texts))
    return _replace_kv(src, d / "duplicate-tokens.gguf", "tokenizer.ggml.tokens", blob)


@case("tokenizer merges of the wrong type (float32)")
def _merges_wrong_type(src: Path, d: Path) -> Path:
    blob = kv_blob("tokenizer.ggml.merges", ARRAY, struct.pack("<IQ", FLOAT32, 2) + struct.pack("<2f", 1.0, 2.0))
    return _replace_kv(src, d / "merges-float.gguf", "tokenizer.ggml.merges", blob)


@case("token id out of range (eos = 2^31-1)")
def _eos_out_of_range(src: Path, d: Path) -> Path:
    blob = kv_blob("tokenizer.ggml.eos_token_id", UINT32, struct.pack("<I", 2**31 - 1))
    return _replace_kv(src, d / "eos-out-of-range.gguf", "tokenizer.ggml.eos_token_id", blob)


@case("invalid UTF-8 in a key")
def _bad_utf8_key(src: Path, d: Path) -> Path:
    lay = Layout.read(src)
    raw = bytearray(lay.raw)
    kv = lay.kv("general.architecture")
    raw[kv.start + 8] = 0xFF  # the key's first byte
    out = d / "key-invalid-utf8.gguf"
    out.write_bytes(bytes(raw))
    return out


@case("no tensors")
def _no_tensors(src: Path, d: Path) -> Path:
    lay = Layout.read(src)
    kvs, _ = lay.blobs()
    out = d / "no-tensors.gguf"
    out.write_bytes(lay.rebuild(kvs, []))
    return out


@case("a required tensor missing")
def _tensor_missing(src: Path, d: Path) -> Path:
    lay = Layout.read(src)
    kvs, tensors = lay.blobs()
    # drop the last tensor record (its data stays, unused)
    out = d / "tensor-missing.gguf"
    out.write_bytes(lay.rebuild(kvs, tensors[:-1]))
    return out


@case("tensor shape not the model's")
def _wrong_shape(src: Path, d: Path) -> Path:
    lay = Layout.read(src)
    t = next(t for t in lay.tensors if len(t.dims_at) >= 2)
    raw = bytearray(lay.raw)
    a, b = (struct.unpack_from("<Q", raw, at)[0] for at in t.dims_at[:2])
    struct.pack_into("<Q", raw, t.dims_at[0], b)
    struct.pack_into("<Q", raw, t.dims_at[1], a)
    out = d / "wrong-shape.gguf"
    out.write_bytes(bytes(raw))
    return out


@case("experts used > experts")
def _experts_used(src: Path, d: Path) -> Path:
    lay = Layout.read(src)
    n = struct.unpack_from("<I", lay.raw, lay.kv("step35.expert_count").value_at)[0]
    blob = kv_blob("step35.expert_used_count", UINT32, struct.pack("<I", n + 1))
    return _replace_kv(src, d / "experts-used.gguf", "step35.expert_used_count", blob)


@case("architecture unknown")
def _arch_unknown(src: Path, d: Path) -> Path:
    blob = kv_blob("general.architecture", STRING, pack_str("step99"))
    return _replace_kv(src, d / "arch-unknown.gguf", "general.architecture", blob)


@case("not GGUF (random bytes)")
def _random(src: Path, d: Path) -> Path:
    import random

    out = d / "random.gguf"
    out.write_bytes(random.Random(0).randbytes(4096))
    return out


@case("GGUF version 1")
def _version1(src: Path, d: Path) -> Path:
    return _patched(src, d / "version-1.gguf", 4, "<I", 1)


@case("empty file")
def _empty(src: Path, d: Path) -> Path:
    out = d / "empty.gguf"
    out.write_bytes(b"")
    return out


def split_cases(parts: list[Path], other_parts: list[Path]) -> dict[str, Callable[[Path], Path]]:
    """Split-set cases: each makes a broken copy of ``parts`` (3 parts) in a directory; returns the file to load.

    ``other_parts`` is a 3-part split of another model (other shapes).
    """
    def copy_set(d: Path) -> list[Path]:
        out = [d / p.name for p in parts]
        for p, q in zip(parts, out):
            shutil.copyfile(p, q)
        return out

    def missing(d: Path) -> Path:
        s = copy_set(d)
        s[1].unlink()
        return s[0]

    def duplicated(d: Path) -> Path:
        s = copy_set(d)
        shutil.copyfile(s[1], s[2])
        return s[0]

    def foreign(d: Path) -> Path:
        s = copy_set(d)
        shutil.copyfile(other_parts[1], s[1])
        return s[0]

    def truncated_part(d: Path) -> Path:
        s = copy_set(d)
        raw = s[2].read_bytes()
        s[2].write_bytes(raw[:len(raw) // 2])
        return s[0]

    return {"split set: a part missing": missing, "split set: a part duplicated": duplicated,
            "split set: a part from another model": foreign, "split set: the last part truncated": truncated_part}
