"""An independent Step 3.5 reference for the logits tests (a helper module, not a test file).

It builds a tiny *random* Step 3.5 model with every structural feature of the
real architecture switched on, writes it in the Hugging Face hub layout the
real checkpoints use (``Step3p5ForCausalLM``), converts it with the pinned
llama.cpp converter, and computes reference logits with transformers'
implementation of the same architecture (``Step3p7TextModel`` + an lm_head,
``model_type "step3p5"``), in float32 with eager attention.

Nothing here touches the network: the tokenizer is GPT-2's, rebuilt from
``models/ggml-vocab-gpt-2.gguf`` in the pinned source, and the weights come
from a seeded generator.

The features and how each is switched on (``HUB_CONFIG`` below):

- leading dense layers: ``moe_layers_enum`` starts at layer 2, so layers 0-1
  use a dense SwiGLU MLP (``mlp.*``), layers 2-7 are MoE;
- MoE: 8 routed experts, top-3, sigmoid router with a per-expert selection bias
  (``moe.router_bias``, large enough to change which experts win), normalized
  expert weights scaled by ``moe_router_scaling_factor`` 2.0, and an always-on
  shared expert (``share_expert.*``);
- attention: full/sliding 1:3 (``layer_types``, full on layers 0 and 4, as in
  the real model), sliding window 16, 4 query heads on full layers and 8 on
  sliding ones (``attention_other_setting``), 2 KV heads (GQA), per-head q/k
  RMSNorm, a head-wise sigmoid output gate (``self_attn.g_proj``);
- RoPE: NeoX style, partial on full layers (factor 0.5 -> 32 of 64 dims), full
  on sliding ones (1.0), with different bases (1e6 full, 1e4 sliding);
- SwiGLU clamps: routed experts on layers 5-7 (``swiglu_limits``) and the
  shared expert on layers 6-7 (``swiglu_limits_shared``), with limits small
  enough that many activations are clipped (on the test sequence: 4-16% of
  silu(gate) values, 14-46% of up values);
- every RMSNorm weight is random (Step 3.5 norms compute ``x * (1 + w)``).

The test sequence (``TEST_TOKENS``, 320 tokens = 20 sliding windows, longer
than the 256-cell sliding-window KV cache llama.cpp allocates) was drawn so
that the reference decides every argmax and every expert choice clearly; see
the comment above ``TEST_TOKENS``.

Every matrix's rows are a multiple of 256 long, so llama.cpp's k-quants and
IQ4_XS fit every matrix and never fall back to another type for lack of a
whole block (its quantization mixtures still choose other types for some
tensors on purpose: attn_k/attn_v, attn_output, output, the router).

Negative controls change only the *reference* (``reference_logits`` keyword
arguments), never the GGUF, so a test can show that a broken feature moves the
error far beyond tolerance.
"""

from __future__ import annotations

import copy
import json
import os
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
LLAMA_SRC = REPO / "llama.cpp" / "source"
CONVERTER = LLAMA_SRC / "convert_hf_to_gguf.py"
GGUF_PY = LLAMA_SRC / "gguf-py"
GPT2_VOCAB = LLAMA_SRC / "models" / "ggml-vocab-gpt-2.gguf"

SEED = 1234

N_LAYER = 8
N_VOCAB = 50257  # GPT-2's tokenizer; the converter requires vocab_size >= the tokenizer's
N_EMBD = 256
HEAD_DIM = 64
N_HEAD_FULL = 4
N_HEAD_SWA = 8
N_HEAD_KV = 2
N_FF_DENSE = 512
N_FF_EXP = 256
N_FF_SHEXP = 256
N_EXPERT = 8
N_EXPERT_USED = 3
SLIDING_WINDOW = 16
ROPE_THETA_FULL = 1_000_000.0
ROPE_THETA_SWA = 10_000.0
LEADING_DENSE = 2
BRANCH_GAIN = 0.25  # scale of every residual branch's output projection (see hub_state_dict)

LAYER_TYPES = ["full_attention" if i % 4 == 0 else "sliding_attention" for i in range(N_LAYER)]
SWIGLU_LIMITS = [None] * 5 + [1.0, 0.75, 1.25]
SWIGLU_LIMITS_SHARED = [None] * 6 + [1.5, 1.0]

