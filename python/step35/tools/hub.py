"""Step 3.5 Flash GGUFs from the Hugging Face Hub.

Built on :mod:`huggingface_hub`: files land in its cache (``HF_HOME`` /
``HF_HUB_CACHE``), interrupted transfers are resumed by its downloader, and
``HF_HUB_OFFLINE=1`` (or ``local_files_only=True``) resolves everything from
the cache. ``HF_ENDPOINT`` selects the Hub (read at call time).

A model is named by a repo, optionally with a quant: ``owner/name`` or
``owner/name:QUANT``. Only the chosen quant's ``.gguf`` files are fetched; a
split set ``NAME-0000K-of-0000N.gguf`` is always fetched whole. After the
download every file is verified (size, and the sha256/git hash the Hub lists
for freshly downloaded files, then the GGUF header), so a corrupt file is
reported by name, dropped from the cache and never loaded.

    >>> from step35 import hub
    >>> path = hub.download("ubergarm/Step-3.5-Flash-GGUF")           # preset: IQ4_XS, 4 parts
    >>> path = hub.download("stepfun-ai/Step-3.5-Flash-Int4")         # preset: Q4_K_S
    >>> path = hub.download("someone/Some-GGUF:Q8_0")
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import os
import re
import shutil
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import InvalidModelError, Step35Error
from ..generation.mtp import SIDECAR_PREFIX, MTPOption, heads_for
from ..gguf.files import model_files, split_set
from ..gguf.reader import read_header

__all__ = ["HubError", "PRESETS", "ResolvedModel", "parse_spec", "looks_like_repo", "resolve", "resolve_model",
           "download"]


class HubError(Step35Error):
    """A model could not be resolved or downloaded from the Hub (the message says what exists)."""


@dataclass(frozen=True)
class Preset:
    repo_id: str
    quant: str
    note: str = ""


#: Known Step 3.5 Flash GGUF repos, and the quant each one means by default.
PRESETS: dict[str, Preset] = {
    "stepfun-ai/Step-3.5-Flash-Int4": Preset("stepfun-ai/Step-3.5-Flash-GGUF-Q4_K_S", "Q4_K_S",
                                             "StepFun's Q4_K_S (the name of the Int4 repo resolves to this one)"),
    "stepfun-ai/Step-3.5-Flash-GGUF-Q4_K_S": Preset("stepfun-ai/Step-3.5-Flash-GGUF-Q4_K_S", "Q4_K_S",
                                                    "StepFun's Q4_K_S"),
    "ubergarm/Step-3.5-Flash-GGUF": Preset("ubergarm/Step-3.5-Flash-GGUF", "IQ4_XS", "ubergarm's IQ4_XS, split in 4"),
}

# A quantization name inside a file or folder name (Q4_K_S, IQ4_XS, UD-Q4_K_XL, Q8_0, BF16, MXFP4_MOE, ...).
_QUANT_RE = re.compile(
    r"(?<![A-Za-z0-9])((?:UD-)?(?:I?Q[1-8](?:_[0-9A-Z]{1,4})*|BF16|F16|F32|MXFP4(?:_MOE)?|TQ[12]_0))(?![A-Za-z0-9_])",
    re.IGNORECASE,
)
_REPO_RE = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?::(?P<quant>[\w.*?\[\]-]+))?$")


def parse_spec(spec: str, quant: str | None = None) -> tuple[str, str | None]:
    """``owner/name[:QUANT]`` -> ``(repo_id, quant)``; an explicit ``quant`` wins over the suffix."""
    m = _REPO_RE.match(spec.strip())
    if not m:
        raise HubError(f"{spec!r} is not a Hub repo name (expected owner/name or owner/name:QUANT)")
    return m["repo"], quant or m["quant"]


def looks_like_repo(value: str) -> bool:
    """Whether a ``-m`` value names a Hub repo rather than a local file.

    An existing path, anything ending in ``.gguf`` and anything starting with
    ``.``, ``/`` or ``~`` is a path.
    """
    if not value or value.startswith((".", "/", "~", "\\")) or value.lower().endswith(".gguf"):
        return False
    if Path(value).exists():
        return False
    return _REPO_RE.match(value) is not None


def _quants_in(name: str) -> list[str]:
    return [q.upper() for q in _QUANT_RE.findall(name)]


def _matches_quant(name: str, quant: str) -> bool:
    pat = re.compile(r"(?<![A-Za-z0-9])" + re.escape(quant) + r"(?![A-Za-z0-9_])", re.IGNORECASE)
    return pat.search(name) is not None


def _model_key(name: str) -> str:
    """Files of one model share a key: the split-set prefix, or the file name itself."""
    split = split_set(name)
    return split[0] if split else name


def _is_weights(name: str) -> bool:
    base = PurePosixPath(name).name.lower()
    return base.endswith(".gguf") and not base.startswith(("mmproj", "imatrix", SIDECAR_PREFIX))


def _sidecar(names: list[str], model: str, quant: str | None) -> str | None:
    """The MTP sidecar (``mtp-*.gguf``) of ``model`` in the repo, as llama.cpp's downloader picks it: in
    the model's folder or one above, the deepest first, then one of the same quant or of the same name."""

    folder = PurePosixPath(model).parent.parts
    best: tuple[int, int, str] | None = None
    for n in names:
        p = PurePosixPath(n)
        if not (p.name.lower().startswith(SIDECAR_PREFIX) and p.name.lower().endswith(".gguf")):
            continue
        if p.parent.parts != folder[:len(p.parent.parts)]:
            continue
        fit = (2 if p.name[len(SIDECAR_PREFIX):] == PurePosixPath(model).name else
               1 if quant and _matches_quant(n, quant) else 0)
        key = (len(p.parent.parts), fit, n)
        if best is None or key[:2] > best[:2]:
            best = key
    return best[2] if best else None


