"""The bytes of a synthetic Step 3.5 model: metadata, deterministic weights, token maps, and the files
(single, split, MTP sidecar, fork-era, header-only). What the models are: :mod:`step35.testing`."""

from __future__ import annotations

import functools
import math
import os
import pathlib
import re
import zlib
from typing import Any, Callable

import numpy as np
from gguf.constants import (
    GGUFValueType,
    LlamaFileType,
)

from ..gguf.files import split_paths
from ..gguf.writer import KV, Tensor, write_gguf
from .specs import (
    AGENT_ANSWER,
    AGENT_REASONING,
    ARCH,
    DTYPES,
    FLASH_N_VOCAB,
    STEP35_FLASH,
    ModelSpec,
    TensorSpec,
    resolve_spec,
    tensor_plan,
    vocab,
)

#: Bump whenever the bytes produced for an unchanged spec/seed change (cache key).
BUILDER_VERSION = 1




# general.file_type (llama_ftype) of the files the builder writes
_FILE_TYPE = {"f32": int(LlamaFileType.ALL_F32), "f16": int(LlamaFileType.MOSTLY_F16),
              "q8_0": int(LlamaFileType.MOSTLY_Q8_0)}

# GGUF value types, by gguf-py's names
_U8, _I8, _U16, _I16, _U32, _I32, _F32, _BOOL, _STR, _ARR, _U64, _I64, _F64 = (int(v) for v in (
    GGUFValueType.UINT8, GGUFValueType.INT8, GGUFValueType.UINT16, GGUFValueType.INT16, GGUFValueType.UINT32,
    GGUFValueType.INT32, GGUFValueType.FLOAT32, GGUFValueType.BOOL, GGUFValueType.STRING, GGUFValueType.ARRAY,
    GGUFValueType.UINT64, GGUFValueType.INT64, GGUFValueType.FLOAT64))








def _f32(x: float) -> float:
    return float(np.float32(x))