# The hub layout of stepfun-ai/Step-3.5-Flash's config.json, shrunk.  These
# are the keys llama.cpp's converter (conversion/step3.py, Step35Model) reads,
# spelled the way the real checkpoint spells them; transformers 5.23 parses the
# same legacy keys itself (Step3p7TextConfig.__post_init__).
HUB_CONFIG: dict[str, Any] = {
    "architectures": ["Step3p5ForCausalLM"],
    "model_type": "step3p5",
    "vocab_size": N_VOCAB,
    "hidden_size": N_EMBD,
    "intermediate_size": N_FF_DENSE,
    "num_hidden_layers": N_LAYER,
    "num_attention_heads": N_HEAD_FULL,
    "num_attention_groups": N_HEAD_KV,
    "head_dim": HEAD_DIM,
    "attention_other_setting": {
        "attention_type": "sliding_attention",
        "num_attention_heads": N_HEAD_SWA,
        "num_attention_groups": N_HEAD_KV,
        "head_dim": HEAD_DIM,
        "true_head_dim": HEAD_DIM,
    },
    "layer_types": LAYER_TYPES,
    "sliding_window": SLIDING_WINDOW,
    "partial_rotary_factors": [0.5 if t == "full_attention" else 1.0 for t in LAYER_TYPES],
    "rope_theta": [ROPE_THETA_FULL if t == "full_attention" else ROPE_THETA_SWA for t in LAYER_TYPES],
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "use_head_wise_attn_gate": True,
    "moe_layers_enum": ",".join(str(i) for i in range(LEADING_DENSE, N_LAYER)),
    "moe_every_n_layer": 1,
    "moe_num_experts": N_EXPERT,
    "moe_top_k": N_EXPERT_USED,
    "moe_intermediate_size": N_FF_EXP,
    "share_expert_dim": N_FF_SHEXP,
    "moe_router_activation": "sigmoid",
    "moe_router_scaling_factor": 2.0,
    "norm_expert_weight": True,
    "use_moe_router_bias": True,
    "need_fp32_gate": True,
    "swiglu_limits": SWIGLU_LIMITS,
    "swiglu_limits_shared": SWIGLU_LIMITS_SHARED,
    "num_nextn_predict_layers": 0,
    "tie_word_embeddings": False,
    "bos_token_id": 50256,
    "eos_token_id": 50256,
    "pad_token_id": 50256,
    "torch_dtype": "float32",
}


# --------------------------------------------------------------------------- weights


def hub_state_dict(seed: int = SEED) -> dict[str, Any]:
    """Random weights under the real checkpoint's tensor names (float32 torch tensors).

    Scales are chosen so that every feature matters: unit-variance embeddings,
    1/sqrt(fan_in) projections, router logits with std ~1.5 and a router bias
    comparable to the sigmoid scores' spread, RMSNorm weights w ~ N(0, 0.2).

    Every residual branch's output projection (o_proj, the dense, expert and
    shared-expert down_proj) is scaled by ``BRANCH_GAIN`` = 0.25, so that, as in
    a trained model, the residual stream dominates each block's update.  With
    unit gain the random model is chaotic: weight rounding as small as Q8_0's
    swaps experts and compounds over the layers (Q8_0 logits NMSE 1.6e-2, Q4_K
    0.17, i.e. no better than a broken feature), and the quantized comparisons
    would measure nothing.  At 0.25 they are 1.8e-4 (Q8_0) and ~2e-2 (4-bit)
    while every feature still moves the logits by NMSE >= 8e-3 (negative controls).
    """
    import torch

    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float32) * std

    def lin(n_out: int, n_in: int, gain: float = 1.0) -> torch.Tensor:
        return rnd(n_out, n_in, std=gain / n_in**0.5)

    def norm(n: int) -> torch.Tensor:
        return rnd(n, std=0.2)

    sd: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": rnd(N_VOCAB, N_EMBD, std=1.0),
        "model.norm.weight": norm(N_EMBD),
        "lm_head.weight": lin(N_VOCAB, N_EMBD, gain=2.0),
    }
    for i, lt in enumerate(LAYER_TYPES):
        p = f"model.layers.{i}."
        n_head = N_HEAD_FULL if lt == "full_attention" else N_HEAD_SWA
        sd[p + "input_layernorm.weight"] = norm(N_EMBD)
        sd[p + "post_attention_layernorm.weight"] = norm(N_EMBD)
        sd[p + "self_attn.q_proj.weight"] = lin(n_head * HEAD_DIM, N_EMBD)
        sd[p + "self_attn.k_proj.weight"] = lin(N_HEAD_KV * HEAD_DIM, N_EMBD)
        sd[p + "self_attn.v_proj.weight"] = lin(N_HEAD_KV * HEAD_DIM, N_EMBD)
        sd[p + "self_attn.o_proj.weight"] = lin(N_EMBD, n_head * HEAD_DIM, gain=BRANCH_GAIN)
        sd[p + "self_attn.g_proj.weight"] = lin(n_head, N_EMBD, gain=1.5)
        sd[p + "self_attn.q_norm.weight"] = norm(HEAD_DIM)
        sd[p + "self_attn.k_norm.weight"] = norm(HEAD_DIM)
        if i < LEADING_DENSE:
            sd[p + "mlp.gate_proj.weight"] = lin(N_FF_DENSE, N_EMBD)
            sd[p + "mlp.up_proj.weight"] = lin(N_FF_DENSE, N_EMBD)
            sd[p + "mlp.down_proj.weight"] = lin(N_EMBD, N_FF_DENSE, gain=BRANCH_GAIN)
        else:
            sd[p + "moe.gate.weight"] = lin(N_EXPERT, N_EMBD, gain=1.5)
            sd[p + "moe.router_bias"] = rnd(N_EXPERT, std=0.25)
            # stacked experts, as in the real checkpoint: [E, n_ff, n_embd] / [E, n_embd, n_ff]
            sd[p + "moe.gate_proj.weight"] = rnd(N_EXPERT, N_FF_EXP, N_EMBD, std=1 / N_EMBD**0.5)
            sd[p + "moe.up_proj.weight"] = rnd(N_EXPERT, N_FF_EXP, N_EMBD, std=1 / N_EMBD**0.5)
            sd[p + "moe.down_proj.weight"] = rnd(N_EXPERT, N_EMBD, N_FF_EXP, std=BRANCH_GAIN / N_FF_EXP**0.5)
            sd[p + "share_expert.gate_proj.weight"] = lin(N_FF_SHEXP, N_EMBD)
            sd[p + "share_expert.up_proj.weight"] = lin(N_FF_SHEXP, N_EMBD)
            sd[p + "share_expert.down_proj.weight"] = lin(N_EMBD, N_FF_SHEXP, gain=BRANCH_GAIN)
    return sd