@dataclass
class _Plan:
    repo_id: str
    revision: str | None  # the commit to fetch (None: resolved from the cache)
    files: list[str]
    meta: dict[str, tuple[int | None, str | None, str | None]] = field(default_factory=dict)  # size, sha256, git sha1


def _select(repo_id: str, names: Iterable[str], quant: str | None, include: str | list[str] | None,
            mtp: bool = False) -> list[str]:
    names = sorted(set(names))
    ggufs = [n for n in names if _is_weights(n)]
    patterns = [include] if isinstance(include, str) else list(include or [])
    if patterns:
        chosen = [n for n in names if any(n == p or fnmatch.fnmatchcase(n, p) or
                                          fnmatch.fnmatchcase(PurePosixPath(n).name, p) for p in patterns)]
        if not chosen:
            raise HubError(f"{repo_id}: no file matches {', '.join(patterns)}; it has: {', '.join(names) or 'no files'}")
        if quant:
            chosen = [n for n in chosen if _matches_quant(n, quant)]
    else:
        chosen = list(ggufs)
        if not chosen:
            raise HubError(f"{repo_id} has no .gguf files; it has: {', '.join(names) or 'no files'}")
        if quant:
            chosen = [n for n in chosen if _matches_quant(n, quant)]
    available = sorted({q for n in ggufs for q in _quants_in(n)})
    if quant and not chosen:
        raise HubError(f"{repo_id} has no {quant} GGUF; quants available: {', '.join(available) or 'none found'} "
                       f"(files: {', '.join(ggufs) or 'none'})")
    # Expand every split part to its whole set, and require the set to be complete in the repo.
    out: list[str] = []
    for n in chosen:
        split = split_set(n)
        if not split:
            out.append(n)
            continue
        prefix, parts = split
        missing = [p for p in parts if p not in names]
        if missing:
            raise HubError(f"{repo_id}: split set {PurePosixPath(prefix).name} is incomplete in the repo "
                           f"(missing {', '.join(PurePosixPath(p).name for p in missing)})")
        out.extend(parts)
    out = sorted(set(out), key=lambda n: (_model_key(n), n))
    models = sorted({_model_key(n) for n in out if _is_weights(n)})
    if not patterns and len(models) > 1:
        quants = sorted({q for n in out for q in _quants_in(n)})
        if not quant and len(quants) > 1:
            raise HubError(f"{repo_id} has several quants, pick one with :QUANT or quant=...: {', '.join(quants)}")
        raise HubError(f"{repo_id}: several GGUF models match{' ' + quant if quant else ''} "
                       f"({', '.join(PurePosixPath(m).name for m in models)}); pick one with include=PATTERN")
    first = next((n for n in out if _is_weights(n)), None)
    side = _sidecar(names, first, quant) if mtp and first else None
    if side and side not in out:
        out.append(side)
    return out


