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

The package only needs numpy (it writes with :mod:`step35.gguf.writer`), so tests can use
it without the native extension. Typical use::

    from step35.testing import model_path
    path = model_path("tiny")          # built once, cached, reused

Output is byte-for-byte deterministic for the same spec, seed, split count and
builder version.
"""

from __future__ import annotations

from .._runtime.data import chat_template_path, vocab_path
from ..gguf.files import split_paths
from .build import (
    BUILDER_VERSION,
    HEADER_RECIPES,
    agent_chain,
    agent_links,
    build_model,
    build_mtp_sidecar,
    expected_metadata,
    expected_tensors,
    token_map,
    token_permutation,
    write_fork_era_model,
    write_header_only_model,
)
from .cache import (
    BENCH_QUANT,
    bench_model_path,
    cache_dir,
    model_path,
    mtp_sidecar_paths,
)
from .specs import (
    AGENT_ANSWER,
    AGENT_REASONING,
    ARCH,
    FLASH_N_VOCAB,
    SIZES,
    SPECIAL_TOKENS,
    STEP35_FLASH,
    ModelSpec,
    TensorSpec,
    resolve_spec,
    trunk_spec,
    with_mtp,
)

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
    "ARCH",
    "with_mtp",
    "trunk_spec",
    "build_mtp_sidecar",
]
