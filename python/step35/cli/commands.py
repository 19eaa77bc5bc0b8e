"""The ``step35`` command line.

Subcommands:
    step35 info [-m MODEL] [--json] [--preset NAME]   version, llama.cpp commit, backends/devices,
                                      platform preset (and a model summary)
    step35 load [-m MODEL]            load a model with a progress bar and print its properties
                                      (no -m: the built-in tiny Step 3.5 model)
    step35 testmodel [--size S] [-o DIR] [--split N]   write a built-in tiny Step 3.5 GGUF
    step35 run [-m MODEL] -p PROMPT [sampling/context flags]   generate and print the stats line
    step35 chat [-m MODEL]            interactive streaming chat (/reset, /exit; Ctrl-C stops an answer)
    step35 quantize SRC DST TYPE      quantize a GGUF (Q8_0, Q4_K_S, Q4_K_M, IQ4_XS, ...)
    step35 bench [-m MODEL] [-npp ...] [-ntg ...] [-npl ...]   llama-batched-bench's table
                                      (no -m: the built-in tiny Step 3.5 model)
    step35 download REPO[:QUANT] [--quant Q] [--include PATTERN] [--revision R]   fetch a GGUF from the Hub
    step35 serve [-m MODEL] [--host H] [--port P] [-np N] [--api-key KEY]   OpenAI-compatible HTTP server
                                      (continuous batching; needs the extra: pip install 'step35[server]')

run, chat, bench and serve take -m as a local GGUF or a Hub repo (owner/name[:QUANT]).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from .._runtime.backends import backends
from .._runtime.limits import MAX_BODY_BYTES
from .._version import __version__
from ..chat.toolcalls import merge_deltas
from ..context import ContextParams
from ..engine import CHECKPOINT_EVERY, CHECKPOINTS, Engine, engine_context
from ..errors import Step35Error
from ..generation.mtp import SIDECAR_PREFIX, file_heads, heads_for
from ..gguf.files import model_files
from ..gguf.reader import read_header
from ..tools import hub
from ..tools.quantize import quantize
from .flags import (
    BENCH_FIELDS,
    CONTEXT_FLAGS,
    add_context_flags,
    add_kv_flags,
    add_mtp_flags,
    add_rpc_flags,
    add_sampling_flags,
    add_size_flags,
    add_thread_flags,
    bytes_list,
    context_params,
    device_list,
    field_values,
    int_list,
    mtp_option,
    parse_bytes,
    sampling_args,
)


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n}"


def _print_backends() -> None:
    r = backends()
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

    from ..model import Model

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
        ("MTP heads", _mtp_heads_line(model)),
    ]
    if load_s is not None:
        rows.append(("load time", f"{load_s:.2f} s"))
    for k, v in rows:
        print(f"{k:>17}: {v}")


def _mtp_heads_line(model) -> str:
    n = file_heads(model.path)
    beside = model.path.with_name(SIDECAR_PREFIX + model.path.name)
    if n:
        return f"{n} in the file (use them with --mtp)"
    return f"none in the file; sidecar {beside.name} beside it" if beside.is_file() else "none"


def _default_model(size: str = "tiny") -> Path:
    from ..testing.cache import model_path

    return model_path(size)


def _print_preset(args: argparse.Namespace) -> None:
    from ..tools import presets

    if args.preset:
        preset = presets.get(args.preset)
        print(f"\nplatform preset {preset.name}: {preset.describe()}")
        return
    preset = presets.detect()
    if preset is None:
        print(f"\nplatform preset: this machine is none of the validated platforms "
              f"({', '.join(presets.PRESETS)}; see one with `step35 info --preset NAME`)")
    else:
        print(f"\nplatform preset {preset.name} (recognised): {preset.describe()}")


def cmd_info(args: argparse.Namespace) -> int:
    if args.rpc:  # the workers' devices join the report
        from ..tools.rpc import connect

        connect(args.rpc)
    if args.json:
        from dataclasses import asdict

        from ..tools import presets

        preset = presets.get(args.preset) if args.preset else presets.detect()
        out = backends().to_dict()
        out["preset"] = None if preset is None else {k: v for k, v in asdict(preset).items() if k != "match"}
        print(json.dumps(out, indent=2))
    else:
        _print_backends()
        _print_preset(args)
    if args.model:
        model, dt = _load_with_progress(args.model, n_gpu_layers=args.n_gpu_layers, rpc=args.rpc)
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
    from ..testing.build import build_model
    from ..testing.cache import model_path

    if args.output is None and args.split == 1:
        print(model_path(args.size, seed=args.seed))
        return 0
    out = Path(args.output or ".")
    out.mkdir(parents=True, exist_ok=True)
    for f in build_model(out / f"step35-{args.size}.gguf", args.size, seed=args.seed, n_split=args.split):
        print(f)
    return 0


def _find_model(args: argparse.Namespace, params: ContextParams | None = None, **cache: Any) -> hub.ResolvedModel:
    """``-m`` (a local GGUF, a Hub repo downloaded first, or the built-in tiny model) and ``--mtp`` resolved
    (:func:`step35.tools.hub.resolve_model`). With context ``params``, a repo's memory plan is made from its headers
    before the download; ``cache`` (``checkpoints``, ``cache_mib``) adds an engine's prompt cache to it."""
    def plan(repo: str) -> None:
        from ..tools.fit import check_context

        check_context(repo, params, n_gpu_layers=args.n_gpu_layers, devices=args.device, rpc=args.rpc,
                      tensor_split=args.tensor_split, **cache)

    return hub.resolve_model(args.model or _default_model(), mtp=mtp_option(args),
                             plan=plan if params is not None else None)


