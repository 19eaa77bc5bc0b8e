"""Multi-token prediction: drafting with the MTP heads changes the speed, never the output.

Models (step35.testing): ``tiny-mtp`` has a token-map trunk (the next token
depends only on the current one) and three heads that agree with it, so drafts
are accepted; ``tiny-mtp-random`` has the random tiny trunk with three random
heads, so drafts are mostly rejected and every rollback path runs. Both in F32.

A verification batch computes several rows at once; llama.cpp's kernels for a
batch and for a single row round differently (its CPU flash attention most:
logits differ by up to ~5e-3 here, ~1.6e-5 with it off and an F32 cache). The
random model has near-ties below that, so it runs with flash attention off and
an F32 KV cache; the token-map model's margins are large, so it runs with the
defaults.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter

import pytest

import step35
from step35 import testing
from step35.errors import InvalidModelError

PROMPT = "The quick brown fox jumps over the lazy dog"
EXACT = {"flash_attn": "off", "type_k": "f32", "type_v": "f32"}


def _f32(size: str) -> testing.ModelSpec:
    spec = testing.SIZES[size]
    return dataclasses.replace(spec, name=spec.name + "-f32", dtype="f32", embd_dtype="f32")


@pytest.fixture(scope="module")
def agree_path(model_cache):
    return testing.model_path(_f32("tiny-mtp"))


@pytest.fixture(scope="module")
def random_path(model_cache):
    return testing.model_path(_f32("tiny-mtp-random"))


@pytest.fixture(scope="module")
def agree(agree_path):
    with step35.Model(agree_path, mtp=True) as m:
        yield m


@pytest.fixture(scope="module")
def rand(random_path):
    with step35.Model(random_path, mtp=True, context=EXACT) as m:
        yield m


def test_heads_loaded(agree, agree_path):
    assert agree.mtp_heads == 3
    assert agree.mtp_path is None
    with step35.Model(agree_path) as m:  # mtp=False by default: no heads, no drafting
        assert m.mtp_heads == 0
        out = m.generate(PROMPT, max_tokens=4, temperature=0)
        assert out.stats.draft is None
    with step35.Model(agree_path, mtp="auto") as m:
        assert m.mtp_heads == 3


def test_token_map_trunk_and_heads(agree):
    """The builder's construction: greedy continues with token_map(last token), and the heads agree."""
    ids = agree.tokenize(PROMPT)
    out = agree.generate(ids, max_tokens=12, temperature=0, draft=3)
    want, t = [], ids[-1]
    for _ in range(12):
        t = testing.token_map(t)
        want.append(t)
    assert out.tokens == want
    d = out.stats.draft
    assert d is not None and d.drafted > 0
    assert d.accepted == d.drafted, d  # agreeing heads: every draft kept


@pytest.mark.parametrize("kind", ["agree", "random"])
@pytest.mark.parametrize("draft", [1, 2, 3])
def test_greedy_identical(kind, draft, agree, rand):
    m = agree if kind == "agree" else rand
    base = m.generate(PROMPT, max_tokens=40, temperature=0, draft=0)
    assert base.stats.draft is None
    out = m.generate(PROMPT, max_tokens=40, temperature=0, draft=draft)
    assert out.tokens == base.tokens
    assert out.text == base.text
    assert out.finish_reason == base.finish_reason
    d = out.stats.draft
    assert d.draft_max == draft and len(d.proposed_by_position) == draft
    assert d.drafted == sum(d.proposed_by_position) and d.accepted == sum(d.accepted_by_position)
    if kind == "agree":
        assert d.acceptance == 1.0
        # every step drafts `draft` tokens and keeps them: about len/(draft+1) steps
        assert d.steps <= math.ceil(40 / (draft + 1)) + 1
    else:
        assert d.acceptance < 0.5  # random heads: the rollback path ran
    # streamed, piece by piece
    pieces = list(m.generate(PROMPT, max_tokens=40, temperature=0, draft=draft, stream=True))
    assert "".join(pieces) == base.text