def _endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


def _cache_dir(cache_dir: str | os.PathLike[str] | None) -> str | None:
    if cache_dir is not None:
        return os.fspath(cache_dir)
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return None  # huggingface_hub's default


def is_offline(local_files_only: bool = False) -> bool:
    """Whether the Hub is off limits: ``local_files_only``, or ``HF_HUB_OFFLINE`` set (everything from the cache)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    return bool(local_files_only or env or constants.HF_HUB_OFFLINE)


def _apply_preset(repo_id: str, quant: str | None) -> tuple[str, str | None]:
    preset = PRESETS.get(repo_id)
    if preset is None:
        return repo_id, quant
    return preset.repo_id, quant or preset.quant


def _cached_names(repo_id: str, revision: str | None, cache_dir: str | None) -> tuple[str | None, list[str]]:
    """The commit and file names of a cached snapshot (``(None, [])`` when nothing is cached)."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    root = Path(cache_dir or constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")
    rev = revision or "main"
    commit = rev
    ref = root / "refs" / rev
    if ref.is_file():
        commit = ref.read_text().strip()
    snap = root / "snapshots" / commit
    if not snap.is_dir():
        return None, []
    return commit, [p.relative_to(snap).as_posix() for p in snap.rglob("*") if p.is_file()]


def _remote_plan(repo_id: str, quant: str | None, include, revision: str | None, mtp: bool = False) -> _Plan:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    api = HfApi(endpoint=_endpoint())
    try:
        info = api.model_info(repo_id, revision=revision, files_metadata=True)
    except GatedRepoError as e:
        raise HubError(f"{repo_id} is gated: accept its terms on the Hub and log in (hf auth login) "
                       f"[{_first_line(e)}]") from None
    except RepositoryNotFoundError:
        known = ", ".join(sorted(PRESETS))
        raise HubError(f"repo {repo_id} not found on {api.endpoint} (or it is private); "
                       f"known Step 3.5 Flash GGUF repos: {known}") from None
    except RevisionNotFoundError:
        raise HubError(f"{repo_id} has no revision {revision!r} (branches, tags and commit hashes work)") from None
    siblings = info.siblings or []
    meta = {}
    for s in siblings:
        sha256 = s.lfs.sha256 if s.lfs is not None else None
        size = s.lfs.size if s.lfs is not None else s.size
        meta[s.rfilename] = (size, sha256, None if s.lfs is not None else s.blob_id)
    files = _select(repo_id, meta, quant, include, mtp)
    # Fetch by the user's revision (not info.sha) so huggingface_hub records refs/<revision> for offline use.
    return _Plan(repo_id, revision, files, {f: meta[f] for f in files})


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# Where huggingface_hub's connection errors come from (requests in 0.x, httpx in 1.x, httpx2 later).
_TRANSPORT_MODULES = ("requests", "urllib3", "httpx", "httpcore", "httpx2", "httpcore2")


def _plan(repo: str, quant: str | None, include, revision: str | None, cache_dir: str | None,
          local_files_only: bool, mtp: bool = False) -> _Plan:
    repo_id, quant = parse_spec(repo, quant)
    repo_id, quant = _apply_preset(repo_id, quant)
    if is_offline(local_files_only):
        commit, names = _cached_names(repo_id, revision, cache_dir)
        if not names:
            raise HubError(f"offline and {repo_id}{'@' + revision if revision else ''} is not in the cache "
                           f"({cache_dir or 'the default Hugging Face cache'}); download it once online")
        return _Plan(repo_id, commit, _select(repo_id, names, quant, include, mtp))
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return _remote_plan(repo_id, quant, include, revision, mtp)
    except HubError:
        raise
    except HfHubHTTPError as e:
        raise HubError(f"{repo_id}: the Hub answered {_first_line(e)}") from None
    except Exception as e:  # connection-level failure: fall back to the cache, like hf_hub_download does
        if not (isinstance(e, OSError) or type(e).__module__.split(".")[0] in _TRANSPORT_MODULES):
            raise
        commit, names = _cached_names(repo_id, revision, cache_dir)
        if not names:
            raise HubError(f"cannot reach the Hub ({type(e).__name__}: {_first_line(e)}) and {repo_id} "
                           f"is not in the cache") from None
        return _Plan(repo_id, commit, _select(repo_id, names, quant, include, mtp))