def _metadata(spec: ModelSpec, seed: int, legacy_fork_keys: bool) -> list[KV]:
    v = vocab()
    n = spec.n_layer_all
    A = ARCH
    kvs: list[KV] = [
        KV("general.architecture", _STR, A),
        KV("general.type", _STR, "model"),
        KV("general.name", _STR, f"step35-testing-{spec.name}" + ("-fork-era" if legacy_fork_keys else "")),
        KV("general.description", _STR,
            f"random-weight step35 test model (size={spec.name}, seed={seed}, builder v{BUILDER_VERSION})"),
        KV(f"{A}.block_count", _U32, n),
        KV(f"{A}.context_length", _U32, spec.n_ctx_train),
        KV(f"{A}.embedding_length", _U32, spec.n_embd),
        KV(f"{A}.feed_forward_length", _U32, spec.n_ff),
        KV(f"{A}.attention.head_count", _ARR, [spec.n_head(i) for i in range(n)], _I32),
        KV(f"{A}.attention.head_count_kv", _ARR, [spec.n_head_kv(i) for i in range(n)], _I32),
        KV(f"{A}.rope.freq_base", _F32, _f32(spec.rope_freq_base)),
        KV(f"{A}.rope.freq_base_swa", _F32, _f32(spec.rope_freq_base_swa)),
        KV(f"{A}.attention.layer_norm_rms_epsilon", _F32, _f32(spec.rms_eps)),
        KV(f"{A}.expert_count", _U32, spec.n_expert),
        KV(f"{A}.expert_used_count", _U32, spec.n_expert_used),
        KV(f"{A}.expert_gating_func", _U32, spec.expert_gating_func),
        KV(f"{A}.attention.key_length", _U32, spec.head_dim),
        KV(f"{A}.attention.value_length", _U32, spec.head_dim),
        KV(f"{A}.attention.sliding_window", _U32, spec.sliding_window),
        KV(f"{A}.attention.sliding_window_pattern", _ARR, [spec.is_swa(i) for i in range(n)], _BOOL),
        KV(f"{A}.expert_feed_forward_length", _U32, spec.n_ff_exp),
        KV(f"{A}.expert_shared_feed_forward_length", _U32, spec.n_ff_shexp),
        KV(f"{A}.expert_weights_scale", _F32, _f32(spec.expert_weights_scale)),
        KV(f"{A}.expert_weights_norm", _BOOL, bool(spec.expert_weights_norm)),
        KV(f"{A}.leading_dense_block_count", _U32, spec.n_dense_lead),
        KV(f"{A}.moe_every_n_layers", _U32, spec.moe_every_n_layers),
    ]
    clamp_exp = [_f32(x) for x in spec.swiglu_clamp_exp]
    clamp_sh = [_f32(x) for x in spec.swiglu_clamp_shexp]
    if legacy_fork_keys:
        # early StepFun llama.cpp fork (ik_llama.cpp-era) spellings
        kvs += [
            KV(f"{A}.swiglu_limits", _ARR, clamp_exp, _F32),
            KV(f"{A}.swiglu_limits_shared", _ARR, clamp_sh, _F32),
            KV(f"{A}.rope.scaling.apply_mask", _U32, 3),
            KV(f"{A}.rope.freq_base_per_layer", _ARR,
                [_f32(spec.rope_freq_base_swa if spec.is_swa(i) else spec.rope_freq_base) for i in range(n)], _F32),
            KV(f"{A}.rope.dimension_count_per_layer", _ARR, [spec.n_rot(i) for i in range(n)], _I32),
        ]
    else:
        kvs += [
            KV(f"{A}.swiglu_clamp_exp", _ARR, clamp_exp, _F32),
            KV(f"{A}.swiglu_clamp_shexp", _ARR, clamp_sh, _F32),
        ]
    if spec.n_nextn:
        kvs.append(KV(f"{A}.nextn_predict_layers", _U32, spec.n_nextn))
    kvs += [
        KV("general.file_type", _U32, _FILE_TYPE[spec.dtype]),
        KV("general.quantization_version", _U32, 2),
        KV("tokenizer.ggml.model", _STR, "gpt2"),
        KV("tokenizer.ggml.pre", _STR, v.pre),
        KV("tokenizer.ggml.tokens", _ARR, list(v.tokens), _STR),
        KV("tokenizer.ggml.token_type", _ARR, list(v.token_type), _I32),
        KV("tokenizer.ggml.merges", _ARR, list(v.merges), _STR),
        KV("tokenizer.ggml.bos_token_id", _U32, v.bos),
        KV("tokenizer.ggml.eos_token_id", _U32, v.eos),
        KV("tokenizer.ggml.eot_token_id", _U32, v.eot),
        KV("tokenizer.ggml.padding_token_id", _U32, v.pad),
        KV("tokenizer.ggml.add_bos_token", _BOOL, True),
        KV("tokenizer.ggml.add_eos_token", _BOOL, False),
        KV("tokenizer.chat_template", _STR, v.chat_template),
    ]
    return kvs


def _split_kvs(i: int, n_split: int, n_tensors: int) -> list[KV]:
    # exactly what llama.cpp's gguf-split (and gguf-py's GGUFWriter) write
    return [
        KV("split.no", _U16, i),
        KV("split.count", _U16, n_split),
        KV("split.tensors.count", _I32, n_tensors),
    ]


def expected_metadata(
    size: str | ModelSpec = "tiny", seed: int = 0, *, n_split: int = 1, legacy_fork_keys: bool = False,
) -> dict[str, Any]:
    """Every key/value :func:`build_model` writes into the (first) file, in file order.

    Values are plain Python objects (str, int, float rounded to float32, bool, lists).
    With ``n_split > 1`` the ``split.*`` keys of the first file are included; the other
    files of a split set hold only their three ``split.*`` keys.
    """
    spec = resolve_spec(size)
    kvs = _metadata(spec, seed, legacy_fork_keys)
    if n_split > 1:
        kvs += _split_kvs(0, n_split, len(tensor_plan(spec, len(vocab().tokens))))
    return {kv.key: kv.value for kv in kvs}






def token_map(token: int, times: int = 1) -> int:
    """The next token of a ``trunk="token_map"`` model: ordinary tokens shift by one (the last wraps to
    the first), special and control tokens map to themselves; ``times`` applies the map repeatedly."""
    n = _n_ordinary()
    return (token + times) % n if 0 <= token < n else token


def _n_ordinary() -> int:
    # the tokenizer's ordinary tokens come first (GPT-2's), then the special/control ones
    tt = vocab().token_type
    n = tt.index(next(x for x in tt if x != 1)) if any(x != 1 for x in tt) else len(tt)
    return n


