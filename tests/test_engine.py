"""The batching engine: many requests at once over one context (step35.Engine).

Exactness checks use the F32 tiny variant (``tiny32_path``): requests batched
together run other kernels than a request alone, and F16 rounding could flip a
near-tie of the random model. Every sampled generation is seeded.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time

import pytest

import step35
from step35.errors import ClosedError, ContextOverflowError, QueueFullError

PROMPTS = [
    "Once upon a time",
    "The capital of France is",
    "1, 2, 3, 4,",
    "def fibonacci(n):",
    "In a hole in the ground there lived",
    "The quick brown fox",
    "Step 3.5 Flash is a mixture of experts",
    "Q: What is the boiling point of water?\nA:",
]
CTX = {"n_ctx": 512}


@pytest.fixture(scope="module")
def model32(tiny32_path):
    with step35.Model(tiny32_path, context=CTX) as m:
        yield m


@pytest.fixture(scope="module")
def alone(model32) -> dict[str, list[int]]:
    """Each prompt's greedy tokens when it runs alone (single-stream generate on a fresh cache)."""
    out = {}
    for p in PROMPTS:
        model32.context.clear()
        out[p] = model32.generate(p, max_tokens=24, temperature=0).tokens
    return out


@pytest.fixture(scope="module")
def endless(model32) -> str:
    """A prompt whose greedy continuation fills a whole slot (CTX) without an end-of-generation
    token, found on this machine's kernels: a request for it can only end by max_tokens, the
    slot's context, or a cancel (no test depends on where a sampled generation happens to stop)."""
    for p in PROMPTS:
        model32.context.clear()
        if model32.generate(p, max_tokens=None, temperature=0).finish_reason == "length":
            return p
    pytest.fail("no prompt's greedy continuation fills the context without EOS")


def test_concurrent_greedy_outputs_equal_each_request_alone(model32, alone) -> None:
    with step35.Engine(model32, slots=4, context=CTX) as engine:
        streams = [engine.generate(p, max_tokens=24, temperature=0, stream=True) for p in PROMPTS]
        texts = ["".join(s) for s in streams]  # 8 requests on 4 slots: 4 wait, then take freed slots
        for p, s, text in zip(PROMPTS, streams, texts):
            assert s.tokens == alone[p], p
            assert s.finish_reason in ("length", "stop")
            assert text == model32.detokenize(s.tokens, remove_special=True)
        m = engine.metrics()
        assert m["requests_finished"] == len(PROMPTS) and m["running"] == 0 and m["waiting"] == 0
        # Batching happened: fewer decode steps than tokens decoded one request at a time.
        assert m["decode_steps"] < sum(len(t) for t in alone.values())


def test_max_tokens_limits_each_request(model32) -> None:
    """max_tokens=N gives N tokens, as a single generate does (0: none, finish_reason "length")."""
    with step35.Engine(model32, slots=3, context={"n_ctx": 256}) as engine:
        for n in (0, 1, 3):
            want = model32.generate(PROMPTS[0], max_tokens=n, temperature=0)
            out = engine.generate(PROMPTS[0], max_tokens=n, temperature=0)
            assert (out.tokens, out.text, out.finish_reason) == (want.tokens, want.text, "length"), n
            assert len(out.tokens) == n


def test_model_generate_takes_a_list(model32, alone) -> None:
    outs = model32.generate(PROMPTS[:5], max_tokens=24, temperature=0)
    assert isinstance(outs, list) and len(outs) == 5
    assert [o.tokens for o in outs] == [alone[p] for p in PROMPTS[:5]]
    assert all(isinstance(o, step35.Completion) for o in outs)
    with pytest.raises(ValueError, match="stream=True takes one prompt"):
        model32.generate(PROMPTS[:2], stream=True)


def test_a_list_of_prompts_starts_together(model32, alone) -> None:
    """The requests of a list are queued in one go and decode side by side: the four of them
    take fewer steps than two would one after the other (a step gives each at most one token)."""
    prompts = [p for p in PROMPTS if len(alone[p]) == 24][:4]
    assert len(prompts) == 4
    with step35.Engine(model32, slots=4, context=CTX) as engine:
        outs = engine.generate_many(prompts, max_tokens=24, temperature=0)
        assert [o.tokens for o in outs] == [alone[p] for p in prompts]
        steps = engine.metrics()["decode_steps"]
    assert 24 <= steps < 2 * 24, steps