def hub_to_transformers(sd: dict[str, Any]) -> dict[str, Any]:
    """Hub checkpoint names -> ``_Step35ForCausalLM`` state dict (mirrors transformers' own
    ``conversion_mapping["step3p7"]`` renames for the text stack)."""
    import torch

    out: dict[str, Any] = {}
    for name, t in sd.items():
        if name == "lm_head.weight":
            out[name] = t
            continue
        assert name.startswith("model."), name
        n = name[len("model.") :]
        if ".moe.gate_proj.weight" in n or ".moe.up_proj.weight" in n:
            continue  # merged below
        n = n.replace(".moe.gate.weight", ".mlp.gate.weight")
        n = n.replace(".moe.router_bias", ".mlp.gate.e_score_correction_bias")
        n = n.replace(".moe.down_proj.weight", ".mlp.experts.down_proj")
        n = n.replace(".share_expert.", ".mlp.shared_experts.")
        out["model." + n] = t
    for i in range(N_LAYER):
        g, u = f"model.layers.{i}.moe.gate_proj.weight", f"model.layers.{i}.moe.up_proj.weight"
        if g in sd:
            out[f"model.layers.{i}.mlp.experts.gate_up_proj"] = torch.cat([sd[g], sd[u]], dim=1)
    return out


_GGUF_TO_HUB_LAYER = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_gate.weight": "self_attn.g_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    "ffn_gate_inp.weight": "moe.gate.weight",
    "exp_probs_b.bias": "moe.router_bias",
    "ffn_gate_exps.weight": "moe.gate_proj.weight",
    "ffn_up_exps.weight": "moe.up_proj.weight",
    "ffn_down_exps.weight": "moe.down_proj.weight",
    "ffn_gate_shexp.weight": "share_expert.gate_proj.weight",
    "ffn_up_shexp.weight": "share_expert.up_proj.weight",
    "ffn_down_shexp.weight": "share_expert.down_proj.weight",
}
_GGUF_TO_HUB_GLOBAL = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output.weight": "lm_head.weight",
    "output_norm.weight": "model.norm.weight",
}


def _import_gguf():
    """The ``gguf`` package: the installed one (a dependency of step35), else the pinned gguf-py."""
    try:
        import gguf
    except ImportError:
        if str(GGUF_PY) not in sys.path:
            sys.path.append(str(GGUF_PY))
        import gguf
    return gguf


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    ne: tuple[int, ...]  # ggml order: ne[0] is the contiguous (row) dimension
    ggml_type: int
    offset: int  # absolute, in the file


@dataclass
class GGUFFile:
    """A GGUF file's metadata and tensor table, with its data memory-mapped.

    A minimal reader of our own: gguf-py's ``GGUFReader`` builds a NumPy view per
    element of every metadata array and takes ~4 s on GPT-2's 100k-entry
    vocabulary, several times per test session.
    """

    path: Path
    metadata: dict[str, Any]
    tensors: dict[str, GGUFTensor]
    data: np.memmap

    def raw(self, name: str) -> np.ndarray:
        """A tensor's bytes as uint8 rows ``[n_rows, row_bytes]``."""
        gguf = _import_gguf()
        t = self.tensors[name]
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(t.ggml_type)]
        n_rows = int(np.prod(t.ne[1:], dtype=np.int64))
        row_bytes = t.ne[0] // block * size
        return self.data[t.offset : t.offset + n_rows * row_bytes].reshape(n_rows, row_bytes)

    def array(self, name: str) -> np.ndarray:
        """A tensor dequantized to float32, in row-major (torch) shape ``reversed(ne)``."""
        gguf = _import_gguf()
        t = self.tensors[name]
        w = gguf.quants.dequantize(np.asarray(self.raw(name)), gguf.GGMLQuantizationType(t.ggml_type))
        return np.asarray(w, dtype=np.float32).reshape(tuple(reversed(t.ne)))

    def type_name(self, name: str) -> str:
        return _import_gguf().GGMLQuantizationType(self.tensors[name].ggml_type).name