def resolve(repo: str, quant: str | None = None, include: str | list[str] | None = None,
            revision: str | None = None, mtp: bool = False) -> list[str]:
    """The repo files :func:`download` would fetch for ``repo`` (``owner/name[:QUANT]`` or a preset).

    Lists the repo, keeps the ``.gguf`` files of ``quant`` (matched case-insensitively
    in the file or folder name) or those matching ``include`` (a file name or glob),
    and expands split parts to whole sets. Raises :class:`HubError` (one line,
    listing what exists) for a missing repo, revision or quant, an incomplete split
    set, or several quants with none chosen. ``mtp``: also the model's MTP
    sidecar (``mtp-*.gguf``) when the repo has one.
    """
    return _plan(repo, quant, include, revision, None, False, mtp).files


def _hash_ok(path: Path, sha256: str | None, git_sha1: str | None) -> bool:
    if sha256:
        h = hashlib.sha256()
    elif git_sha1:
        h = hashlib.sha1()
        h.update(b"blob %d\0" % path.stat().st_size)
    else:
        return True
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest() == (sha256 or git_sha1)


def _evict(path: Path) -> None:
    """Remove a corrupt file from the cache (the snapshot link and the blob behind it)."""
    try:
        blob = path.resolve()
        path.unlink(missing_ok=True)
        if blob != path:
            blob.unlink(missing_ok=True)
    except OSError:
        pass


def _resume_killed(plan: _Plan, name: str, cache: str | None) -> None:
    """Finish the download of ``name`` that a killed process left half-written, if there is one.

    huggingface_hub (2.x) downloads each blob to a process-unique
    ``<sha256>.<id>.incomplete`` file and deletes it when the download fails;
    a process killed with SIGKILL leaves it behind, and the next run starts
    over from zero (1.x resumed from ``<sha256>.incomplete`` itself). Under
    huggingface_hub's own lock for that blob (so never beside a live
    download), the largest such leftover is completed with a ranged request,
    checked against the Hub's sha256 and moved into place as the blob; the
    others are removed. huggingface_hub then finds the blob and only links it.
    """
    size, sha256, _ = plan.meta.get(name, (None, None, None))
    if not sha256:
        return
    import huggingface_hub.constants as C
    from huggingface_hub import hf_hub_url
    from huggingface_hub.file_download import http_get, repo_folder_name
    from huggingface_hub.utils import WeakFileLock, build_hf_headers

    root = Path(cache or C.HF_HUB_CACHE)
    folder = repo_folder_name(repo_id=plan.repo_id, repo_type="model")
    blobs = root / folder / "blobs"
    blob = blobs / sha256
    if blob.exists() or not blobs.is_dir():
        return
    locks = root / ".locks" / folder
    locks.mkdir(parents=True, exist_ok=True)
    with WeakFileLock(locks / f"{sha256}.lock"):
        leftovers = sorted(blobs.glob(f"{sha256}*.incomplete"), key=lambda p: p.stat().st_size, reverse=True)
        if blob.exists() or not leftovers:
            return
        part = leftovers[0]
        for extra in leftovers[1:]:
            extra.unlink(missing_ok=True)
        have = part.stat().st_size
        if size is not None and have > size:
            part.unlink()
            return
        url = hf_hub_url(plan.repo_id, name, revision=plan.revision, endpoint=_endpoint())
        with open(part, "ab") as f:
            http_get(url, f, resume_size=have, headers=build_hf_headers(), expected_size=size,
                     displayed_filename=PurePosixPath(name).name + " (resumed)")
        if _hash_ok(part, sha256, None):
            os.replace(part, blob)
        else:
            part.unlink()  # not the bytes it was meant to be: huggingface_hub downloads it afresh