def test_a_list_that_does_not_fit_is_refused_whole(model32, endless) -> None:
    with step35.Engine(model32, slots=1, context=CTX, max_waiting=1) as engine:
        running = engine.generate(endless, max_tokens=None, temperature=0, stream=True)
        next(iter(running))
        with pytest.raises(QueueFullError, match="2 requests do not fit: 1 running and 0 waiting"):
            engine.generate_many(PROMPTS[1:3], max_tokens=2, temperature=0)
        assert engine.metrics()["waiting"] == 0
        running.close()
        outs = engine.generate_many(PROMPTS[1:2], max_tokens=2, temperature=0)
        assert outs[0].finish_reason in ("length", "stop")


def test_model_chat_takes_a_list(model32) -> None:
    convs = [[{"role": "user", "content": p}] for p in PROMPTS[:3]]
    outs = model32.chat(convs, max_tokens=12, temperature=0)
    assert isinstance(outs, list) and len(outs) == 3
    for conv, out in zip(convs, outs):
        model32.context.clear()
        one = model32.chat(conv, max_tokens=12, temperature=0)
        assert out["choices"][0]["message"] == one["choices"][0]["message"]
        assert out["object"] == "chat.completion"


def test_seeded_sampling_is_reproducible_whatever_runs_beside_it(model32) -> None:
    kw = {"max_tokens": 16, "temperature": 1.0, "seed": 1234}
    with step35.Engine(model32, slots=3, context=CTX) as engine:
        alone_tokens = engine.generate(PROMPTS[0], **kw).tokens
        crowd = [engine.generate(p, max_tokens=16, temperature=1.0, seed=i, stream=True)
                 for i, p in enumerate(PROMPTS[1:3])]
        mine = engine.generate(PROMPTS[0], **kw)
        for s in crowd:
            "".join(s)
    assert mine.tokens == alone_tokens
    assert mine.stats.seed == 1234


def test_requests_from_many_threads(model32, alone) -> None:
    results: dict[str, list[int]] = {}
    errors: list[BaseException] = []

    def worker(p: str) -> None:
        try:
            results[p] = engine.generate(p, max_tokens=24, temperature=0).tokens
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    with step35.Engine(model32, slots=4, context=CTX) as engine:
        threads = [threading.Thread(target=worker, args=(p,)) for p in PROMPTS]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
            assert not t.is_alive(), "a request did not finish"
    assert not errors, errors
    assert results == alone


