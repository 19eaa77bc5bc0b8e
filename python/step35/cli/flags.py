"""The command line's flags: the sampling and context flags generated from
:class:`~step35.SamplingParams` and :class:`~step35.context.ContextParams`, and the parsers of
flag values.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from ..context import FLASH_ATTN, KV_TYPES, ContextParams
from ..generation.params import SamplingParams


class Flag(NamedTuple):
    """How one dataclass field is spelled on the command line."""

    flags: tuple[str, ...]  # llama.cpp's spelling(s); a bool field's flag flips its default
    help: str
    choices: tuple[str, ...] | None = None


#: SamplingParams' fields as flags (type and default come from the dataclass).
SAMPLING_FLAGS: dict[str, Flag] = {
    "temperature": Flag(("--temp",), "temperature (0 = greedy)"),
    "top_k": Flag(("--top-k",), "keep the k most likely tokens (0 = off)"),
    "top_p": Flag(("--top-p",), "keep the smallest set reaching probability p (1 = off)"),
    "min_p": Flag(("--min-p",), "drop tokens below min_p x the top probability (0 = off)"),
    "repeat_penalty": Flag(("--repeat-penalty",), "> 1 discourages repeating recent tokens (1 = off)"),
    "repeat_last_n": Flag(("--repeat-last-n",), "tokens the repeat penalty looks at (-1 = all)"),
    "presence_penalty": Flag(("--presence-penalty",), "OpenAI-style presence penalty (0 = off)"),
    "frequency_penalty": Flag(("--frequency-penalty",), "OpenAI-style frequency penalty (0 = off)"),
    "seed": Flag(("-s", "--seed"), "random seed (default: a fresh one, reported in the stats)"),
}


#: ContextParams' fields as flags (type and default come from the dataclass).
CONTEXT_FLAGS: dict[str, Flag] = {
    "n_ctx": Flag(("-c", "--ctx-size"), "context length (0 = the model's)"),
    "n_batch": Flag(("-b", "--batch-size"), "most tokens handed to one decode call"),
    "n_ubatch": Flag(("-ub", "--ubatch-size"), "most tokens computed at once inside a decode call (<= -b)"),
    "flash_attn": Flag(("-fa", "--flash-attn"), "flash attention", FLASH_ATTN),
    "type_k": Flag(("-ctk", "--cache-type-k"), f"K-cache type: {', '.join(KV_TYPES)}"),
    "type_v": Flag(("-ctv", "--cache-type-v"), "V-cache type, as -ctk (a quantized one needs flash attention)"),
    "n_threads": Flag(("-t", "--threads"), "threads for generation (default: the physical cores)"),
    "n_threads_batch": Flag(("-tb", "--threads-batch"), "threads for prompt processing (default: -t)"),
    "swa_full": Flag(("--swa-full",), "keep a full-length cache for the sliding-window layers"),
    "warmup": Flag(("--no-warmup",), "skip the warm-up decode when the context is made"),
}


#: ContextParams' fields with no flag of their own in the table, and why.
CONTEXT_FIELDS_WITHOUT_FLAGS: dict[str, str] = {
    "n_seq_max": "set from -np/--parallel by the commands that have it",
    "kv_unified": "-kvu means something per command (off unless given)",
    "offload_kqv": "no flag yet (llama.cpp's -nkvo)",
}


SIZE_FIELDS = ("n_ctx", "n_batch", "n_ubatch")


KV_FIELDS = ("flash_attn", "type_k", "type_v")


THREAD_FIELDS = ("n_threads", "n_threads_batch")


#: The ContextParams fields `step35 bench` takes.
BENCH_FIELDS = SIZE_FIELDS + KV_FIELDS + THREAD_FIELDS


def dest_of(flags: Sequence[str]) -> str:
    """The attribute a flag's value is stored under, as argparse names it (``--ctx-size`` -> ``ctx_size``)."""
    name = next((f for f in flags if f.startswith("--")), flags[0])
    return name.lstrip("-").replace("-", "_")