@pytest.mark.parametrize("kind", ["agree", "random"])
def test_max_tokens_boundaries(kind, agree, rand):
    m = agree if kind == "agree" else rand
    full = m.generate(PROMPT, max_tokens=12, temperature=0, draft=0).tokens
    for n in range(0, 12):
        for draft in (1, 3):
            out = m.generate(PROMPT, max_tokens=n, temperature=0, draft=draft)
            assert out.tokens == full[:n], (n, draft)
            assert out.finish_reason == "length"


@pytest.mark.parametrize("kind", ["agree", "random"])
def test_stop_strings(kind, agree, rand):
    m = agree if kind == "agree" else rand
    full = m.generate(PROMPT, max_tokens=30, temperature=0, draft=0)
    text = full.text
    # stops at several places, including ones inside a drafted run
    for cut in (3, len(text) // 3, len(text) // 2, len(text) - 4):
        stop = text[cut:cut + 3]
        if not stop.strip():
            continue
        want = m.generate(PROMPT, max_tokens=30, temperature=0, draft=0, stop=stop)
        for draft in (1, 2, 3):
            out = m.generate(PROMPT, max_tokens=30, temperature=0, draft=draft, stop=stop)
            assert (out.text, out.finish_reason) == (want.text, want.finish_reason), (stop, draft)
            streamed = "".join(m.generate(PROMPT, max_tokens=30, temperature=0, draft=draft, stop=stop,
                                          stream=True))
            assert streamed == want.text


def test_chat_with_draft(agree):
    msgs = [{"role": "user", "content": "hi"}]
    a = agree.chat(msgs, max_tokens=24, temperature=0, draft=0, reasoning_budget=4)
    b = agree.chat(msgs, max_tokens=24, temperature=0, draft=2, reasoning_budget=4)
    assert a["choices"][0]["message"] == b["choices"][0]["message"]
    chunks = list(agree.chat(msgs, max_tokens=24, temperature=0, draft=2, reasoning_budget=4, stream=True))
    assert chunks


def test_same_seed_same_output(rand, agree):
    for m in (rand, agree):
        for seed in (1, 2, 3):
            kw = dict(max_tokens=24, temperature=0.9, top_k=20, seed=seed)
            a = m.generate(PROMPT, draft=2, **kw)
            b = m.generate(PROMPT, draft=2, **kw)
            c = m.generate(PROMPT, draft=0, **kw)
            assert a.tokens == b.tokens
            # one draw per emitted token, as without drafting
            assert a.tokens == c.tokens


def _chi2_sf(x: float, k: int) -> float:
    """P(chi-square with k degrees of freedom >= x) (regularized upper incomplete gamma)."""
    a, z = k / 2.0, x / 2.0
    if z <= 0:
        return 1.0
    if z < a + 1:  # series for the lower part
        term = total = 1.0 / a
        n = a
        while term > total * 1e-15:
            n += 1
            term *= z / n
            total += term
        return max(0.0, 1.0 - total * math.exp(-z + a * math.log(z) - math.lgamma(a)))
    # continued fraction for the upper part (Lentz)
    b, c, d = z + 1 - a, 1e300, 1.0 / (z + 1 - a)
    h = d
    for i in range(1, 10000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = 1e-300 if abs(d) < 1e-300 else d
        c = b + an / c
        c = 1e-300 if abs(c) < 1e-300 else c
        d = 1.0 / d
        h *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return math.exp(-z + a * math.log(z) - math.lgamma(a)) * h


def test_chi2_sf_known_values():
    assert _chi2_sf(3.841458820694124, 1) == pytest.approx(0.05, rel=1e-6)
    assert _chi2_sf(11.070497693516351, 5) == pytest.approx(0.05, rel=1e-6)
    assert _chi2_sf(2.0, 4) == pytest.approx(math.exp(-1) * 2, rel=1e-9)


def test_sampled_output_follows_the_model(model_cache):
    """At temperature 1, the first three tokens of MTP generation (the second checked against a
    draft, the third the bonus row of an accepted draft or drawn on its own) are distributed as the
    model says: a chi-square goodness-of-fit test over 2000 seeds."""
    # a flat token map: the mapped token is likeliest but far from certain, so drafts are
    # accepted about half of the time and the other outcomes are sampled too
    spec = dataclasses.replace(_f32("tiny-mtp"), name="tiny-mtp-flat", map_logit=6.0)
    with step35.Model(testing.model_path(spec), mtp=True) as m:
        ids = m.tokenize(PROMPT)
        top_k = 4
        kw = dict(temperature=1.0, top_k=top_k, top_p=1.0, min_p=0.0)

        def probs(token: int) -> dict[int, float]:
            # the trunk's next-token distribution depends only on the current token
            row = m.logits([token])[-1].astype(float)
            top = sorted(range(len(row)), key=lambda j: -row[j])[:top_k]
            z = [math.exp(row[j] - row[top[0]]) for j in top]
            return {j: v / sum(z) for j, v in zip(top, z)}

        n = 2000
        pairs: Counter[tuple[int, ...]] = Counter()
        drafted = accepted = 0
        for seed in range(n):
            out = m.generate(ids, max_tokens=3, seed=seed, draft=1, **kw)
            pairs[tuple(out.tokens)] += 1
            drafted += out.stats.draft.drafted
            accepted += out.stats.draft.accepted
        cache: dict[int, dict[int, float]] = {}

        def p(token: int) -> dict[int, float]:
            if token not in cache:
                cache[token] = probs(token)
            return cache[token]

        expected = {(a, b, c): n * pa * pb * pc for a, pa in p(ids[-1]).items() for b, pb in p(a).items()
                    for c, pc in p(b).items()}
        assert set(pairs) <= set(expected)
        # pool the cells expected below 5
        big = [c for c, e in expected.items() if e >= 5]
        obs = [pairs[c] for c in big] + [n - sum(pairs[c] for c in big)]
        exp = [expected[c] for c in big] + [n - sum(expected[c] for c in big)]
        if exp[-1] < 1e-9:
            obs, exp = obs[:-1], exp[:-1]
        stat = sum((o - e) ** 2 / e for o, e in zip(obs, exp))
        p_value = _chi2_sf(stat, len(obs) - 1)
        print(f"chi2={stat:.2f} df={len(obs) - 1} p={p_value:.3f} acceptance={accepted}/{drafted}")
        assert 0.2 < accepted / drafted < 0.95  # both branches of verification ran
        assert p_value > 0.001


def test_sidecar(model_cache, agree):
    trunk, sidecar = testing.mtp_sidecar_paths(_f32("tiny-mtp"))
    assert sidecar.name.startswith("mtp-")
    with step35.Model(trunk, mtp=sidecar) as m:
        assert m.mtp_heads == 3 and m.mtp_path == sidecar
        base = m.generate(PROMPT, max_tokens=20, temperature=0, draft=0)
        out = m.generate(PROMPT, max_tokens=20, temperature=0, draft=3)
        assert out.tokens == base.tokens
        assert out.tokens == agree.generate(PROMPT, max_tokens=20, temperature=0, draft=0).tokens
        assert out.stats.draft.acceptance == 1.0
    # found beside the trunk by its name
    with step35.Model(trunk, mtp=True) as m:
        assert m.mtp_path == sidecar and m.mtp_heads == 3
    # the sidecar alone is not a model
    with pytest.raises(InvalidModelError, match="only MTP heads"):
        step35.Model(sidecar)


def test_errors(tmp_path, model_cache, agree, random_path):
    plain = testing.model_path("tiny")
    with pytest.raises(InvalidModelError, match="no MTP heads"):
        step35.Model(plain, mtp=True)
    with step35.Model(plain, mtp="auto") as m:  # auto: none, fine
        assert m.mtp_heads == 0
        with pytest.raises(ValueError, match="needs MTP heads"):
            m.generate(PROMPT, max_tokens=2, draft=1)
    for bad in (4, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="draft must be"):
            agree.generate(PROMPT, max_tokens=2, draft=bad)
    with pytest.raises(ValueError, match="draft must be"):
        agree.chat([{"role": "user", "content": "x"}], max_tokens=2, draft=4)
    # a sidecar of another model: other width
    other = testing.with_mtp(testing.SIZES["small"], "random", name="small-mtp-random")
    _, other_sidecar = testing.mtp_sidecar_paths(other)
    with pytest.raises(InvalidModelError, match="embedding_length.*another model"):
        step35.Model(testing.mtp_sidecar_paths(_f32("tiny-mtp"))[0], mtp=other_sidecar)
    # same width, other experts
    fewer = testing.with_mtp(dataclasses.replace(_f32("tiny"), n_expert=4), "random", name="tiny-4x-mtp")
    _, fewer_sidecar = testing.mtp_sidecar_paths(fewer)
    with pytest.raises(InvalidModelError, match="expert_count is 4 but .* has 8"):
        step35.Model(testing.mtp_sidecar_paths(_f32("tiny-mtp"))[0], mtp=fewer_sidecar)
    # two heads for a file that says it has three
    two = testing.with_mtp(_f32("tiny"), "agree", n_nextn=2, name="tiny-mtp2")
    _, two_sidecar = testing.mtp_sidecar_paths(two)
    with pytest.raises(InvalidModelError, match="block_count is 7 but .* has 8"):
        step35.Model(agree.path, mtp=two_sidecar)
    # a whole model is not a sidecar
    with pytest.raises(InvalidModelError, match="not only MTP heads"):
        step35.Model(plain, mtp=random_path)
    with pytest.raises(FileNotFoundError):
        step35.Model(plain, mtp=tmp_path / "mtp-missing.gguf")
    with pytest.raises(ValueError, match="mtp must be"):
        step35.Model(plain, mtp=3)
    # an engine drafts only with heads, one token per head at most
    with step35.Model(plain) as m, pytest.raises(ValueError, match="needs MTP heads"):
        step35.Engine(m, slots=2, draft=1)
    with pytest.raises(ValueError, match="draft must be"):
        step35.Engine(agree, slots=2, draft=4)


def test_context_reuse_and_other_calls(agree):
    """Drafting follows the context across calls: prefix reuse, a non-drafting call in between,
    and logits evaluation on the same context."""
    ctx = agree.new_context(n_ctx=512)
    a = agree.generate(PROMPT, max_tokens=10, temperature=0, draft=2, context=ctx)
    b = agree.generate(PROMPT + " again", max_tokens=10, temperature=0, draft=0, context=ctx)
    c = agree.generate(PROMPT + " again", max_tokens=10, temperature=0, draft=3, context=ctx)
    assert b.tokens == c.tokens
    assert c.stats.draft.acceptance == 1.0
    d = agree.generate(PROMPT, max_tokens=10, temperature=0, draft=2, context=ctx)
    assert d.tokens == a.tokens
    ctx.close()
    # a context of several sequences does not draft
    multi = agree.new_context(n_seq_max=2)
    with pytest.raises(ValueError, match="cannot draft"):
        agree.generate(PROMPT, max_tokens=2, draft=1, context=multi)
    assert agree.generate(PROMPT, max_tokens=2, context=multi).stats.draft is None
    multi.close()


def test_context_full(agree):
    ctx = agree.new_context(n_ctx=32)
    ids = agree.tokenize(PROMPT)
    base = agree.generate(ids, max_tokens=None, temperature=0, draft=0, context=ctx)
    out = agree.generate(ids, max_tokens=None, temperature=0, draft=3, context=ctx)
    assert out.tokens == base.tokens and out.finish_reason == base.finish_reason == "length"
    ctx.close()


def test_fit_plan_counts_the_draft_context(agree_path):
    from step35.tools import fit

    without = fit.plan(agree_path, n_ctx=1024)
    with_mtp = fit.plan(agree_path, n_ctx=1024, mtp=True)
    assert without.mtp == 0 and with_mtp.mtp > 0
    assert with_mtp.total == without.total + with_mtp.mtp
    assert "MTP" in str(with_mtp)
    trunk, sidecar = testing.mtp_sidecar_paths(_f32("tiny-mtp"))
    side = fit.plan(trunk, n_ctx=1024, mtp=sidecar)
    assert side.mtp > with_mtp.mtp  # the sidecar's weights come on top of its draft context


def test_cli(agree_path, capsys):
    from step35.cli import main

    assert main(["run", "-m", str(agree_path), "--raw", "-p", PROMPT, "-n", "12", "--temp", "0", "--draft", "2"]) == 0
    err = capsys.readouterr().err
    assert "draft 2:" in err and "accepted (1.00" in err
    assert main(["bench", "-m", str(agree_path), "--mtp", "-npp", "8", "-ntg", "16", "--draft", "0,3",
                 "--output-format", "jsonl"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["draft"] for r in rows] == [0, 3]
    assert rows[1]["acceptance"] == 1.0 and rows[1]["drafted"] > 0 and rows[0]["drafted"] == 0
    assert main(["fit", "-m", str(agree_path), "-c", "1024", "--mtp"]) == 0
    assert "MTP" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["run", "-m", str(agree_path), "-p", "x", "--draft", "x"])
    assert main(["info", "-m", str(agree_path)]) == 0
    assert "MTP heads: 3 in the file" in capsys.readouterr().out
    trunk, sidecar = testing.mtp_sidecar_paths(_f32("tiny-mtp"))
    assert main(["info", "-m", str(trunk)]) == 0
    assert f"sidecar {sidecar.name} beside it" in capsys.readouterr().out


# --------------------------------------------------------------------------- the engine drafts per slot

PROMPTS = [PROMPT, "Once upon a time", "1, 2, 3, 4,", "The capital of France is"]


def _ctx(m: step35.Model, n_ctx: int) -> step35.ContextParams:
    """An engine context of ``n_ctx`` tokens per slot with the model's own settings (EXACT for the random one)."""
    return m._context_params.replace(n_ctx=n_ctx)


@pytest.mark.parametrize("kind", ["agree", "random"])
@pytest.mark.parametrize("draft", [1, 2, 3])
def test_engine_greedy_identical(kind, draft, agree, rand):
    """Four slots drafting at once (their drafts verified in one batch) give each prompt's own greedy
    output, the same as a slot that does not draft."""
    m = agree if kind == "agree" else rand
    want = [m.generate(p, max_tokens=40, temperature=0, draft=0) for p in PROMPTS]
    with step35.Engine(m, slots=4, draft=draft, context=_ctx(m, 256)) as engine:
        assert engine.draft == draft
        outs = engine.generate_many(PROMPTS, max_tokens=40, temperature=0)
        metrics = engine.metrics()
    for p, w, o in zip(PROMPTS, want, outs):
        assert (o.tokens, o.text, o.finish_reason) == (w.tokens, w.text, w.finish_reason), p
        d = o.stats.draft
        assert d is not None and d.draft_max == draft and d.drafted > 0
        assert d.drafted == sum(d.proposed_by_position) and d.accepted == sum(d.accepted_by_position)
        if kind == "agree":
            assert d.acceptance == 1.0
            assert d.steps <= math.ceil(40 / (draft + 1)) + 1
    drafted = sum(o.stats.draft.drafted for o in outs)
    accepted = sum(o.stats.draft.accepted for o in outs)
    assert (metrics["draft_tokens"], metrics["draft_accepted"]) == (drafted, accepted)
    if kind == "random":
        assert accepted < drafted / 2  # random heads: the rollback path ran in every slot


@pytest.mark.parametrize("kind", ["agree", "random"])
def test_engine_streams_stops_and_limits(kind, agree, rand):
    """Requests with their own max_tokens and stop strings, streamed side by side while drafting."""
    m = agree if kind == "agree" else rand
    full = m.generate(PROMPT, max_tokens=30, temperature=0, draft=0)
    stop = full.text[len(full.text) // 2:len(full.text) // 2 + 3]
    cases = [dict(max_tokens=n) for n in (0, 1, 2, 5, 11)] + [dict(max_tokens=30, stop=stop)]
    want = [m.generate(PROMPT, temperature=0, draft=0, **kw) for kw in cases]
    with step35.Engine(m, slots=len(cases), draft=3, context=_ctx(m, 256)) as engine:
        streams = [engine.generate(PROMPT, temperature=0, stream=True, **kw) for kw in cases]
        texts = ["".join(s) for s in streams]
    for kw, w, text, s in zip(cases, want, texts, streams):
        assert (text, s.finish_reason) == (w.text, w.finish_reason), kw


def test_engine_context_full_and_seeded_samples(agree, rand):
    ids = agree.tokenize(PROMPT)
    outs = []
    for draft in (0, 3):  # a slot of 32 tokens filled to the end, with and without drafts
        with step35.Engine(agree, slots=1, draft=draft, context=_ctx(agree, 32)) as engine:
            outs.append(engine.generate(ids, max_tokens=None, temperature=0))
    base, out = outs
    assert out.tokens == base.tokens and out.finish_reason == base.finish_reason == "length"
    assert 32 - 2 <= len(ids) + len(out.tokens) <= 32
    # a seeded sample is the same sample: one draw per emitted token, as without drafting
    kw = dict(max_tokens=24, temperature=0.9, top_k=20)
    for m in (rand, agree):
        want = [m.generate(PROMPT, draft=0, seed=seed, **kw).tokens for seed in (1, 2, 3)]
        with step35.Engine(m, slots=3, draft=2, context=_ctx(m, 256)) as engine:
            got = [engine.generate(PROMPT, seed=seed, stream=True, **kw) for seed in (1, 2, 3)]
            for g in got:
                "".join(g)
        assert [g.tokens for g in got] == want


def test_engine_turns_reuse_the_slot(agree):
    """A chat's next turn reuses the slot's cache (prefix kept in both caches) and still drafts."""
    msgs = [{"role": "user", "content": "hi"}]
    with step35.Engine(agree, slots=2, draft=2, context=_ctx(agree, 512)) as engine:
        first = engine.chat(msgs, max_tokens=16, temperature=0, reasoning_budget=4)
        msgs = msgs + [first["choices"][0]["message"], {"role": "user", "content": "more"}]
        second = engine.chat(msgs, max_tokens=16, temperature=0, reasoning_budget=4)
        cached = engine.metrics()["prompt_tokens_cached"]
    assert cached > 0
    want = agree.chat(msgs, max_tokens=16, temperature=0, reasoning_budget=4, draft=0)
    assert second["choices"][0]["message"] == want["choices"][0]["message"]


def test_prompt_lists_draft(agree):
    """A list of prompts runs on an engine that drafts as a single prompt would."""
    outs = agree.generate(PROMPTS, max_tokens=20, temperature=0, draft=2)
    for p, o in zip(PROMPTS, outs):
        assert o.tokens == agree.generate(p, max_tokens=20, temperature=0, draft=0).tokens
        assert o.stats.draft is not None and o.stats.draft.acceptance == 1.0
    plain = agree.generate(PROMPTS, max_tokens=4, temperature=0, draft=0)
    assert all(o.stats.draft is None for o in plain)


def test_engine_fit_counts_the_draft_context(agree):
    from step35.tools import fit

    params = step35.engine.engine_context(step35.ContextParams(n_ctx=256), 4, 256)
    with_drafts = fit.check_engine(agree, params, drafts=True)
    without = fit.check_engine(agree, params)
    assert with_drafts is not None and without is not None
    assert without.mtp == 0 and with_drafts.mtp > 0
