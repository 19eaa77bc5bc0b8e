"""Loading the tiny Step 3.5 model: metadata, properties, tokens, errors, lifetime."""

from __future__ import annotations

import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import step35
from step35 import testing


def test_tiny_model_loads(tiny_model: step35.Model) -> None:
    assert tiny_model.architecture == "step35"
    assert tiny_model.n_params > 0
    assert tiny_model.n_layer > 1
    assert tiny_model.n_expert > 1 and 0 < tiny_model.n_expert_used < tiny_model.n_expert
    assert tiny_model.file_size == tiny_model.path.stat().st_size
    assert 0 < tiny_model.size <= tiny_model.file_size
    assert "<|im_start|>" in (tiny_model.chat_template or "")


def test_metadata_equals_what_the_builder_wrote(tiny_model: step35.Model) -> None:
    expected = testing.expected_metadata("tiny")
    meta = tiny_model.metadata
    for key, value in expected.items():
        got = meta[key]
        if isinstance(value, float):
            assert got == pytest.approx(value, rel=1e-6), key
        elif isinstance(value, list) and value and isinstance(value[0], float):
            assert got == pytest.approx(value, rel=1e-6), key
        else:
            assert got == value, key
    assert set(expected) <= set(meta)


def test_properties_agree_with_metadata(tiny_model: step35.Model) -> None:
    meta = tiny_model.metadata
    assert tiny_model.n_layer == meta["step35.block_count"]
    assert tiny_model.n_expert == meta["step35.expert_count"]
    assert tiny_model.n_expert_used == meta["step35.expert_used_count"]
    assert tiny_model.n_ctx_train == meta["step35.context_length"]
    assert tiny_model.n_embd == meta["step35.embedding_length"]
    assert tiny_model.n_vocab == len(meta["tokenizer.ggml.tokens"])
    assert tiny_model.chat_template == meta["tokenizer.chat_template"]


@pytest.mark.parametrize("text", [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "你好，世界。阶跃星辰的模型。",
    "emoji 🚀🎉 mixed 👩‍👩‍👧 and ZWJ",
    "  leading spaces\n\ttabs and\r\nnewlines  ",
    "",
])
def test_tokenize_roundtrip(tiny_model: step35.Model, text: str) -> None:
    ids = tiny_model.tokenize(text, add_special=False)
    assert tiny_model.detokenize(ids) == text
    if text:
        assert all(0 <= t < tiny_model.n_vocab for t in ids)


def test_special_tokens_parse(tiny_model: step35.Model) -> None:
    ids = tiny_model.tokenize("<|im_start|>user", add_special=False, parse_special=True)
    plain = tiny_model.tokenize("<|im_start|>user", add_special=False, parse_special=False)
    assert len(ids) < len(plain)
    assert tiny_model.detokenize(ids, unparse_special=True) == "<|im_start|>user"


def test_nul_bytes_and_invalid_utf8_never_crash(tiny_model: step35.Model) -> None:
    ids = tiny_model.tokenize("a\x00b", add_special=False)
    assert tiny_model.detokenize(ids) == "a\x00b"
    ids = tiny_model.tokenize(b"\xff\xfe bad \xc3", add_special=False)
    assert isinstance(tiny_model.detokenize(ids), str)


def test_detokenize_rejects_out_of_range_ids(tiny_model: step35.Model) -> None:
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tiny_model.detokenize([1, tiny_model.n_vocab])
    with pytest.raises(ValueError):
        tiny_model.detokenize([-1])


def test_missing_path_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as e:
        step35.Model(tmp_path / "nope.gguf")
    assert "nope.gguf" in str(e.value)


def test_non_gguf_file_raises_step35_error_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "notes.gguf"
    bad.write_text("this is not a model\n")
    with pytest.raises(step35.InvalidModelError, match="notes.gguf") as e:
        step35.Model(bad)
    assert isinstance(e.value, step35.Step35Error)


def test_truncated_gguf_is_rejected(tmp_path: Path, tiny_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_path.read_bytes()[:4096])
    with pytest.raises(step35.ModelLoadError, match="cut.gguf"):
        step35.Model(cut)


def test_gguf_with_truncated_tensor_data_is_rejected(tmp_path: Path, tiny_path: Path) -> None:
    data = tiny_path.read_bytes()
    cut = tmp_path / "half.gguf"
    cut.write_bytes(data[: len(data) * 3 // 4])
    with pytest.raises(step35.ModelLoadError, match="half.gguf") as e:
        step35.Model(cut)
    assert "llama.cpp said" in str(e.value)


def test_corrupt_counts_do_not_allocate_or_crash(tmp_path: Path) -> None:
    bad = tmp_path / "huge.gguf"
    bad.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 1 << 60, 1 << 60))
    with pytest.raises(step35.InvalidModelError, match="huge.gguf"):
        step35.Model(bad)


def test_fork_era_gguf_is_rejected_with_what_to_download(tmp_path: Path) -> None:
    path = testing.write_fork_era_model(tmp_path / "fork.gguf")
    with pytest.raises(step35.InvalidModelError, match="fork") as e:
        step35.Model(path)
    assert "Step-3.5-Flash-GGUF" in str(e.value)