def field_of(cls: type, name: str) -> dataclasses.Field:
    """The dataclass field ``name`` of ``cls``."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def field_type(cls: type, name: str) -> type:
    """The type a field's flag parses into: its annotation (None aside), else its default's type."""
    hint = typing.get_type_hints(cls)[name]
    kinds = [t for t in (typing.get_args(hint) or (hint,)) if t is not type(None)]
    if len(kinds) == 1 and isinstance(kinds[0], type):
        return kinds[0]
    default = field_of(cls, name).default
    if default is None or default is dataclasses.MISSING:
        raise TypeError(f"{cls.__name__}.{name}: no single type for a flag in {hint!r}")
    return type(default)


def add_field_flags(g: Any, cls: type, table: Mapping[str, Flag], names: Iterable[str],
                     defaults: Mapping[str, Any] | None = None, helps: Mapping[str, str] | None = None) -> None:
    """Add the flags of the fields ``names`` of ``cls`` (spelled as in ``table``) to the group ``g``.

    Types and defaults come from the dataclass; ``defaults`` and ``helps`` override a field's.
    A bool field's flag takes no value and flips the field's default.
    """
    for name in names:
        flag = table[name]
        default = (defaults or {}).get(name, field_of(cls, name).default)
        text = (helps or {}).get(name, flag.help)
        kind = field_type(cls, name)
        if kind is bool:
            g.add_argument(*flag.flags, dest=dest_of(flag.flags), action="store_true", help=text)
            continue
        if default is not None:
            text += " (default: %(default)s)"
        g.add_argument(*flag.flags, dest=dest_of(flag.flags), type=kind, default=default, choices=flag.choices,
                       help=text)


def field_values(args: argparse.Namespace, cls: type, table: Mapping[str, Flag],
                  names: Iterable[str] | None = None) -> dict[str, Any]:
    """The keyword arguments of ``cls`` that the flags of ``table`` (or of its fields ``names``) were given."""
    out: dict[str, Any] = {}
    for name in table if names is None else names:
        value = getattr(args, dest_of(table[name].flags))
        if field_type(cls, name) is bool:  # the flag flips the default
            default = field_of(cls, name).default
            value = (not default) if value else default
        out[name] = value
    return out


def add_size_flags(g: Any, ctx_help: str | None = None, ctx_default: int | None = None) -> None:
    """-c, -b, -ub with ContextParams' defaults (the flags of every command that sizes a context)."""
    add_field_flags(g, ContextParams, CONTEXT_FLAGS, SIZE_FIELDS,
                     defaults=None if ctx_default is None else {"n_ctx": ctx_default},
                     helps=None if ctx_help is None else {"n_ctx": ctx_help})


def add_kv_flags(g: Any) -> None:
    """-fa, -ctk, -ctv with ContextParams' defaults."""
    add_field_flags(g, ContextParams, CONTEXT_FLAGS, KV_FIELDS)


def add_thread_flags(g: Any) -> None:
    """-t, -tb with ContextParams' defaults."""
    add_field_flags(g, ContextParams, CONTEXT_FLAGS, THREAD_FIELDS)


def add_context_flags(s: argparse.ArgumentParser, ctx_help: str | None = None) -> None:
    """The "context" group: every ContextParams flag, then offloading, devices and loading."""
    g = s.add_argument_group("context")
    add_size_flags(g, ctx_help)
    add_kv_flags(g)
    add_thread_flags(g)
    add_field_flags(g, ContextParams, CONTEXT_FLAGS, ("swa_full", "warmup"))
    g.add_argument("-ngl", "--n-gpu-layers", type=int, default=-1)
    add_rpc_flags(g)
    g.add_argument("-dev", "--device", type=device_list, default=None, metavar="DEV[,DEV...]",
                   help="GPUs to use, by name (CUDA0, Vulkan0; see `step35 info`); 'none' = CPU only")
    g.add_argument("--mmap", type=int, choices=(0, 1), nargs="?", const=1, default=1,
                   help="memory-map the weights: 1 (default; a bare --mmap, as in llama.cpp's tools) or 0")
    g.add_argument("--no-fit-check", action="store_true",
                   help="skip the memory plan made before loading (see `step35 fit`)")


