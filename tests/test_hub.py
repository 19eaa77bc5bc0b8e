"""step35.tools.hub against a loopback fake Hub (tests/fake_hub.py) with the real huggingface_hub client.

The fake serves tiny split GGUFs (``step35.testing.build_model(..., n_split=3)``) under two
quant names (the same bytes; enough for download tests) plus a README. Nothing here
touches the network or ``~/.cache``: ``HF_ENDPOINT`` points at the fake and
``HF_HOME`` at a temporary directory.
"""

from __future__ import annotations

from pathlib import Path

import fake_hub  # tests/ is on pythonpath (pyproject.toml)
import pytest

REPO_ID = "test/Step-Tiny-GGUF"
Q4 = [f"Q4_K_S/Step-Tiny-Q4_K_S-{i:05d}-of-00003.gguf" for i in (1, 2, 3)]
IQ4 = [f"Step-Tiny-IQ4_XS-{i:05d}-of-00003.gguf" for i in (1, 2, 3)]


def _split(tmp_path_factory: pytest.TempPathFactory, seed: int) -> list[bytes]:
    from step35.testing import build_model

    files = build_model(tmp_path_factory.mktemp("hub-src") / "tiny.gguf", "tiny", n_split=3, seed=seed)
    assert len(files) == 3
    return [f.read_bytes() for f in files]


