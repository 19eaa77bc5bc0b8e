"""The synthetic step35 model builder (step35.testing): pure Python, no native code."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from step35 import testing



@functools.lru_cache(maxsize=16)
def _reader(path: Path) -> Any:
    # parsing the 100k tokenizer strings takes seconds: parse each file once
    return gguf.GGUFReader(path)


@functools.lru_cache(maxsize=16)
def _kv_cached(path: Path) -> dict[str, Any]:
    return {k: f.contents() for k, f in _reader(path).fields.items() if not k.startswith("GGUF.")}


def _read_kv(path: Path) -> dict[str, Any]:
    return dict(_kv_cached(path))


def _tensors(path: Path) -> dict[str, Any]:
    return {t.name: t for t in _reader(path).tensors}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return testing.build_model(tmp_path_factory.mktemp("tiny") / "tiny.gguf", "tiny")[0]


def test_deterministic_bytes(tiny: Path, tmp_path: Path) -> None:
    again = testing.build_model(tmp_path / "again.gguf", "tiny")
    assert again == [tmp_path / "again.gguf"]
    assert _sha(again[0]) == _sha(tiny)
    other = testing.build_model(tmp_path / "seed1.gguf", "tiny", seed=1)[0]
    assert other.stat().st_size == tiny.stat().st_size
    assert _sha(other) != _sha(tiny)
    assert not list(tmp_path.glob(".*.tmp"))  # no temp files left behind


def test_metadata_reads_back_exactly(tiny: Path) -> None:
    got = _read_kv(tiny)
    expected = testing.expected_metadata("tiny")
    assert list(got) == list(expected)  # same keys, same order
    assert got == expected
    assert got["general.architecture"] == "step35"
    assert got["general.file_type"] == 1


def test_tensors_read_back(tiny: Path) -> None:
    plan = testing.expected_tensors("tiny")
    tensors = _reader(tiny).tensors
    assert [t.name for t in tensors] == [t.name for t in plan]
    for t, p in zip(tensors, plan):
        assert tuple(int(x) for x in t.shape) == p.shape, t.name
        assert t.tensor_type.name == p.dtype.upper(), t.name
        assert t.n_bytes == p.nbytes, t.name
        if t.tensor_type.name in ("F16", "F32"):
            a = np.asarray(t.data, dtype=np.float32)
            assert np.isfinite(a).all(), t.name
            assert a.std() > 0, t.name  # random, never constant
    n_params = sum(int(np.prod(p.shape)) for p in plan)
    assert n_params == testing.SIZES["tiny"].n_params()


def test_tiny_is_small(tiny: Path) -> None:
    assert tiny.stat().st_size < 10 * 1024 * 1024
    assert testing.SIZES["tiny"].n_embd == 64


def test_step35_features_are_exercised(tiny: Path) -> None:
    kv = _read_kv(tiny)
    spec = testing.SIZES["tiny"]
    n = kv["step35.block_count"]
    pattern = kv["step35.attention.sliding_window_pattern"]
    heads = kv["step35.attention.head_count"]
    assert len(pattern) == len(heads) == n == spec.n_layer_all
    # 3:1 sliding/full, starting with a full-attention layer
    assert pattern[:4] == [False, True, True, True]
    swa_heads = {h for h, s in zip(heads, pattern) if s}
    full_heads = {h for h, s in zip(heads, pattern) if not s}
    assert len(swa_heads) == len(full_heads) == 1 and swa_heads != full_heads
    assert kv["step35.attention.sliding_window"] < 40  # a 40-token prompt crosses the window
    assert kv["step35.rope.freq_base"] != kv["step35.rope.freq_base_swa"]
    assert [spec.n_rot(i) for i in range(2)] == [spec.head_dim // 2, spec.head_dim]

    # clamps: per-layer, on for some MoE layers, off elsewhere
    dense = kv["step35.leading_dense_block_count"]
    assert dense >= 1
    for key in ("step35.swiglu_clamp_exp", "step35.swiglu_clamp_shexp"):
        vals = kv[key]
        assert len(vals) == n
        assert any(v > 0 for v in vals[dense:]) and any(v == 0 for v in vals[dense:]), key

    # MoE routing keys
    assert kv["step35.expert_gating_func"] == 2  # sigmoid
    assert kv["step35.expert_weights_norm"] is True
    assert kv["step35.expert_weights_scale"] > 0
    assert 0 < kv["step35.expert_used_count"] < kv["step35.expert_count"]

    t = _tensors(tiny)
    for i in range(n):
        p = f"blk.{i}."
        assert tuple(int(x) for x in t[p + "attn_gate.weight"].shape) == (spec.n_embd, heads[i])
        assert p + "attn_q_norm.weight" in t and p + "attn_k_norm.weight" in t
        if i < dense:
            assert p + "ffn_gate.weight" in t and p + "ffn_gate_inp.weight" not in t
        else:
            for s in ("ffn_gate_inp.weight", "exp_probs_b.bias", "ffn_up_exps.weight",
                      "ffn_gate_shexp.weight", "ffn_down_shexp.weight"):
                assert p + s in t, p + s
            assert p + "ffn_gate.weight" not in t
    norm = np.asarray(t["blk.0.attn_norm.weight"].data)
    assert not np.allclose(norm, 1.0) and (norm > 0).all()
    assert "output.weight" in t  # step35 requires an untied output head


def test_tokenizer_and_chat_template(tiny: Path) -> None:
    kv = _read_kv(tiny)
    tokens = kv["tokenizer.ggml.tokens"]
    types = kv["tokenizer.ggml.token_type"]
    assert kv["tokenizer.ggml.model"] == "gpt2" and kv["tokenizer.ggml.pre"] == "gpt-2"
    assert len(tokens) == len(types) == 50257 + len(testing.SPECIAL_TOKENS)
    assert len(kv["tokenizer.ggml.merges"]) == 50000
    assert tokens[kv["tokenizer.ggml.eos_token_id"]] == "<|im_end|>"
    assert kv["tokenizer.ggml.eot_token_id"] == kv["tokenizer.ggml.eos_token_id"]
    assert tokens[kv["tokenizer.ggml.bos_token_id"]] == "<|endoftext|>"
    template = kv["tokenizer.chat_template"]
    assert template == testing.chat_template_path().read_text(encoding="utf-8")
    for text, ttype in testing.SPECIAL_TOKENS:
        assert types[tokens.index(text)] == ttype
        if text != "<im_patch>":
            assert text in template, text


def test_split_set(tiny: Path, tmp_path: Path) -> None:
    files = testing.build_model(tmp_path / "m.gguf", "tiny", n_split=3)
    assert [f.name for f in files] == [f"m-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    assert files == testing.split_paths(tmp_path / "m.gguf", 3)
    plan = [t.name for t in testing.expected_tensors("tiny")]

    first = _read_kv(files[0])
    assert first == testing.expected_metadata("tiny", n_split=3)
    assert first["split.no"] == 0 and first["split.count"] == 3
    assert first["split.tensors.count"] == len(plan)
    names: list[str] = []
    for i, f in enumerate(files):
        r = _reader(f)
        types = {k: r.fields[k].types[0] for k in ("split.no", "split.count", "split.tensors.count")}
        assert types == {"split.no": gguf.GGUFValueType.UINT16, "split.count": gguf.GGUFValueType.UINT16,
                         "split.tensors.count": gguf.GGUFValueType.INT32}
        kv = _read_kv(f)
        assert kv["split.no"] == i
        if i > 0:
            assert kv == {"split.no": i, "split.count": 3, "split.tensors.count": len(plan)}
        part = [t.name for t in r.tensors]
        assert part, f"split {i} is empty"
        names += part
    assert names == plan  # a partition, in order
    # same tensor data as the single-file model
    single = _tensors(tiny)
    for f in files:
        for t in _reader(f).tensors:
            assert np.array_equal(np.asarray(t.data), np.asarray(single[t.name].data)), t.name


def test_model_path_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny: Path) -> None:
    monkeypatch.setenv("STEP35_CACHE", str(tmp_path))
    p = testing.model_path("tiny")
    assert p.parent == tmp_path / "models" == testing.cache_dir()
    assert _sha(p) == _sha(tiny)
    mtime = p.stat().st_mtime_ns
    assert testing.model_path("tiny") == p
    assert p.stat().st_mtime_ns == mtime  # reused, not rebuilt
    assert testing.model_path("tiny", seed=1) != p
    s = testing.model_path("tiny", n_split=2)
    assert s.name.endswith("-00001-of-00002.gguf") and s.with_name(s.name.replace("00001-of", "00002-of")).is_file()
    leftovers = [q for q in (tmp_path / "models").iterdir() if q.name.startswith(".")]
    assert leftovers == []


def test_fork_era_keys(tmp_path: Path) -> None:
    p = testing.write_fork_era_model(tmp_path / "fork.gguf")
    kv = _read_kv(p)
    assert kv == testing.expected_metadata("tiny", legacy_fork_keys=True)
    for key in ("step35.swiglu_limits", "step35.swiglu_limits_shared", "step35.rope.scaling.apply_mask"):
        assert key in kv, key
    assert "step35.swiglu_clamp_exp" not in kv and "step35.swiglu_clamp_shexp" not in kv


def test_sizes() -> None:
    assert {"tiny", "small", "mid"} <= set(testing.SIZES)
    mid = testing.SIZES["mid"]
    assert mid.n_params() >= 300_000_000
    assert mid.n_expert >= 64 and mid.n_expert_used == 8 and mid.n_ff_shexp > 0
    assert mid.dtype == "f16" and mid.embd_dtype == "f16"
    small = testing.SIZES["small"]
    assert small.n_params() > testing.SIZES["tiny"].n_params()
    assert small.n_dense_lead >= 2 and small.rope_llama3 is not None
    for spec in testing.SIZES.values():
        assert spec.n_head_full != spec.n_head_swa
        assert testing.resolve_spec(spec.name) is spec
    with pytest.raises(ValueError, match="unknown size"):
        testing.resolve_spec("huge")


def test_small_builds_with_rope_freqs(tmp_path: Path) -> None:
    p = testing.build_model(tmp_path / "small.gguf", "small")[0]
    t = _tensors(p)
    f = np.asarray(t["rope_freqs.weight"].data)
    assert f.shape == (testing.SIZES["small"].head_dim // 2,)
    assert f.min() == 1.0 and f.max() > 1.0
    assert _read_kv(p) == testing.expected_metadata("small")


def test_mtp_layers(tmp_path: Path) -> None:
    import dataclasses

    base = testing.SIZES["tiny"]
    spec = dataclasses.replace(base, name="tiny-mtp", n_nextn=1,
                               swiglu_clamp_exp=base.swiglu_clamp_exp + (0.0,),
                               swiglu_clamp_shexp=base.swiglu_clamp_shexp + (0.0,))
    p = testing.build_model(tmp_path / "mtp.gguf", spec)[0]
    kv = _read_kv(p)
    assert kv["step35.nextn_predict_layers"] == 1
    assert kv["step35.block_count"] == base.n_layer + 1
    assert f"blk.{base.n_layer}.nextn.eh_proj.weight" in _tensors(p)


def test_spec_validation() -> None:
    import dataclasses

    tiny = testing.SIZES["tiny"]
    with pytest.raises(ValueError, match="clamp"):
        dataclasses.replace(tiny, swiglu_clamp_exp=(0.0,))
    with pytest.raises(ValueError, match="partial rotary"):
        dataclasses.replace(tiny, partial_rotary_full=0.25)