def _open_model(args: argparse.Namespace):
    params = ContextParams(**context_params(args))  # validate flags before loading anything
    check = not args.no_fit_check
    found = _find_model(args, params if check else None)
    model, _ = _load_with_progress(found.path, n_gpu_layers=args.n_gpu_layers, use_mmap=bool(args.mmap),
                                   context=params, check_memory=check and not found.planned, devices=args.device,
                                   rpc=args.rpc, tensor_split=args.tensor_split, mtp=found.mtp)
    return model


class _Printer:
    """Prints chat deltas: reasoning dimmed (or hidden), content plain, tool calls as JSON."""

    def __init__(self, show_reasoning: bool, out=None) -> None:
        self.out = out or sys.stdout
        self.show_reasoning = show_reasoning
        self.tty = self.out.isatty()
        self.mode: str | None = None

    def _switch(self, mode: str) -> None:
        if mode == self.mode:
            return
        if self.mode == "reasoning" and self.tty:
            self.out.write("\x1b[0m")
        if self.mode is not None:
            self.out.write("\n")
        if mode == "reasoning":
            self.out.write("\x1b[2m[reasoning] " if self.tty else "[reasoning] ")
        elif mode == "tool":
            self.out.write("[tool call] ")
        self.mode = mode

    def delta(self, d: dict) -> None:
        if d.get("reasoning_content") and self.show_reasoning:
            self._switch("reasoning")
            self.out.write(d["reasoning_content"])
        if d.get("content"):
            self._switch("content")
            self.out.write(d["content"])
        for call in d.get("tool_calls") or ():
            fn = call.get("function", {})
            if fn.get("name"):
                self._switch("tool")
                self.out.write(f"{fn['name']}(")
            if fn.get("arguments"):
                self.out.write(f"{fn['arguments']})")
        self.out.flush()

    def end(self) -> None:
        if self.mode == "reasoning" and self.tty:
            self.out.write("\x1b[0m")
        self.out.write("\n")
        self.out.flush()
        self.mode = None


def cmd_run(args: argparse.Namespace) -> int:
    with _open_model(args) as model:
        if args.raw:
            stream = model.generate(args.prompt, max_tokens=args.n_predict, stream=True, draft=args.draft,
                                    **sampling_args(args))
            with stream:
                for piece in stream:
                    sys.stdout.write(piece)
                    sys.stdout.flush()
            print()
            print(f"[{stream.finish_reason}] {stream.stats}", file=sys.stderr)
            return 0
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": args.prompt}]
        printer = _Printer(show_reasoning=not args.hide_reasoning)
        chat = model.chat(messages, stream=True, max_tokens=args.n_predict, draft=args.draft, **sampling_args(args))
        with chat:
            reason = None
            for chunk in chat:
                choice = chunk["choices"][0]
                printer.delta(choice["delta"])
                reason = choice["finish_reason"] or reason
            printer.end()
            print(f"[{reason}] {chat.stats}", file=sys.stderr)
    return 0