def add_sampling_flags(s: argparse.ArgumentParser) -> None:
    """The "sampling" group: -n, every SamplingParams flag, --reasoning-budget."""
    g = s.add_argument_group("sampling")
    g.add_argument("-n", "--n-predict", type=int, default=None, help="most tokens to generate (default: no limit)")
    add_field_flags(g, SamplingParams, SAMPLING_FLAGS, SAMPLING_FLAGS)
    g.add_argument("--reasoning-budget", type=int, default=None, metavar="N",
                   help="most reasoning tokens before </think> is forced (0 = no reasoning, -1 = unlimited, "
                        "the default)")


def context_params(args: argparse.Namespace) -> dict:
    """ContextParams' keyword arguments from the context flags."""
    return field_values(args, ContextParams, CONTEXT_FLAGS)


def sampling_params(args: argparse.Namespace) -> dict:
    """SamplingParams' keyword arguments from the sampling flags."""
    return field_values(args, SamplingParams, SAMPLING_FLAGS)


def sampling_args(args: argparse.Namespace) -> dict:
    """The sampling keyword arguments of generate/chat: SamplingParams' and ``reasoning_budget``."""
    return {**sampling_params(args), "reasoning_budget": args.reasoning_budget}


def float_list(text: str) -> list[float]:
    try:
        return [float(x) for x in text.replace("/", ",").split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers (e.g. 3,1), got {text!r}") from None


def add_rpc_flags(g, split: bool = True) -> None:
    g.add_argument("--rpc", default=None, metavar="HOST:PORT[,...]",
                   help="RPC workers (`step35 rpc-server`) whose devices take layers too; they come first, "
                        "then the local GPUs; -ngl layers are offloaded, the rest run on this CPU")
    if split:
        g.add_argument("-ts", "--tensor-split", type=float_list, default=None, metavar="N0,N1,...",
                       help="share of the offloaded layers per device, in device order (RPC workers first), "
                            "e.g. 3,1 (default: by free memory)")


def add_mtp_flags(s: argparse.ArgumentParser, drafts: bool = False) -> None:
    s.add_argument("--mtp", nargs="?", const=True, default=False, metavar="MTP_GGUF",
                   help="multi-token prediction: load the MTP heads (the model file's own, or an mtp-<name> "
                        "sidecar beside it; or this mtp-*.gguf)")
    if drafts:
        s.add_argument("--draft", type=int_list, default=None, metavar="N[,N...]",
                       help="MTP draft lengths to measure (0-3; default 0,1,2,3); implies --mtp")
    else:
        s.add_argument("--draft", type=int, default=None, metavar="N",
                       help="MTP: tokens drafted per step, 1-3 (0: off; default 1 with --mtp); implies --mtp")


def mtp_option(args: argparse.Namespace):
    """The ``mtp=`` of Model for --mtp / --draft."""
    if args.mtp is False and args.draft:
        return True
    return args.mtp


def device_list(value: str) -> list[str]:
    """``-dev`` as llama.cpp takes it: comma-separated names, or ``none``."""
    return [] if value.strip().lower() == "none" else [d.strip() for d in value.split(",") if d.strip()]


def int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def parse_bytes(value: str) -> int:
    units = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "KI": 1 << 10, "MI": 1 << 20, "GI": 1 << 30,
             "TI": 1 << 40}
    v = value.strip().upper().removesuffix("B")
    num = v.rstrip("KMGTI")
    try:
        return int(float(num) * units[v[len(num):]])
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"not a size: {value!r} (e.g. 128G, 96GiB, 64000M)") from None


def bytes_list(text: str) -> list[int]:
    return [parse_bytes(x) for x in text.split(",") if x.strip()]