def _dequantized(ts: TensorSpec, spec: ModelSpec, seed: int) -> np.ndarray:
    """The values llama.cpp reads for a "normal" tensor (rows: the last ggml dimension)."""
    raw = np.frombuffer(_tensor_bytes(ts, spec, seed), dtype=np.uint8)
    if ts.dtype == "f32":
        x = raw.view("<f4").astype(np.float32)
    elif ts.dtype == "f16":
        x = raw.view("<f2").astype(np.float32)
    else:
        blocks = raw.reshape(-1, 34)
        d = blocks[:, :2].copy().view("<f2").astype(np.float32)
        x = (blocks[:, 2:].view(np.int8).astype(np.float32) * d).reshape(-1)
    return x.reshape(tuple(reversed(ts.shape)))


def _shift_map(times: int, n_vocab: int) -> np.ndarray:
    # the token map as an array (next[t] = token_map(t, times)), over n_vocab tokens
    n = _n_ordinary()
    nxt = np.arange(n_vocab)
    nxt[:n] = (np.arange(n) + times) % n
    return nxt


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2's byte-level BPE alphabet: printable bytes stand for themselves, the others are shifted
    # past 255 (so " " is "Ġ" and "\n" is "Ċ")
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + i) for i, b in enumerate(shifted)}}


def _words(text: str) -> list[str]:
    # GPT-2's pre-tokenizer for plain ASCII text: letters, digits and other symbols, each with its leading space
    return re.findall(r" ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+", text)


@functools.lru_cache(maxsize=1)
def _token_ids() -> dict[str, int]:
    return {t: i for i, t in enumerate(vocab().tokens)}


def _single_token(word: str) -> int:
    """The id of the one ordinary GPT-2 token spelling ``word`` (a ValueError when it takes several)."""
    alphabet = _bytes_to_unicode()
    spelling = "".join(alphabet[b] for b in word.encode("utf-8"))
    i = _token_ids().get(spelling, -1)
    if not 0 <= i < _n_ordinary():
        raise ValueError(f"{word!r} ({spelling!r}) is not a single token of the vocabulary")
    return i


def _special(text: str) -> int:
    return _token_ids()[text]


def agent_chain() -> tuple[int, ...]:
    """The token ids a ``trunk="agent"`` model walks through in a chat answer, each the next of the one
    before: ``\\n`` (the last token of the chat prompt, after ``<think>``), the tokens of
    :data:`AGENT_REASONING`, ``</think>``, the tokens of :data:`AGENT_ANSWER`, ``<|im_end|>`` (end of
    generation). Every word is one token, as the tokenizer writes it; no token occurs twice."""
    chain = (_single_token("\n"), *(_single_token(w) for w in _words(AGENT_REASONING)), _special("</think>"),
             *(_single_token(w) for w in _words(AGENT_ANSWER)), _special("<|im_end|>"))
    if len(set(chain)) != len(chain):
        raise ValueError("the agent chain repeats a token: its map would not be a permutation")
    return chain


def agent_links() -> tuple[tuple[int, int], ...]:
    """Every (token, next token) pair in which a ``trunk="agent"`` model differs from the plain token map
    by design: the links of :func:`agent_chain`, and ``</tool_call>`` -> ``<|endoftext|>`` (also an
    end-of-generation token), so that a tool call that constrained decoding forces ends after the call
    instead of going on with more calls."""
    chain = agent_chain()
    links = (*zip(chain, chain[1:]), (_special("</tool_call>"), _special("<|endoftext|>")))
    sources, targets = [a for a, _ in links], [b for _, b in links]
    if len(set(sources)) != len(links) or len(set(targets)) != len(links):
        raise ValueError("two agent links share a token: the map would not be a permutation")
    return links


def _agent_map(n_vocab: int) -> np.ndarray:
    # the shift map, changed by one swap per link a -> b: the token that led to b takes a's old next
    # token. Earlier links are kept, as no two links share a source or a target.
    nxt = _shift_map(1, n_vocab)
    links = agent_links()
    for a, b in links:
        (pre,) = np.flatnonzero(nxt == b)
        nxt[a], nxt[pre] = b, nxt[a]
        assert _is_permutation(nxt), "a swap broke the agent map"
    assert all(nxt[a] == b for a, b in links)
    return nxt