def _history_message(deltas: list[dict[str, Any]]) -> dict[str, Any]:
    """The assistant message a streamed answer adds to the conversation (its tool calls too)."""

    message = merge_deltas(deltas)
    if not message["tool_calls"]:
        del message["tool_calls"]
    return message


def cmd_chat(args: argparse.Namespace) -> int:
    with _open_model(args) as model:
        history: list[dict] = [{"role": "system", "content": args.system}] if args.system else []
        print("step35 chat: /reset clears the conversation, /exit (or Ctrl-D) quits, "
              "Ctrl-C stops the current answer.", file=sys.stderr)
        printer = _Printer(show_reasoning=not args.hide_reasoning)
        while True:
            try:
                line = input("> ")
            except EOFError:
                print()
                return 0
            except KeyboardInterrupt:
                print()
                continue
            if line.strip() in ("/exit", "/quit"):
                return 0
            if line.strip() == "/reset":
                history = history[:1] if args.system else []
                model.context.clear()
                print("(conversation cleared)", file=sys.stderr)
                continue
            if not line.strip():
                continue
            history.append({"role": "user", "content": line})
            deltas = []
            stream = model.chat(history, stream=True, max_tokens=args.n_predict, draft=args.draft, **sampling_args(args))
            try:
                for chunk in stream:
                    d = chunk["choices"][0]["delta"]
                    printer.delta(d)
                    deltas.append(d)
            except KeyboardInterrupt:
                print("\n(stopped)", file=sys.stderr)
            finally:
                stream.close()
                printer.end()
            history.append(_history_message(deltas))


