"""step35.tools.fit on machines that are not this one: a discrete GPU, a unified-memory iGPU, Apple silicon.

The device lists are what ``step35.backends()`` reports on those machines (the
binding's lowercase types: ``gpu``, ``igpu``); where llama.cpp would place the
buffers is given too (a full offload: everything on the GPU but the input
embeddings), since this machine has none of those GPUs. The model is Step 3.5
Flash's real Q4_K_S header (sparse, no data), so the sizes are the real ones.
Nothing here needs the native extension.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

GB, GiB, MiB = 10**9, 1 << 30, 1 << 20


@pytest.fixture(scope="module")
def q4(tmp_path_factory) -> Any:
    from step35 import testing

    return testing.write_header_only_model(tmp_path_factory.mktemp("fit-devices") / "q4.gguf", "Q4_K_S")[0]


def _device(name: str, type: str, backend: str, total: int, free: int | None = None, description: str = "") -> dict:
    return {"name": name, "description": description or name, "type": type, "backend": backend,
            "memory_total": total, "memory_free": total if free is None else free, "device_id": None}


_CPU = _device("CPU", "cpu", "CPU", 0, description="the CPU")


def _offloaded(path: Any, device: str, context: Any) -> list[dict[str, Any]]:
    """The buffers of a full offload to ``device``: llama.cpp keeps only the input embeddings on the CPU."""
    from step35.tools import fit
    from step35.gguf import model_files, read_header

    headers = [read_header(f) for f in model_files(path)]
    weights = fit.weight_bytes(headers)
    embd = sum(t.nbytes for h in headers for t in h.tensors if t.name == "token_embd.weight")
    kv = fit.kv_cache_bytes(headers[0].metadata, context.n_ctx, context.type_k, context.type_v,
                            swa_full=context.swa_full, n_seq_max=context.n_seq_max, kv_unified=context.kv_unified,
                            n_ubatch=context.n_ubatch, flash_attn=context.flash_attn != "off").total
    return [
        {"buffer_type": device, "device": device, "host": False, "model": weights - embd, "context": kv,
         "compute": 1 * GiB},
        {"buffer_type": "CPU", "device": "CPU", "host": True, "model": embd, "context": 0, "compute": 64 * MiB},
    ]


def _machine(ram: int, gpu: dict, sys_platform: str = "linux", **kw: Any) -> Any:
    from step35.tools import fit

    @dataclasses.dataclass
    class Elsewhere(fit.Machine):
        """A machine described, not measured: its devices, and where llama.cpp puts the model there."""

        def place(self, path, *, n_gpu_layers, main_gpu, context, devices):
            assert n_gpu_layers == -1 and devices in (None, [gpu["name"]])
            return _offloaded(path, gpu["name"], context)

    return Elsewhere(ram, kw.pop("available", ram), [_CPU, gpu], sys_platform, kw.pop("arch", "x86_64"), **kw)


def _pool(p: Any, name: str) -> Any:
    pools = {q.name: q for q in p.pools}
    assert name in pools, f"no {name} pool in the plan (pools: {', '.join(pools)})"
    return pools[name]


def test_a_discrete_gpu_is_its_own_pool_and_its_overflow_is_caught(q4):
    """RTX PRO 6000 (96 GB of VRAM) in a 128 GB workstation: 111.5 GB of Q4_K_S do not fit on the GPU."""
    from step35.tools import fit

    m = _machine(128 * GB, _device("CUDA0", "gpu", "CUDA", 96 * GB, 95 * GB, "NVIDIA RTX PRO 6000 Blackwell"))
    p = fit.plan(q4, n_ctx=4096, machine=m, kv_contexts=())
    gpu, ram = _pool(p, "CUDA0"), _pool(p, "RAM")
    assert not gpu.shares_ram
    assert gpu.need > 100 * GB and not gpu.fits  # the weights are on the GPU ...
    assert ram.need < 2 * GiB and ram.fits  # ... not in RAM
    assert not p.fits
    text = "\n".join(p.suggestions)
    ngl = re.search(r"-ngl (\d+) keeps about ([\d.]+) GiB on CUDA0", text)
    assert ngl, text
    n_layers = 45 + 1  # 45 trunk layers and the MTP block
    assert 30 < int(ngl[1]) < n_layers and float(ngl[2]) * GiB < 95 * GB
    assert "wired" not in text
    assert "DOES NOT FIT" in str(p) and "CUDA0" in str(p)
    assert [q["name"] for q in p.to_dict()["pools"]] == ["RAM", "CUDA0"]
    # with the GPU out of the picture, everything is in RAM
    cpu_only = fit.plan(q4, n_ctx=4096, machine=dataclasses.replace(m, devices=[_CPU]), kv_contexts=())
    assert [q.name for q in cpu_only.pools] == ["RAM"] and cpu_only.pools[0].need > 100 * GB


def test_a_unified_memory_igpu_counts_against_ram(q4):
    """DGX Spark: the GB10 reports type igpu; what it holds comes out of the 128 GB of system memory."""
    from step35.tools import fit

    spark = _device("CUDA0", "igpu", "CUDA", 128 * GB, 124 * GB, "NVIDIA GB10")
    m = _machine(128 * GB, spark, arch="aarch64", available=125 * GB)
    p = fit.plan(q4, n_ctx=4096, machine=m, kv_contexts=())
    gpu, ram = _pool(p, "CUDA0"), _pool(p, "RAM")
    assert gpu.shares_ram and gpu.need > 100 * GB
    assert ram.need >= gpu.need  # counted in RAM too
    assert p.fits and "(unified: counted in RAM too)" in str(p)
    # a context that does not fit: no "-ngl" (moving layers to RAM frees nothing) and no macOS hint
    big = fit.plan(q4, n_ctx=262144, machine=m, kv_contexts=())
    assert not big.fits and not _pool(big, "RAM").fits
    text = "\n".join(big.suggestions)
    assert "-c " in text and "-ngl" not in text and "wired" not in text


def test_metal_on_macos_is_unified_and_gets_the_wired_limit_hint(q4):
    """A 128 GB Mac: Metal's working set (about 75% of RAM) is too small for the model; RAM is not."""
    from step35.tools import fit

    ram = 128 * GiB
    mtl = _device("MTL0", "gpu", "MTL", 96 * GiB, description="Apple M3 Ultra")
    m = _machine(ram, mtl, "darwin", arch="arm64", available=125 * GiB)
    p = fit.plan(q4, n_ctx=4096, machine=m, kv_contexts=())
    gpu = _pool(p, "MTL0")
    assert gpu.shares_ram and not gpu.fits and _pool(p, "RAM").fits
    text = "\n".join(p.suggestions)
    wired = re.search(r"sudo sysctl iogpu\.wired_limit_mb=(\d+)", text)
    assert wired, text
    assert gpu.need < int(wired[1]) * MiB < ram
    assert "-ngl" not in text