def test_split_set_loads_as_one(tiny_split: list[Path], tiny_model: step35.Model) -> None:
    assert len(tiny_split) == 3
    for part in (tiny_split[0], tiny_split[2]):  # any part names the whole set
        with step35.Model(part) as m:
            assert m.files == tiny_split
            assert m.n_params == tiny_model.n_params
            assert m.file_size == sum(p.stat().st_size for p in tiny_split)
            text = "split sets load as one model"
            assert m.tokenize(text) == tiny_model.tokenize(text)


def test_split_set_missing_part(tmp_path: Path, tiny_split: list[Path]) -> None:
    for p in tiny_split[:2]:
        (tmp_path / p.name).write_bytes(p.read_bytes())
    with pytest.raises(FileNotFoundError, match="1 of 3 parts missing"):
        step35.Model(tmp_path / tiny_split[0].name)


def test_close_and_context_manager(tiny_path: Path) -> None:
    m = step35.Model(tiny_path)
    with m:
        assert not m.closed
        assert m.tokenize("x")
    assert m.closed
    m.close()  # idempotent
    with pytest.raises(step35.ClosedError):
        m.tokenize("x")
    with pytest.raises(step35.ClosedError):
        _ = m.n_params


def test_close_from_another_thread(tiny_path: Path) -> None:
    m = step35.Model(tiny_path)
    t = threading.Thread(target=m.close)
    t.start()
    t.join()
    assert m.closed


def test_progress_callback(tiny_path: Path) -> None:
    seen: list[float] = []
    with step35.Model(tiny_path, progress=lambda p: seen.append(p) or True):
        pass
    assert seen and seen[-1] == pytest.approx(1.0)
    assert seen == sorted(seen)


def test_progress_false_cancels(tiny_path: Path) -> None:
    with pytest.raises(step35.Cancelled):
        step35.Model(tiny_path, progress=lambda p: False)


def test_progress_exception_propagates(tiny_path: Path) -> None:
    class Boom(Exception):
        pass

    def cb(p: float) -> bool:
        raise Boom("stop")

    with pytest.raises(Boom):
        step35.Model(tiny_path, progress=cb)


def test_vocab_only(tiny_path: Path, tiny_model: step35.Model) -> None:
    with step35.Model(tiny_path, vocab_only=True) as m:
        assert m.tokenize("hello there") == tiny_model.tokenize("hello there")


def test_no_mmap(tiny_path: Path, tiny_model: step35.Model) -> None:
    with step35.Model(tiny_path, use_mmap=False) as m:
        assert m.n_params == tiny_model.n_params


def test_cli_load_prints_summary(tiny_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "step35", "load", "-m", str(tiny_path)],
                         capture_output=True, text=True, check=True).stdout
    assert "step35" in out and "parameters" in out and "load time" in out


def test_cli_error_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "step35", "load", "-m", str(tmp_path / "missing.gguf")],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and "missing.gguf" in r.stderr


def test_devices_are_checked_by_name(tiny_path: Path) -> None:
    """devices=[] is CPU only; an unknown name is a ValueError listing the devices there are."""
    with step35.Model(tiny_path, devices=[]) as m:
        assert m.generate("Hi", max_tokens=2, temperature=0).tokens
    gpus = [d["name"] for b in step35.backends().loaded for d in b.devices if d["type"] != "cpu"]
    with pytest.raises(ValueError, match="no device named 'CUDA9'; the devices here are ") as e:
        step35.Model(tiny_path, devices=["CUDA9"])
    if not gpus:
        assert "none besides the CPU (no GPU backend loaded)" in str(e.value)
    r = subprocess.run([sys.executable, "-m", "step35", "run", "-m", str(tiny_path), "-p", "Hi", "-n", "2",
                        "-dev", "CUDA9"], capture_output=True, text=True)
    assert r.returncode != 0 and "no device named 'CUDA9'" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("kwargs, name, low", [
    ({"n_gpu_layers": -7}, "n_gpu_layers", -1),
    ({"n_gpu_layers": -2}, "n_gpu_layers", -1),
    ({"n_gpu_layers": 2**31}, "n_gpu_layers", -1),
    ({"n_gpu_layers": True}, "n_gpu_layers", -1),
    ({"n_gpu_layers": 1.5}, "n_gpu_layers", -1),
    ({"main_gpu": -1}, "main_gpu", 0),
    ({"main_gpu": 2**31}, "main_gpu", 0),
    ({"main_gpu": "0"}, "main_gpu", 0),
])
def test_numeric_load_arguments_are_range_checked(tiny_path: Path, kwargs, name: str, low: int) -> None:
    with pytest.raises(ValueError, match=rf"^{name} must be an int in \[{low}, 2147483647\] \(.*\), got "):
        step35.Model(tiny_path, **kwargs)


def test_n_gpu_layers_none_some_or_more_than_there_are(tiny_path: Path) -> None:
    for n in (0, 2, 999):  # -1 (all) is the default every other test uses
        with step35.Model(tiny_path, n_gpu_layers=n) as m:
            assert m.n_layer > 1


def test_main_gpu_must_name_one_of_the_devices(tiny_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from step35._runtime import backends as _backends

    monkeypatch.setattr(_backends, "resolve_devices", lambda devices: list(devices))  # as if both GPUs existed
    with pytest.raises(ValueError, match=r"main_gpu=2 but only 2 device\(s\) are used \(GPU0, GPU1\)"):
        step35.Model(tiny_path, devices=["GPU0", "GPU1"], main_gpu=2)