def _free_bytes(path: Path) -> int:
    """Free bytes on the disk that holds ``path`` (or its nearest existing parent)."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return shutil.disk_usage(path).free


def _check_space(plan: _Plan, names: Iterable[str], cache: str | None) -> None:
    """HubError before anything is fetched when the files to download cannot fit on the cache's disk."""
    import huggingface_hub.constants as C
    from huggingface_hub.file_download import repo_folder_name

    need = sum(plan.meta.get(n, (None,))[0] or 0 for n in names)
    if not need:
        return
    where = Path(cache or C.HF_HUB_CACHE)
    free = _free_bytes(where / repo_folder_name(repo_id=plan.repo_id, repo_type="model") / "blobs")
    if need > free:
        raise HubError(f"not enough disk space for {plan.repo_id}: {len(list(names))} file(s) of "
                       f"{need / 1e9:.2f} GB to download, {free / 1e9:.2f} GB free on the disk of {where}; "
                       f"free some space, or point HF_HOME / --cache-dir at a bigger disk")


def _verify(plan: _Plan, paths: dict[str, Path], fresh: set[str]) -> dict[str, str]:
    """Check every file (size, hash of fresh downloads, GGUF header); evict the bad ones.

    Returns ``{name: problem}`` for the files that were evicted (empty when all are good).
    """
    bad: dict[str, str] = {}
    for name, path in paths.items():
        size, sha256, git_sha1 = plan.meta.get(name, (None, None, None))
        problem = None
        actual = path.stat().st_size
        if size is not None and actual != size:
            problem = f"it has {actual} bytes, the Hub lists {size}"
        elif name in fresh and not _hash_ok(path, sha256, git_sha1):
            problem = f"its {'sha256' if sha256 else 'git hash'} does not match the Hub's {sha256 or git_sha1}"
        elif _is_weights(name):
            try:
                read_header(path, name=name)
            except InvalidModelError as e:
                problem = _first_line(e)
        if problem:
            _evict(path)
            bad[name] = problem
    if not bad:
        for name, path in paths.items():
            if _is_weights(name):
                model_files(path)  # FileNotFoundError naming any missing part of a split set
    return bad


def download(repo: str, quant: str | None = None, include: str | list[str] | None = None,
             revision: str | None = None, cache_dir: str | os.PathLike[str] | None = None,
             progress: bool = True, local_files_only: bool = False) -> Path:
    """Download (or find in the cache) a model and return the path of its first file.

    The returned path is what :class:`step35.Model` takes. Only the chosen quant's
    files are fetched (see :func:`resolve`); the cache is reused; with
    ``HF_HUB_OFFLINE=1`` or ``local_files_only=True`` nothing touches the network.
    Every file is verified before the path is returned. A corrupt or truncated
    copy found in the cache is removed and fetched again; a download that
    arrives corrupt raises :class:`HubError` naming it (and is removed from the
    cache). An interrupted download (a dropped connection, a killed process)
    resumes where it stopped on the next call. A full disk raises
    :class:`HubError` saying so; what was already downloaded stays.
    """
    return download_files(repo, quant, include, revision, cache_dir, progress, local_files_only)[0]