def _is_permutation(nxt: np.ndarray) -> bool:
    return bool(np.array_equal(np.sort(nxt), np.arange(len(nxt))))


def token_permutation(size: str | ModelSpec = "tiny-agent", times: int = 1) -> np.ndarray:
    """The output head of a token-map or agent trunk as an array: ``next[t]`` is the token the model
    predicts after token ``t`` (``times``: the map applied repeatedly; an agent trunk has only ``times=1``).
    A permutation of the vocabulary."""
    return _next_tokens(resolve_spec(size), times, len(vocab().tokens))


def _next_tokens(spec: ModelSpec, times: int, n_vocab: int) -> np.ndarray:
    if spec.trunk == "token_map":
        return _shift_map(times, n_vocab)
    if spec.trunk == "agent" and times == 1:
        return _agent_map(n_vocab)
    raise ValueError(f"{spec.name}: trunk {spec.trunk!r} has no token map applied {times} time(s)")


def _map_rows(spec: ModelSpec, seed: int, nxt: np.ndarray) -> np.ndarray:
    # row j = map_logit/sqrt(E) * unit(embedding of the token that maps to j): with a unit-gain
    # RMS norm in front (|x| = sqrt(E)), logit j = map_logit * cos(emb[x], emb[map^-1(j)])
    n_vocab = len(nxt)
    emb = _dequantized(TensorSpec("token_embd.weight", (spec.n_embd, n_vocab), spec.embd_dtype, "normal"),
                       spec, seed)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    src = np.empty_like(nxt)
    src[nxt] = np.arange(n_vocab)  # j = map(src[j])
    return (unit[src] * np.float32(spec.map_logit / math.sqrt(spec.n_embd))).astype(np.float32)


def expected_tensors(size: str | ModelSpec = "tiny") -> list[TensorSpec]:
    """The tensors :func:`build_model` writes, in file order (across all split files)."""
    return tensor_plan(resolve_spec(size), len(vocab().tokens))


def _rope_llama3_factors(spec: ModelSpec) -> np.ndarray:
    # same formula as the converter (conversion/step3.py): factors for the rotary
    # dims of full-attention layers, padded with 1.0 to head_dim / 2
    assert spec.rope_llama3 is not None
    factor, low, high, old_ctx = spec.rope_llama3
    rot = spec.n_rot(0)  # layer 0 is always a full-attention layer
    freqs = 1.0 / (spec.rope_freq_base ** (np.arange(0, rot, 2, dtype=np.float32) / rot))
    low_wl, high_wl = old_ctx / low, old_ctx / high
    out = []
    for f in freqs:
        wl = 2 * math.pi / float(f)
        if wl < high_wl:
            out.append(1.0)
        elif wl > low_wl:
            out.append(factor)
        else:
            smooth = (old_ctx / wl - low) / (high - low)
            out.append(1.0 / ((1.0 - smooth) / factor + smooth))
    out += [1.0] * (spec.head_dim // 2 - len(out))
    return np.asarray(out, dtype=np.float32)


def _quantize_q8_0(x: np.ndarray) -> np.ndarray:
    blocks = x.reshape(-1, 32).astype(np.float32)
    d = np.abs(blocks).max(axis=1, keepdims=True) / 127.0
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, 0.0, 1.0 / d)
    qs = np.clip(np.round(blocks * inv), -127, 127).astype(np.int8)
    out = np.empty((blocks.shape[0], 34), dtype=np.uint8)
    out[:, :2] = d.astype(np.float16).view(np.uint8)
    out[:, 2:] = qs.view(np.uint8)
    return out


