"""The CLI's sampling and context flags are generated from SamplingParams' and ContextParams' fields."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
from step35 import cli
from step35.cli import flags
from step35.context import FLASH_ATTN, ContextParams
from step35.generation import SamplingParams


def _parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(list(argv))


def _run(*flags: str) -> argparse.Namespace:
    return _parse("run", "-p", "hi", *flags)


def _defaults(cls: type) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls)}


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings}


def _subparser(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


# -- sampling ---------------------------------------------------------------------------------------------

def test_every_sampling_field_has_a_flag() -> None:
    assert set(flags.SAMPLING_FLAGS) == {f.name for f in dataclasses.fields(SamplingParams)}
    for command in ("run", "chat", "serve"):
        options = _option_strings(_subparser(command))
        for flag in flags.SAMPLING_FLAGS.values():
            assert set(flag.flags) <= options, (command, flag.flags)


def test_no_sampling_flags_give_sampling_params_defaults() -> None:
    got = flags.sampling_params(_run())
    assert got == _defaults(SamplingParams)
    assert SamplingParams(**got) == SamplingParams()
    assert flags.sampling_args(_run())["reasoning_budget"] is None


def test_sampling_flags_reach_sampling_params() -> None:
    args = _run("--temp", "0.3", "--top-k", "7", "--top-p", "0.5", "--min-p", "0.1", "--repeat-penalty", "1.2",
                "--repeat-last-n", "-1", "--presence-penalty", "0.5", "--frequency-penalty", "0.25", "-s", "42",
                "--reasoning-budget", "0")
    got = SamplingParams(**flags.sampling_params(args))
    assert got == SamplingParams(temperature=0.3, top_k=7, top_p=0.5, min_p=0.1, repeat_penalty=1.2,
                                 repeat_last_n=-1, presence_penalty=0.5, frequency_penalty=0.25, seed=42)
    assert isinstance(got.top_k, int) and isinstance(got.temperature, float)
    assert flags.sampling_args(args) == {**dataclasses.asdict(got), "reasoning_budget": 0}


def test_sampling_flag_types_come_from_the_fields() -> None:
    with pytest.raises(SystemExit):
        _run("--top-k", "1.5")  # an int field
    with pytest.raises(SystemExit):
        _run("--seed", "x")  # int | None


def test_the_dest_names_the_rest_of_the_cli_reads() -> None:
    args = _run()
    for dest in ("temp", "top_k", "top_p", "min_p", "repeat_penalty", "repeat_last_n", "presence_penalty",
                 "frequency_penalty", "seed", "n_predict", "reasoning_budget", "ctx_size", "batch_size",
                 "ubatch_size", "flash_attn", "cache_type_k", "cache_type_v", "threads", "threads_batch",
                 "swa_full", "no_warmup"):
        assert hasattr(args, dest), dest


def test_a_misspelt_flag_table_is_caught() -> None:
    """The mapping fails loudly when a table entry's flag and the parser disagree, or a field is unknown."""
    args = _run()
    table = {**flags.SAMPLING_FLAGS, "top_k": flags.Flag(("--topk",), "")}
    with pytest.raises(AttributeError):
        flags.field_values(args, SamplingParams, table)
    with pytest.raises(KeyError):
        flags.add_field_flags(argparse.ArgumentParser(), SamplingParams, {"temp": flags.Flag(("--temp",), "")},
                             ["temp"])
    mapped = flags.field_values(args, SamplingParams, {**flags.SAMPLING_FLAGS, "top_p": flags.SAMPLING_FLAGS["min_p"]})
    assert mapped != _defaults(SamplingParams)  # a flag mapped to the wrong field shows in the defaults check


# -- context ----------------------------------------------------------------------------------------------

def test_every_context_field_has_a_flag_or_a_reason() -> None:
    names = {f.name for f in dataclasses.fields(ContextParams)}
    assert set(flags.CONTEXT_FLAGS) | set(flags.CONTEXT_FIELDS_WITHOUT_FLAGS) == names
    assert not set(flags.CONTEXT_FLAGS) & set(flags.CONTEXT_FIELDS_WITHOUT_FLAGS)


def test_no_context_flags_give_context_params_defaults() -> None:
    got = flags.context_params(_run())
    want = {k: v for k, v in _defaults(ContextParams).items() if k not in flags.CONTEXT_FIELDS_WITHOUT_FLAGS}
    assert got == want
    assert ContextParams(**got) == ContextParams()


def test_context_flags_reach_context_params() -> None:
    args = _run("-c", "8192", "-b", "1024", "-ub", "256", "-fa", "on", "-ctk", "q8_0", "-ctv", "q4_0",
                "-t", "3", "-tb", "5", "--swa-full", "--no-warmup")
    assert ContextParams(**flags.context_params(args)) == ContextParams(
        n_ctx=8192, n_batch=1024, n_ubatch=256, flash_attn="on", type_k="q8_0", type_v="q4_0", n_threads=3,
        n_threads_batch=5, swa_full=True, warmup=False)
    long = _run("--ctx-size", "8192", "--batch-size", "1024", "--ubatch-size", "256", "--flash-attn", "on",
                "--cache-type-k", "q8_0", "--cache-type-v", "q4_0", "--threads", "3", "--threads-batch", "5")
    assert flags.context_params(long) == {**flags.context_params(args), "swa_full": False, "warmup": True}


def test_flash_attn_choices_are_context_flash_attn() -> None:
    action = next(a for a in _subparser("run")._actions if "-fa" in a.option_strings)
    assert tuple(action.choices) == FLASH_ATTN
    with pytest.raises(SystemExit):
        _run("-fa", "maybe")


# -- bench and fit ----------------------------------------------------------------------------------------

def test_bench_defaults_are_context_params() -> None:
    args = _parse("bench")
    got = flags.field_values(args, ContextParams, flags.CONTEXT_FLAGS, flags.BENCH_FIELDS)
    defaults = _defaults(ContextParams)
    assert got == {**{k: defaults[k] for k in flags.BENCH_FIELDS}, "n_ctx": 0}  # -c 0: what the largest row needs
    assert not args.kv_unified


def test_bench_flags_reach_its_settings() -> None:
    args = _parse("bench", "-c", "512", "-b", "64", "-ub", "32", "-fa", "off", "-ctk", "q8_0", "-ctv", "f32",
                  "-t", "2", "-tb", "4")
    assert flags.field_values(args, ContextParams, flags.CONTEXT_FLAGS, flags.BENCH_FIELDS) == {
        "n_ctx": 512, "n_batch": 64, "n_ubatch": 32, "flash_attn": "off", "type_k": "q8_0", "type_v": "f32",
        "n_threads": 2, "n_threads_batch": 4}


def test_fit_defaults_are_context_params() -> None:
    args = _parse("fit")
    c = ContextParams()
    assert (args.ctx_size, args.batch_size, args.ubatch_size, args.flash_attn, args.cache_type_k,
            args.cache_type_v) == (c.n_ctx, c.n_batch, c.n_ubatch, c.flash_attn, c.type_k, c.type_v)