_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def read_gguf(path: Path) -> GGUFFile:
    """Parse a GGUF file's header (metadata, tensor table); the data stays on disk (memmap)."""
    path = Path(path)
    buf = np.memmap(path, dtype=np.uint8, mode="r")
    mv = memoryview(buf)
    pos = 0

    def unpack(fmt: str) -> Any:
        nonlocal pos
        v = struct.unpack_from("<" + fmt, mv, pos)[0]
        pos += struct.calcsize("<" + fmt)
        return v

    def string() -> str:
        nonlocal pos
        n = unpack("Q")
        s = bytes(mv[pos : pos + n]).decode("utf-8")
        pos += n
        return s

    def value(vtype: int) -> Any:
        nonlocal pos
        if vtype in _GGUF_SCALARS:
            return unpack(_GGUF_SCALARS[vtype])
        if vtype == _GGUF_STRING:
            return string()
        if vtype == _GGUF_ARRAY:
            itype, n = unpack("I"), unpack("Q")
            if itype in _GGUF_SCALARS:
                fmt = f"<{n}{_GGUF_SCALARS[itype]}"
                out = list(struct.unpack_from(fmt, mv, pos))
                pos += struct.calcsize(fmt)
                return out
            return [value(itype) for _ in range(n)]
        raise ValueError(f"{path}: unknown GGUF value type {vtype}")

    if bytes(mv[:4]) != b"GGUF":
        raise ValueError(f"{path} is not a GGUF file")
    pos = 4
    version = unpack("I")
    if version != 3:
        raise ValueError(f"{path}: GGUF version {version}, expected 3")
    n_tensors, n_kv = unpack("Q"), unpack("Q")
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = string()
        metadata[key] = value(unpack("I"))
    infos = []
    for _ in range(n_tensors):
        name = string()
        ne = tuple(unpack("Q") for _ in range(unpack("I")))
        ggml_type, offset = unpack("I"), unpack("Q")
        infos.append((name, ne, ggml_type, offset))
    align = int(metadata.get("general.alignment", 32))
    start = (pos + align - 1) // align * align
    tensors = {n: GGUFTensor(n, ne, ty, start + off) for n, ne, ty, off in infos}
    return GGUFFile(path, metadata, tensors, buf)


def gguf_hub_state_dict(gguf_path: Path) -> dict[str, Any]:
    """The weights *as stored in a GGUF* (dequantized to float32), under hub names.

    Inverts the converter's renames and its RMSNorm ``w -> 1 + w``.  Feeding these
    to the reference separates the error of the quantization *format* (weights
    rounded to 4 or 8 bits, which a random model amplifies a lot) from the error
    of llama.cpp's quantized *kernels* (activations rounded to 8 bits for the dot
    products), which is what is left when both sides use the same weights.
    """
    import torch

    gf = read_gguf(Path(gguf_path))
    out: dict[str, Any] = {}
    for tname in gf.tensors:
        if tname in _GGUF_TO_HUB_GLOBAL:
            name = _GGUF_TO_HUB_GLOBAL[tname]
        else:
            blk, i, rest = tname.split(".", 2)
            if blk != "blk" or rest not in _GGUF_TO_HUB_LAYER:
                raise KeyError(f"unexpected tensor {tname} in {gguf_path}")
            name = f"model.layers.{int(i)}.{_GGUF_TO_HUB_LAYER[rest]}"
        w = gf.array(tname)
        if name.endswith("norm.weight"):
            w = w - np.float32(1.0)
        out[name] = torch.from_numpy(np.array(w, dtype=np.float32))
    return out


