"""The synthetic step35 model builder (step35.testing): pure Python, no native code, except the
``tiny-agent`` chat tests at the end, which run the model on the installed step35."""

from __future__ import annotations

import functools
import hashlib
import json
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


# --------------------------------------------------------------------------- tiny-agent

AGENT_CTX = 20480  # room for a ~15k-token agent prompt
#: Sampling with no truncation (top-k, top-p and min-p off): the whole distribution at that temperature.
FULL_DISTRIBUTION = {"top_k": 0, "top_p": 1.0, "min_p": 0.0}
ENUM_TOOL = {"type": "function", "function": {
    "name": "set_mode", "description": "Switch the editor mode.",
    "parameters": {"type": "object", "properties": {"mode": {"type": "string", "enum": ["fast", "careful"]}},
                   "required": ["mode"]}}}
READ_TOOL = {"type": "function", "function": {
    "name": "read_file", "description": "Read a file of the workspace.",
    "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}}


def _chain_text(ids: tuple[int, ...]) -> list[str]:
    v = testing.specs.vocab()
    return [v.tokens[i] for i in ids]


def test_agent_chain_tokens() -> None:
    chain = testing.agent_chain()
    assert _chain_text(chain) == ["Ċ", "The", "Ġuser", "Ġwants", "Ġa", "Ġshort", "Ġanswer", ".", "</think>",
                                  "Hello", "Ġfrom", "Ġstep", "35", "!", "<|im_end|>"]
    assert len(set(chain)) == len(chain)


def test_agent_map_is_a_permutation_with_the_chain() -> None:
    nxt = testing.token_permutation("tiny-agent")
    n_vocab = len(testing.specs.vocab().tokens)
    assert sorted(nxt.tolist()) == list(range(n_vocab))  # no two tokens share a next token
    chain = testing.agent_chain()
    assert [int(nxt[a]) for a in chain[:-1]] == list(chain[1:])
    links = testing.agent_links()
    assert links[:-1] == tuple(zip(chain, chain[1:]))
    assert _chain_text(links[-1]) == ["</tool_call>", "<|endoftext|>"]
    assert all(nxt[a] == b for a, b in links)
    shift = testing.token_permutation("tiny-mtp")
    changed = np.flatnonzero(nxt != shift)
    assert len(changed) <= 2 * len(links)  # one swap per link, the rest is the token map


def test_token_map_permutation_unchanged() -> None:
    nxt = testing.token_permutation("tiny-mtp", times=2)
    assert [int(nxt[t]) for t in (0, 1, 50255, 50256, 50258)] == [testing.token_map(t, 2)
                                                                  for t in (0, 1, 50255, 50256, 50258)]
    with pytest.raises(ValueError, match="no token map"):
        testing.token_permutation("tiny")
    with pytest.raises(ValueError, match="no token map"):
        testing.token_permutation("tiny-agent", times=2)


def test_tiny_agent_spec_and_cache_key(monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    spec = testing.SIZES["tiny-agent"]
    assert (spec.trunk, spec.dtype, spec.embd_dtype, spec.n_ctx_train) == ("agent", "f32", "f32", 65536)
    assert spec.n_nextn == 0 and spec.mtp_heads == "random"
    key = testing.cache._cache_key(spec, 0, 1, False)
    monkeypatch.setattr(testing.build, "AGENT_ANSWER", "Hello there!")  # where the builder reads it
    assert testing.cache._cache_key(spec, 0, 1, False) != key  # changed texts never reuse a cached file
    with pytest.raises(ValueError, match="unknown trunk"):
        dataclasses.replace(spec, trunk="agents")
    with pytest.raises(ValueError, match="need trunk='token_map'"):
        testing.with_mtp(spec, "agree", trunk="agent")


@pytest.fixture(scope="module")
def agent_model(model_cache: Path) -> Any:
    import step35

    with step35.Model(testing.model_path("tiny-agent"), context={"n_ctx": AGENT_CTX}) as m:
        yield m


def _user(text: str = "Say hello.") -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def _assert_agent_answer(r: dict[str, Any]) -> None:
    choice = r["choices"][0]
    msg = choice["message"]
    assert (msg.get("reasoning_content"), msg.get("content"), choice["finish_reason"]) == (
        testing.AGENT_REASONING, testing.AGENT_ANSWER, "stop")
    assert not msg.get("tool_calls")
    # the chain between the prompt's last token and the end-of-generation token (not counted)
    assert r["usage"]["completion_tokens"] == len(testing.agent_chain()) - 2


def test_agent_tokenizes_like_the_chain(agent_model: Any) -> None:
    chain = testing.agent_chain()
    reasoning, answer = chain[1:8], chain[9:-1]
    assert agent_model.tokenize(testing.AGENT_REASONING, add_special=False) == list(reasoning)
    assert agent_model.tokenize(testing.AGENT_ANSWER, add_special=False) == list(answer)
    assert agent_model.tokenize("</think>", add_special=False, parse_special=True) == [chain[8]]
    assert agent_model.special_tokens["eos"] == chain[-1]


def test_agent_prompt_ends_with_the_chain_start(agent_model: Any) -> None:
    prompt = agent_model.chat_prompt(_user())
    assert prompt.endswith("<|im_start|>assistant\n<think>\n")
    ids = agent_model.tokenize(prompt, add_special=False, parse_special=True)  # the template writes the BOS
    assert ids[0] == agent_model.special_tokens["bos"]
    assert ids[-1] == testing.agent_chain()[0]


@pytest.mark.parametrize("temperature,seed", [(0.0, 0)] + [(1.0, s) for s in range(1, 6)])
def test_agent_chat_answers_and_ends(agent_model: Any, temperature: float, seed: int) -> None:
    r = agent_model.chat(_user(), max_tokens=64, temperature=temperature, seed=seed, **FULL_DISTRIBUTION)
    _assert_agent_answer(r)


def _long_request(n_repeats: int = 2150) -> list[dict[str, Any]]:
    # " the cat sat on the mat." is 7 tokens: ~15k tokens of user text
    return [{"role": "system", "content": "You are a coding agent. Use the tools when they help."},
            {"role": "user", "content": "Summarize this log:" + " the cat sat on the mat." * n_repeats}]


@pytest.mark.slow
def test_agent_long_prompt_with_tools(agent_model: Any) -> None:
    messages, tools = _long_request(), [READ_TOOL, ENUM_TOOL]
    prompt = agent_model.chat_prompt(messages, tools)
    n_prompt = len(agent_model.tokenize(prompt, add_special=False, parse_special=True))  # BOS: in the template
    assert 15000 <= n_prompt <= AGENT_CTX - 64
    r = agent_model.chat(messages, tools, max_tokens=64, temperature=1.0, seed=7, **FULL_DISTRIBUTION)
    _assert_agent_answer(r)
    assert r["usage"]["prompt_tokens"] == n_prompt


@pytest.mark.parametrize("parallel", [True, False])
def test_agent_forced_tool_call(agent_model: Any, parallel: bool) -> None:
    choice = {"type": "function", "function": {"name": "set_mode"}}
    r = agent_model.chat(_user("Switch to careful mode."), [ENUM_TOOL], choice, max_tokens=128, temperature=0.0,
                         parallel_tool_calls=parallel)
    c = r["choices"][0]
    calls = c["message"].get("tool_calls") or []
    assert c["finish_reason"] == "tool_calls", (c, r["usage"])
    assert [call["function"]["name"] for call in calls] == ["set_mode"]
    assert json.loads(calls[0]["function"]["arguments"])["mode"] in ("fast", "careful")
