"""step35.tools.fit: the memory plan against what llama.cpp really allocates and what the process really uses."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest


def _sum_header(files) -> int:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    from step35.gguf import read_header

    total = 0
    for f in files:
        for t in read_header(f).tensors:
            block, size = GGML_QUANT_SIZES[GGMLQuantizationType(t.ggml_type)]
            n = 1
            for d in t.shape:
                n *= d
            total += n // block * size
    return total


@pytest.fixture(scope="module")
def mid_path(model_cache):
    from step35 import testing

    return testing.bench_model_path("mid")  # Q4_K_S, as benchmarked


def test_weight_bytes_are_the_header_sum_and_what_llama_cpp_holds(tiny_path, tiny_split):
    import step35
    from step35.tools import fit

    for files in ([tiny_path], tiny_split):
        p = fit.plan(files[-1], kv_contexts=())  # any part names the set
        assert p.weights == _sum_header(files)
        with step35.Model(files[0], check_memory=False) as m:
            assert m.size == p.weights


@pytest.mark.slow
@pytest.mark.parametrize("which", ["tiny32", "mid"])  # tiny's 16-wide heads take no q8_0 cache
@pytest.mark.parametrize("kv", [("f16", False, "auto"), ("q8_0", False, "auto"), ("f16", True, "auto"),
                                ("q8_0", True, "on"), ("f16", False, "off")])
def test_kv_bytes_equal_what_a_live_context_allocates(which, kv, tiny32_path, mid_path):
    import step35
    from step35.tools import fit

    ktype, swa_full, fa = kv
    path = tiny32_path if which == "tiny32" else mid_path
    with step35.Model(path, check_memory=False) as m:
        for n_ctx, n_ubatch, n_seq, unified in ((1000, 512, 1, True), (4096, 256, 1, True), (3000, 512, 3, False)):
            with m.new_context(n_ctx=n_ctx, n_ubatch=n_ubatch, n_batch=max(n_ubatch, 512), n_seq_max=n_seq,
                               kv_unified=unified, type_k=ktype, type_v=ktype, swa_full=swa_full, flash_attn=fa,
                               warmup=False) as ctx:
                actual = ctx.memory()["context"]
            want = fit.kv_cache_bytes(m.metadata, n_ctx, ktype, ktype, swa_full=swa_full, n_seq_max=n_seq,
                                      kv_unified=unified, n_ubatch=n_ubatch, flash_attn=fa != "off")
            assert want.total == actual, (n_ctx, n_ubatch, n_seq, unified, want)
            plan = fit.plan(path, n_ctx=n_ctx, type_k=ktype, type_v=ktype, swa_full=swa_full, n_ubatch=n_ubatch,
                            n_batch=max(n_ubatch, 512), n_seq_max=n_seq, kv_unified=unified, flash_attn=fa,
                            kv_contexts=())
            assert plan.kv.total == actual and not any("formula" in n for n in plan.notes)


def test_sliding_window_layers_hold_only_their_window(tiny_path):
    from step35.tools import fit
    from step35.gguf import read_header

    meta = read_header(tiny_path).metadata
    small = fit.kv_cache_bytes(meta, 8192, n_ubatch=512)
    full = fit.kv_cache_bytes(meta, 8192, n_ubatch=512, swa_full=True)
    assert small.layers_swa == 3 and small.layers_full == 2  # tiny: 5 layers, full every 4th from layer 0
    assert small.cells_swa == 768 and full.cells_swa == 8192  # pad256(window 16 + ubatch 512)
    assert small.bytes_full == full.bytes_full and small.bytes_swa * 8192 == full.bytes_swa * 768


_PEAK = textwrap.dedent("""
    import json, sys
    import numpy as np
    import step35
    from step35.tools import fit

    def rss(key):
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key))

    path, n_ctx, ub, mmap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
    # load the libraries, backends and CPU kernels once, so the baseline holds them
    with step35.Model(step35.testing.model_path("tiny"), check_memory=False) as m0:
        m0.new_context(n_ctx=256, warmup=False).close()
    plan = fit.plan(path, n_ctx=n_ctx, n_ubatch=ub, n_batch=ub, n_outputs=ub, kv_contexts=())
    base = rss("VmRSS")
    m = step35.Model(path, use_mmap=mmap, check_memory=False)
    ctx = m.new_context(n_ctx=n_ctx, n_ubatch=ub, n_batch=ub, warmup=False)
    tokens = [int(t) for t in np.random.default_rng(0).integers(0, m.n_vocab, ub)]
    out = ctx.eval(tokens, logits="all")  # the worst case llama.cpp reserves for: a full ubatch of outputs
    print(json.dumps({"predicted": plan.total + out.nbytes, "peak": rss("VmHWM") - base}))