def _tensor_bytes(ts: TensorSpec, spec: ModelSpec, seed: int) -> bytes:
    shape_np = tuple(reversed(ts.shape))  # numpy is row-major: slowest dim first
    if ts.init == "rope_freqs":
        data = _rope_llama3_factors(spec)
    elif ts.init in ("zeros", "ones"):
        data = np.full(shape_np, 0.0 if ts.init == "zeros" else 1.0, dtype=np.float32)
    elif ts.init == "eye_first":  # (out E, in 2E): [I | 0]
        data = np.eye(shape_np[0], shape_np[1], dtype=np.float32)
    elif ts.init.startswith("map"):
        data = _map_rows(spec, seed, _next_tokens(spec, int(ts.init[3:]), shape_np[0]))
    else:
        # one independent stream per tensor: values do not depend on tensor order
        ss = np.random.SeedSequence([seed, zlib.crc32(ts.name.encode("utf-8"))])
        rng = np.random.Generator(np.random.PCG64(ss))
        if ts.init == "norm":
            data = rng.uniform(0.75, 1.25, size=shape_np).astype(np.float32)
        else:
            data = rng.standard_normal(size=shape_np, dtype=np.float32)
            data *= np.float32(ts.scale)
    if ts.dtype == "f32":
        return data.astype("<f4").tobytes()
    if ts.dtype == "f16":
        return data.astype("<f2").tobytes()
    return _quantize_q8_0(data).tobytes()


def build_model(
    path: str | os.PathLike[str],
    size: str | ModelSpec = "tiny",
    *,
    seed: int = 0,
    n_split: int = 1,
    legacy_fork_keys: bool = False,
) -> list[pathlib.Path]:
    """Write a random-weight step35 GGUF model and return its file(s).

    ``size`` is a key of :data:`SIZES` or a :class:`ModelSpec`. The output is
    byte-for-byte deterministic for the same arguments. With ``n_split > 1`` a
    llama.cpp split set is written (``NAME-00001-of-0000N.gguf`` ...): the first
    file holds all metadata plus ``split.no``/``split.count``/``split.tensors.count``,
    the others only those three keys, and the tensors are partitioned in file order,
    so loading the first file loads them all. ``legacy_fork_keys=True`` writes the
    keys of the early StepFun fork (``swiglu_limits``, ``rope.scaling.apply_mask``,
    ...) instead of upstream's clamp keys (see :func:`write_fork_era_model`).
    Each file is written to a temporary name and renamed into place.
    """
    spec = resolve_spec(size)
    plan = tensor_plan(spec, len(vocab().tokens))
    kvs = _metadata(spec, seed, legacy_fork_keys)
    return _write_set(path, kvs, plan, n_split, lambda ts: _tensor_bytes(ts, spec, seed))


def build_mtp_sidecar(path: str | os.PathLike[str], size: str | ModelSpec, *, seed: int = 0) -> pathlib.Path:
    """Write the MTP heads of ``size`` alone, as llama.cpp's converter does with ``--mtp``: the whole
    model's metadata, ``token_embd``, the MTP blocks, ``output_norm`` and ``output``."""
    spec = resolve_spec(size)
    if not spec.n_nextn:
        raise ValueError(f"{spec.name} has no MTP blocks (n_nextn=0)")
    plan = [t for t in tensor_plan(spec, len(vocab().tokens))
            if not t.name.startswith("blk.") or int(t.name.split(".")[1]) >= spec.n_layer]
    kvs = _metadata(spec, seed, False)
    return _write_set(path, kvs, plan, 1, lambda ts: _tensor_bytes(ts, spec, seed))[0]


