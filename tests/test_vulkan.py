"""The Vulkan plugin wheel, installed beside the core wheel, on Mesa's lavapipe driver.

lavapipe is Vulkan on the CPU: the real ggml Vulkan backend (its shaders,
its buffers, its graph code) runs here without a GPU. The tiny Step 3.5 model
must give the same greedy tokens as the CPU backend, and logits within
LOGIT_TOL (relative to the largest logit).

Runs where step35-vulkan is installed: scripts/test-vulkan.sh builds both
wheels, installs them into a fresh venv and runs this file with
GGML_VK_VISIBLE_DEVICES=0 (ggml ignores CPU-type Vulkan devices unless told).
.ci/run calls that script.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("step35_vulkan",
                    reason="step35-vulkan is not installed here: scripts/test-vulkan.sh runs this file")

import step35  # noqa: E402

PROMPT = "Once upon a time, in a land far away,"
N_GEN = 32
# Flash attention off on both sides: lavapipe of Debian 12 (Mesa 22.3.6)
# segfaults inside its shader threads on ggml's flash-attention shader (seen
# with the tiny model, head size 16, and the mid model, head size 128; with FA
# off both run). That is a driver bug; real GPUs run FA (the seeds' -fa on).
CONTEXT = {"n_ctx": 256, "flash_attn": "off"}
# max |logit(Vulkan) - logit(CPU)| / max |logit(CPU)|. Measured on lavapipe:
# prompt positions with Vulkan's default fp16 arithmetic 9.2e-3; every position
# of prompt + 32 generated tokens with fp32 arithmetic (GGML_VK_DISABLE_F16=1)
# 5.9e-3. (The CPU backend itself rounds activations to f16 for F16 weights.)
LOGIT_TOL = 2e-2

# Runs in a fresh process (backends are chosen once per process, from the
# environment): greedy tokens, then the logits of prompt + those tokens.
_RUN = r"""
import json, sys
import numpy as np
import step35
path, prompt, n_gen, gpu, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5]
names = [b.name for b in step35.backends().loaded]
assert ("Vulkan" in names) == gpu, names
ctx_params = {"n_ctx": 256, "flash_attn": "off"}
with step35.Model(path, n_gpu_layers=-1 if gpu else 0, context=ctx_params) as m:
    ids = m.tokenize(prompt)
    done = m.generate(prompt, max_tokens=n_gen, temperature=0.0)
    with m.new_context(ctx_params) as ctx:
        logits = ctx.logits(ids + done.tokens)
np.save(out + ".npy", logits)
json.dump({"ids": ids, "tokens": done.tokens, "text": done.text}, open(out + ".json", "w"))
"""


def _run(tiny_path: Path, out: Path, *, gpu: bool, **env: str) -> dict:
    full_env = {**os.environ, **env}
    if not gpu:
        full_env["STEP35_NO_PLUGINS"] = "1"
    subprocess.run([sys.executable, "-c", _RUN, str(tiny_path), PROMPT, str(N_GEN), "1" if gpu else "0", str(out)],
                   env=full_env, check=True)
    got = json.loads(Path(str(out) + ".json").read_text())
    got["logits"] = np.load(str(out) + ".npy")
    return got


def _rel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per position: max |a - b| / max |b|."""
    return np.abs(a - b).max(-1) / np.abs(b).max()


def _decisive(reference: np.ndarray) -> np.ndarray:
    """Positions whose top-2 logit margin exceeds twice the tolerated error (LOGIT_TOL x max |logit|)."""
    top2 = np.sort(reference, axis=-1)[:, -2:]
    return (top2[:, 1] - top2[:, 0]) > 2 * LOGIT_TOL * np.abs(reference).max()


def _vulkan_backend():
    for b in step35.backends().loaded:
        if b.name == "Vulkan":
            return b
    return None


def test_plugin_loaded_with_a_device() -> None:
    b = _vulkan_backend()
    failed = {f.name: f.reason for f in step35.backends().failed}
    assert b is not None, f"Vulkan plugin installed but not loaded: {failed}"
    assert b.source.startswith(f"step35-vulkan {step35.__version__} (plugin)"), b.source
    assert b.devices, "the Vulkan backend loaded but lists no device (set GGML_VK_VISIBLE_DEVICES=0 for lavapipe)"
    assert Path(b.library).parent.name == "lib" and "step35_vulkan" in b.library


def test_cli_info_shows_the_vulkan_device() -> None:
    r = subprocess.run([sys.executable, "-m", "step35", "info"], capture_output=True, text=True, check=True)
    assert "Vulkan  [step35-vulkan" in r.stdout, r.stdout
    assert "device Vulkan0:" in r.stdout, r.stdout