def expected_gguf_tensors() -> dict[str, tuple[int, ...]]:
    """Every tensor the converted GGUF must hold, with its shape in ggml order (ne[0] first)."""
    out: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (N_EMBD, N_VOCAB),
        "output.weight": (N_EMBD, N_VOCAB),
        "output_norm.weight": (N_EMBD,),
    }
    for i, lt in enumerate(LAYER_TYPES):
        p = f"blk.{i}."
        n_head = N_HEAD_FULL if lt == "full_attention" else N_HEAD_SWA
        out.update(
            {
                p + "attn_norm.weight": (N_EMBD,),
                p + "ffn_norm.weight": (N_EMBD,),
                p + "attn_q.weight": (N_EMBD, n_head * HEAD_DIM),
                p + "attn_k.weight": (N_EMBD, N_HEAD_KV * HEAD_DIM),
                p + "attn_v.weight": (N_EMBD, N_HEAD_KV * HEAD_DIM),
                p + "attn_output.weight": (n_head * HEAD_DIM, N_EMBD),
                p + "attn_gate.weight": (N_EMBD, n_head),
                p + "attn_q_norm.weight": (HEAD_DIM,),
                p + "attn_k_norm.weight": (HEAD_DIM,),
            }
        )
        if i < LEADING_DENSE:
            out.update(
                {
                    p + "ffn_gate.weight": (N_EMBD, N_FF_DENSE),
                    p + "ffn_up.weight": (N_EMBD, N_FF_DENSE),
                    p + "ffn_down.weight": (N_FF_DENSE, N_EMBD),
                }
            )
        else:
            out.update(
                {
                    p + "ffn_gate_inp.weight": (N_EMBD, N_EXPERT),
                    p + "exp_probs_b.bias": (N_EXPERT,),
                    p + "ffn_gate_exps.weight": (N_EMBD, N_FF_EXP, N_EXPERT),
                    p + "ffn_up_exps.weight": (N_EMBD, N_FF_EXP, N_EXPERT),
                    p + "ffn_down_exps.weight": (N_FF_EXP, N_EMBD, N_EXPERT),
                    p + "ffn_gate_shexp.weight": (N_EMBD, N_FF_SHEXP),
                    p + "ffn_up_shexp.weight": (N_EMBD, N_FF_SHEXP),
                    p + "ffn_down_shexp.weight": (N_FF_SHEXP, N_EMBD),
                }
            )
    return out


# --------------------------------------------------------------------------- tokenizer


def write_gpt2_tokenizer(model_dir: Path) -> None:
    """GPT-2's byte-level BPE tokenizer rebuilt from the pinned source's vocab GGUF.

    The converter identifies the pre-tokenizer by hashing the token ids of a fixed
    text (``get_vocab_base_pre``); vocab.json + merges.txt loaded as
    ``GPT2Tokenizer`` reproduce openai-community/gpt2's ids, so it says "gpt-2".
    """
    meta = read_gguf(GPT2_VOCAB).metadata
    tokens = list(meta["tokenizer.ggml.tokens"])
    merges = list(meta["tokenizer.ggml.merges"])
    assert len(tokens) == N_VOCAB and tokens[50256] == "<|endoftext|>"
    (model_dir / "vocab.json").write_text(
        json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False), encoding="utf-8"
    )
    (model_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    eot = "<|endoftext|>"
    (model_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "GPT2Tokenizer",
                "bos_token": eot,
                "eos_token": eot,
                "unk_token": eot,
                "add_prefix_space": False,
                "model_max_length": 4096,
            }
        ),
        encoding="utf-8",
    )


# --------------------------------------------------------------------------- model dir + GGUF