def _write_set(path: str | os.PathLike[str], kvs: list[KV], plan: list[TensorSpec], n_split: int,
               data: Callable[[TensorSpec], bytes] | None) -> list[pathlib.Path]:
    if not 1 <= n_split <= min(len(plan), 99999):
        raise ValueError(f"n_split must be between 1 and {len(plan)}")
    paths = split_paths(path, n_split)
    paths[0].parent.mkdir(parents=True, exist_ok=True)

    sizes = [len(plan) // n_split + (1 if i < len(plan) % n_split else 0) for i in range(n_split)]
    chunks, start = [], 0
    for s in sizes:
        chunks.append(plan[start:start + s])
        start += s

    # write the first file last: if it exists, the whole set does
    for i in reversed(range(n_split)):
        file_kvs = (kvs if i == 0 else []) + (_split_kvs(i, n_split, len(plan)) if n_split > 1 else [])
        tmp = paths[i].with_name(f".{paths[i].name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                part = chunks[i]
                write_gguf(f, file_kvs, [Tensor(ts.name, ts.shape, DTYPES[ts.dtype][0], ts.nbytes) for ts in part],
                           None if data is None else (data(ts) for ts in part))
            os.replace(tmp, paths[i])
        finally:
            if tmp.exists():
                tmp.unlink()
    return paths


def write_fork_era_model(path: str | os.PathLike[str], size: str | ModelSpec = "tiny", *,
                         seed: int = 0) -> pathlib.Path:
    """Write a model with the keys of the early StepFun llama.cpp fork.

    Such files carry ``step35.swiglu_limits`` / ``step35.swiglu_limits_shared``,
    ``step35.rope.scaling.apply_mask``, ``step35.rope.freq_base_per_layer`` and
    ``step35.rope.dimension_count_per_layer`` instead of upstream's
    ``swiglu_clamp_exp`` / ``swiglu_clamp_shexp``. Upstream llama.cpp silently ignores
    those keys (so it would run without the clamps); step35 should reject such files.
    """
    return build_model(path, size, seed=seed, legacy_fork_keys=True)[0]


def _recipe_q4_k_s(ts: TensorSpec, n_layer: int) -> str:
    # llama.cpp's Q4_K_S rules as they apply to this model: Q4_K everywhere,
    # Q6_K for the output head, Q5_K for attn_v of the first 4 layers and for
    # ffn_down(_exps/_shexp) of the first n_layer/8 layers.
    name = ts.name
    if name == "output.weight":
        return "q6_K"
    if name.startswith("blk."):
        il = int(name.split(".")[1])
        if name.endswith("attn_v.weight") and il < 4:
            return "q5_K"
        if ".ffn_down" in name and il < n_layer // 8:
            return "q5_K"
    return "q4_K"


def _recipe_iq4_xs(ts: TensorSpec, n_layer: int) -> str:
    # ubergarm-style: routed experts IQ4_XS, everything else (attention, shared
    # expert, dense FFN, embeddings, output head) Q8_0.
    return "iq4_xs" if "_exps." in ts.name else "q8_0"


#: Recipes for :func:`write_header_only_model`: quant name -> (per-tensor type rule, llama_ftype).
HEADER_RECIPES: dict[str, tuple[Callable[[TensorSpec, int], str], int]] = {
    "Q4_K_S": (_recipe_q4_k_s, 14),
    "IQ4_XS": (_recipe_iq4_xs, 30),
}


def write_header_only_model(path: str | os.PathLike[str], recipe: str = "Q4_K_S", *,
                            spec: ModelSpec = STEP35_FLASH, n_vocab: int = FLASH_N_VOCAB,
                            n_split: int = 1) -> list[pathlib.Path]:
    """Write a GGUF (set) with a real header and no tensor data.

    The tensor table has the shapes of ``spec`` (default: the real Step 3.5
    Flash) typed by ``recipe`` (a key of :data:`HEADER_RECIPES`; weight
    matrices only: norms, router and biases stay F32). Each file is extended
    sparsely to its full size, so the files take no disk space, llama.cpp
    accepts them for a ``no_alloc`` (memory-planning) load, and
    :func:`step35.tools.fit.plan` works on them; they cannot be run. The vocabulary
    is the builder's, padded with placeholder tokens to ``n_vocab``.
    """
    try:
        rule, ftype = HEADER_RECIPES[recipe]
    except KeyError:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {sorted(HEADER_RECIPES)}") from None
    v = vocab()
    if n_vocab < len(v.tokens):
        raise ValueError(f"n_vocab must be at least {len(v.tokens)}")
    plan = []
    for ts in tensor_plan(spec, n_vocab):
        if len(ts.shape) >= 2 and ts.dtype != "f32":
            ts = TensorSpec(ts.name, ts.shape, rule(ts, spec.n_layer), ts.init, ts.scale)
        plan.append(ts)
    pad = n_vocab - len(v.tokens)
    kvs = []
    for kv in _metadata(spec, 0, False):
        if kv.key == "tokenizer.ggml.tokens":
            kv = KV(kv.key, kv.vtype, list(kv.value) + [f"<|placeholder_{i}|>" for i in range(pad)], kv.subtype)
        elif kv.key == "tokenizer.ggml.token_type":
            kv = KV(kv.key, kv.vtype, list(kv.value) + [4] * pad, kv.subtype)
        elif kv.key == "general.file_type":
            kv = KV(kv.key, kv.vtype, ftype)
        elif kv.key == "general.name":
            kv = KV(kv.key, kv.vtype, f"{spec.name}-{recipe}-header-only")
        kvs.append(kv)
    return _write_set(path, kvs, plan, n_split, None)
