"""The engine's host-memory prompt cache: a conversation a slot gives up comes back when a request extends it.

The F32 tiny model has a sliding window of 16 tokens, so a slot that served
another prompt can no longer serve the earlier conversation's prefix (its
window layers have moved on): without the cache, the whole prompt is
evaluated again. Outputs are compared at temperature 0 with the same request
run alone on a fresh engine without a cache.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import step35

GREEDY = {"temperature": 0.0}


def prompt(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(300, 30000) for _ in range(n)]


def run(engine: step35.Engine, ids: list[int], n: int = 6) -> step35.Completion:
    out = engine.generate(ids, max_tokens=n, **GREEDY)
    assert isinstance(out, step35.Completion)
    return out


@pytest.fixture(scope="module")
def model(tiny32_path: Path) -> step35.Model:
    with step35.Model(tiny32_path, context={"n_ctx": 4096}) as m:
        yield m


def test_a_conversation_whose_slot_was_taken_comes_back_from_the_cache(model: step35.Model) -> None:
    a, b = prompt(1, 300), prompt(2, 300)
    with step35.Engine(model, slots=1, cache_mib=64) as engine:
        first = run(engine, a)
        run(engine, b)  # takes the one slot: a's conversation goes to the cache
        assert engine.metrics()["prompt_cache_entries"] == 1
        turn = a + first.tokens + prompt(3, 40)
        again = run(engine, turn)
    with step35.Engine(model, slots=1, cache_mib=0) as fresh:
        alone = run(fresh, turn)
        run(fresh, b)
        without = run(fresh, turn)
    # the conversation so far (prompt + answer, but for the last sampled token, never decoded) is restored
    assert again.stats.prompt_tokens_restored >= len(a) + len(first.tokens) - 1
    assert again.stats.prompt_tokens_evaluated <= 40 + 1
    assert without.stats.prompt_tokens_evaluated == len(turn)  # no cache: the window moved on, all again
    assert again.tokens == alone.tokens == without.tokens


def test_a_cached_prefix_serves_a_diverging_prompt_too(model: step35.Model) -> None:
    a = prompt(4, 200)
    with step35.Engine(model, slots=1, cache_mib=64) as engine:
        run(engine, a)
        run(engine, prompt(5, 200))
        branch = a[:150] + prompt(6, 30)  # shares 150 tokens with a's conversation
        out = run(engine, branch)
    with step35.Engine(model, slots=1, cache_mib=0) as fresh:
        alone = run(fresh, branch)
    # the restored state is cut back to the common prefix only if the window before it is still held;
    # either way the output is the one the prompt gets alone
    assert out.tokens == alone.tokens
    assert out.stats.prompt_tokens_evaluated + out.stats.prompt_tokens_cached == len(branch)


def test_no_cache_when_its_bound_is_zero(model: step35.Model) -> None:
    with step35.Engine(model, slots=1, cache_mib=0) as engine:
        run(engine, prompt(7, 100))
        run(engine, prompt(8, 100))
        m = engine.metrics()
    assert m["prompt_cache_entries"] == 0 and m["prompt_cache_bytes"] == 0 and m["prompt_tokens_restored"] == 0
    with pytest.raises(ValueError, match="cache_mib"):
        step35.Engine(model, slots=1, cache_mib=-1)


@pytest.mark.slow
def test_the_cache_never_exceeds_its_bound(model: step35.Model) -> None:
    """1,000 requests: 8 conversations that grow turn by turn, on 2 slots, with a cache of 512 KiB."""
    rng = random.Random(11)
    bound = 512 << 10
    conversations = {k: prompt(100 + k, rng.randrange(20, 120)) for k in range(8)}
    restored = 0
    with step35.Engine(model, slots=2, cache_mib=bound / (1 << 20)) as engine:
        for i in range(1000):
            k = rng.randrange(8)
            ids = conversations[k]
            if len(ids) > 700:
                ids = conversations[k] = prompt(1000 + i, rng.randrange(20, 120))
            out = run(engine, ids, n=rng.randrange(1, 3))
            restored += out.stats.prompt_tokens_restored
            conversations[k] = ids + out.tokens + prompt(2000 + i, rng.randrange(1, 30))
            m = engine.metrics()
            assert m["prompt_cache_bytes"] <= bound, (i, m)
    assert m["prompt_cache_entries"] >= 1 and restored > 0 and m["prompt_tokens_restored"] == restored


def test_a_prompt_diverging_early_is_served_from_a_checkpoint(model: step35.Model) -> None:
    """Diverge from a slot's conversation far more than its window layers hold (a window of 16 plus a
    micro-batch of 512 cells) before its end: only a checkpoint of the window layers (one at the end of
    the earlier prompt, 4 tokens before it ends) lets the prefix be reused."""
    a = prompt(21, 700)
    branch = a + prompt(22, 20)  # a's prompt again, then something else than a's 900-token answer
    kept: dict[int, step35.Completion] = {}
    for checkpoints in (32, 0):
        with step35.Engine(model, slots=1, cache_mib=0, checkpoints=checkpoints) as engine:
            long_answer = engine.generate(a, max_tokens=900, **GREEDY)
            assert isinstance(long_answer, step35.Completion) and len(long_answer.tokens) == 900
            kept[checkpoints] = run(engine, branch)
            m = engine.metrics()
        assert (m["checkpoint_restores"] > 0) == (checkpoints > 0)
    with step35.Engine(model, slots=1, cache_mib=0) as fresh:
        alone = run(fresh, branch)
    assert kept[32].stats.prompt_tokens_cached == len(a) - 4  # from the checkpoint just before a's end
    assert kept[32].stats.prompt_tokens_evaluated == 24
    assert kept[0].stats.prompt_tokens_evaluated == len(branch)  # no checkpoint: all again
    assert kept[32].tokens == kept[0].tokens == alone.tokens


def test_two_requests_arriving_together_evaluate_their_shared_prefix_once(model: step35.Model) -> None:
    shared = prompt(31, 2000)
    a, b = shared + prompt(32, 50), shared + prompt(33, 50)
    with step35.Engine(model, slots=2, cache_mib=64) as engine:
        both = engine.generate_many([a, b], max_tokens=6, **GREEDY)
        m = engine.metrics()
    with step35.Engine(model, slots=1, cache_mib=0) as fresh:
        alone = [run(fresh, a), run(fresh, b)]
    # the shared 2000 tokens once, then each request's own 50
    assert m["prompt_tokens_evaluated"] == len(shared) + 50 + 50
    assert sorted(c.stats.prompt_tokens_restored for c in both) == [0, len(shared)]
    assert [c.tokens for c in both] == [c.tokens for c in alone]


def test_the_memory_plan_counts_the_prompt_cache_and_checkpoints(model: step35.Model, tiny32_path: Path) -> None:
    """`fit` adds the cache's bound and every slot's checkpoints (each at most the cells one sequence
    holds on the window layers) to RAM; a checkpoint the engine really takes is no larger."""
    from step35.tools import fit

    bare = fit.plan(tiny32_path, n_ctx=4096, n_seq_max=2)
    p = fit.plan(tiny32_path, n_ctx=4096, n_seq_max=2, checkpoints=3, cache_mib=1)
    window = int(model.metadata[f"{model.metadata['general.architecture']}.attention.sliding_window"])
    one = fit.checkpoint_bytes(p.kv, window, p.n_ubatch)
    assert one > 0 and p.prompt_cache == (1 << 20) + 2 * 3 * one
    assert p.pools[0].need == bare.pools[0].need + p.prompt_cache and p.total == bare.total + p.prompt_cache
    assert "prompts" in str(p)
    with step35.Engine(model, slots=1, cache_mib=0, checkpoints=1) as engine:
        run(engine, prompt(31, 700))
        taken = engine.metrics()["checkpoint_bytes"]
    assert 0 < taken <= one


def test_serve_refuses_a_prompt_cache_that_does_not_fit(tiny32_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("starlette", "uvicorn", "sse_starlette", "prometheus_client"):  # serve checks these first
        pytest.importorskip(name, reason="step35 serve needs the server extra: pip install 'step35[server]'")
    from step35.cli import main

    assert main(["serve", "-m", str(tiny32_path), "-c", "4096", "--cache-ram", str(64 << 20)]) == 1
    err = capsys.readouterr().err
    assert "does not fit" in err and "smaller prompt cache" in err