def download_files(repo: str, quant: str | None = None, include: str | list[str] | None = None,
                   revision: str | None = None, cache_dir: str | os.PathLike[str] | None = None,
                   progress: bool = True, local_files_only: bool = False, mtp: bool = False) -> list[Path]:
    """Like :func:`download`, but returns every local file (model files first); ``mtp``: also the
    model's MTP sidecar (``mtp-*.gguf``) when the repo has one (see :func:`mtp_sidecar`)."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import LocalEntryNotFoundError
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    cache = _cache_dir(cache_dir)
    offline = is_offline(local_files_only)
    plan = _plan(repo, quant, include, revision, cache, local_files_only, mtp)
    paths: dict[str, Path] = {}
    fresh: set[str] = set()
    was_disabled = are_progress_bars_disabled()
    if not progress and not was_disabled:
        disable_progress_bars()
    def fetch(names: Iterable[str]) -> None:
        for name in names:
            cached = try_to_load_from_cache(plan.repo_id, name, cache_dir=cache, revision=plan.revision)
            try:
                if not offline and not isinstance(cached, str):
                    try:
                        _resume_killed(plan, name, cache)
                    except Exception as e:  # only a transport failure: then the whole file is fetched below
                        if not (isinstance(e, OSError) or type(e).__module__.split(".")[0] in _TRANSPORT_MODULES):
                            raise
                        warnings.warn(f"could not resume the partial download of {name} ({_first_line(e)}); "
                                      "downloading it from the start", RuntimeWarning, stacklevel=2)
                local = hf_hub_download(plan.repo_id, name, revision=plan.revision, cache_dir=cache,
                                        endpoint=_endpoint(), local_files_only=offline)
            except LocalEntryNotFoundError:
                raise HubError(f"{name} of {plan.repo_id} is not in the cache and the Hub cannot be reached"
                               f"{' (offline mode)' if offline else ''}") from None
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    where = cache or os.environ.get("HF_HUB_CACHE") or "the Hugging Face cache"
                    raise HubError(f"no space left on the disk of {where} while downloading {name} from "
                                   f"{plan.repo_id}: free some space (or point HF_HOME / --cache-dir at a bigger "
                                   f"disk) and run again; the files already downloaded are kept and this one "
                                   f"resumes") from None
                raise HubError(f"downloading {name} from {plan.repo_id} failed: {_first_line(e)}") from None
            paths[name] = Path(local)
            if not isinstance(cached, str) or not os.path.exists(cached):
                fresh.add(name)

    if not offline:
        missing = [n for n in plan.files
                   if not isinstance(try_to_load_from_cache(plan.repo_id, n, cache_dir=cache,
                                                            revision=plan.revision), str)]
        _check_space(plan, missing, cache)
    try:
        fetch(plan.files)
        bad = _verify(plan, paths, fresh)
        stale = [n for n in bad if n not in fresh]
        if stale and not offline:  # bad copies in the cache: fetched once more
            fetch(stale)
            bad = {**{n: p for n, p in bad.items() if n not in stale},
                   **_verify(plan, {n: paths[n] for n in stale}, fresh)}
    finally:
        if not progress and not was_disabled:
            enable_progress_bars()
    if bad:
        name, problem = next(iter(bad.items()))
        where = "downloaded" if name in fresh else "cached"
        hint = "run again to re-download" if name in fresh else "run again online to fetch it again"
        raise HubError(f"{where} file {name} from {plan.repo_id} is corrupt ({problem}); "
                       f"removed it from the cache, {hint}")
    weights = [p for n, p in paths.items() if _is_weights(n)]
    others = [p for n, p in paths.items() if not _is_weights(n)]
    return weights + others


def mtp_sidecar(files: Iterable[Path]) -> Path | None:
    """The MTP sidecar among the files :func:`download_files` returned (None: the repo has none)."""

    return next((p for p in files if p.name.lower().startswith(SIDECAR_PREFIX)), None)


def _range_get(url: str, n: int) -> bytes:
    from huggingface_hub import get_session
    from huggingface_hub.utils import build_hf_headers, hf_raise_for_status

    session = get_session()
    headers = {**build_hf_headers(), "Range": f"bytes=0-{n - 1}"}
    # huggingface_hub 0.x hands out a requests.Session, 1.x an httpx(2) client
    follow = {"follow_redirects": True} if "httpx" in type(session).__module__ else {"allow_redirects": True}
    r = session.get(url, headers=headers, timeout=60, **follow)
    hf_raise_for_status(r)
    return r.content[:n]  # a server that ignores Range sends everything; keep what was asked for


#: Bytes asked for first when reading a remote GGUF header (then 4x more until it parses).
HEADER_PROBE = 256 << 10


def read_remote_header(repo_id: str, name: str, revision: str | None = None, *,
                       first: int | None = None, limit: int = 256 << 20) -> tuple[bytes, Any]:
    """Fetch just the GGUF header of one repo file with HTTP range requests.

    Starts with ``first`` bytes and asks for four times more until the header
    parses (Step 3.5 Flash's first split, with its 128K-token vocabulary, needs
    a few MiB); gives up past ``limit``. Returns (the bytes fetched, the header).
    """
    import io

    from huggingface_hub import hf_hub_url

    url = hf_hub_url(repo_id, name, revision=revision, endpoint=_endpoint())
    n = first or HEADER_PROBE
    while True:
        data = _range_get(url, n)
        try:
            return data, read_header(io.BytesIO(data), name=name)
        except InvalidModelError:
            if len(data) < n or n >= limit:  # the whole file, or too much: really corrupt
                raise
            n *= 4


def header_stubs(repo: str, quant: str | None, where: Path, revision: str | None = None,
                 include: str | list[str] | None = None) -> tuple[list[Path], list[Any], str]:
    """Sparse local stand-ins for a repo's model files, for memory planning before a download.

    The files are those :func:`download` would fetch with the same ``quant``,
    ``include`` and ``revision``, and of them the model it would return (the
    first; a split set: every part). For each the header
    is read (from the cache when the file is there, else over HTTP range
    requests), written to ``where`` under the file's name and extended sparsely
    to the file's real size, so llama.cpp can plan a ``no_alloc`` load of it.
    Returns (stub paths, headers, a label naming the repo and quant).
    """
    from huggingface_hub import try_to_load_from_cache

    repo_id, q = _apply_preset(*parse_spec(repo, quant))
    cache = _cache_dir(None)
    p = _plan(repo, quant, include, revision, cache, False)
    label = f"{repo_id}:{q}" if q else repo_id
    weights = [n for n in p.files if _is_weights(n)]
    files, headers = [], []
    for name in weights:
        if _model_key(name) != _model_key(weights[0]):
            continue
        stub = where / PurePosixPath(name).name
        cached = try_to_load_from_cache(p.repo_id, name, cache_dir=cache, revision=p.revision)
        if isinstance(cached, str) and os.path.exists(cached):
            size = os.path.getsize(cached)
            header = read_header(cached, name=name)
            with open(cached, "rb") as f:
                data = f.read(header.header_size)
        else:
            size = p.meta.get(name, (None, None, None))[0]
            if size is None:
                raise HubError(f"{name} of {p.repo_id}: the Hub does not list its size; cannot plan it")
            try:
                data, header = read_remote_header(p.repo_id, name, p.revision)
            except InvalidModelError as e:
                raise HubError(f"{name} of {p.repo_id} on the Hub is corrupt or not a GGUF: {_first_line(e)}") from None
        with open(stub, "wb") as f:
            f.write(data)
            f.truncate(max(size, len(data)))
        files.append(stub)
        headers.append(header)
    if not files:
        raise HubError(f"{p.repo_id}: no .gguf model files selected")
    return files, headers, label


@dataclass(frozen=True)
class ResolvedModel:
    """A model found or downloaded: what :class:`~step35.Model` and the memory plan load."""

    path: Path
    """The GGUF file llama.cpp opens (the first part of a split set)."""
    mtp: bool | Path
    """The MTP heads: True (the file's own), the path of an ``mtp-*.gguf`` sidecar, or False."""
    planned: bool = False
    """The memory plan was made from the repo's headers before the download (loading need not make it again)."""


def resolve_model(source: str | os.PathLike[str], quant: str | None = None, *, mtp: MTPOption = False,
                  plan: Callable[[str], object] | None = None, repo: bool | None = None,
                  include: str | list[str] | None = None, revision: str | None = None,
                  cache_dir: str | os.PathLike[str] | None = None, local_files_only: bool = False) -> ResolvedModel:
    """Find a model: a local GGUF as is, or a Hub repo (``owner/name[:QUANT]`` or a preset) downloaded first.

    The one way :meth:`step35.Model.from_pretrained` and the ``step35`` commands resolve ``-m``.
    ``repo``: whether ``source`` is a repo (None: when it looks like one and no such local path exists).
    ``plan(repo_id)`` is called before a download (unless offline): the memory plan made from the
    repo's headers, which raises :class:`~step35.errors.MemoryFitError` before anything is fetched.
    A repo's ``mtp-*.gguf`` sidecar is fetched too when ``mtp`` is True or "auto", and ``mtp`` is
    resolved for the file (:func:`step35.generation.mtp.heads_for`). The other arguments are those of :func:`download`.
    """
    source = os.fspath(source)
    if repo is None:
        repo = looks_like_repo(source) and not Path(source).exists()
    if not repo:
        return ResolvedModel(Path(source), heads_for(source, mtp))
    planned = False
    if plan is not None and not is_offline(local_files_only):
        plan(source)
        planned = True
    files = download_files(source, quant, include=include, revision=revision, cache_dir=cache_dir,
                           local_files_only=local_files_only, mtp=mtp is True or mtp == "auto")
    return ResolvedModel(Path(files[0]), heads_for(files[0], mtp, mtp_sidecar(files)), planned)
