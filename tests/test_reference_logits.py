"""Step 3.5 logits equal an independent reference: transformers' Step 3.5 text stack (issue 4).

A tiny random Step 3.5 model with every structural feature switched on is
built in transformers (``reference_step35.py``), written in the hub layout,
converted with the pinned llama.cpp converter and loaded with step35.  Its
logits must equal transformers' (float32, eager attention) on a sequence four
times the sliding window:

- F32, batched, token by token, and batched in micro-batches smaller than the
  sequence: NMSE <= 1e-5 and the same argmax at every position;
- batched == token by token within the same bound;
- Q8_0, Q4_K_S, Q4_K_M, IQ4_XS (made with ``step35.tools.quantize``; IQ4_XS without
  an importance matrix): measured NMSE / top-1 agreement, with tolerances set
  from measurement below;
- negative controls: the reference with one feature broken (router bias
  zeroed, SwiGLU clamps dropped, sliding window disabled) is far from step35.

NMSE = sum((a - ref)^2) / sum(ref^2) over all positions and the whole vocabulary.

The measured numbers are printed in the session summary (and with ``-s``), and
written to ``$STEP35_REPORT_DIR/reference_logits.json`` when that is set.
Needs the pinned llama.cpp source (``llama.cpp/source``, for the converter and
GPT-2's vocabulary) and torch + transformers (tests/requirements.txt); no network.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import reference_step35 as R  # tests/ is on pythonpath (pyproject.toml)

if not R.LLAMA_SRC.is_dir():
    pytest.skip(
        f"the pinned llama.cpp source is not materialized at {R.LLAMA_SRC} "
        "(run `python llama.cpp/materialize.py`); the converter and GPT-2's vocabulary come from it",
        allow_module_level=True,
    )

import step35  # after the skip: the module is useless without the converter

pytestmark = [pytest.mark.slow]

# ----------------------------------------------------------------------------- tolerances

# The bound for F32, for every path and for batched vs token by token.
F32_NMSE_TOL = 1e-5

# A negative control must be "far above tolerance": at least 100x the F32 bound.
# (Measured: 7.9e-3 for dropping only the shared expert's clamp, up to 5.0e-2
# for zeroing the router bias, i.e. 790x to 5,000x the bound.)
NEGATIVE_CONTROL_MIN_NMSE = 100 * F32_NMSE_TOL

# The test sequence was drawn so that the reference decides every position
# clearly (reference_step35.TEST_TOKENS): top-1/top-2 logit gap >= 0.05 and
# router margin >= 0.01 in every MoE layer.  Asserted here with 20% slack for
# torch's own rounding on another CPU; llama.cpp's F32 error is far smaller
# (max |logit difference| ~1.5e-3).
MIN_REFERENCE_TOP2_GAP = 0.8 * R.MIN_TOP2_GAP
MIN_REFERENCE_ROUTER_MARGIN = 0.8 * R.MIN_ROUTER_MARGIN


@dataclass(frozen=True)
class QuantTolerance:
    """Bounds for one quantization type.

    ``nmse`` bounds NMSE against the F32 reference (what a user gets), batched
    and token by token; ``top1`` is the least fraction of positions whose argmax
    agrees with it; ``kernel_nmse`` bounds NMSE against the reference run on the
    *same* quantized weights (dequantized), and token by token vs batched: what
    is left once the format's rounding of the weights is taken out, i.e.
    llama.cpp's quantized kernels (which also round activations to 8 bits).
    """

    nmse: float
    top1: float
    kernel_nmse: float
    main_type: str  # the type of every routed-expert gate/up matrix and attn_q


# How these were set: measured on this model and sequence with the CPU backend's
# AVX512 (icelake-class), AVX2 (haswell) and SSE4.2 variants (the spread between
# them is <= 2x on kernel_nmse and <= 2 points of top-1); each NMSE bound is
# 3-6x the largest value measured, rounded, and each top-1 bound 5 (Q8_0) to 11
# points under the lowest one (16 to 35 of 320 positions; 3 to 7 of the 64
# token-by-token ones).
#                 measured NMSE vs F32 ref   top-1 vs F32 ref   kernel NMSE (same weights / incr vs batched)
#   Q8_0          1.75e-4 .. 1.79e-4         0.997 .. 1.0       7.8e-5 .. 1.1e-4
#   Q4_K_S        1.50e-2 .. 1.70e-2         0.756 .. 0.813     3.0e-4 .. 1.25e-3
#   Q4_K_M        1.49e-2 .. 1.65e-2         0.756 .. 0.797     3.8e-4 .. 9.0e-4
#   IQ4_XS        1.98e-2 .. 2.20e-2         0.712 .. 0.722     5.3e-4 .. 1.30e-3
# The 4-bit numbers are the formats' own: the reference on the dequantized
# weights is as far from the F32 reference (1.6e-2 .. 2.0e-2) as llama.cpp is.
# Top-1 is low because this random model's logits have no margin (top-1/top-2
# gaps ~0.05-0.5 against a 4-bit logit error of ~0.25 rms); a trained model's
# are far more peaked.  A bug in a quantized kernel shows in kernel_nmse, which
# is more than 10x below the 4-bit formats' own error and 6x below the smallest
# negative control.
QUANT_TOLERANCES: dict[str, QuantTolerance] = {
    "Q8_0": QuantTolerance(nmse=1e-3, top1=0.95, kernel_nmse=5e-4, main_type="Q8_0"),
    "Q4_K_S": QuantTolerance(nmse=6e-2, top1=0.65, kernel_nmse=5e-3, main_type="Q4_K"),
    "Q4_K_M": QuantTolerance(nmse=6e-2, top1=0.65, kernel_nmse=5e-3, main_type="Q4_K"),
    "IQ4_XS": QuantTolerance(nmse=8e-2, top1=0.60, kernel_nmse=5e-3, main_type="IQ4_XS"),
}

NEGATIVE_CONTROLS: dict[str, dict[str, Any]] = {
    "zero_router_bias": {"zero_router_bias": True},
    "drop_clamp": {"drop_clamp": True},
    "drop_clamp_routed_only": {"drop_clamp": "routed"},
    "drop_clamp_shared_only": {"drop_clamp": "shared"},
    "disable_sliding_window": {"disable_sliding_window": True},
}

# ----------------------------------------------------------------------------- report


class _Report:
    """Measured numbers: printed in pytest's terminal summary and written as JSON."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {
            "issue": 4,
            "metric": "NMSE = sum((a-ref)^2)/sum(ref^2) over all positions and the vocabulary",
            "tolerances": {
                "f32_nmse": F32_NMSE_TOL,
                "negative_control_min_nmse": NEGATIVE_CONTROL_MIN_NMSE,
                "min_reference_top2_gap": MIN_REFERENCE_TOP2_GAP,
                "min_reference_router_margin": MIN_REFERENCE_ROUTER_MARGIN,
                "quantized": {k: vars(v) for k, v in QUANT_TOLERANCES.items()},
            },
            "f32": {},
            "quantized": {},
            "negative_controls": {},
            "timings_s": {},
        }

    def put(self, section: str, key: str, value: Any) -> None:
        value = _rounded(value)
        self.data.setdefault(section, {})[key] = value
        print(f"[reference-logits] {section}.{key}: {json.dumps(value)}")

    def lines(self) -> list[str]:
        d = self.data
        out = [f"environment: {json.dumps(d.get('environment', {}))}", f"model: {json.dumps(d.get('model', {}))}"]
        for k, v in d["f32"].items():
            out.append(f"F32 {k}: {json.dumps(v)}")
        for k, v in d["quantized"].items():
            out.append(f"{k}: {json.dumps(v)}")
        for k, v in d["negative_controls"].items():
            out.append(f"negative control {k}: {json.dumps(v)}")
        out.append(f"timings (s): {json.dumps(d['timings_s'])}")
        return out

    # pytest hook, called because the report registers itself as a plugin
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        terminalreporter.section("step35 vs transformers reference logits (issue 4)")
        for line in self.lines():
            terminalreporter.write_line(line)

    def write(self) -> Path | None:
        where = os.environ.get("STEP35_REPORT_DIR")
        if not where:
            return None
        path = Path(where) / "reference_logits.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return path