def cmd_quantize(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    out = quantize(args.src, args.dst, args.type, threads=args.threads or 0, allow_requantize=args.allow_requantize,
                   pure=args.pure, overwrite=args.overwrite)
    print(f"{out} ({_fmt_bytes(out.stat().st_size)}) in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from ..tools import bench

    if args.model:
        wants_mtp = args.mtp is not False or args.draft is not None
        found = hub.resolve_model(args.model, mtp=(True if args.mtp is False else args.mtp) if wants_mtp else False)
        path = str(found.path)
        if wants_mtp:
            args.mtp = str(found.mtp) if isinstance(found.mtp, Path) else found.mtp
    else:
        from ..testing.cache import bench_model_path

        path = str(bench_model_path(args.size, args.quant if args.quant else "default"))
    settings = {"n_kv_max": args.ctx_size or "auto", "n_batch": args.batch_size, "n_ubatch": args.ubatch_size,
                "flash_attn": args.flash_attn, "is_pp_shared": int(args.pps), "n_gpu_layers": args.n_gpu_layers,
                "devices": ",".join(args.device) if args.device is not None else "all",
                **({"rpc": args.rpc} if args.rpc else {}),
                **({"tensor_split": ",".join(map(str, args.tensor_split))} if args.tensor_split else {}),
                "n_threads": args.threads or "default", "type_k": args.cache_type_k, "type_v": args.cache_type_v}
    fmt = args.output_format
    if args.mtp is not False or args.draft is not None:
        return _bench_mtp(args, path, settings)
    if fmt == "md":
        print(bench.describe(path, settings))
        print()
        print(bench.table_header(), flush=True)

    def on_row(row: "bench.BenchRow") -> None:
        if fmt == "md":
            print(bench.format_row(row), flush=True)
        elif fmt == "jsonl":
            print(json.dumps(row.as_dict()), flush=True)

    rows = bench.run(path, args.npp, args.ntg, args.npl, shared_prompt=args.pps,
                     **field_values(args, ContextParams, CONTEXT_FLAGS, BENCH_FIELDS), kv_unified=args.kv_unified,
                     n_gpu_layers=args.n_gpu_layers, use_mmap=bool(args.mmap), devices=args.device, rpc=args.rpc,
                     tensor_split=args.tensor_split, on_row=on_row)
    if fmt == "json":
        print(json.dumps([r.as_dict() for r in rows], indent=2))
    elif fmt == "csv":
        print(bench.to_csv(rows), end="")
    return 0


def _bench_mtp(args: argparse.Namespace, path: str, settings: dict) -> int:
    """``step35 bench --mtp``: one sequence, greedy, at each draft length (bench.run_mtp)."""
    from ..tools import bench

    drafts = args.draft if args.draft is not None else [0, 1, 2, 3]
    fmt = args.output_format
    if fmt == "md":
        print(bench.describe(path, {**settings, "mtp": args.mtp if args.mtp is not False else True,
                                    "drafts": ",".join(map(str, drafts))}))
        print()
        print(bench.mtp_header(), flush=True)

    def on_row(row: "bench.DraftRow") -> None:
        if fmt == "md":
            print(bench.format_mtp_row(row), flush=True)
        elif fmt == "jsonl":
            print(json.dumps(row.as_dict()), flush=True)

    given = field_values(args, ContextParams, CONTEXT_FLAGS, BENCH_FIELDS)
    ctx = {k: v for k, v in given.items() if v is not None}  # -c 0 is replaced below
    model, _ = _load_with_progress(path, n_gpu_layers=args.n_gpu_layers, use_mmap=bool(args.mmap),
                                   devices=args.device, rpc=args.rpc, tensor_split=args.tensor_split,
                                   mtp=args.mtp if args.mtp is not False else True,
                                   context={**ctx, "n_ctx": ctx.get("n_ctx") or max(256, max(args.npp) + max(args.ntg) + 8)})
    with model:
        rows = bench.run_mtp(model, args.npp, args.ntg, drafts, on_row=on_row)
    if fmt == "json":
        print(json.dumps([r.as_dict() for r in rows], indent=2))
    elif fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0].as_dict()), lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow(r.as_dict())
        print(buf.getvalue(), end="")
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    from ..tools import fit

    model = args.model or _default_model()
    mtp: bool | Path = False
    if args.mtp is not False:
        if not Path(model).exists():
            raise ValueError("--mtp plans a local file's MTP heads; download the model first (step35 download)")
        mtp = heads_for(model, args.mtp)
    p = fit.plan(model, quant=args.quant, n_ctx=args.ctx_size, type_k=args.cache_type_k, mtp=mtp,
                 type_v=args.cache_type_v, n_gpu_layers=args.n_gpu_layers, swa_full=args.swa_full,
                 n_batch=args.batch_size, n_ubatch=args.ubatch_size, n_seq_max=args.parallel,
                 kv_unified=args.kv_unified, flash_attn=args.flash_attn, memory=args.memory,
                 kv_contexts=args.kv_table, devices=args.device, rpc=args.rpc, tensor_split=args.tensor_split)
    print(json.dumps(p.to_dict(), indent=2) if args.json else p)
    return 0 if p.fits else 2


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    try:
        from .. import serving
    except ImportError as e:  # the server extra is not installed: say how to get it
        print(f"step35: error: {e}", file=sys.stderr)
        return 1
    per_slot = ContextParams(**context_params(args))  # validate flags before loading anything
    slots = args.parallel
    if slots < 1:
        raise ValueError(f"-np/--parallel must be >= 1, got {slots}")
    is_repo = bool(args.model) and hub.looks_like_repo(args.model) and not Path(args.model).exists()
    n_ctx = per_slot.n_ctx
    if n_ctx == 0 and not is_repo:  # -c 0: each slot gets the model's training context
        header = read_header(model_files(args.model or _default_model())[0])
        n_ctx = int(header.metadata.get(f"{header.architecture}.context_length", 0) or 0)
    # The memory plan covers the engine's context (one KV stream of the per-slot context per slot) and
    # its prompt cache in RAM (the bound, by default a share of the RAM free now, and the checkpoints).
    planned = engine_context(per_slot, slots, n_ctx, args.kv_unified)
    cache: dict[str, Any] = dict(checkpoints=args.ctx_checkpoints, cache_mib=None if args.cache_ram < 0 else args.cache_ram)
    check = not args.no_fit_check
    found = _find_model(args, planned if check else None, **cache)
    path, mtp = str(found.path), found.mtp  # the MTP heads' draft context follows every slot
    plan = None
    if check:  # (a repo was planned from its headers before the download; this is the same plan, local)
        from ..tools.fit import check_context

        plan = check_context(path, planned, n_gpu_layers=args.n_gpu_layers, devices=args.device, rpc=args.rpc,
                             tensor_split=args.tensor_split, mtp=mtp, **cache)
    if plan is not None:  # the default bound: what the plan chose from the RAM it leaves
        cache["cache_mib"] = plan.cache_mib
    api_key = args.api_key if args.api_key is not None else os.environ.get("STEP35_API_KEY") or None
    defaults = dict(sampling_args(args), max_tokens=args.n_predict)  # no -n: each route's own default
    name = (args.alias or [None])[0] or (args.model if is_repo else Path(path).name)
    aliases = list(dict.fromkeys(args.alias or [name]))
    model, _ = _load_with_progress(path, n_gpu_layers=args.n_gpu_layers, use_mmap=bool(args.mmap),
                                   context=planned, check_memory=False, devices=args.device,
                                   rpc=args.rpc, tensor_split=args.tensor_split, mtp=mtp)
    with model:
        engine = Engine(model, slots=slots, context=per_slot, max_waiting=args.max_waiting,
                        kv_unified=args.kv_unified, checkpoint_every=args.checkpoint_every,
                        draft=args.draft if mtp else 0,
                        check_memory=False, **cache)  # planned above, before the weights were loaded
        try:
            app = serving.create_app(engine, model_name=name, aliases=aliases, api_key=api_key,
                                     max_body_bytes=args.max_body_bytes, defaults=defaults,
                                     ping_seconds=args.sse_ping_interval, store_mib=args.response_store_mib)

            def ready(host: str, port: int) -> None:
                url = serving.url_of(host, port)
                key = "<the --api-key>" if api_key else "none"
                print(f"step35 serve: {name} on {url}/v1 ({engine.layout}"
                      f"{f', MTP drafts {engine.draft} per step' if engine.draft else ''}"
                      f"{', API key required' if api_key else ''}); Ctrl-C stops", flush=True)
                print(f"  OpenAI clients: base_url={url}/v1 api_key={key} model={name} "
                      f"(agents: OPENAI_BASE_URL={url}/v1 OPENAI_API_KEY={key})", flush=True)
                print(f"  Anthropic clients (Claude Code): ANTHROPIC_BASE_URL={url} ANTHROPIC_API_KEY={key}; "
                      "any model name is served", flush=True)

            stopped_by = serving.run(app, host=args.host, port=args.port, log_level=args.log_level,
                                    shutdown_timeout=args.shutdown_timeout, on_ready=ready)
        finally:
            engine.close(cancel=True, timeout=args.shutdown_timeout)
    print(f"step35 serve: stopped{f' ({stopped_by})' if stopped_by else ''}", file=sys.stderr, flush=True)
    return 0