@pytest.fixture(scope="module")
def cpu_reference(tiny_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Greedy tokens and logits from the CPU backend alone (a process without plugins)."""
    return _run(tiny_path, tmp_path_factory.mktemp("cpu") / "ref", gpu=False)


@pytest.fixture(scope="module")
def vulkan_model(tiny_path: Path):
    with step35.Model(tiny_path, n_gpu_layers=-1, context=CONTEXT) as m:
        yield m


def test_weights_are_on_the_vulkan_device(vulkan_model, tiny_path: Path) -> None:
    """Every weight but the token embeddings (llama.cpp keeps the input lookup on the CPU)."""
    from step35.gguf import read_header

    embd = next(t.nbytes for t in read_header(tiny_path).tensors if t.name == "token_embd.weight")
    with vulkan_model.new_context(CONTEXT) as ctx:
        parts = ctx.memory_breakdown()
    on_vulkan = sum(p["model"] for p in parts if p["buffer_type"] == "Vulkan0")
    on_host = sum(p["model"] for p in parts if p["buffer_type"] != "Vulkan0")
    assert on_host == embd, parts
    assert 0 <= on_vulkan - (vulkan_model.size - embd) < 4096, parts  # plus buffer alignment
    assert sum(p["context"] for p in parts if p["buffer_type"] == "Vulkan0") > 0  # the KV cache too


def test_prompt_logits_agree_with_cpu(vulkan_model, cpu_reference) -> None:
    """Vulkan's default arithmetic (fp16 where the device has it)."""
    ids = vulkan_model.tokenize(PROMPT)
    assert ids == cpu_reference["ids"]
    with vulkan_model.new_context(CONTEXT) as ctx:
        got = ctx.logits(ids)
    want = cpu_reference["logits"][: len(ids)]
    rel = _rel(got, want)
    agree = got.argmax(-1) == want.argmax(-1)
    decisive = _decisive(want)
    print(f"\nVulkan (lavapipe, default fp16) vs CPU, {len(ids)} prompt positions: max rel. logit error "
          f"{rel.max():.2e} (tolerance {LOGIT_TOL:.0e}), top-1 agreement {agree.mean():.3f}; "
          f"{decisive.sum()} positions with a top-2 margin the tolerance cannot flip, "
          f"{int((agree & decisive).sum())} of them agree")
    # The bound is the check. Exact top-1 equality is not asserted: where the
    # CPU's top two are closer than twice the tolerated error (a near-tie of
    # the random model, which also moves with the CPU variant) either token is
    # right, and everywhere else the bound already rules a flip out.
    assert rel.max() <= LOGIT_TOL


def test_greedy_tokens_equal_cpu_fp32(tiny_path: Path, cpu_reference, tmp_path: Path) -> None:
    """Vulkan in fp32 (GGML_VK_DISABLE_F16=1): the same 32 greedy tokens, every logit within tolerance.

    With fp16 arithmetic (the default) the first 10 tokens are equal, then a
    near-tied MoE router choice goes the other way (one position's logits move
    by 0.40 of the largest logit while its neighbours stay at 6e-3) and greedy
    decoding takes another path: a property of fp16 and random routers, which
    fp32 removes.
    """
    got = _run(tiny_path, tmp_path / "vk", gpu=True, GGML_VK_DISABLE_F16="1")
    assert got["ids"] == cpu_reference["ids"]
    assert len(got["tokens"]) == N_GEN
    first = next((i for i, (a, b) in enumerate(zip(got["tokens"], cpu_reference["tokens"])) if a != b), None)
    # Logits are comparable while both runs have seen the same tokens.
    n = len(got["ids"]) + (N_GEN if first is None else first)
    rel = _rel(got["logits"][:n], cpu_reference["logits"][:n])
    print(f"\nVulkan (lavapipe, fp32) vs CPU, {n} positions: max rel. logit error "
          f"{rel.max():.2e} (tolerance {LOGIT_TOL:.0e}); greedy tokens "
          + ("all equal" if first is None else f"equal up to {first}"))
    assert rel.max() <= LOGIT_TOL
    if first is not None:
        # Only a near-tie may part them (the CPU reference moves with the CPU
        # variant): the CPU's top two at that step must lie within the bound.
        assert not _decisive(cpu_reference["logits"][n - 1: n])[0], (
            f"greedy tokens differ at {first} where the CPU's choice was not a near-tie")
    else:
        assert got["text"] == cpu_reference["text"]


def test_device_selection(tiny_path: Path) -> None:
    """devices=[...] picks GPUs by the names step35.backends() lists; [] keeps everything on the CPU."""
    with step35.Model(tiny_path, devices=["Vulkan0"], context=CONTEXT) as m, m.new_context(CONTEXT) as ctx:
        assert sum(p["model"] for p in ctx.memory_breakdown() if p["buffer_type"] == "Vulkan0") > 0
    with step35.Model(tiny_path, devices=[], context=CONTEXT) as m, m.new_context(CONTEXT) as ctx:
        parts = ctx.memory_breakdown()
        assert all((p["device"] or "").startswith("CPU") or p["device"] is None for p in parts), parts
    with pytest.raises(ValueError, match="no device named 'Vulkan7'; the devices here are Vulkan0"):
        step35.Model(tiny_path, devices=["Vulkan7"])


def test_the_fit_plan_has_the_vulkan_device_as_its_own_pool(tiny_path: Path) -> None:
    """The memory plan counts lavapipe's Vulkan0 as a pool of its own, with the weights placed there."""
    from step35.tools import fit

    p = fit.plan(tiny_path, n_ctx=512, flash_attn="off", kv_contexts=())
    print(f"\n{p}")
    pools = {q.name: q for q in p.pools}
    assert "Vulkan0" in pools, [q.name for q in p.pools]
    vk = pools["Vulkan0"]
    assert not vk.shares_ram and vk.weights > 0 and vk.kv > 0 and vk.need >= vk.weights
    # Every weight but the token embeddings (kept on the CPU for the input lookup) is on Vulkan0.
    from step35.gguf import read_header

    embd = next(t.nbytes for t in read_header(tiny_path).tensors if t.name == "token_embd.weight")
    assert 0 <= pools["RAM"].weights - embd < 4096  # plus the buffer's alignment