""")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("which,mmap", [("tiny", "1"), ("tiny", "0"), ("mid", "0")])
def test_predicted_total_is_within_10_percent_of_the_measured_peak(which, mmap, tiny_path, mid_path, tmp_path):
    script = tmp_path / "peak.py"
    script.write_text(_PEAK)
    path = tiny_path if which == "tiny" else mid_path
    out = subprocess.run([sys.executable, str(script), str(path), "4096", "512", mmap], capture_output=True,
                         text=True, check=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    ratio = r["peak"] / r["predicted"]
    print(f"{which} mmap={mmap}: predicted {r['predicted']} measured peak {r['peak']} ratio {ratio:.3f}")
    assert 0.9 <= ratio <= 1.1


def test_real_step35_flash_header_lands_on_the_published_sizes(tmp_path):
    """Header-only GGUFs with the real tensor shapes (no data: sparse files)."""
    from step35 import testing
    from step35.tools import fit

    q4 = testing.write_header_only_model(tmp_path / "q4.gguf", "Q4_K_S")
    iq4 = testing.write_header_only_model(tmp_path / "iq4.gguf", "IQ4_XS", n_split=4)
    assert sum(f.stat().st_blocks * 512 for f in q4 + iq4) < 64 << 20  # really sparse

    p = fit.plan(q4[0], n_ctx=2048, memory=128 * 10**9)
    assert p.weights == _sum_header(q4)
    assert abs(p.weights / 111.5e9 - 1) < 0.01  # StepFun's Q4_K_S: ~111.5 GB
    p2 = fit.plan(iq4[2], n_ctx=2048, memory=128 * 10**9)
    assert abs(p2.weights / (100.53 * 2**30) - 1) < 0.01  # ubergarm's IQ4_XS: 100.53 GiB
    assert p.fits and p2.fits

    # KV: 12 full-attention layers x n_ctx cells + 33 sliding layers x pad256(512 + n_ubatch) cells,
    # K and V rows of 8 heads x 128 = 1024 elements
    def expect(n_ctx: int, row_bytes: int) -> int:
        return 2 * row_bytes * (12 * n_ctx + 33 * 1024)

    rows = {(r["n_ctx"], r["type"]): r["bytes"] for r in p.kv_table}
    for n in (16384, 65536, 262144):
        assert rows[(n, "f16")] == expect(n, 2048)
        assert rows[(n, "q8_0")] == expect(n, 1024 // 32 * 34)
    assert rows[(262144, "f16")] == 13_023_313_920
    assert p.kv.total == expect(2048, 2048)
    assert "262144" in str(p) and "KV cache by context length" in str(p)


def test_a_plan_that_does_not_fit_says_what_would(tmp_path):
    from step35 import testing
    from step35.tools import fit

    q4 = testing.write_header_only_model(tmp_path / "q4.gguf", "Q4_K_S")
    p = fit.plan(q4[0], n_ctx=262144, memory=116 * 2**30)  # needs 116.4 GiB
    assert not p.fits
    text = "\n".join(p.suggestions)
    assert "q8_0" in text and "-c " in text
    p = fit.plan(q4[0], n_ctx=4096, memory=64 * 2**30)
    assert not p.fits and "smaller quant" in p.suggestions[0]


def test_model_refuses_early_with_the_plan(tiny_path, monkeypatch):
    import step35
    from step35.tools import fit

    monkeypatch.setattr(fit, "system_memory", lambda: (2 << 30, 1 << 30))  # 1 GiB free: less than the margin
    with pytest.raises(step35.MemoryFitError) as e:
        step35.Model(tiny_path)
    assert "does not fit" in str(e.value) and "check_memory=False" in str(e.value)
    assert e.value.plan is not None and not e.value.plan.fits
    with step35.Model(tiny_path, check_memory=False) as m:  # the override
        assert m.n_layer == 5
    monkeypatch.setenv("STEP35_NO_FIT_CHECK", "1")
    step35.Model(tiny_path).close()


def test_cli_fit(tiny_path, capsys):
    from step35.cli import main

    assert main(["fit", "-m", str(tiny_path), "-c", "8192"]) == 0
    out = capsys.readouterr().out
    assert "fits" in out and "KV cache by context length" in out
    assert main(["fit", "-m", str(tiny_path), "--memory", "512M", "--json"]) == 2
    d = json.loads(capsys.readouterr().out)
    assert d["fits"] is False and d["weights"] > 0 and d["kv"]["total"] > 0
    assert main(["run", "-m", str(tiny_path), "-p", "hi", "-n", "2", "--no-fit-check"]) == 0



def test_an_engine_that_does_not_fit_beside_the_weights_is_refused_before_allocating(tmp_path, monkeypatch):
    """Step 3.5 Flash's header (n_ctx_train 262,144): an engine of 4 slots, each with the training
    context (n_ctx=0), needs 4 x 12.1 GiB of KV cache. On a 128 GB machine with the 111.5 GB of
    weights loaded (16 GB left) that is refused, with the plan, before any context is made; one
    slot of 16k tokens fits."""
    import step35
    from step35 import testing
    from step35.tools import fit

    q4 = testing.write_header_only_model(tmp_path / "q4.gguf", "Q4_K_S")
    monkeypatch.setattr(fit, "system_memory", lambda: (128 * 10**9, 16 * 10**9))

    def no_context(*args, **kwargs):
        raise AssertionError("a context was made")

    with step35.Model(q4[0], vocab_only=True) as m:
        assert m.n_ctx_train == 262144
        monkeypatch.setattr(step35.Model, "new_context", no_context)
        with pytest.raises(step35.MemoryFitError) as e:
            step35.Engine(m, context={"n_ctx": 0}, cache_mib=0)
        text = str(e.value)
        assert "4 slot(s) x 262144 tokens" in text and "does not fit" in text and "check_memory=False" in text
        assert e.value.plan.kv.total == 4 * 262144 * 12 * 4096 + 4 * 33 * 1024 * 4096  # 12 full + 33 window layers
        from step35.engine import engine_context

        small = engine_context(step35.ContextParams(n_ctx=16384), 1, 16384)
        p = fit.check_engine(m, small, checkpoints=32, cache_mib=1024)
        assert p is not None and p.fits and p.prompt_cache > 32 * fit.checkpoint_bytes(p.kv, 512)