def test_what_the_plan_cannot_judge_is_said(q4):
    from step35.tools import fit

    quiet = _device("Vulkan0", "gpu", "Vulkan", 0, description="a driver that reports no memory")
    m = _machine(128 * GB, quiet, notes=["backend cuda did not load, its devices are not in this plan: no driver"])
    p = fit.plan(q4, n_ctx=4096, machine=m, kv_contexts=())
    assert _pool(p, "Vulkan0").fits  # not judged ...
    assert any("Vulkan0 reports no memory size" in n for n in p.notes)  # ... and said so
    assert any("backend cuda did not load" in n for n in p.notes)
    assert "note: Vulkan0 reports no memory size" in str(p)

    # buffers on a device the machine does not list are counted in RAM, with a note
    m = _machine(128 * GB, _device("CUDA0", "gpu", "CUDA", 96 * GB))
    m.devices = [_CPU]
    p = fit.plan(q4, n_ctx=4096, machine=m, kv_contexts=())
    assert [q.name for q in p.pools] == ["RAM"]
    assert any("placed on CUDA0, a device this plan does not know, is counted in RAM" in n for n in p.notes)


def test_devices_are_checked_against_the_machine(q4):
    from step35.tools import fit

    m = _machine(128 * GB, _device("CUDA0", "gpu", "CUDA", 96 * GB))
    assert _pool(fit.plan(q4, machine=m, devices=["CUDA0"], kv_contexts=()), "CUDA0").need > 0
    with pytest.raises(ValueError, match="no device named 'CUDA1'; the devices here are CUDA0"):
        fit.plan(q4, machine=m, devices=["CUDA1"], kv_contexts=())