def test_async_iteration(model32, alone) -> None:
    async def one(engine: step35.Engine, p: str) -> list[int]:
        stream = engine.generate(p, max_tokens=24, temperature=0, stream=True)
        pieces = [piece async for piece in stream]
        assert "".join(pieces) or stream.finish_reason == "stop"
        return stream.tokens

    async def chat(engine: step35.Engine) -> list[dict]:
        stream = engine.chat([{"role": "user", "content": "hi"}], max_tokens=8, temperature=0, stream=True)
        return [chunk async for chunk in stream]

    async def main(engine: step35.Engine):
        return await asyncio.gather(*(one(engine, p) for p in PROMPTS[:4]), chat(engine))

    with step35.Engine(model32, slots=4, context=CTX) as engine:
        *tokens, chunks = asyncio.run(main(engine))
    assert tokens == [alone[p] for p in PROMPTS[:4]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop") and "usage" in chunks[-1]


def test_async_streams_are_woken_by_the_engine_socket_alone(model32, alone) -> None:
    """Async streams wait on the event loop, which the scheduler wakes through a socket: no Python
    thread polls for them, the GIL switch interval stays the process's, and two loops in turn (each
    asyncio.run) and two loops at once (two threads) are all woken."""
    interval = sys.getswitchinterval()

    async def one(engine: step35.Engine, p: str) -> tuple[list[int], set[str]]:
        stream = engine.generate(p, max_tokens=24, temperature=0, stream=True)
        pieces = [piece async for piece in stream]
        assert len(pieces) > 1  # woken once per piece, not only at the end
        return stream.tokens, set(threading.enumerate())

    before = set(threading.enumerate())
    with step35.Engine(model32, slots=2, context=CTX) as engine:
        for p in PROMPTS[:2]:  # one loop after another
            tokens, threads = asyncio.run(one(engine, p))
            assert tokens == alone[p]
            assert threads - before == set(), threads - before  # no thread was started for the wake-ups
        results: dict[str, list[int]] = {}

        def in_its_own_loop(p: str) -> None:
            results[p] = asyncio.run(one(engine, p))[0]

        workers = [threading.Thread(target=in_its_own_loop, args=(p,)) for p in PROMPTS[2:4]]
        for t in workers:
            t.start()
        for t in workers:
            t.join(timeout=120)
            assert not t.is_alive(), "a loop was never woken"
    assert results == {p: alone[p] for p in PROMPTS[2:4]}
    assert sys.getswitchinterval() == interval


def test_closing_the_engine_wakes_an_awaiting_stream(model32, endless) -> None:
    engine = step35.Engine(model32, slots=1, context=CTX)

    async def main() -> str | None:
        stream = engine.generate(endless, max_tokens=None, temperature=0, stream=True)
        await stream.__anext__()
        threading.Timer(0.2, engine.close).start()  # closes while the stream awaits its next piece
        async for _ in stream:
            pass
        return stream.finish_reason

    try:
        assert asyncio.run(asyncio.wait_for(main(), timeout=60)) == "cancelled"
    finally:
        engine.close()


def test_second_chat_turn_evaluates_only_new_tokens(model32) -> None:
    turn1 = [{"role": "user", "content": "Tell me about the sea."}]
    with step35.Engine(model32, slots=2, context=CTX) as engine:
        r1 = engine.chat(turn1, max_tokens=10, temperature=0)
        answer = r1["choices"][0]["message"]
        turn2 = turn1 + [{"role": "assistant", "content": answer["content"] or "",
                          "reasoning_content": answer["reasoning_content"]},
                         {"role": "user", "content": "And the mountains?"}]
        r2 = engine.chat(turn2, max_tokens=10, temperature=0)
    prompt2 = r2["usage"]["prompt_tokens"]
    evaluated2 = r2["timings"]["prompt_n"]
    print(f"\nturn 2: {prompt2} prompt tokens, {evaluated2} evaluated, {prompt2 - evaluated2} from the cache")
    assert r1["timings"]["prompt_n"] == r1["usage"]["prompt_tokens"]
    assert 0 < evaluated2 < prompt2
    # The reused cache gives what a fresh engine computes from scratch.
    with step35.Engine(model32, slots=1, context=CTX) as fresh:
        again = fresh.chat(turn2, max_tokens=10, temperature=0)
    assert again["timings"]["prompt_n"] == prompt2
    assert again["choices"][0]["message"] == r2["choices"][0]["message"]


def test_cancel_frees_the_slot_within_a_step(model32, endless) -> None:
    with step35.Engine(model32, slots=1, context=CTX) as engine:
        long = engine.generate(endless, max_tokens=None, temperature=0, stream=True)
        next(iter(long))
        assert engine.metrics()["running"] == 1
        waiting = engine.generate(PROMPTS[1], max_tokens=4, temperature=0, stream=True)
        assert engine.metrics()["waiting"] == 1
        long.close()
        # The waiting request gets the slot and completes.
        "".join(waiting)
        assert waiting.finish_reason in ("length", "stop")
        assert long.finish_reason == "cancelled"
        deadline = time.monotonic() + 10
        while engine.metrics()["running"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.metrics()["running"] == 0


def test_the_wait_queue_is_bounded(model32, endless) -> None:
    with step35.Engine(model32, slots=1, context=CTX, max_waiting=1) as engine:
        running = engine.generate(endless, max_tokens=None, temperature=0, stream=True)
        next(iter(running))
        queued = engine.generate(PROMPTS[1], max_tokens=2, temperature=0, stream=True)
        with pytest.raises(QueueFullError, match="wait queue is full"):
            engine.generate(PROMPTS[2], max_tokens=2, temperature=0, stream=True)
        running.close()
        "".join(queued)
        assert queued.finish_reason in ("length", "stop")


def test_a_slot_ends_at_its_context(model32, endless) -> None:
    with step35.Engine(model32, slots=2, context={"n_ctx": 64}) as engine:
        ids = model32.tokenize(endless)
        out = engine.generate(endless, max_tokens=None, temperature=0)
        assert out.finish_reason == "length"
        assert len(ids) + len(out.tokens) == 64
        with pytest.raises(ContextOverflowError, match="a slot's context holds 64"):
            engine.generate("word " * 80, max_tokens=1)


def test_bad_requests_are_refused_before_queueing(model32) -> None:
    with step35.Engine(model32, slots=1, context=CTX) as engine:
        with pytest.raises(ValueError, match="temperature"):
            engine.generate("x", temperature=float("nan"))
        with pytest.raises(TypeError, match="temprature"):
            engine.generate("x", temprature=0)  # type: ignore[call-arg]
        with pytest.raises(ValueError, match="stop"):
            engine.generate("x", stop=[""])
        assert engine.metrics()["waiting"] == 0
    with pytest.raises(ValueError, match="slots"):
        step35.Engine(model32, slots=0)


def test_close_cancels_and_refuses_new_requests(model32, endless) -> None:
    engine = step35.Engine(model32, slots=2, context=CTX)
    stream = engine.generate(endless, max_tokens=None, temperature=0, stream=True)
    next(iter(stream))
    engine.close()
    "".join(stream)  # text generated before the close is still handed out, then the stream ends
    assert stream.finish_reason == "cancelled"
    with pytest.raises(ClosedError):
        engine.generate("x")
    engine.close()  # idempotent
    # The model still works (the engine's context is freed).
    assert model32.generate("x", max_tokens=2, temperature=0).finish_reason in ("length", "stop")


def test_the_gil_is_released_while_the_engine_works(model32) -> None:
    """While the main thread waits in generate_many (a native call), another Python thread runs: it
    sees the engine part-way (some decode steps done, not all). With the GIL held through the wait
    it could only run before the first step or after the last."""
    seen: set[int] = set()
    stop = threading.Event()
    with step35.Engine(model32, slots=2, context=CTX) as engine:
        def watch() -> None:
            while not stop.is_set():
                seen.add(engine.metrics()["decode_steps"])

        t = threading.Thread(target=watch)
        t.start()
        try:
            engine.generate_many(PROMPTS[:2], max_tokens=32, temperature=0)
        finally:
            stop.set()
            t.join()
        last = engine.metrics()["decode_steps"]
    assert last >= 32 and any(0 < n < last for n in seen), (sorted(seen), last)


def test_a_full_shared_cache_ends_the_longest_request_and_never_gives_garbage(model32) -> None:
    """kv_unified: four slots share one cache that holds one request's context. When it fills,
    llama_decode returns 1; the engine ends the longest request with "length" (its tokens so far
    are right) and the others go on; every output is a prefix of what the request gets alone."""
    shared = {"n_ctx": 128}
    prompts = PROMPTS[:4]
    with step35.Engine(model32, slots=1, context=shared, kv_unified=True) as solo:
        alone = {p: solo.generate(p, max_tokens=None, temperature=0).tokens for p in prompts}
    with step35.Engine(model32, slots=4, context=shared, kv_unified=True) as engine:
        assert "sharing 128 tokens" in repr(engine)
        streams = [engine.generate(p, max_tokens=None, temperature=0, stream=True) for p in prompts]
        for s in streams:
            "".join(s)
        m = engine.metrics()
        assert m["kv_full_events"] > 0, m
        ended = [s.finish_reason for s in streams]
        assert set(ended) <= {"length", "stop"}, ended
        for p, s in zip(prompts, streams):
            assert s.tokens == alone[p][:len(s.tokens)], p
        # At least one request was cut short by the full cache, and the cache recovers: a new
        # request (the idle slots' caches are dropped for it) gets its whole answer.
        assert any(len(s.tokens) < len(alone[p]) for p, s in zip(prompts, streams))
        again = engine.generate(prompts[0], max_tokens=None, temperature=0)
        assert again.tokens == alone[prompts[0]]
