"""The ``step35`` command line.

Subcommands:
    step35 info [-m MODEL] [--json]   version, llama.cpp commit, backends/devices (and a model summary)
    step35 load [-m MODEL]            load a model with a progress bar and print its properties
                                      (no -m: the built-in tiny Step 3.5 model)
    step35 testmodel [--size S] [-o DIR] [--split N]   write a built-in tiny Step 3.5 GGUF
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import __version__


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n}"


def _print_backends(as_json: bool) -> None:
    from ._backends import backends

    r = backends()
    if as_json:
        print(json.dumps(r.to_dict(), indent=2))
        return
    print(f"step35 {r.version}")
    print(f"llama.cpp {r.llama_commit} (patches: {', '.join(r.patches) if r.patches else 'none'})")
    print("backends loaded:")
    for b in r.loaded:
        print(f"  {b.name}  [{b.source}] {Path(b.library).name if b.library else ''}")
        if b.note:
            print(f"    {b.note}")
        for d in b.devices:
            mem = f", {_fmt_bytes(d['memory_free'])} free of {_fmt_bytes(d['memory_total'])}" if d["memory_total"] else ""
            print(f"    device {d['name']}: {d['description']} ({d['type']}{mem})")
        if b.features:
            print("    features: " + " ".join(f"{k}={v}" if v not in ("1", "") else k for k, v in b.features.items()))
    if r.cpu_variants:
        print("CPU variants (score 0 = this CPU lacks the instructions):")
        for v in sorted(r.cpu_variants, key=lambda v: -v.score):
            mark = "*" if v.name == r.cpu_variant else " "
            print(f"  {mark} {v.name:<16} score {v.score}{'  ' + v.error if v.error else ''}")
    if r.failed:
        print("backends not loaded:")
        for f in r.failed:
            print(f"  {f.name} [{f.source}]: {f.reason}")
    else:
        print("backends not loaded: none")


def _load_with_progress(path: str | Path, **kw):
    from tqdm import tqdm

    from .model import Model

    # disable=None: a bar on a terminal, silence when stderr is a pipe or file.
    with tqdm(total=100, desc="loading", unit="%", leave=False, file=sys.stderr, disable=None,
              bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}") as bar:
        def progress(p: float) -> bool:
            pct = round(p * 100)
            if pct != bar.n:
                bar.update(pct - bar.n)
            return True

        t0 = time.perf_counter()
        model = Model(path, progress=progress, **kw)
    return model, time.perf_counter() - t0


def _print_model(model, load_s: float | None) -> None:
    rows = [
        ("file", ", ".join(str(f) for f in model.files)),
        ("architecture", model.architecture),
        ("description", model.description),
        ("parameters", f"{model.n_params:,}"),
        ("weights", _fmt_bytes(model.size)),
        ("file size", _fmt_bytes(model.file_size)),
        ("layers", model.n_layer),
        ("experts", f"{model.n_expert} (top-{model.n_expert_used})"),
        ("training context", model.n_ctx_train),
        ("vocabulary", model.n_vocab),
        ("chat template", "yes" if model.chat_template else "no"),
    ]
    if load_s is not None:
        rows.append(("load time", f"{load_s:.2f} s"))
    for k, v in rows:
        print(f"{k:>17}: {v}")


def _default_model(size: str = "tiny") -> Path:
    from .testing import model_path

    return model_path(size)


def cmd_info(args: argparse.Namespace) -> int:
    _print_backends(args.json)
    if args.model:
        model, dt = _load_with_progress(args.model, n_gpu_layers=args.n_gpu_layers)
        with model:
            print()
            _print_model(model, dt)
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    path = args.model or _default_model()
    model, dt = _load_with_progress(path, n_gpu_layers=args.n_gpu_layers, use_mmap=args.mmap)
    with model:
        _print_model(model, dt)
    return 0


def cmd_testmodel(args: argparse.Namespace) -> int:
    from .testing import build_model, model_path

    if args.output is None and args.split == 1:
        print(model_path(args.size, seed=args.seed))
        return 0
    out = Path(args.output or ".")
    out.mkdir(parents=True, exist_ok=True)
    for f in build_model(out / f"step35-{args.size}.gguf", args.size, seed=args.seed, n_split=args.split):
        print(f)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``step35`` command."""
    p = argparse.ArgumentParser(prog="step35", description="Run Step 3.5 Flash locally on llama.cpp.")
    p.add_argument("--version", action="version", version=f"step35 {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("info", help="version, llama.cpp commit, backends and devices")
    s.add_argument("-m", "--model", help="also load this GGUF and summarize it")
    s.add_argument("-ngl", "--n-gpu-layers", type=int, default=-1)
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("load", help="load a model (default: the built-in tiny one) and print its properties")
    s.add_argument("-m", "--model", help="GGUF file or any part of a split set")
    s.add_argument("-ngl", "--n-gpu-layers", type=int, default=-1)
    s.add_argument("--mmap", type=int, choices=(0, 1), default=1, help="memory-map the weights (default 1)")
    s.set_defaults(func=cmd_load)

    s = sub.add_parser("testmodel", help="write a built-in tiny Step 3.5 GGUF (for tests and demos)")
    s.add_argument("--size", default="tiny", help="tiny, small or mid")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--split", type=int, default=1, help="write a split set of N files")
    s.add_argument("-o", "--output", help="directory (default: print the cached model's path)")
    s.set_defaults(func=cmd_testmodel)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``step35`` command."""
    from .errors import Step35Error

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (Step35Error, FileNotFoundError, IsADirectoryError, ValueError) as e:
        print(f"step35: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("step35: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
