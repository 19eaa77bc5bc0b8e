"""Deterministic builder of tiny random-weight GGUF models of the ``step35`` architecture.

The models built here have random weights, but they are structurally faithful to
StepFun's Step 3.5 Flash as llama.cpp's ``step35`` loader and graph see it:

* leading dense FFN block(s), then MoE blocks with a shared expert, sigmoid
  routing with an expert-selection bias (``exp_probs_b``), top-k, normalized and
  scaled expert weights;
* the 3:1 sliding-window / full-attention layer pattern
  (``attention.sliding_window_pattern``), with *different* query head counts on
  the two kinds of layer (per-layer ``attention.head_count`` arrays);
* per-head Q/K RMSNorm and the head-wise attention gate (``attn_gate``);
* per-layer SwiGLU clamps (``swiglu_clamp_exp`` / ``swiglu_clamp_shexp``), active
  on some layers and 0 (off) on others;
* partial RoPE: llama.cpp halves the rotary dimension of full-attention layers
  (factor 0.5) and rotates the whole head on sliding layers (factor 1.0), with a
  separate ``rope.freq_base_swa``; optionally llama3-style ``rope_freqs``;
* optional MTP/NextN blocks appended after the trunk, also as a separate
  ``mtp-*.gguf`` sidecar (:func:`mtp_sidecar_paths`);
* optionally a "token map" trunk, whose next token depends only on the current
  one (attention and FFN outputs zero, the output head a permutation of the
  vocabulary), with MTP heads that agree with it (drafts accepted) or that
  predict a different token (drafts rejected);
* optionally an "agent" trunk: a token map whose chat answers end, reasoning
  :data:`AGENT_REASONING` and answering :data:`AGENT_ANSWER` at any temperature
  (size ``tiny-agent``, for tests with real coding agents);
* a real byte-level BPE tokenizer (GPT-2's, read offline from
  ``ggml-vocab-gpt-2.gguf``) extended with the Step 3.5 chat/control tokens, and the
  Step 3.5 chat template.

The module only needs numpy (it has its own small GGUF writer), so tests can use
it without the native extension. Typical use::

    from step35.testing import model_path
    path = model_path("tiny")          # built once, cached, reused

Output is byte-for-byte deterministic for the same spec, seed, split count and
builder version.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import pathlib
import re
import shutil
import struct
import tempfile
import zlib
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Sequence

import numpy as np
from gguf.constants import (
    GGML_QUANT_SIZES,
    GGMLQuantizationType,
    GGUFValueType,
    LlamaFileType,
)

from ._data import chat_template_path, vocab_path
from .gguf import read_header, split_name

__all__ = [
    "BUILDER_VERSION",
    "ModelSpec",
    "SIZES",
    "SPECIAL_TOKENS",
    "TensorSpec",
    "build_model",
    "cache_dir",
    "chat_template_path",
    "bench_model_path",
    "BENCH_QUANT",
    "expected_metadata",
    "expected_tensors",
    "model_path",
    "resolve_spec",
    "split_paths",
    "vocab_path",
    "write_fork_era_model",
    "write_header_only_model",
    "token_map",
    "token_permutation",
    "agent_chain",
    "agent_links",
    "AGENT_REASONING",
    "AGENT_ANSWER",
    "mtp_sidecar_paths",
    "STEP35_FLASH",
    "FLASH_N_VOCAB",
    "HEADER_RECIPES",
]

#: Bump whenever the bytes produced for an unchanged spec/seed change (cache key).
BUILDER_VERSION = 1

ARCH = "step35"

#: Tokens appended after GPT-2's 50257 tokens, with their llama token type
#: (3 = CONTROL, 4 = USER_DEFINED). Chat-structure tokens are control tokens;
#: reasoning/tool tags are user-defined so that they survive detokenization
#: (llama.cpp's chat parsers look for them in the generated text).
SPECIAL_TOKENS: tuple[tuple[str, int], ...] = (
    ("<|im_start|>", 3),
    ("<|im_end|>", 3),
    ("<think>", 4),
    ("</think>", 4),
    ("<tool_call>", 4),
    ("</tool_call>", 4),
    ("<tool_response>", 4),
    ("</tool_response>", 4),
    ("<im_patch>", 4),
)

# ggml tensor types used here: name -> (ggml type id, block size, bytes per block)
_DTYPES: dict[str, tuple[int, int, int]] = {
    name: (int(t), *GGML_QUANT_SIZES[t]) for name, t in {
        "f32": GGMLQuantizationType.F32,
        "f16": GGMLQuantizationType.F16,
        "q8_0": GGMLQuantizationType.Q8_0,
        # only in header-only files (write_header_only_model): no data is generated
        "q4_K": GGMLQuantizationType.Q4_K,
        "q5_K": GGMLQuantizationType.Q5_K,
        "q6_K": GGMLQuantizationType.Q6_K,
        "iq4_xs": GGMLQuantizationType.IQ4_XS,
        "bf16": GGMLQuantizationType.BF16,
    }.items()
}
# general.file_type (llama_ftype) of the files the builder writes
_FILE_TYPE = {"f32": int(LlamaFileType.ALL_F32), "f16": int(LlamaFileType.MOSTLY_F16),
              "q8_0": int(LlamaFileType.MOSTLY_Q8_0)}

# GGUF value types
_U8, _I8, _U16, _I16, _U32, _I32, _F32, _BOOL, _STR, _ARR, _U64, _I64, _F64 = (int(v) for v in (
    GGUFValueType.UINT8, GGUFValueType.INT8, GGUFValueType.UINT16, GGUFValueType.INT16, GGUFValueType.UINT32,
    GGUFValueType.INT32, GGUFValueType.FLOAT32, GGUFValueType.BOOL, GGUFValueType.STRING, GGUFValueType.ARRAY,
    GGUFValueType.UINT64, GGUFValueType.INT64, GGUFValueType.FLOAT64))
_SCALAR_FMT = {_U8: "<B", _I8: "<b", _U16: "<H", _I16: "<h", _U32: "<I", _I32: "<i",
               _F32: "<f", _BOOL: "<?", _U64: "<Q", _I64: "<q", _F64: "<d"}
_ALIGNMENT = 32


# --------------------------------------------------------------------------- specs

#: ``ModelSpec.trunk`` kinds; all but "random" have a permutation (token map) as output head.
_TRUNKS = ("random", "token_map", "agent")

#: What a ``trunk="agent"`` model reasons, and then answers, in every chat (see :func:`agent_chain`).
#: Each word is one GPT-2 token, and no token occurs twice in the chain.
AGENT_REASONING = "The user wants a short answer."
AGENT_ANSWER = "Hello from step35!"


@dataclass(frozen=True)
class ModelSpec:
    """Every hyperparameter of a synthetic step35 model.

    Layer ``i`` (trunk and MTP alike) is a full-attention layer when
    ``i % swa_period == 0`` and a sliding-window layer otherwise (Step 3.5 Flash:
    period 4, i.e. three sliding layers per full layer, starting with a full one).
    The first ``n_dense_lead`` layers have a dense SwiGLU FFN; the others are MoE
    with a shared expert. The clamp tuples hold one value per layer of the file
    (``n_layer + n_nextn``); 0 disables the clamp on that layer. Note that
    llama.cpp applies ``swiglu_clamp_shexp[i]`` to the dense FFN of a dense layer.
    """

    name: str
    n_layer: int  #: trunk layers (``block_count`` minus ``n_nextn``)
    n_embd: int
    head_dim: int  #: key/value head size, the same on every layer
    n_head_full: int  #: query heads on full-attention layers
    n_head_swa: int  #: query heads on sliding-window layers
    n_head_kv_full: int
    n_head_kv_swa: int
    n_ff: int  #: dense FFN size (leading dense layers)
    n_ff_exp: int  #: routed expert FFN size
    n_ff_shexp: int  #: shared expert FFN size
    n_expert: int
    n_expert_used: int
    n_dense_lead: int  #: ``leading_dense_block_count``
    sliding_window: int
    swiglu_clamp_exp: tuple[float, ...]
    swiglu_clamp_shexp: tuple[float, ...]
    n_ctx_train: int = 4096
    swa_period: int = 4
    rope_freq_base: float = 5_000_000.0  #: full-attention layers
    rope_freq_base_swa: float = 10_000.0  #: sliding-window layers
    partial_rotary_full: float = 0.5  #: fixed by llama.cpp's step35 loader
    partial_rotary_swa: float = 1.0  #: fixed by llama.cpp's step35 loader
    rope_llama3: tuple[float, float, float, int] | None = None
    """(factor, low_freq_factor, high_freq_factor, original_context) -> ``rope_freqs`` tensor."""
    rms_eps: float = 1e-5
    expert_weights_scale: float = 3.0
    expert_weights_norm: bool = True
    expert_gating_func: int = 2  #: 2 = sigmoid
    moe_every_n_layers: int = 1
    n_nextn: int = 0  #: MTP/NextN blocks appended after the trunk
    dtype: str = "f16"  #: weight matrices: "f16" or "f32" (norms, router, biases stay F32)
    embd_dtype: str = "f16"  #: token_embd / output / MTP head: "f16", "f32" or "q8_0"
    logit_scale: float = 4.0  #: std of the logits at init (output weight scale)
    trunk: str = "random"
    """``"random"``; ``"token_map"``: every block adds zero to the residual stream and the output
    head maps token t to :func:`token_map` (t) with logit ``map_logit`` (others lower by their cosine);
    or ``"agent"``: the same, but with the map changed by swaps so that a chat answer (after the
    prompt's ``<think>\\n``) is :data:`AGENT_REASONING`, ``</think>``, :data:`AGENT_ANSWER`,
    ``<|im_end|>`` (:func:`agent_chain`), and a forced tool call ends after one call
    (:func:`agent_links`; the whole map: :func:`token_permutation`)."""
    mtp_heads: str = "random"
    """MTP heads: ``"random"``, ``"agree"`` (each predicts the token map of its input token, as the trunk
    does: drafts are accepted) or ``"disagree"`` (the map applied twice: drafts are rejected)."""
    map_logit: float = 40.0  #: the top logit of the token map (lower: a flatter next-token distribution)

    def __post_init__(self) -> None:
        n = self.n_layer_all
        if len(self.swiglu_clamp_exp) != n or len(self.swiglu_clamp_shexp) != n:
            raise ValueError(f"{self.name}: clamp tuples need {n} entries (n_layer + n_nextn)")
        if (self.partial_rotary_full, self.partial_rotary_swa) != (0.5, 1.0):
            raise ValueError("llama.cpp's step35 hard-codes partial rotary 0.5 (full) / 1.0 (sliding)")
        if self.head_dim % 4:
            raise ValueError("head_dim must be a multiple of 4 (half of it is rotated on full layers)")
        if not 0 <= self.n_dense_lead < self.n_layer:
            raise ValueError("need at least one MoE layer after the leading dense layers")
        if not 0 < self.n_expert_used <= self.n_expert:
            raise ValueError("need 0 < n_expert_used <= n_expert")
        if self.dtype not in ("f16", "f32") or self.embd_dtype not in _DTYPES:
            raise ValueError(f"unsupported dtype {self.dtype!r} / {self.embd_dtype!r}")
        if self.embd_dtype == "q8_0" and self.n_embd % 32:
            raise ValueError("q8_0 embeddings need n_embd % 32 == 0")
        if self.trunk not in _TRUNKS or self.mtp_heads not in ("random", "agree", "disagree"):
            raise ValueError(f"unknown trunk {self.trunk!r} / mtp_heads {self.mtp_heads!r}")
        if self.mtp_heads != "random" and self.trunk != "token_map":
            raise ValueError("MTP heads that agree or disagree need trunk='token_map'")

    @property
    def n_layer_all(self) -> int:
        """Layers stored in the file (``block_count``): trunk plus MTP blocks."""
        return self.n_layer + self.n_nextn

    def is_swa(self, il: int) -> bool:
        """Whether layer ``il`` uses sliding-window attention."""
        return il % self.swa_period != 0

    def is_moe(self, il: int) -> bool:
        """Whether layer ``il`` has a routed-expert FFN (else a dense FFN)."""
        return il >= self.n_dense_lead

    def n_head(self, il: int) -> int:
        """Query heads of layer ``il``."""
        return self.n_head_swa if self.is_swa(il) else self.n_head_full

    def n_head_kv(self, il: int) -> int:
        """Key/value heads of layer ``il``."""
        return self.n_head_kv_swa if self.is_swa(il) else self.n_head_kv_full

    def n_rot(self, il: int) -> int:
        """Rotary dimensions llama.cpp uses on layer ``il``."""
        f = self.partial_rotary_swa if self.is_swa(il) else self.partial_rotary_full
        return int(self.head_dim * f)

    def n_params(self, n_vocab: int | None = None) -> int:
        """Total parameter count (``n_vocab`` defaults to the builder's vocabulary)."""
        if n_vocab is None:
            n_vocab = len(_vocab().tokens)
        return sum(math.prod(t.shape) for t in _tensor_plan(self, n_vocab))


def _clamps(n: int, active: dict[int, float]) -> tuple[float, ...]:
    return tuple(float(active.get(i, 0.0)) for i in range(n))


def with_mtp(spec: ModelSpec, heads: str = "agree", *, n_nextn: int = 3, trunk: str | None = None,
             name: str | None = None, **changes: Any) -> ModelSpec:
    """``spec`` with ``n_nextn`` MTP blocks of kind ``heads`` ("random", "agree", "disagree"); agreeing or
    disagreeing heads make the trunk a token map. The blocks' clamps are off."""
    trunk = trunk or ("random" if heads == "random" else "token_map")
    n = spec.n_layer
    return dataclasses.replace(
        spec, name=name or f"{spec.name}-mtp-{heads}", n_nextn=n_nextn, trunk=trunk, mtp_heads=heads,
        swiglu_clamp_exp=spec.swiglu_clamp_exp[:n] + (0.0,) * n_nextn,
        swiglu_clamp_shexp=spec.swiglu_clamp_shexp[:n] + (0.0,) * n_nextn, **changes)


#: Named sizes. ``tiny`` is for unit tests (< 10 MB), ``small`` a little bigger
#: (more layers, two leading dense layers, llama3 rope factors), ``mid`` a
#: ~370M-parameter F16 model for benchmarks (to be quantized by llama.cpp).
#: ``tiny-agent`` (added below) answers every chat with :data:`AGENT_REASONING` /
#: :data:`AGENT_ANSWER` and ends.
SIZES: dict[str, ModelSpec] = {
    "tiny": ModelSpec(
        name="tiny", n_layer=5, n_embd=64, head_dim=16,
        n_head_full=4, n_head_swa=6, n_head_kv_full=2, n_head_kv_swa=2,
        n_ff=128, n_ff_exp=32, n_ff_shexp=32, n_expert=8, n_expert_used=2,
        n_dense_lead=1, sliding_window=16, n_ctx_train=4096,
        # small limits so that the clamps really bite on random activations
        swiglu_clamp_exp=_clamps(5, {3: 1.5, 4: 1.5}),
        swiglu_clamp_shexp=_clamps(5, {4: 2.5}),
        embd_dtype="q8_0",
    ),
    "small": ModelSpec(
        name="small", n_layer=8, n_embd=256, head_dim=32,
        n_head_full=8, n_head_swa=12, n_head_kv_full=2, n_head_kv_swa=4,
        n_ff=512, n_ff_exp=64, n_ff_shexp=128, n_expert=16, n_expert_used=4,
        n_dense_lead=2, sliding_window=32, n_ctx_train=8192,
        swiglu_clamp_exp=_clamps(8, {5: 3.0, 6: 3.0, 7: 3.0}),
        swiglu_clamp_shexp=_clamps(8, {6: 4.0, 7: 4.0}),
        rope_llama3=(8.0, 1.0, 4.0, 1024),
        embd_dtype="q8_0",
    ),
    "mid": ModelSpec(
        name="mid", n_layer=8, n_embd=768, head_dim=128,
        n_head_full=8, n_head_swa=12, n_head_kv_full=2, n_head_kv_swa=2,
        n_ff=2048, n_ff_exp=256, n_ff_shexp=256, n_expert=64, n_expert_used=8,
        n_dense_lead=1, sliding_window=512, n_ctx_train=65536,
        swiglu_clamp_exp=_clamps(8, {6: 7.0, 7: 7.0}),
        swiglu_clamp_shexp=_clamps(8, {6: 16.0, 7: 16.0}),
        embd_dtype="f16",
    ),
}


# With three MTP heads: agreeing with a token-map trunk (drafts accepted), and
# random (drafts rejected) on the random trunk.
SIZES["tiny-mtp"] = with_mtp(SIZES["tiny"], "agree", name="tiny-mtp")
SIZES["tiny-mtp-random"] = with_mtp(SIZES["tiny"], "random", name="tiny-mtp-random")
SIZES["mid-mtp"] = with_mtp(SIZES["mid"], "agree", name="mid-mtp")
# Chat answers that end: reasoning AGENT_REASONING, answer AGENT_ANSWER, then end of generation, at any
# temperature (the map's top logit leads the others by ~18). F32 so that every CPU kernel gives the same
# logits; a 64K training context for long agent prompts.
SIZES["tiny-agent"] = dataclasses.replace(SIZES["tiny"], name="tiny-agent", trunk="agent", dtype="f32",
                                          embd_dtype="f32", n_ctx_train=65536)


def resolve_spec(size: str | ModelSpec) -> ModelSpec:
    """Return the :class:`ModelSpec` for a size name (a key of :data:`SIZES`) or a spec."""
    if isinstance(size, ModelSpec):
        return size
    try:
        return SIZES[size]
    except KeyError:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(SIZES)} or pass a ModelSpec") from None


@dataclass(frozen=True)
class _Vocab:
    tokens: tuple[str, ...]
    token_type: tuple[int, ...]
    merges: tuple[str, ...]
    pre: str
    bos: int
    eos: int
    eot: int
    pad: int
    chat_template: str
    digest: str  # of the two source files, part of the cache key


@functools.lru_cache(maxsize=1)
def _vocab() -> _Vocab:
    vp, tp = vocab_path(), chat_template_path()
    kv = read_header(vp).metadata
    template = tp.read_text(encoding="utf-8")
    tokens = list(kv["tokenizer.ggml.tokens"])
    types = [int(t) for t in kv["tokenizer.ggml.token_type"]]
    if kv.get("tokenizer.ggml.model") != "gpt2" or len(tokens) != len(types):
        raise ValueError(f"{vp} is not a GPT-2 BPE vocabulary")
    base = len(tokens)
    for text, ttype in SPECIAL_TOKENS:
        tokens.append(text)
        types.append(ttype)
    ids = {t: i for i, t in enumerate(tokens)}
    h = hashlib.sha256(vp.read_bytes())
    h.update(template.encode("utf-8"))
    endoftext = int(kv.get("tokenizer.ggml.bos_token_id", base - 1))
    return _Vocab(
        tokens=tuple(tokens), token_type=tuple(types), merges=tuple(kv["tokenizer.ggml.merges"]),
        pre=str(kv.get("tokenizer.ggml.pre", "gpt-2")),
        bos=endoftext, eos=ids["<|im_end|>"], eot=ids["<|im_end|>"], pad=endoftext,
        chat_template=template, digest=h.hexdigest(),
    )


# --------------------------------------------------------------------------- metadata


@dataclass(frozen=True)
class _KV:
    key: str
    vtype: int
    value: Any
    subtype: int | None = None


def _f32(x: float) -> float:
    return float(np.float32(x))


def _metadata(spec: ModelSpec, seed: int, legacy_fork_keys: bool) -> list[_KV]:
    v = _vocab()
    n = spec.n_layer_all
    A = ARCH
    kvs: list[_KV] = [
        _KV("general.architecture", _STR, A),
        _KV("general.type", _STR, "model"),
        _KV("general.name", _STR, f"step35-testing-{spec.name}" + ("-fork-era" if legacy_fork_keys else "")),
        _KV("general.description", _STR,
            f"random-weight step35 test model (size={spec.name}, seed={seed}, builder v{BUILDER_VERSION})"),
        _KV(f"{A}.block_count", _U32, n),
        _KV(f"{A}.context_length", _U32, spec.n_ctx_train),
        _KV(f"{A}.embedding_length", _U32, spec.n_embd),
        _KV(f"{A}.feed_forward_length", _U32, spec.n_ff),
        _KV(f"{A}.attention.head_count", _ARR, [spec.n_head(i) for i in range(n)], _I32),
        _KV(f"{A}.attention.head_count_kv", _ARR, [spec.n_head_kv(i) for i in range(n)], _I32),
        _KV(f"{A}.rope.freq_base", _F32, _f32(spec.rope_freq_base)),
        _KV(f"{A}.rope.freq_base_swa", _F32, _f32(spec.rope_freq_base_swa)),
        _KV(f"{A}.attention.layer_norm_rms_epsilon", _F32, _f32(spec.rms_eps)),
        _KV(f"{A}.expert_count", _U32, spec.n_expert),
        _KV(f"{A}.expert_used_count", _U32, spec.n_expert_used),
        _KV(f"{A}.expert_gating_func", _U32, spec.expert_gating_func),
        _KV(f"{A}.attention.key_length", _U32, spec.head_dim),
        _KV(f"{A}.attention.value_length", _U32, spec.head_dim),
        _KV(f"{A}.attention.sliding_window", _U32, spec.sliding_window),
        _KV(f"{A}.attention.sliding_window_pattern", _ARR, [spec.is_swa(i) for i in range(n)], _BOOL),
        _KV(f"{A}.expert_feed_forward_length", _U32, spec.n_ff_exp),
        _KV(f"{A}.expert_shared_feed_forward_length", _U32, spec.n_ff_shexp),
        _KV(f"{A}.expert_weights_scale", _F32, _f32(spec.expert_weights_scale)),
        _KV(f"{A}.expert_weights_norm", _BOOL, bool(spec.expert_weights_norm)),
        _KV(f"{A}.leading_dense_block_count", _U32, spec.n_dense_lead),
        _KV(f"{A}.moe_every_n_layers", _U32, spec.moe_every_n_layers),
    ]
    clamp_exp = [_f32(x) for x in spec.swiglu_clamp_exp]
    clamp_sh = [_f32(x) for x in spec.swiglu_clamp_shexp]
    if legacy_fork_keys:
        # early StepFun llama.cpp fork (ik_llama.cpp-era) spellings
        kvs += [
            _KV(f"{A}.swiglu_limits", _ARR, clamp_exp, _F32),
            _KV(f"{A}.swiglu_limits_shared", _ARR, clamp_sh, _F32),
            _KV(f"{A}.rope.scaling.apply_mask", _U32, 3),
            _KV(f"{A}.rope.freq_base_per_layer", _ARR,
                [_f32(spec.rope_freq_base_swa if spec.is_swa(i) else spec.rope_freq_base) for i in range(n)], _F32),
            _KV(f"{A}.rope.dimension_count_per_layer", _ARR, [spec.n_rot(i) for i in range(n)], _I32),
        ]
    else:
        kvs += [
            _KV(f"{A}.swiglu_clamp_exp", _ARR, clamp_exp, _F32),
            _KV(f"{A}.swiglu_clamp_shexp", _ARR, clamp_sh, _F32),
        ]
    if spec.n_nextn:
        kvs.append(_KV(f"{A}.nextn_predict_layers", _U32, spec.n_nextn))
    kvs += [
        _KV("general.file_type", _U32, _FILE_TYPE[spec.dtype]),
        _KV("general.quantization_version", _U32, 2),
        _KV("tokenizer.ggml.model", _STR, "gpt2"),
        _KV("tokenizer.ggml.pre", _STR, v.pre),
        _KV("tokenizer.ggml.tokens", _ARR, list(v.tokens), _STR),
        _KV("tokenizer.ggml.token_type", _ARR, list(v.token_type), _I32),
        _KV("tokenizer.ggml.merges", _ARR, list(v.merges), _STR),
        _KV("tokenizer.ggml.bos_token_id", _U32, v.bos),
        _KV("tokenizer.ggml.eos_token_id", _U32, v.eos),
        _KV("tokenizer.ggml.eot_token_id", _U32, v.eot),
        _KV("tokenizer.ggml.padding_token_id", _U32, v.pad),
        _KV("tokenizer.ggml.add_bos_token", _BOOL, True),
        _KV("tokenizer.ggml.add_eos_token", _BOOL, False),
        _KV("tokenizer.chat_template", _STR, v.chat_template),
    ]
    return kvs


def _split_kvs(i: int, n_split: int, n_tensors: int) -> list[_KV]:
    # exactly what llama.cpp's gguf-split (and gguf-py's GGUFWriter) write
    return [
        _KV("split.no", _U16, i),
        _KV("split.count", _U16, n_split),
        _KV("split.tensors.count", _I32, n_tensors),
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
        kvs += _split_kvs(0, n_split, len(_tensor_plan(spec, len(_vocab().tokens))))
    return {kv.key: kv.value for kv in kvs}


# --------------------------------------------------------------------------- tensors


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of the plan: GGUF name, ggml shape (ne0 first), storage dtype and init."""

    name: str
    shape: tuple[int, ...]
    dtype: str  #: "f32", "f16" or "q8_0"
    init: str  #: "normal", "norm", "rope_freqs"
    scale: float = 1.0

    @property
    def nbytes(self) -> int:
        """Size of the tensor data in bytes."""
        _, blk, bpb = _DTYPES[self.dtype]
        n = math.prod(self.shape)
        if self.shape[0] % blk:
            raise ValueError(f"{self.name}: ne0={self.shape[0]} not a multiple of {blk} for {self.dtype}")
        return n // blk * bpb


def _tensor_plan(spec: ModelSpec, n_vocab: int) -> list[TensorSpec]:
    E, D, W = spec.n_embd, spec.head_dim, spec.dtype
    isq = lambda fan_in: 1.0 / math.sqrt(fan_in)  # noqa: E731
    out_scale = spec.logit_scale / math.sqrt(E)
    t: list[TensorSpec] = [TensorSpec("token_embd.weight", (E, n_vocab), spec.embd_dtype, "normal", 1.0)]
    if spec.rope_llama3 is not None:
        t.append(TensorSpec("rope_freqs.weight", (D // 2,), "f32", "rope_freqs"))
    for i in range(spec.n_layer_all):
        p = f"blk.{i}."
        H, HKV = spec.n_head(i), spec.n_head_kv(i)
        mapped = spec.trunk != "random" if i < spec.n_layer else spec.mtp_heads != "random"
        # a mapped block adds exactly zero to the residual stream
        out = lambda fan_in: ("zeros", 1.0) if mapped else ("normal", isq(fan_in))  # noqa: E731
        t += [
            TensorSpec(p + "attn_norm.weight", (E,), "f32", "norm"),
            TensorSpec(p + "attn_q.weight", (E, H * D), W, "normal", isq(E)),
            TensorSpec(p + "attn_k.weight", (E, HKV * D), W, "normal", isq(E)),
            TensorSpec(p + "attn_v.weight", (E, HKV * D), W, "normal", isq(E)),
            TensorSpec(p + "attn_q_norm.weight", (D,), "f32", "norm"),
            TensorSpec(p + "attn_k_norm.weight", (D,), "f32", "norm"),
            TensorSpec(p + "attn_gate.weight", (E, H), W, "normal", 2.0 * isq(E)),
            TensorSpec(p + "attn_output.weight", (H * D, E), W, *out(H * D)),
            TensorSpec(p + "ffn_norm.weight", (E,), "f32", "norm"),
        ]
        if not spec.is_moe(i):
            F = spec.n_ff
            t += [
                TensorSpec(p + "ffn_gate.weight", (E, F), W, "normal", isq(E)),
                TensorSpec(p + "ffn_up.weight", (E, F), W, "normal", isq(E)),
                TensorSpec(p + "ffn_down.weight", (F, E), W, *out(F)),
            ]
        else:
            X, FE, FS = spec.n_expert, spec.n_ff_exp, spec.n_ff_shexp
            t += [
                TensorSpec(p + "ffn_gate_inp.weight", (E, X), "f32", "normal", 2.0 * isq(E)),
                TensorSpec(p + "exp_probs_b.bias", (X,), "f32", "normal", 0.1),
                TensorSpec(p + "ffn_gate_exps.weight", (E, FE, X), W, "normal", isq(E)),
                TensorSpec(p + "ffn_up_exps.weight", (E, FE, X), W, "normal", isq(E)),
                TensorSpec(p + "ffn_down_exps.weight", (FE, E, X), W, *out(FE)),
                TensorSpec(p + "ffn_gate_shexp.weight", (E, FS), W, "normal", isq(E)),
                TensorSpec(p + "ffn_up_shexp.weight", (E, FS), W, "normal", isq(E)),
                TensorSpec(p + "ffn_down_shexp.weight", (FS, E), W, *out(FS)),
            ]
        if i >= spec.n_layer:  # MTP / NextN block
            if mapped:  # eh_proj passes the token's embedding through; the head is the token map (again)
                k = 1 if spec.mtp_heads == "agree" else 2
                t += [
                    TensorSpec(p + "nextn.eh_proj.weight", (2 * E, E), W, "eye_first"),
                    TensorSpec(p + "nextn.enorm.weight", (E,), "f32", "ones"),
                    TensorSpec(p + "nextn.hnorm.weight", (E,), "f32", "ones"),
                    TensorSpec(p + "nextn.shared_head_norm.weight", (E,), "f32", "ones"),
                    TensorSpec(p + "nextn.shared_head_head.weight", (E, n_vocab), spec.embd_dtype, f"map{k}"),
                ]
            else:
                t += [
                    TensorSpec(p + "nextn.eh_proj.weight", (2 * E, E), W, "normal", isq(2 * E)),
                    TensorSpec(p + "nextn.enorm.weight", (E,), "f32", "norm"),
                    TensorSpec(p + "nextn.hnorm.weight", (E,), "f32", "norm"),
                    TensorSpec(p + "nextn.shared_head_norm.weight", (E,), "f32", "norm"),
                    TensorSpec(p + "nextn.shared_head_head.weight", (E, n_vocab), spec.embd_dtype, "normal",
                               out_scale),
                ]
    if spec.trunk != "random":
        t += [
            TensorSpec("output_norm.weight", (E,), "f32", "ones"),
            TensorSpec("output.weight", (E, n_vocab), spec.embd_dtype, "map1"),
        ]
    else:
        t += [
            TensorSpec("output_norm.weight", (E,), "f32", "norm"),
            TensorSpec("output.weight", (E, n_vocab), spec.embd_dtype, "normal", out_scale),
        ]
    return t


def token_map(token: int, times: int = 1) -> int:
    """The next token of a ``trunk="token_map"`` model: ordinary tokens shift by one (the last wraps to
    the first), special and control tokens map to themselves; ``times`` applies the map repeatedly."""
    n = _n_ordinary()
    return (token + times) % n if 0 <= token < n else token


def _n_ordinary() -> int:
    # the tokenizer's ordinary tokens come first (GPT-2's), then the special/control ones
    tt = _vocab().token_type
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
    return {t: i for i, t in enumerate(_vocab().tokens)}


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
    return _next_tokens(resolve_spec(size), times, len(_vocab().tokens))


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
    return _tensor_plan(resolve_spec(size), len(_vocab().tokens))


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


# --------------------------------------------------------------------------- writer


def _pack_str(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _pack_kv(kv: _KV) -> bytes:
    out = [_pack_str(kv.key), struct.pack("<I", kv.vtype)]
    if kv.vtype == _STR:
        out.append(_pack_str(kv.value))
    elif kv.vtype == _ARR:
        assert kv.subtype is not None
        out.append(struct.pack("<IQ", kv.subtype, len(kv.value)))
        if kv.subtype == _STR:
            out.extend(_pack_str(s) for s in kv.value)
        else:
            fmt = _SCALAR_FMT[kv.subtype]
            out.append(struct.pack("<" + fmt[1] * len(kv.value), *kv.value))
    else:
        out.append(struct.pack(_SCALAR_FMT[kv.vtype], kv.value))
    return b"".join(out)


def _pad(n: int) -> int:
    return (n + _ALIGNMENT - 1) // _ALIGNMENT * _ALIGNMENT


def _write_gguf(f: BinaryIO, kvs: Sequence[_KV], tensors: Sequence[TensorSpec],
                data: Callable[[TensorSpec], bytes] | None) -> None:
    """Write one GGUF file; ``data=None`` writes the header only and extends the
    file (sparsely: no disk space used) to the size the tensor data would take."""
    head = [struct.pack("<4sIQQ", b"GGUF", 3, len(tensors), len(kvs))]
    head += [_pack_kv(kv) for kv in kvs]
    off = 0
    for ts in tensors:
        head.append(_pack_str(ts.name))
        head.append(struct.pack("<I", len(ts.shape)))
        head.append(struct.pack("<" + "Q" * len(ts.shape), *ts.shape))
        head.append(struct.pack("<IQ", _DTYPES[ts.dtype][0], off))
        off += _pad(ts.nbytes)
    blob = b"".join(head)
    f.write(blob)
    f.write(b"\0" * (_pad(len(blob)) - len(blob)))
    if data is None:
        f.truncate(_pad(len(blob)) + off)
        return
    for ts in tensors:
        b = data(ts)
        if len(b) != ts.nbytes:
            raise AssertionError(f"{ts.name}: {len(b)} bytes, expected {ts.nbytes}")
        f.write(b)
        f.write(b"\0" * (_pad(len(b)) - len(b)))


def split_paths(path: str | os.PathLike[str], n_split: int) -> list[pathlib.Path]:
    """File names of a split set, as llama.cpp expects them (``NAME-00001-of-0000N.gguf``).

    ``path`` is the name the single-file model would have; its suffix is dropped.
    With ``n_split == 1`` this is just ``[path]``.
    """
    p = pathlib.Path(path)
    if n_split == 1:
        return [p]
    stem = p.name[: -len(".gguf")] if p.name.endswith(".gguf") else p.name
    return [p.with_name(split_name(stem, i + 1, n_split)) for i in range(n_split)]


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
    plan = _tensor_plan(spec, len(_vocab().tokens))
    kvs = _metadata(spec, seed, legacy_fork_keys)
    return _write_set(path, kvs, plan, n_split, lambda ts: _tensor_bytes(ts, spec, seed))


def trunk_spec(spec: ModelSpec) -> ModelSpec:
    """``spec`` without its MTP blocks (what llama.cpp's converter writes with ``--no-mtp``)."""
    n = spec.n_layer
    return dataclasses.replace(spec, n_nextn=0, swiglu_clamp_exp=spec.swiglu_clamp_exp[:n],
                               swiglu_clamp_shexp=spec.swiglu_clamp_shexp[:n], mtp_heads="random")


def build_mtp_sidecar(path: str | os.PathLike[str], size: str | ModelSpec, *, seed: int = 0) -> pathlib.Path:
    """Write the MTP heads of ``size`` alone, as llama.cpp's converter does with ``--mtp``: the whole
    model's metadata, ``token_embd``, the MTP blocks, ``output_norm`` and ``output``."""
    spec = resolve_spec(size)
    if not spec.n_nextn:
        raise ValueError(f"{spec.name} has no MTP blocks (n_nextn=0)")
    plan = [t for t in _tensor_plan(spec, len(_vocab().tokens))
            if not t.name.startswith("blk.") or int(t.name.split(".")[1]) >= spec.n_layer]
    kvs = _metadata(spec, seed, False)
    return _write_set(path, kvs, plan, 1, lambda ts: _tensor_bytes(ts, spec, seed))[0]


def _write_set(path: str | os.PathLike[str], kvs: list[_KV], plan: list[TensorSpec], n_split: int,
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
                _write_gguf(f, file_kvs, chunks[i], data)
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


# --------------------------------------------------------------------------- header-only real shapes

#: Step 3.5 Flash's real shapes (stepfun-ai/Step-3.5-Flash config): 45 trunk
#: layers (3 dense, 42 MoE with 288 routed experts top-8 + a shared expert),
#: hidden 4096, head dim 128, 64 query heads on full-attention layers and 96 on
#: sliding-window layers (window 512), 8 KV heads everywhere, 3:1 sliding/full,
#: 256K training context with llama3 RoPE scaling, 128,896-token vocabulary
#: (:data:`FLASH_N_VOCAB`). Too big to build with random weights: use
#: :func:`write_header_only_model`. The MTP heads are not included (the
#: published GGUFs' sizes do not include them either: 196.81B parameters).
STEP35_FLASH = ModelSpec(
    name="step35-flash", n_layer=45, n_embd=4096, head_dim=128,
    n_head_full=64, n_head_swa=96, n_head_kv_full=8, n_head_kv_swa=8,
    n_ff=11264, n_ff_exp=1280, n_ff_shexp=1280, n_expert=288, n_expert_used=8,
    n_dense_lead=3, sliding_window=512, n_ctx_train=262144,
    swiglu_clamp_exp=_clamps(45, {43: 7.0, 44: 7.0}),
    swiglu_clamp_shexp=_clamps(45, {43: 16.0, 44: 16.0}),
    rope_llama3=(2.0, 1.0, 32.0, 131072), dtype="f16", embd_dtype="f16",
)
FLASH_N_VOCAB = 128896


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
    :func:`step35.fit.plan` works on them; they cannot be run. The vocabulary
    is the builder's, padded with placeholder tokens to ``n_vocab``.
    """
    try:
        rule, ftype = HEADER_RECIPES[recipe]
    except KeyError:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {sorted(HEADER_RECIPES)}") from None
    v = _vocab()
    if n_vocab < len(v.tokens):
        raise ValueError(f"n_vocab must be at least {len(v.tokens)}")
    plan = []
    for ts in _tensor_plan(spec, n_vocab):
        if len(ts.shape) >= 2 and ts.dtype != "f32":
            ts = TensorSpec(ts.name, ts.shape, rule(ts, spec.n_layer), ts.init, ts.scale)
        plan.append(ts)
    pad = n_vocab - len(v.tokens)
    kvs = []
    for kv in _metadata(spec, 0, False):
        if kv.key == "tokenizer.ggml.tokens":
            kv = _KV(kv.key, kv.vtype, list(kv.value) + [f"<|placeholder_{i}|>" for i in range(pad)], kv.subtype)
        elif kv.key == "tokenizer.ggml.token_type":
            kv = _KV(kv.key, kv.vtype, list(kv.value) + [4] * pad, kv.subtype)
        elif kv.key == "general.file_type":
            kv = _KV(kv.key, kv.vtype, ftype)
        elif kv.key == "general.name":
            kv = _KV(kv.key, kv.vtype, f"{spec.name}-{recipe}-header-only")
        kvs.append(kv)
    return _write_set(path, kvs, plan, n_split, None)


# --------------------------------------------------------------------------- cache


def cache_dir() -> pathlib.Path:
    """Model cache directory: ``$STEP35_CACHE/models`` or ``~/.cache/step35/models``."""
    root = os.environ.get("STEP35_CACHE")
    base = pathlib.Path(root).expanduser() if root else pathlib.Path.home() / ".cache" / "step35"
    return base / "models"


def _cache_key(spec: ModelSpec, seed: int, n_split: int, legacy_fork_keys: bool) -> str:
    fields: dict[str, Any] = {"spec": dataclasses.asdict(spec), "seed": seed, "n_split": n_split,
                              "legacy": legacy_fork_keys, "builder": BUILDER_VERSION, "sources": _vocab().digest}
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
        from .quantize import quantize

        quantize(src, dst, q)
    return dst