@pytest.fixture(scope="module")
def split_bytes(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """The IQ4_XS files."""
    return _split(tmp_path_factory, 0)


@pytest.fixture(scope="module")
def other_bytes(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """The Q4_K_S files (other weights, so the Hub's blobs differ, as they would)."""
    return _split(tmp_path_factory, 1)


@pytest.fixture
def hub(split_bytes, other_bytes, tmp_path, monkeypatch):
    """A running fake Hub with HF_ENDPOINT/HF_HOME pointed at it and at a tmp cache."""
    import huggingface_hub.constants as C

    files = {"README.md": b"# Step tiny\n", "imatrix.dat": b"not weights"}
    files.update(zip(Q4, other_bytes))
    files.update(zip(IQ4, split_bytes))
    repos = {
        REPO_ID: fake_hub.Repo(files),
        # the preset targets, with the seed file layouts
        "stepfun-ai/Step-3.5-Flash-GGUF-Q4_K_S": fake_hub.Repo(
            {f"step3p5_flash_Q4_K_S-{i:05d}-of-00003.gguf": b for i, b in enumerate(other_bytes, 1)}),
        "ubergarm/Step-3.5-Flash-GGUF": fake_hub.Repo(
            {**{f"IQ4_XS/Step-3.5-Flash-IQ4_XS-{i:05d}-of-00003.gguf": b for i, b in enumerate(split_bytes, 1)},
             "Q8_0/Step-3.5-Flash-Q8_0.gguf": split_bytes[0]}),
    }
    fh = fake_hub.FakeHub(repos)
    url = fh.start()
    home = tmp_path / "hf"
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HF_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setattr(C, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(C, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(C, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    try:
        yield fh
    finally:
        fh.stop()


def _cached(name: str) -> Path | None:
    import os

    from huggingface_hub import try_to_load_from_cache

    p = try_to_load_from_cache(REPO_ID, name, cache_dir=os.path.join(os.environ["HF_HOME"], "hub"))
    return Path(p) if isinstance(p, str) else None


def test_repo_spec_parsing(tmp_path, monkeypatch):
    from step35.tools import hub

    assert hub.parse_spec("ubergarm/Step-3.5-Flash-GGUF:IQ4_XS") == ("ubergarm/Step-3.5-Flash-GGUF", "IQ4_XS")
    assert hub.parse_spec("a/b:Q8_0", "Q4_K_S") == ("a/b", "Q4_K_S")
    assert hub.looks_like_repo("stepfun-ai/Step-3.5-Flash-Int4")
    assert hub.looks_like_repo("owner/name:Q4_K_S")
    assert not hub.looks_like_repo("models/step.gguf")
    assert not hub.looks_like_repo("./a/b")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "owner").mkdir()
    (tmp_path / "owner" / "model").write_bytes(b"x")
    assert not hub.looks_like_repo("owner/model")  # an existing local path wins
    with pytest.raises(hub.HubError):
        hub.parse_spec("not a repo")


def test_presets_resolve_to_the_seed_quants(hub):
    from step35.tools import hub as h

    assert h.resolve("stepfun-ai/Step-3.5-Flash-Int4") == [
        f"step3p5_flash_Q4_K_S-{i:05d}-of-00003.gguf" for i in (1, 2, 3)]
    assert h.resolve("ubergarm/Step-3.5-Flash-GGUF") == [
        f"IQ4_XS/Step-3.5-Flash-IQ4_XS-{i:05d}-of-00003.gguf" for i in (1, 2, 3)]
    assert h.resolve("ubergarm/Step-3.5-Flash-GGUF:q8_0") == ["Q8_0/Step-3.5-Flash-Q8_0.gguf"]
    assert hub.gets() == []  # resolving lists the repo, it fetches nothing


def test_downloads_only_the_chosen_quant_and_reuses_the_cache(hub, split_bytes):
    from step35.tools import hub as h

    assert h.resolve(REPO_ID, "iq4_xs") == IQ4
    assert h.resolve(REPO_ID, include="Step-Tiny-IQ4_XS-00002-of-00003.gguf") == IQ4  # one part -> the whole set
    assert h.resolve(REPO_ID, include="README.md") == ["README.md"]
    path = h.download(f"{REPO_ID}:IQ4_XS", progress=False)
    assert path.name == "Step-Tiny-IQ4_XS-00001-of-00003.gguf"
    assert sorted(hub.gets()) == IQ4
    touched = {f for _, _, f, _ in hub.log if f}
    assert not touched & set(Q4 + ["README.md", "imatrix.dat"]), touched  # never even HEADed
    for name, data in zip(IQ4, split_bytes):
        assert (path.parent / name).read_bytes() == data
    # Second run: the cache is reused (metadata checks only, no bytes).
    n = len(hub.gets())
    assert h.download(REPO_ID, "IQ4_XS", progress=False) == path
    assert len(hub.gets()) == n
    # The other quant lives in its folder; only it is fetched now.
    q4 = h.download(REPO_ID, "Q4_K_S", progress=False)
    assert q4.name == "Step-Tiny-Q4_K_S-00001-of-00003.gguf" and q4.parent.name == "Q4_K_S"
    assert sorted(hub.gets()[n:]) == Q4


def test_interrupted_transfer_resumes(hub, split_bytes, caplog, monkeypatch):
    import huggingface_hub.constants as C
    from step35.tools import hub as h

    # huggingface_hub writes (and so can resume) in DOWNLOAD_CHUNK_SIZE pieces (10 MB): our parts are
    # ~190 KB, so use 16 KiB pieces to make the cut land after some were written.
    monkeypatch.setattr(C, "DOWNLOAD_CHUNK_SIZE", 16384)

    hub.faults[IQ4[1]] = "cut"  # the first GET of part 2 stops half-way and drops the connection
    path = h.download(REPO_ID, "IQ4_XS", progress=False)
    part2 = [(p, r) for m, p, f, r in hub.log if m == "GET" and f == IQ4[1]]
    assert len(part2) == 2, part2
    assert part2[0][1] is None
    half = len(split_bytes[1]) // 2
    resumed_at = int(part2[1][1].removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_at <= half  # the retry asked only for the rest
    assert (path.parent / IQ4[1]).read_bytes() == split_bytes[1]
    assert "resume" in caplog.text.lower()


@pytest.mark.parametrize("fault", ["garbage", "truncated"])
def test_corrupt_download_is_detected_and_never_loaded(hub, split_bytes, monkeypatch, fault):
    import step35
    import step35._runtime.backends
    from step35.tools import hub as h

    def no_load():
        raise AssertionError("a corrupt model reached llama.cpp")

    monkeypatch.setattr(step35._runtime.backends, "core", no_load)
    hub.faults[IQ4[1]] = fault
    with pytest.raises(h.HubError, match=r"Step-Tiny-IQ4_XS-00002-of-00003\.gguf .*corrupt") as e:
        # (the memory plan, made from the headers before downloading, is tested in test_fit*)
        step35.Model.from_pretrained(REPO_ID, quant="IQ4_XS", check_memory=False)
    assert "\n" not in str(e.value)
    assert _cached(IQ4[1]) is None  # dropped from the cache
    assert _cached(IQ4[0]) is not None  # good parts stay
    # Once the Hub serves good bytes, a rerun fetches only the bad part.
    del hub.faults[IQ4[1]]
    n = len(hub.gets())
    path = h.download(REPO_ID, "IQ4_XS", progress=False)
    assert hub.gets()[n:] == [IQ4[1]]
    assert (path.parent / IQ4[1]).read_bytes() == split_bytes[1]


def test_corrupt_file_in_cache_is_detected_offline(hub, monkeypatch):
    from step35.tools import hub as h

    path = h.download(REPO_ID, "IQ4_XS", progress=False)
    blob = path.resolve()
    data = bytearray(blob.read_bytes())
    data[:4] = b"XXXX"
    blob.write_bytes(bytes(data))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(h.HubError, match=r"Step-Tiny-IQ4_XS-00001-of-00003\.gguf .*corrupt.*not a GGUF"):
        h.download(REPO_ID, "IQ4_XS", progress=False)


def test_second_run_works_offline_from_the_cache(hub, monkeypatch):
    import step35
    from step35.tools import hub as h

    path = h.download(REPO_ID, "IQ4_XS", progress=False)
    hub.stop()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert h.download(f"{REPO_ID}:IQ4_XS", progress=False) == path
    with step35.Model.from_pretrained(REPO_ID, "IQ4_XS") as m:
        assert m.files == [path.parent / n for n in IQ4]
    with pytest.raises(h.HubError, match="offline and test/nope is not in the cache"):
        h.download("test/nope:Q4_K_S")
    with pytest.raises(h.HubError, match=r"no Q4_K_S GGUF; quants available: IQ4_XS \(files: Step-Tiny-IQ4_XS-00001"):
        h.download(REPO_ID, "Q4_K_S")  # only what the cache holds
    # No HF_HUB_OFFLINE, server gone: falls back to the cache too.
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert h.download(REPO_ID, "IQ4_XS", progress=False) == path
    assert h.download(REPO_ID, "IQ4_XS", local_files_only=True, progress=False) == path


def test_missing_repo_or_quant_is_a_one_line_error_listing_what_exists(hub):
    from step35.tools import hub as h

    with pytest.raises(h.HubError) as e:
        h.download(REPO_ID)
    assert str(e.value) == f"{REPO_ID} has several quants, pick one with :QUANT or quant=...: IQ4_XS, Q4_K_S"
    with pytest.raises(h.HubError) as e:
        h.download(f"{REPO_ID}:Q8_0")
    assert str(e.value).startswith(f"{REPO_ID} has no Q8_0 GGUF; quants available: IQ4_XS, Q4_K_S (files: ")
    assert "\n" not in str(e.value)
    with pytest.raises(h.HubError) as e:
        h.download("test/does-not-exist:Q4_K_S")
    msg = str(e.value)
    assert "\n" not in msg and "repo test/does-not-exist not found on " + hub.url in msg
    assert "ubergarm/Step-3.5-Flash-GGUF" in msg and "stepfun-ai/Step-3.5-Flash-Int4" in msg
    with pytest.raises(h.HubError, match="has no revision 'v9'"):
        h.download(REPO_ID, "IQ4_XS", revision="v9")
    with pytest.raises(h.HubError, match=r"no file matches \*\.safetensors; it has: "):
        h.download(REPO_ID, include="*.safetensors")
    assert hub.gets() == []


def test_cli_download_and_run_with_a_repo(hub, capsys, split_bytes):
    from step35 import cli

    assert cli.main(["download", REPO_ID, "--quant", "iq4_xs"]) == 0
    out = capsys.readouterr().out.split()
    assert [Path(p).name for p in out] == IQ4
    assert Path(out[0]).read_bytes() == split_bytes[0]
    assert cli.main(["download", f"{REPO_ID}:Q4_K_S", "--include", "README.md"]) == 1  # README has no Q4_K_S
    assert cli.main(["download", REPO_ID, "--include", "README.md"]) == 0
    assert Path(capsys.readouterr().out.strip()).read_bytes() == b"# Step tiny\n"
    assert cli.main(["download", "test/nope"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("step35: error: repo test/nope not found") and err.count("\n") == 1
    # -m takes repo:QUANT (already cached: no new transfer)
    n = len(hub.gets())
    assert cli.main(["run", "-m", f"{REPO_ID}:IQ4_XS", "-p", "hi", "-n", "2", "--temp", "0", "-c", "256",
                     "--hide-reasoning"]) == 0
    assert len(hub.gets()) == n


def test_from_pretrained_loads_the_split_model(hub, tiny_split):
    import step35

    with step35.Model.from_pretrained(REPO_ID, quant="Q4_K_S") as m:
        assert [f.name for f in m.files] == [Path(n).name for n in Q4]
        assert m.architecture == "step35"
        with step35.Model(tiny_split[0]) as ref:
            assert m.n_params == ref.n_params and m.n_layer == ref.n_layer
        assert len(m.tokenize("hello")) > 0


def test_fit_plans_a_repo_from_its_headers_only(hub, split_bytes, tiny_split, monkeypatch):
    from step35.tools import fit
    from step35.tools import hub as h

    monkeypatch.setattr(h, "HEADER_PROBE", 4096)  # these parts are small: probe small, as for 50 GB parts

    remote = fit.plan(f"{REPO_ID}:IQ4_XS", n_ctx=2048, kv_contexts=())
    local = fit.plan(tiny_split[0], n_ctx=2048, kv_contexts=())
    assert remote.model == f"{REPO_ID}:IQ4_XS"
    assert (remote.weights, remote.kv, remote.compute) == (local.weights, local.kv, local.compute)
    gets = [(f, rng) for m, p, f, rng in hub.log if m == "GET" and f and not p.startswith("/api/")]
    assert {f for f, _ in gets} == set(IQ4)  # only the chosen quant, every part
    assert all(rng and rng.startswith("bytes=0-") for _, rng in gets)  # range requests only
    fetched = {f: int(rng.split("-")[1]) + 1 for f, rng in gets}
    assert fetched[IQ4[1]] < len(split_bytes[1]) and fetched[IQ4[2]] < len(split_bytes[2])
    assert all(_cached(n) is None for n in IQ4)  # nothing was downloaded into the cache
    # the CLI makes the same plan before a download, and refuses before fetching a byte more
    from step35.cli import main

    n = len(hub.log)
    assert main(["fit", "-m", f"{REPO_ID}:IQ4_XS", "--memory", "256M"]) == 2
    assert main(["run", "-m", f"{REPO_ID}:IQ4_XS", "-p", "hi", "-n", "1"]) == 0  # fits here: downloads, runs
    assert all(_cached(n) is not None for n in IQ4)
    assert len(hub.log) > n


def test_from_pretrained_refuses_before_downloading_what_cannot_fit(hub, monkeypatch):
    import step35
    from step35.tools import fit

    monkeypatch.setattr(fit, "system_memory", lambda: (2 << 30, 1 << 30))
    with pytest.raises(step35.MemoryFitError):
        step35.Model.from_pretrained(REPO_ID, "IQ4_XS")
    assert all(_cached(n) is None for n in IQ4)
    assert all(rng for m, p, f, rng in hub.log if m == "GET" and f and not p.startswith("/api/"))  # headers only


@pytest.mark.parametrize("choice", [{"quant": "IQ4_XS", "include": "Step-Tiny-IQ4_XS-*.gguf"},
                                    {"quant": "IQ4_XS", "revision": fake_hub.COMMIT}], ids=["include", "revision"])
def test_include_or_revision_still_refuses_before_downloading(hub, monkeypatch, choice):
    import step35
    from step35.tools import fit

    monkeypatch.setattr(fit, "system_memory", lambda: (2 << 30, 1 << 30))
    with pytest.raises(step35.MemoryFitError):
        step35.Model.from_pretrained(REPO_ID, **choice)
    fetched = [(f, rng) for m, p, f, rng in hub.log if m == "GET" and f and not p.startswith("/api/")]
    assert fetched and all(rng for _, rng in fetched)  # the headers were read, nothing was downloaded


def _count_plans(monkeypatch) -> dict[str, int]:
    """Count memory plans and the native no_alloc loads they make."""
    from step35.tools import fit

    n = {"plan": 0, "no_alloc_load": 0}
    plan, simulate = fit.plan, fit._simulate

    def counted_plan(*a, **kw):
        n["plan"] += 1
        return plan(*a, **kw)

    def counted_simulate(*a, **kw):
        n["no_alloc_load"] += 1
        return simulate(*a, **kw)

    monkeypatch.setattr(fit, "plan", counted_plan)
    monkeypatch.setattr(fit, "_simulate", counted_simulate)
    return n


@pytest.mark.parametrize("choice", [{}, {"include": "Step-Tiny-IQ4_XS-*.gguf"}, {"revision": "main"}],
                         ids=["quant", "include", "revision"])
def test_from_pretrained_plans_memory_once(hub, monkeypatch, choice):
    import step35

    n = _count_plans(monkeypatch)
    with step35.Model.from_pretrained(REPO_ID, "IQ4_XS", **choice) as m:
        assert [f.name for f in m.files] == IQ4
    assert n == {"plan": 1, "no_alloc_load": 1}


def test_cli_plans_memory_once_for_a_repo(hub, monkeypatch):
    from step35.cli import main

    n = _count_plans(monkeypatch)
    assert main(["run", "-m", f"{REPO_ID}:IQ4_XS", "-p", "hi", "-n", "1", "-c", "256"]) == 0
    assert n == {"plan": 1, "no_alloc_load": 1}


DOWNLOAD_IN_CHILD = r"""
import sys
import huggingface_hub.constants as C
C.DOWNLOAD_CHUNK_SIZE = 16384  # written (so resumable) in 16 KiB pieces: our parts are ~190 KB
from step35.tools import hub
hub.download(sys.argv[1], sys.argv[2], progress=False)
print("DONE")
"""


def test_download_killed_with_sigkill_resumes(hub, split_bytes):
    import hashlib
    import os
    import subprocess
    import sys
    import time

    from step35.tools import hub as h

    hub.faults[IQ4[1]] = "slow"  # part 2 trickles: the kill lands mid-way
    sha2 = hashlib.sha256(split_bytes[1]).hexdigest()
    blobs = Path(os.environ["HF_HOME"]) / "hub" / "models--test--Step-Tiny-GGUF" / "blobs"
    child = subprocess.Popen([sys.executable, "-c", DOWNLOAD_IN_CHILD, REPO_ID, "IQ4_XS"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    partial = []
    while time.monotonic() < deadline and child.poll() is None:
        partial = [p for p in blobs.glob(f"{sha2}*.incomplete") if p.stat().st_size >= 32768] if blobs.is_dir() else []
        if partial:
            break
        time.sleep(0.02)
    assert partial, f"no partial download appeared: {child.communicate(timeout=60)}"
    child.kill()  # SIGKILL: no cleanup of any kind
    child.communicate(timeout=30)
    written = partial[0].stat().st_size
    del hub.faults[IQ4[1]]
    n = len(hub.log)
    path = h.download(REPO_ID, "IQ4_XS", progress=False)
    ranges = [r for m, p, f, r in hub.log[n:] if m == "GET" and f == IQ4[1] and p.startswith("/cdn/")]
    assert ranges and ranges[0] is not None, ranges
    assert int(ranges[0].removeprefix("bytes=").removesuffix("-")) >= written - 16384 > 0  # resumed, not restarted
    assert (path.parent / IQ4[1]).read_bytes() == split_bytes[1]
    assert not list(blobs.glob("*.incomplete"))


@pytest.mark.parametrize("damage", ["truncated", "header"])
def test_bad_file_in_cache_is_fetched_again(hub, split_bytes, damage):
    from step35.tools import hub as h

    path = h.download(REPO_ID, "IQ4_XS", progress=False)
    blob = (path.parent / IQ4[2]).resolve()
    data = blob.read_bytes()
    blob.write_bytes(data[: len(data) // 3] if damage == "truncated" else b"XXXX" + data[4:])
    n = len(hub.gets())
    again = h.download(REPO_ID, "IQ4_XS", progress=False)
    assert hub.gets()[n:] == [IQ4[2]]  # only the damaged part, once
    assert (again.parent / IQ4[2]).read_bytes() == split_bytes[2]


def test_full_disk_is_a_clear_error_and_keeps_the_cache(hub, split_bytes, tmp_path, monkeypatch):
    import subprocess

    from step35.tools import hub as h

    disk = tmp_path / "small-disk"
    disk.mkdir()
    size = sum(len(b) for b in split_bytes) + 256 * 1024  # one quant fits, not two
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {r.stderr.strip()}")
    try:
        monkeypatch.setenv("HF_HOME", str(disk / "hf"))
        first = h.download(REPO_ID, "IQ4_XS", progress=False)
        # the other quant does not fit: refused before anything is written
        with pytest.raises(h.HubError, match=r"not enough disk space .* GB free on the disk") as e:
            h.download(REPO_ID, "Q4_K_S", progress=False)
        assert "\n" not in str(e.value)
        # the disk fills up during a download (e.g. another writer): a clear error as well
        monkeypatch.setattr(h, "_free_bytes", lambda path: 1 << 40)
        with pytest.warns(UserWarning, match="Not enough free disk space"), \
                pytest.raises(h.HubError, match="no space left on the disk") as e:
            h.download(REPO_ID, "Q4_K_S", progress=False)
        assert "\n" not in str(e.value)
        # the quant downloaded before is intact, and works offline
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        assert h.download(REPO_ID, "IQ4_XS", progress=False) == first
        for name, data in zip(IQ4, split_bytes):
            assert (first.parent / name).read_bytes() == data
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_resume_that_fails_falls_back_to_a_full_download(hub, split_bytes, monkeypatch):
    import hashlib
    import importlib.util
    import os

    from huggingface_hub import file_download

    # The HTTP client huggingface_hub really uses: httpx2 from 2.x (its dependency,
    # so in a clean venv too, e.g. cibuildwheel's), httpx in 1.x.
    httpx = pytest.importorskip("httpx2" if importlib.util.find_spec("httpx2") else "httpx")

    from step35.tools import hub as h

    # a leftover of a killed download of part 2, as huggingface_hub 2.x names it
    blobs = Path(os.environ["HF_HOME"]) / "hub" / "models--test--Step-Tiny-GGUF" / "blobs"
    blobs.mkdir(parents=True)
    sha2 = hashlib.sha256(split_bytes[1]).hexdigest()
    (blobs / f"{sha2}.0badc0de.incomplete").write_bytes(split_bytes[1][:50000])
    real = file_download.http_get

    def flaky(url, temp_file, *, resume_size=0, **kw):
        if resume_size:  # the resume: the network fails
            raise httpx.ConnectError("connection refused")
        return real(url, temp_file, resume_size=resume_size, **kw)

    monkeypatch.setattr(file_download, "http_get", flaky)
    with pytest.warns(RuntimeWarning, match="could not resume the partial download of .*00002-of-00003.gguf"):
        path = h.download(REPO_ID, "IQ4_XS", progress=False)
    assert (path.parent / IQ4[1]).read_bytes() == split_bytes[1]


def test_mtp_sidecar_is_fetched_with_the_model(tmp_path, monkeypatch, tiny_split):
    """A repo with a trunk-only model and its mtp-*.gguf sidecar (llama.cpp's converter: --no-mtp / --mtp):
    the sidecar is never taken for a model, is fetched with mtp=True, and drafts for the model."""
    import huggingface_hub.constants as C
    import step35
    from step35 import testing
    from step35.tools import hub as H

    trunk, sidecar = testing.mtp_sidecar_paths("tiny-mtp")
    files = {"Q8_0/Step-Tiny-Q8_0.gguf": trunk.read_bytes(), "Q8_0/mtp-Step-Tiny-Q8_0.gguf": sidecar.read_bytes(),
             "mtp-Step-Tiny-F16.gguf": sidecar.read_bytes()}
    fh = fake_hub.FakeHub({"test/Step-Tiny-MTP-GGUF": fake_hub.Repo(files)})
    url = fh.start()
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setattr(C, "HF_HUB_OFFLINE", False)
    try:
        assert H.resolve("test/Step-Tiny-MTP-GGUF") == ["Q8_0/Step-Tiny-Q8_0.gguf"]
        assert H.resolve("test/Step-Tiny-MTP-GGUF", mtp=True) == ["Q8_0/Step-Tiny-Q8_0.gguf",
                                                                  "Q8_0/mtp-Step-Tiny-Q8_0.gguf"]
        with step35.Model.from_pretrained("test/Step-Tiny-MTP-GGUF", mtp=True) as m:
            assert m.mtp_heads == 3 and m.mtp_path is not None and m.mtp_path.name == "mtp-Step-Tiny-Q8_0.gguf"
            out = m.generate("hello world", max_tokens=12, temperature=0, draft=3)
            assert out.stats.draft.acceptance == 1.0
        with step35.Model.from_pretrained("test/Step-Tiny-MTP-GGUF") as m:  # mtp=False: no sidecar, no heads
            assert m.mtp_heads == 0
        # The CLI resolves -m/--mtp through the same function: the repo's sidecar, from the Hub cache.
        from step35 import cli
        from step35.cli import commands

        found = H.resolve_model("test/Step-Tiny-MTP-GGUF", mtp=True)
        assert found.path.name == "Step-Tiny-Q8_0.gguf" and found.planned is False
        assert isinstance(found.mtp, Path) and found.mtp.name == "mtp-Step-Tiny-Q8_0.gguf"
        args = cli.build_parser().parse_args(["run", "-m", "test/Step-Tiny-MTP-GGUF", "--mtp", "-p", "x"])
        assert commands._find_model(args) == found
        planned: list[str] = []
        assert H.resolve_model("test/Step-Tiny-MTP-GGUF", mtp=True, plan=planned.append).planned
        assert planned == ["test/Step-Tiny-MTP-GGUF"]  # the plan comes before the download, with the repo id
    finally:
        fh.stop()
    # A local file is taken as is; "auto" finds no heads in a trunk-only file with no sidecar beside it.
    alone = tmp_path / "alone" / "Step-Tiny-Q8_0.gguf"
    alone.parent.mkdir()
    alone.write_bytes(trunk.read_bytes())
    assert H.resolve_model(alone, mtp="auto") == H.ResolvedModel(alone, False)