def cmd_rpc_server(args: argparse.Namespace) -> int:
    import os

    from ..tools import rpc

    try:
        rpc.serve(args.host, args.port, devices=args.device, mem=args.mem, cache_dir=args.cache,
                  threads=args.threads, allow_open_network=args.allow_open_network)
    except KeyboardInterrupt:
        # The server loop runs in native code that never returns: leave at once
        # (a normal interpreter exit would tear down ggml under it).
        print("step35 rpc-server: stopped", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(0)
    return 1  # serve() only returns by raising


def cmd_download(args: argparse.Namespace) -> int:
    files = hub.download_files(args.repo, args.quant, include=args.include, revision=args.revision,
                               cache_dir=args.cache_dir, local_files_only=args.offline)
    for f in files:
        print(f)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``step35`` command."""
    from ..tools.rpc import DEFAULT_HOST as RPC_HOST
    from ..tools.rpc import DEFAULT_PORT as RPC_PORT

    p = argparse.ArgumentParser(prog="step35", description="Run Step 3.5 Flash locally on llama.cpp.")
    p.add_argument("--version", action="version", version=f"step35 {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("info", help="version, llama.cpp commit, backends and devices")
    s.add_argument("-m", "--model", help="also load this GGUF and summarize it")
    s.add_argument("-ngl", "--n-gpu-layers", type=int, default=-1)
    s.add_argument("--json", action="store_true", help="machine-readable output")
    add_rpc_flags(s, split=False)
    s.add_argument("--preset", metavar="NAME",
                   help="show this validated platform's install line and settings "
                        "(mac-m4-max, dgx-spark, ryzen-ai-max-395) instead of the detected one")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("load", help="load a model (default: the built-in tiny one) and print its properties")
    s.add_argument("-m", "--model", help="GGUF file or any part of a split set")
    s.add_argument("-ngl", "--n-gpu-layers", type=int, default=-1)
    s.add_argument("--mmap", type=int, choices=(0, 1), nargs="?", const=1, default=1,
                   help="memory-map the weights (default 1)")
    s.set_defaults(func=cmd_load)

    s = sub.add_parser("testmodel", help="write a built-in tiny Step 3.5 GGUF (for tests and demos)")
    s.add_argument("--size", default="tiny", help="tiny, small or mid (tiny-mtp, tiny-mtp-random, mid-mtp: "
                                                   "with three MTP heads)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--split", type=int, default=1, help="write a split set of N files")
    s.add_argument("-o", "--output", help="directory (default: print the cached model's path)")
    s.set_defaults(func=cmd_testmodel)

    s = sub.add_parser("run", help="answer one prompt (chat template, reasoning shown) and print the stats")
    s.add_argument("-m", "--model", help="GGUF file (default: the built-in tiny model)")
    s.add_argument("-p", "--prompt", required=True)
    s.add_argument("--system", help="a system message")
    s.add_argument("--raw", action="store_true", help="continue the prompt text as is (no chat template)")
    s.add_argument("--hide-reasoning", action="store_true", help="print only the answer")
    add_context_flags(s)
    add_sampling_flags(s)
    add_mtp_flags(s)
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("chat", help="interactive streaming chat")
    s.add_argument("-m", "--model", help="GGUF file (default: the built-in tiny model)")
    s.add_argument("--system", help="a system message")
    s.add_argument("--hide-reasoning", action="store_true")
    add_context_flags(s)
    add_sampling_flags(s)
    add_mtp_flags(s)
    s.set_defaults(func=cmd_chat)

    s = sub.add_parser("quantize", help="quantize a GGUF with llama.cpp's quantizer")
    s.add_argument("src")
    s.add_argument("dst")
    s.add_argument("type", help="Q8_0, Q4_K_S, Q4_K_M, IQ4_XS, Q6_K, ... (IQ4_XS needs no imatrix)")
    s.add_argument("-t", "--threads", type=int, default=0)
    s.add_argument("--allow-requantize", action="store_true")
    s.add_argument("--pure", action="store_true", help="one type for every tensor")
    s.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    s.set_defaults(func=cmd_quantize)

    s = sub.add_parser("bench", help="batched benchmark (llama-batched-bench's table)")
    s.add_argument("-m", "--model", help="GGUF file (default: the built-in Step 3.5 model of --size)")
    s.add_argument("--size", default="tiny", help="built-in model when there is no -m: tiny, small or mid "
                                                   "(tiny-mtp, mid-mtp: with MTP heads, for --mtp)")
    s.add_argument("--quant", default=None,
                   help="quantization of the built-in model (default: Q4_K_S for mid, none for tiny/small)")
    add_size_flags(s, ctx_help="KV size (0 = what the largest row needs)", ctx_default=0)
    s.add_argument("-npp", type=int_list, default=[128, 256, 512], help="prompt lengths, e.g. 128,256,512")
    s.add_argument("-ntg", type=int_list, default=[128], help="generated tokens, e.g. 128,256")
    s.add_argument("-npl", type=int_list, default=[1], help="parallel sequences, e.g. 1,2,4,8")
    s.add_argument("-pps", action="store_true", help="one prompt shared by all sequences")
    add_kv_flags(s)
    add_thread_flags(s)
    s.add_argument("-kvu", "--kv-unified", action="store_true")
    s.add_argument("-ngl", "--n-gpu-layers", type=int, default=-1)
    add_rpc_flags(s)
    s.add_argument("-dev", "--device", type=device_list, default=None, metavar="DEV[,DEV...]",
                   help="GPUs to use, by name (CUDA0, Vulkan0; see `step35 info`); 'none' = CPU only")
    s.add_argument("--mmap", type=int, choices=(0, 1), nargs="?", const=1, default=1,
                   help="memory-map the weights: 1 (default; a bare --mmap, as in llama-batched-bench) or 0")
    s.add_argument("--output-format", choices=("md", "json", "jsonl", "csv"), default="md")
    add_mtp_flags(s, drafts=True)
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("fit", help="will it fit? memory plan (weights, KV cache, compute) before loading or "
                                   "downloading; exit status 2 when it does not fit")
    s.add_argument("-m", "--model", help="GGUF file, any part of a split set, or a Hub repo owner/name[:QUANT] "
                                         "(only its headers are fetched)")
    s.add_argument("--quant", help="quantization, for a repo")
    add_size_flags(s)
    s.add_argument("-np", "--parallel", type=int, default=1,
                   help="parallel sequences: -c is split into one KV stream each (as step35 serve, llama-server)")
    s.add_argument("-kvu", "--kv-unified", action="store_true", help="one KV buffer shared by the sequences")
    add_kv_flags(s)
    s.add_argument("--swa-full", action="store_true")
    s.add_argument("-ngl", "--n-gpu-layers", type=int, default=-1)
    add_rpc_flags(s)
    s.add_argument("-dev", "--device", type=device_list, default=None, metavar="DEV[,DEV...]",
                   help="GPUs to use, by name (CUDA0, Vulkan0; see `step35 info`); 'none' = CPU only")
    s.add_argument("--memory", type=parse_bytes, help="plan for this much RAM instead of this machine's (e.g. 128G)")
    s.add_argument("--kv-table", type=int_list, default=[16384, 65536, 262144],
                   help="context lengths of the KV-cache table (default 16384,65536,262144)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--mtp", nargs="?", const=True, default=False, metavar="MTP_GGUF",
                   help="plan the MTP heads too (the file's own, or an mtp-<name> sidecar beside it, or this one) "
                        "and their draft context")
    s.set_defaults(func=cmd_fit)

    s = sub.add_parser("rpc-server", help="serve this machine's devices to other step35 / llama.cpp processes "
                                          "(llama.cpp's RPC backend; no authentication: keep it on 127.0.0.1 "
                                          "and use an SSH tunnel)")
    s.add_argument("--host", default=RPC_HOST,
                   help=f"address to bind (default {RPC_HOST}; anything else needs --allow-open-network)")
    s.add_argument("--port", type=int, default=RPC_PORT, help=f"TCP port (default {RPC_PORT})")
    s.add_argument("-dev", "--device", type=device_list, default=None, metavar="DEV[,DEV...]",
                   help="devices to serve (CUDA0, Vulkan0, CPU; see `step35 info`); default: every GPU, else the CPU")
    s.add_argument("--mem", type=bytes_list, default=None, metavar="BYTES[,BYTES...]",
                   help="the memory to offer per device (e.g. 64GiB), reported to clients as its total and "
                        "free memory, so their memory plans leave the rest of this machine alone "
                        "(default: what the device reports)")
    s.add_argument("--cache", metavar="DIR", default=None,
                   help="keep large tensors clients send in DIR, so loading the same model again sends only hashes")
    s.add_argument("-t", "--threads", type=int, default=None, help="CPU threads for a CPU device")
    s.add_argument("--allow-open-network", action="store_true",
                   help="allow binding an address other than loopback (the protocol has no authentication)")
    s.set_defaults(func=cmd_rpc_server)

    s = sub.add_parser("download", help="download a GGUF (only the chosen quant, whole split sets) from the Hub")
    s.add_argument("repo", help="owner/name or owner/name:QUANT, e.g. ubergarm/Step-3.5-Flash-GGUF:IQ4_XS")
    s.add_argument("--quant", help="quantization to fetch, e.g. Q4_K_S or IQ4_XS (matched in file/folder names)")
    s.add_argument("--include", action="append", help="file name or glob to fetch instead (repeatable)")
    s.add_argument("--revision", help="branch, tag or commit (default: main)")
    s.add_argument("--cache-dir", help="Hugging Face cache directory (default: HF_HUB_CACHE / HF_HOME)")
    s.add_argument("--offline", action="store_true", help="only look in the cache (like HF_HUB_OFFLINE=1)")
    s.set_defaults(func=cmd_download)

    s = sub.add_parser("serve", help="OpenAI- and Anthropic-compatible HTTP server (/v1/chat/completions, "
                                     "/v1/completions, /v1/responses, /v1/messages, /v1/models, /health, "
                                     "/metrics) with continuous batching; needs: pip install 'step35[server]'")
    s.add_argument("-m", "--model", help="GGUF file or Hub repo owner/name[:QUANT] (default: the built-in tiny model)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    s.add_argument("-np", "--parallel", type=int, default=4, help="slots: requests decoded at once (default 4)")
    s.add_argument("-kvu", "--kv-unified", action="store_true",
                   help="the slots share one KV cache of -c tokens instead of -c each (llama-server --kv-unified)")
    s.add_argument("--cache-ram", type=float, default=-1, metavar="MIB",
                   help="host-memory prompt cache: conversations a slot gives up are kept here and restored when "
                        "a request extends them (llama-server's --cache-ram; 0 = off; default -1: a quarter of "
                        "the RAM the memory plan leaves, at most 8192; counted in the plan)")
    s.add_argument("--ctx-checkpoints", type=int, default=CHECKPOINTS, metavar="N",
                   help="checkpoints of the sliding-window layers per slot (in RAM, counted in the memory plan), so "
                        "that a prompt diverging from a slot's conversation early still reuses its prefix "
                        f"(llama-server's flag; 0 = off; default {CHECKPOINTS})")
    s.add_argument("--checkpoint-every", type=int, default=CHECKPOINT_EVERY, metavar="TOKENS",
                   help="tokens of a long prompt between checkpoints (also one just before each prompt's end; "
                        f"default {CHECKPOINT_EVERY}, the default batch, so that no prompt chunk is split for them)")
    s.add_argument("--max-waiting", type=int, default=64,
                   help="requests that may wait for a slot; more get 429 with Retry-After (default 64)")
    s.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on every route but /health (default: $STEP35_API_KEY)")
    s.add_argument("--alias", action="append", metavar="NAME",
                   help="model name /v1/models lists (repeatable; default: the file name, or the repo); "
                        "requests naming any model are served, as agents send their own names")
    s.add_argument("--sse-ping-interval", type=float, default=15.0, metavar="SECONDS",
                   help="keep-alive comment interval of event streams, also while a long prompt is evaluated "
                        "(default 15)")
    s.add_argument("--response-store-mib", type=float, default=64.0, metavar="MIB",
                   help="memory for stored Responses API answers that previous_response_id can name "
                        "(least recently used dropped first; default 64)")
    s.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES,
                   help="largest request body; larger ones get 413 (default 16 MiB)")
    s.add_argument("--shutdown-timeout", type=float, default=10.0,
                   help="seconds in-flight requests get to finish after SIGINT/SIGTERM before they are cancelled")
    s.add_argument("--log-level", choices=("critical", "error", "warning", "info", "debug"), default="info",
                   help="uvicorn's log level (info and debug also log each request)")
    add_context_flags(s, ctx_help="context length of each slot (0 = the model's); "
                                   "the KV cache holds -np x this many tokens")
    add_sampling_flags(s)
    add_mtp_flags(s)
    s.set_defaults(func=cmd_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``step35`` command."""

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (Step35Error, FileNotFoundError, FileExistsError, IsADirectoryError, ValueError) as e:
        print(f"step35: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`step35 info | head`): not an error. Point stdout
        # at devnull so the interpreter's final flush does not complain again.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("step35: interrupted", file=sys.stderr)
        return 130