def build_model_dir(model_dir: Path, *, seed: int = SEED) -> Path:
    """Write the tiny random model in the hub layout: config.json, model.safetensors, tokenizer."""
    from safetensors.torch import save_file

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps(HUB_CONFIG, indent=2), encoding="utf-8")
    sd = {k: v.contiguous() for k, v in hub_state_dict(seed).items()}
    save_file(sd, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    write_gpt2_tokenizer(model_dir)
    return model_dir


# Run inside the converter's process: make transformers' AutoConfig unavailable
# so ModelBase.load_hparams falls back to reading config.json verbatim.
# transformers 5.23 knows model_type "step3p5" and would parse the hub config
# into Step3p7TextConfig, whose to_dict() drops/renames the legacy keys the
# converter reads (num_attention_groups, moe_layers_enum, attention_other_setting,
# per-layer rope_theta/partial_rotary_factors, moe_num_experts, moe_top_k, ...).
_CONVERTER_SHIM = r"""
import runpy, sys
import transformers

class _HubConfigOnly:
    @staticmethod
    def from_pretrained(*args, **kwargs):
        raise ValueError("step35 tests: read config.json verbatim (hub layout)")

transformers.AutoConfig = _HubConfigOnly
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""


def convert(model_dir: Path, outfile: Path, *, outtype: str = "f32", timeout: float = 900) -> Path:
    """Run the pinned llama.cpp converter on ``model_dir`` (with the pinned gguf-py)."""
    if not CONVERTER.is_file():
        raise FileNotFoundError(f"{CONVERTER} is missing: materialize the pinned llama.cpp source first")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(GGUF_PY), str(LLAMA_SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("NO_LOCAL_GGUF", None)
    env["PYTHONWARNINGS"] = "ignore"
    cmd = [
        sys.executable,
        "-c",
        _CONVERTER_SHIM,
        str(CONVERTER),
        str(model_dir),
        "--outtype",
        outtype,
        "--outfile",
        str(outfile),
    ]
    p = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0 or not Path(outfile).is_file():
        raise RuntimeError(f"convert_hf_to_gguf.py failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-8000:]}")
    return Path(outfile)


# --------------------------------------------------------------------------- reference


def _hub_config(model_dir: Path) -> dict[str, Any]:
    return json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))


def load_reference_model(
    model_dir: Path,
    *,
    zero_router_bias: bool = False,
    drop_clamp: bool | str = False,
    disable_sliding_window: bool = False,
    weights_from: Path | None = None,
):
    """The transformers model for ``model_dir`` (float32, eager attention, eval mode).

    ``weights_from``: take the weights from this GGUF (dequantized, see
    ``gguf_hub_state_dict``) instead of ``model.safetensors``.

    Negative-control knobs (they change only the reference, never the files):
    ``zero_router_bias`` zeroes every MoE selection bias; ``drop_clamp`` removes
    the SwiGLU clamps (True: all, "routed": experts only, "shared": shared expert
    only); ``disable_sliding_window`` lets sliding layers attend to the whole
    prefix (their head counts and RoPE stay as they are).
    """
    import torch
    from safetensors.torch import load_file
    from transformers.models.step3p7.configuration_step3p7 import Step3p7TextConfig
    from transformers.models.step3p7.modeling_step3p7 import Step3p7TextModel

    hub = copy.deepcopy(_hub_config(model_dir))
    for k in ("architectures", "model_type", "torch_dtype"):
        hub.pop(k, None)
    if drop_clamp in (True, "routed"):
        hub["swiglu_limits"] = None
    if drop_clamp in (True, "shared"):
        hub["swiglu_limits_shared"] = None
    if disable_sliding_window:
        # layers stay "sliding_attention" (own head count, RoPE base and factor);
        # only the window becomes wider than any sequence we run
        hub["sliding_window"] = 1 << 20
    # transformers parses the hub's legacy keys itself (moe_layers_enum,
    # attention_other_setting, per-layer rope_theta/partial_rotary_factors, ...)
    config = Step3p7TextConfig(**hub)
    config._attn_implementation = "eager"
    _check_parsed_config(config, hub)

    class _Step35ForCausalLM(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = Step3p7TextModel(config)
            self.lm_head = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=False)

        def forward(self, input_ids: torch.Tensor, last_only: bool = False) -> torch.Tensor:
            h = self.model(input_ids=input_ids, use_cache=False).last_hidden_state
            return self.lm_head(h[:, -1:] if last_only else h)

    torch.manual_seed(0)
    m = _Step35ForCausalLM()
    if weights_from is not None:
        hub_sd = gguf_hub_state_dict(Path(weights_from))
    else:
        hub_sd = load_file(str(Path(model_dir) / "model.safetensors"))
    sd = hub_to_transformers(hub_sd)
    missing, unexpected = m.load_state_dict(sd, strict=False)
    # rotary inv_freq buffers are non-persistent; everything else must be assigned
    assert not unexpected, unexpected
    assert not missing, missing
    if zero_router_bias:
        with torch.no_grad():
            for layer in m.model.layers:
                gate = getattr(layer.mlp, "gate", None)
                if gate is not None and hasattr(gate, "e_score_correction_bias"):
                    gate.e_score_correction_bias.zero_()
    m.float().eval()
    assert m.model.config._attn_implementation == "eager"
    return m


def _check_parsed_config(config: Any, hub: dict[str, Any]) -> None:
    """Fail loudly if transformers parsed the hub config differently from what we mean."""
    assert config.num_key_value_heads == N_HEAD_KV
    heads = [config.per_layer_config[i].num_attention_heads for i in range(N_LAYER)]
    assert heads == [N_HEAD_FULL if t == "full_attention" else N_HEAD_SWA for t in LAYER_TYPES], heads
    assert list(config.layer_types) == LAYER_TYPES
    assert list(config.mlp_layer_types) == ["dense"] * LEADING_DENSE + ["sparse"] * (N_LAYER - LEADING_DENSE)
    assert config.num_local_experts == N_EXPERT and config.num_experts_per_tok == N_EXPERT_USED
    rp = config.rope_parameters
    assert rp["full_attention"]["rope_theta"] == ROPE_THETA_FULL
    assert rp["full_attention"]["partial_rotary_factor"] == 0.5
    assert rp["sliding_attention"]["rope_theta"] == ROPE_THETA_SWA
    assert rp["sliding_attention"]["partial_rotary_factor"] == 1.0
    assert config.query_pre_attn_scalar == HEAD_DIM
    assert config.moe_router_scaling_factor == hub["moe_router_scaling_factor"]
    assert config.gating is True  # head-wise (per-head) attention gate


def _forward(m: Any, tokens: list[int], *, last_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(logits [n, n_vocab] or [1, n_vocab], router margins [n_moe_layers, n]) of one sequence.

    The router margin of a token in a MoE layer is the gap between the
    ``N_EXPERT_USED``-th and the next expert's selection score (sigmoid + bias):
    how far that token is from swapping an expert.
    """
    import torch

    margins: dict[int, np.ndarray] = {}
    hooks = []
    for i, layer in enumerate(m.model.layers):
        gate = getattr(layer.mlp, "gate", None)
        if gate is None or not hasattr(gate, "e_score_correction_bias"):
            continue

        def hook(mod: Any, inp: Any, out: Any, i: int = i) -> None:
            scores = torch.sigmoid(out[0].float()) + mod.e_score_correction_bias
            top = torch.topk(scores, N_EXPERT_USED + 1, dim=-1).values
            margins[i] = (top[:, N_EXPERT_USED - 1] - top[:, N_EXPERT_USED]).numpy().copy()

        hooks.append(gate.register_forward_hook(hook))
    try:
        ids = torch.tensor([list(map(int, tokens))], dtype=torch.long)
        with torch.no_grad():
            out = m(ids, last_only=last_only)
    finally:
        for h in hooks:
            h.remove()
    logits = out[0].to(torch.float32).numpy().copy()
    return logits, np.stack([margins[i] for i in sorted(margins)])


def reference_logits(
    model_dir: Path,
    tokens: list[int] | np.ndarray,
    *,
    zero_router_bias: bool = False,
    drop_clamp: bool | str = False,
    disable_sliding_window: bool = False,
    weights_from: Path | None = None,
    router_margins: bool = False,
) -> Any:
    """Logits [n_tokens, n_vocab] (float32) of ``tokens`` as one causal sequence, by transformers.

    With ``router_margins``: ``(logits, margins [n_moe_layers, n_tokens])`` (see ``_forward``).
    Other keyword arguments: see ``load_reference_model``.
    """
    m = load_reference_model(
        model_dir,
        zero_router_bias=zero_router_bias,
        drop_clamp=drop_clamp,
        disable_sliding_window=disable_sliding_window,
        weights_from=weights_from,
    )
    logits, margins = _forward(m, list(map(int, tokens)))
    return (logits, margins) if router_margins else logits


# --------------------------------------------------------------------------- metrics


def nmse(a: np.ndarray, ref: np.ndarray) -> float:
    """sum((a - ref)^2) / sum(ref^2), over all positions and the whole vocabulary (float64 sums)."""
    a, ref = np.asarray(a, dtype=np.float32), np.asarray(ref, dtype=np.float32)
    assert a.shape == ref.shape, (a.shape, ref.shape)
    d = (a - ref).ravel()
    r = ref.ravel()
    return float(np.einsum("i,i->", d, d, dtype=np.float64) / np.einsum("i,i->", r, r, dtype=np.float64))


def top1_agreement(a: np.ndarray, ref: np.ndarray) -> float:
    """Fraction of positions whose argmax token is the same."""
    return float(np.mean(np.argmax(a, axis=-1) == np.argmax(ref, axis=-1)))


def top2_gap(logits: np.ndarray) -> np.ndarray:
    """Per position: the reference's top-1 logit minus its top-2 logit."""
    s = np.partition(np.asarray(logits), -2, axis=-1)
    return s[..., -1] - s[..., -2]


def top2_gap_min(logits: np.ndarray) -> float:
    return float(top2_gap(logits).min())


# --------------------------------------------------------------------------- the test sequence

# A logits comparison at 1e-5 is only well posed away from discontinuities, and
# this model has two kinds: the argmax (the issue asks for identical argmax at
# every position) and each MoE layer's top-3 expert selection (a token whose
# 3rd and 4th selection scores nearly tie swaps an expert on a ~1e-4 change of
# its hidden state, which f16 rounding of K/V in flash attention already makes,
# and then its logits differ by ~1e-2: seen with llama.cpp's token-by-token path
# on a plain random sequence).  With random logits over 50,257 tokens and 6 MoE
# layers x 320 tokens x a top-3 choice, a random sequence almost surely has
# near-ties of both kinds, so the test sequence is random tokens, each redrawn
# until the reference decides its position clearly: top-1/top-2 logit gap
# >= 0.05 (logit std ~2) and every MoE layer's router margin >= 0.01 (scores in
# (0, 1) + bias).  ``decisive_tokens`` made TEST_TOKENS (seed 4, ~8 min on 2 cores); the
# test asserts both margins on the reference, so a change to the model that
# invalidates the sequence fails loudly (regenerate it), never flakily.
TEST_TOKENS_LEN = 320  # 20 sliding windows, and more than the 256-cell SWA KV cache llama.cpp allocates
TEST_TOKENS_SEED = 4
MIN_TOP2_GAP = 0.05
MIN_ROUTER_MARGIN = 0.01


def decisive_tokens(
    model_dir: Path,
    n: int = TEST_TOKENS_LEN,
    *,
    seed: int = TEST_TOKENS_SEED,
    min_top2_gap: float = MIN_TOP2_GAP,
    min_router_margin: float = MIN_ROUTER_MARGIN,
    max_draws: int = 256,
) -> list[int]:
    """Random tokens, each redrawn until the reference is decisive at its position (see above)."""
    m = load_reference_model(model_dir)
    rng = np.random.default_rng(seed)
    tokens: list[int] = []
    while len(tokens) < n:
        for _ in range(max_draws):
            cand = int(rng.integers(0, N_VOCAB - 1))
            logits, margins = _forward(m, tokens + [cand], last_only=True)
            if top2_gap_min(logits) >= min_top2_gap and float(margins[:, -1].min()) >= min_router_margin:
                tokens.append(cand)
                break
        else:
            raise RuntimeError(f"no decisive token for position {len(tokens)} in {max_draws} draws")
    return tokens


# decisive_tokens(build_model_dir(...)) for the model above
# fmt: off
TEST_TOKENS: list[int] = [
    36508, 47394, 44295, 25697, 30523, 14229, 18920, 31508, 40300, 29193, 33971, 27336, 16996, 3042,
    23979, 45107, 21635, 7007, 39649, 48469, 49459, 46730, 18580, 48694, 28821, 46689, 29620, 30598,
    35423, 20517, 33453, 4534, 26195, 25050, 24807, 18299, 48174, 44419, 11245, 8284, 26238, 28942,
    45182, 47195, 26852, 29249, 50080, 46726, 1350, 10904, 40696, 27044, 33241, 23113, 48936, 8580,
    50051, 11124, 48371, 6423, 44437, 1743, 19212, 26739, 37162, 2109, 26996, 3584, 18902, 7686,
    4881, 21582, 31839, 4799, 48043, 45390, 19851, 20243, 15446, 40559, 5401, 19709, 6468, 3956,
    1903, 31248, 16927, 20366, 49741, 35183, 17333, 26471, 35412, 4431, 32405, 32265, 18611, 25093,
    42373, 31866, 36618, 31013, 2225, 3185, 11314, 47560, 3613, 43459, 24173, 6744, 5645, 33550,
    38357, 24492, 26920, 25144, 29361, 30026, 46983, 29593, 4698, 31604, 26286, 37957, 25662, 32060,
    19081, 2462, 38485, 42080, 14313, 14671, 11890, 20872, 45587, 23128, 21244, 41290, 31719, 36196,
    14379, 35317, 25218, 37587, 19693, 27668, 47708, 42644, 2810, 17157, 37921, 44055, 32822, 24366,
    5677, 31079, 17171, 48734, 41871, 17780, 2034, 46919, 34097, 3128, 39674, 18346, 4266, 34732,
    47231, 46988, 35968, 11663, 26906, 8124, 49629, 3236, 41949, 37737, 1604, 19330, 13714, 46730,
    38873, 13272, 21333, 383, 17153, 34833, 42137, 16443, 50053, 23072, 39414, 14181, 31576, 44557,
    26575, 18642, 14158, 31581, 24076, 38063, 10458, 39488, 27598, 33154, 39960, 31439, 40536,
    18711, 24554, 38709, 46889, 20654, 984, 32755, 42191, 24429, 14990, 19763, 4908, 37802, 37496,
    31287, 38975, 12944, 34734, 5286, 18454, 48050, 16673, 40726, 36977, 41456, 13334, 17590, 46012,
    35111, 4433, 47792, 14693, 7708, 11254, 6996, 17627, 34593, 27544, 23783, 17890, 18663, 23582,
    44496, 49327, 47405, 38770, 25204, 15626, 26641, 676, 47261, 34089, 23315, 2204, 12865, 48438,
    9772, 20031, 8482, 16068, 14375, 42105, 28418, 12378, 37516, 46562, 15846, 16654, 12683, 8133,
    5910, 41016, 11168, 12602, 48719, 20953, 32301, 16098, 27377, 18018, 45099, 37644, 19143, 49650,
    20825, 34413, 47922, 41416, 11998, 11443, 38583, 46898, 46603, 20191, 2960, 7116, 9005, 44978,
    45783, 45152, 15512, 36873, 34387, 10369, 42182, 28232, 38071, 38056, 15939, 38128, 31069,
]
# fmt: on