@pytest.fixture(scope="session")
def report(request: pytest.FixtureRequest):
    rep = _Report()
    rep.data["environment"] = {
        "step35": getattr(step35, "__version__", None),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    request.config.pluginmanager.register(rep, "step35-reference-logits-report")
    yield rep
    rep.write()


# ----------------------------------------------------------------------------- model


@dataclass
class Setup:
    model_dir: Path
    f32: Path
    tokens: list[int]
    ref: np.ndarray  # reference logits [n_tokens, n_vocab]
    router_margins: np.ndarray  # [n_moe_layers, n_tokens]


@pytest.fixture(scope="session")
def setup(tmp_path_factory: pytest.TempPathFactory, report: _Report) -> Setup:
    """Build the tiny random model, convert it to F32 GGUF and compute the reference, once."""
    import torch
    import transformers

    root = tmp_path_factory.mktemp("step35-reference")
    t0 = time.perf_counter()
    model_dir = R.build_model_dir(root / "Step3p5-tiny-random")
    t1 = time.perf_counter()
    f32 = R.convert(model_dir, root / "step3p5-tiny-random-f32.gguf", outtype="f32")
    t2 = time.perf_counter()
    tokens = list(R.TEST_TOKENS)
    ref, margins = R.reference_logits(model_dir, tokens, router_margins=True)
    t3 = time.perf_counter()
    report.data["timings_s"].update(
        build_hub_checkpoint=round(t1 - t0, 2), convert_f32=round(t2 - t1, 2), reference_f32=round(t3 - t2, 2)
    )
    report.data["model"] = {
        "n_tokens": len(tokens),
        "sliding_window": R.SLIDING_WINDOW,
        "n_layer": R.N_LAYER,
        "n_vocab": R.N_VOCAB,
        "f32_gguf_bytes": f32.stat().st_size,
        "reference_logit_std": round(float(ref.std()), 4),
        "reference_min_top2_gap": round(float(R.top2_gap(ref).min()), 4),
        "reference_min_router_margin": round(float(margins.min()), 4),
    }
    report.data["environment"].update(torch=torch.__version__, transformers=transformers.__version__)
    return Setup(model_dir, f32, tokens, ref, margins)


def _logits(path: Path, tokens: list[int], **kwargs: Any) -> np.ndarray:
    with step35.Model(path) as m:
        out = m.logits(tokens, **kwargs)
        n_vocab = m.n_vocab
    assert isinstance(out, np.ndarray) and out.dtype == np.float32, (type(out), getattr(out, "dtype", None))
    assert out.shape == (len(tokens), n_vocab), out.shape
    assert np.isfinite(out).all()
    return out


# The F32 paths: one batched pass, token by token, and a batch split into
# micro-batches smaller than (and not aligned with) the sliding window, so that
# the sliding-window KV cache must carry state across micro-batches.
F32_PATHS: dict[str, dict[str, Any]] = {
    "batched": {},
    "incremental": {"incremental": True},
    "batches_of_64_ubatch_11": {"n_batch": 64, "n_ubatch": 11},
}


@pytest.fixture(scope="session")
def f32_logits(setup: Setup, report: _Report) -> dict[str, np.ndarray]:
    out = {}
    for name, kwargs in F32_PATHS.items():
        t = time.perf_counter()
        out[name] = _logits(setup.f32, setup.tokens, **kwargs)
        report.data["timings_s"][f"step35_f32_{name}"] = round(time.perf_counter() - t, 2)
    return out


def _compare(a: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    same = np.argmax(a, axis=-1) == np.argmax(ref, axis=-1)
    bad = [int(i) for i in np.flatnonzero(~same)]
    d = a - ref
    return {
        "nmse": R.nmse(a, ref),
        "top1_agreement": float(same.mean()),
        "argmax_mismatches": len(bad),
        "argmax_mismatch_positions": bad if len(bad) <= 12 else bad[:12] + ["..."],
        "max_abs_diff": max(float(d.max()), -float(d.min())),
    }


def _rounded(x: Any) -> Any:
    """For display: floats to 4 significant digits."""
    if isinstance(x, float):
        return float(f"{x:.4g}")
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    return x


# ----------------------------------------------------------------------------- tests


def test_converted_gguf_has_every_feature(setup: Setup) -> None:
    """The converter kept every structural feature, the weights round-trip, the reference is decisive.

    Needs no step35 build: this is the reference side on its own.
    """
    gf = R.read_gguf(setup.f32)
    meta, a = gf.metadata, "step35."
    assert meta["general.architecture"] == "step35"
    assert meta[a + "block_count"] == R.N_LAYER
    full = [t == "full_attention" for t in R.LAYER_TYPES]
    assert meta[a + "attention.head_count"] == [R.N_HEAD_FULL if f else R.N_HEAD_SWA for f in full]
    assert meta[a + "attention.head_count_kv"] == [R.N_HEAD_KV] * R.N_LAYER
    assert meta[a + "attention.sliding_window"] == R.SLIDING_WINDOW
    assert meta[a + "attention.sliding_window_pattern"] == [not f for f in full]
    assert meta[a + "attention.key_length"] == R.HEAD_DIM
    assert meta[a + "rope.freq_base"] == R.ROPE_THETA_FULL
    assert meta[a + "rope.freq_base_swa"] == R.ROPE_THETA_SWA
    # no rope.dimension_count: llama.cpp rotates head_dim/2 dims on full layers and head_dim on sliding ones
    assert a + "rope.dimension_count" not in meta
    assert meta[a + "leading_dense_block_count"] == R.LEADING_DENSE
    assert meta[a + "expert_count"] == R.N_EXPERT
    assert meta[a + "expert_used_count"] == R.N_EXPERT_USED
    assert meta[a + "expert_gating_func"] == 2  # sigmoid
    assert meta[a + "expert_weights_norm"] is True
    assert meta[a + "expert_weights_scale"] == R.HUB_CONFIG["moe_router_scaling_factor"]
    assert meta[a + "swiglu_clamp_exp"] == [v or 0.0 for v in R.SWIGLU_LIMITS]
    assert meta[a + "swiglu_clamp_shexp"] == [v or 0.0 for v in R.SWIGLU_LIMITS_SHARED]
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert len(meta["tokenizer.ggml.tokens"]) == R.N_VOCAB

    expected = R.expected_gguf_tensors()
    assert {n: t.ne for n, t in gf.tensors.items()} == expected
    assert {gf.type_name(n) for n in gf.tensors} == {"F32"}

    # the inverse mapping used for the quantized comparisons is exact on F32
    from safetensors.torch import load_file

    original = load_file(str(setup.model_dir / "model.safetensors"))
    back = R.gguf_hub_state_dict(setup.f32)
    assert set(back) == set(original)
    for name, w in original.items():
        # norms are stored as 1 + w: one float32 rounding
        assert float((back[name] - w).abs().max()) <= 1e-7, name

    # a decisive reference: no near-tie for the argmax or for an expert choice at any position
    assert setup.ref.shape == (len(setup.tokens), R.N_VOCAB)
    assert len(setup.tokens) > 256 + R.SLIDING_WINDOW  # past llama.cpp's SWA KV cache (256 cells)
    assert float(R.top2_gap(setup.ref).min()) >= MIN_REFERENCE_TOP2_GAP
    assert setup.router_margins.shape == (R.N_LAYER - R.LEADING_DENSE, len(setup.tokens))
    assert float(setup.router_margins.min()) >= MIN_REFERENCE_ROUTER_MARGIN


@pytest.mark.parametrize("path", list(F32_PATHS))
def test_f32_logits_equal_reference(
    setup: Setup, f32_logits: dict[str, np.ndarray], report: _Report, path: str
) -> None:
    got = _compare(f32_logits[path], setup.ref)
    report.put("f32", f"{path}_vs_reference", got)
    assert got["nmse"] <= F32_NMSE_TOL, got
    assert got["argmax_mismatches"] == 0, got


def test_f32_batched_equals_incremental(f32_logits: dict[str, np.ndarray], report: _Report) -> None:
    got = _compare(f32_logits["incremental"], f32_logits["batched"])
    report.put("f32", "incremental_vs_batched", got)
    assert got["nmse"] <= F32_NMSE_TOL, got
    assert got["argmax_mismatches"] == 0, got


@pytest.mark.parametrize("control", list(NEGATIVE_CONTROLS))
def test_negative_control_is_caught(
    setup: Setup, f32_logits: dict[str, np.ndarray], report: _Report, control: str
) -> None:
    """Breaking one feature in the reference (never in the GGUF) moves the error far beyond tolerance."""
    t = time.perf_counter()
    broken = R.reference_logits(setup.model_dir, setup.tokens, **NEGATIVE_CONTROLS[control])
    got = _compare(f32_logits["batched"], broken)
    got["reference_change_nmse"] = R.nmse(broken, setup.ref)
    got["x_f32_tolerance"] = round(got["nmse"] / F32_NMSE_TOL)
    report.put("negative_controls", control, got)
    report.data["timings_s"][f"negative_control_{control}"] = round(time.perf_counter() - t, 2)
    assert got["nmse"] >= NEGATIVE_CONTROL_MIN_NMSE, got


# Token by token is what generation runs (matrix-vector kernels, unlike the
# batched matrix-matrix ones); on quantized models it is checked on a prefix
# (causality: the prefix's logits are the first rows of the full sequence's),
# because each step reads the whole 50,257-row output matrix.
QUANT_INCREMENTAL_TOKENS = 64

# The matrices that must carry the requested type (llama.cpp's mixtures give
# attn_k/attn_v, attn_output, output and some ffn_down other types on an MoE
# model; the routed experts and attn_q are where a real model's bulk is).
MAIN_TYPE_TENSORS = ("ffn_gate_exps.weight", "ffn_up_exps.weight", "attn_q.weight")


@pytest.mark.parametrize("qtype", list(QUANT_TOLERANCES))
def test_quantized_logits_close_to_reference(setup: Setup, report: _Report, qtype: str) -> None:
    tol = QUANT_TOLERANCES[qtype]
    dst = setup.f32.with_name(f"step3p5-tiny-random-{qtype}.gguf")
    t = time.perf_counter()
    step35.quantize(setup.f32, dst, qtype)
    t_quant = time.perf_counter() - t

    # the requested format is really used (k-quants and IQ4_XS need rows that are
    # multiples of 256: a model whose rows did not fit would silently fall back)
    gf = R.read_gguf(dst)
    types: dict[str, int] = {}
    for n in gf.tensors:
        types[gf.type_name(n)] = types.get(gf.type_name(n), 0) + 1
    main = {n: gf.type_name(n) for n in gf.tensors if n.endswith(MAIN_TYPE_TENSORS)}
    assert len(main) == 2 * (R.N_LAYER - R.LEADING_DENSE) + R.N_LAYER
    assert set(main.values()) == {tol.main_type}, main

    n_inc = QUANT_INCREMENTAL_TOKENS
    t = time.perf_counter()
    batched = _logits(dst, setup.tokens)
    incremental = _logits(dst, setup.tokens[:n_inc], incremental=True)
    t_logits = time.perf_counter() - t
    t = time.perf_counter()
    same_weights_ref = R.reference_logits(setup.model_dir, setup.tokens, weights_from=dst)
    t_ref = time.perf_counter() - t

    got = {
        "file_bytes": dst.stat().st_size,
        "tensor_types": dict(sorted(types.items())),
        "batched_vs_reference": _compare(batched, setup.ref),
        f"incremental_first_{n_inc}_vs_reference": _compare(incremental, setup.ref[:n_inc]),
        f"incremental_first_{n_inc}_vs_batched": _compare(incremental, batched[:n_inc]),
        # the format's own error: the reference on the dequantized weights vs the F32 reference
        "format_only": _compare(same_weights_ref, setup.ref),
        # what is left for llama.cpp's kernels: the same weights on both sides
        "batched_vs_same_weights_reference": _compare(batched, same_weights_ref),
        f"incremental_first_{n_inc}_vs_same_weights_reference": _compare(incremental, same_weights_ref[:n_inc]),
    }
    report.put("quantized", qtype, got)
    report.data["timings_s"][f"{qtype}_quantize"] = round(t_quant, 2)
    report.data["timings_s"][f"{qtype}_step35_logits"] = round(t_logits, 2)
    report.data["timings_s"][f"{qtype}_same_weights_reference"] = round(t_ref, 2)

    for key in ("batched_vs_reference", f"incremental_first_{n_inc}_vs_reference"):
        assert got[key]["nmse"] <= tol.nmse, (key, got[key])
        assert got[key]["top1_agreement"] >= tol.top1, (key, got[key])
    for key in (
        "batched_vs_same_weights_reference",
        f"incremental_first_{n_inc}_vs_same_weights_reference",
        f"incremental_first_{n_inc}_vs_batched",
    ):
        assert got[key]["nmse"] <= tol.kernel_nmse, (key, got[key])
    dst.unlink()  # kept (in pytest's tmp dir) only when the test fails
