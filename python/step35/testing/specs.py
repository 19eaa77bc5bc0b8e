"""The specs of the synthetic Step 3.5 models: :class:`ModelSpec`, the built-in :data:`SIZES`, and the
real Step 3.5 Flash's shapes (:data:`STEP35_FLASH`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from dataclasses import dataclass
from typing import Any

from gguf.constants import (
    GGML_QUANT_SIZES,
    GGMLQuantizationType,
)

from .._runtime.data import chat_template_path, vocab_path
from ..gguf.reader import read_header

ARCH = "step35"


# ggml tensor types used here: name -> (ggml type id, block size, bytes per block)
DTYPES: dict[str, tuple[int, int, int]] = {
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
        if self.dtype not in ("f16", "f32") or self.embd_dtype not in DTYPES:
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
            n_vocab = len(vocab().tokens)
        return sum(math.prod(t.shape) for t in tensor_plan(self, n_vocab))


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


def trunk_spec(spec: ModelSpec) -> ModelSpec:
    """``spec`` without its MTP blocks (what llama.cpp's converter writes with ``--no-mtp``)."""
    n = spec.n_layer
    return dataclasses.replace(spec, n_nextn=0, swiglu_clamp_exp=spec.swiglu_clamp_exp[:n],
                               swiglu_clamp_shexp=spec.swiglu_clamp_shexp[:n], mtp_heads="random")


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
def vocab() -> _Vocab:
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
        _, blk, bpb = DTYPES[self.dtype]
        n = math.prod(self.shape)
        if self.shape[0] % blk:
            raise ValueError(f"{self.name}: ne0={self.shape[0]} not a multiple of {blk} for {self.dtype}")
        return n // blk * bpb


def tensor_plan(spec: ModelSpec, n_vocab: int) -> list[TensorSpec]:
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
