"""Decoding on toy `tokens_to_logits` functions whose answers can be worked out independently.

The toy model is a second-order Markov chain: the next-token logits are `table[prev, cur]`.
`cur` is the fed token; `prev` is read back from a cache leaf `history` [batch, length] written
with `dynamic_update_slice` at a scalar `cache_index`, exactly like a key/value cache. So
beam search only matches the references if the cache is expanded over beams and gathered on
every beam reordering, and if the scalar index is left alone.

References: exhaustive enumeration of all sequences (vocab 5, length <= 4) and a plain-Python
beam search written from the algorithm's definition.
"""
from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synthpre_jax.models import decoding

EOS = 1


def toy_cache(batch: int, length: int) -> dict:
    return {"cache_index": jnp.zeros((), jnp.int32), "history": jnp.zeros((batch, length), jnp.int32)}


def toy_tokens_to_logits(table: jnp.ndarray, counter=None):
    """Second-order Markov logits through a KV-style cache; optional host call counter."""

    def fn(state: decoding.DecodingState):
        cache = state.cache
        idx = cache["cache_index"]
        cur = state.cur_token[:, 0]
        hist = cache["history"]
        prev = jnp.where(idx > 0, jax.lax.dynamic_index_in_dim(hist, jnp.maximum(idx - 1, 0), 1, False), 0)
        hist = jax.lax.dynamic_update_slice(hist, cur[:, None], (0, idx))
        if counter is not None:
            jax.debug.callback(lambda: counter.append(1))
        return table[prev, cur], {"cache_index": idx + 1, "history": hist}

    return fn


def random_tables(rng: np.random.Generator, batch: int, vocab: int, scale: float = 2.0) -> np.ndarray:
    return (rng.standard_normal((vocab, vocab, vocab)) * scale).astype(np.float32)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def seq_logprob(table: np.ndarray, seq) -> float:
    """log p(seq) under the second-order chain, BOS = 0 fed first, prev of BOS = 0."""
    lp, prev, cur = 0.0, 0, 0
    for t in seq:
        lp += log_softmax(table[prev, cur])[t]
        prev, cur = cur, t
    return lp


def penalty(alpha: float, n: int) -> float:
    return ((5.0 + n) / 6.0) ** alpha


def enumerate_complete(vocab: int, length: int):
    """All complete hypotheses: EOS at position n <= length (no earlier EOS) or length tokens."""
    non_eos = [t for t in range(vocab) if t != EOS]
    for n in range(1, length + 1):
        for prefix in itertools.product(non_eos, repeat=n - 1):
            yield prefix + (EOS,)
    yield from itertools.product(non_eos, repeat=length)


def reference_beam(table: np.ndarray, k: int, alpha: float, length: int):
    """Plain-Python beam search: 2k candidates, k best non-EOS stay live, EOS finalised only
    within the k best candidates, every hypothesis finished at `length`; no early stopping."""
    vocab = table.shape[0]
    live = [((), 0.0)]
    finished = []
    for i in range(length):
        cands = []
        for seq, lp in live:
            prev, cur = (seq[-2] if len(seq) >= 2 else 0), (seq[-1] if seq else 0)
            lps = log_softmax(table[prev, cur])
            cands += [(seq + (t,), lp + lps[t]) for t in range(vocab)]
        cands.sort(key=lambda c: -c[1])
        cands = cands[:2 * k]
        last = i + 1 == length
        for r, (seq, lp) in enumerate(cands):
            if (seq[-1] == EOS or last) and r < k:
                finished.append((seq, lp / penalty(alpha, i + 1)))
        live = [c for c in cands if not (c[0][-1] == EOS or last)][:k]
    finished.sort(key=lambda c: -c[1])
    return finished[:k]


def strip(seq):
    """A padded output row back to its hypothesis: up to EOS, or all positions if no EOS."""
    seq = [int(t) for t in seq]
    return seq[:seq.index(EOS) + 1] if EOS in seq else seq


def pad(seq, length):
    return list(seq) + [0] * (length - len(seq))


def run_beam(table, batch, length, k, alpha, counter=None):
    fn = toy_tokens_to_logits(jnp.asarray(table), counter)
    inputs = jnp.zeros((batch, length), jnp.int32)
    f = jax.jit(functools.partial(decoding.beam_search, tokens_to_logits=fn, eos_id=EOS,
                                  num_decodes=k, alpha=alpha))
    seqs, scores = f(inputs, toy_cache(batch, length))
    return np.asarray(seqs), np.asarray(scores)


def run_sample(table, batch, length, counter=None, **kw):
    fn = toy_tokens_to_logits(jnp.asarray(table), counter)
    inputs = kw.pop("inputs", jnp.zeros((batch, length), jnp.int32))
    f = jax.jit(functools.partial(decoding.temperature_sample, tokens_to_logits=fn, eos_id=EOS, **kw))
    seqs, lps = f(inputs, toy_cache(batch, length))
    return np.asarray(seqs), np.asarray(lps)


# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_beam_search_returns_exact_top_sequences(alpha):
    """vocab 5, length 4: 341 complete hypotheses. With k = 80 >= the number of candidates at
    every non-final step nothing is pruned early, so the k returned must be the exact top k."""
    vocab, length, k = 5, 4, 80
    table = random_tables(np.random.default_rng(0), 1, vocab)
    hyps = [(h, seq_logprob(table, h) / penalty(alpha, len(h))) for h in enumerate_complete(vocab, length)]
    assert len(hyps) == 1 + 4 + 16 + 64 + 256
    hyps.sort(key=lambda c: -c[1])
    seqs, scores = run_beam(table, 1, length, k, alpha)
    # Token 0 doubles as BOS, so some hypotheses tie exactly; compare tie-robustly: the score
    # list is the true top-k, and each returned sequence is distinct and has the score claimed.
    np.testing.assert_allclose(scores[0][::-1], [s for _, s in hyps[:k]], rtol=1e-5, atol=1e-5)
    got = [tuple(strip(s)) for s in seqs[0]]
    assert len(set(got)) == k
    for h, sc in zip(got, scores[0]):
        assert seq_logprob(table, h) / penalty(alpha, len(h)) == pytest.approx(sc, rel=1e-5, abs=1e-5)
    assert tuple(strip(seqs[0][-1])) == hyps[0][0]
    assert np.all(np.diff(scores[0]) >= 0), "scores must be sorted best-last"


@pytest.mark.parametrize("seed,k,alpha", [(1, 3, 0.6), (2, 4, 0.6), (3, 2, 0.0), (4, 4, 1.5)])
def test_beam_search_matches_reference_beam(seed, k, alpha):
    """Small beams prune; compare with the plain-Python beam search, several examples per batch
    (each with its own table via a batched toy) and early stopping enabled in the JAX version."""
    vocab, length, batch = 6, 7, 3
    rng = np.random.default_rng(seed)
    tables = [random_tables(rng, 1, vocab) for _ in range(batch)]
    stacked = jnp.asarray(np.stack(tables))                     # [batch, V, V, V]

    def fn(state):
        idx = state.cache["cache_index"]
        cur = state.cur_token[:, 0]
        hist = state.cache["history"]
        prev = jnp.where(idx > 0, jax.lax.dynamic_index_in_dim(hist, jnp.maximum(idx - 1, 0), 1, False), 0)
        row_table = state.cache["table_id"]                      # [rows] which example's table
        hist = jax.lax.dynamic_update_slice(hist, cur[:, None], (0, idx))
        new = dict(state.cache, cache_index=idx + 1, history=hist)
        return stacked[row_table, prev, cur], new

    cache = dict(toy_cache(batch, length), table_id=jnp.arange(batch, dtype=jnp.int32))
    seqs, scores = jax.jit(functools.partial(decoding.beam_search, tokens_to_logits=fn, eos_id=EOS,
                                             num_decodes=k, alpha=alpha))(
        jnp.zeros((batch, length), jnp.int32), cache)
    for b in range(batch):
        want = reference_beam(tables[b], k, alpha, length)
        got = list(zip(np.asarray(seqs)[b][::-1], np.asarray(scores)[b][::-1]))
        for (ws, wsc), (gs, gsc) in zip(want, got):
            assert list(gs) == pad(ws, length)
            assert gsc == pytest.approx(wsc, rel=1e-5, abs=1e-5)


def greedy_reference(table: np.ndarray, length: int):
    seq, prev, cur, lp = [], 0, 0, 0.0
    for _ in range(length):
        lps = log_softmax(table[prev, cur])
        t = int(np.argmax(lps))
        seq.append(t)
        lp += lps[t]
        prev, cur = cur, t
        if t == EOS:
            break
    return seq, lp


@pytest.mark.parametrize("seed", range(6))
def test_greedy_matches_reference_and_beam1_alpha0(seed):
    vocab, length = 6, 8
    table = random_tables(np.random.default_rng(100 + seed), 1, vocab)
    want_seq, want_lp = greedy_reference(table, length)
    g_seqs, g_lp = run_sample(table, 1, length, topk=1)
    assert list(g_seqs[0, 0]) == pad(want_seq, length)
    assert g_lp[0, 0] == pytest.approx(want_lp, rel=1e-5, abs=1e-5)
    t0_seqs, _ = run_sample(table, 1, length, topk=0, temperature=0.0)
    np.testing.assert_array_equal(t0_seqs, g_seqs)
    b_seqs, b_scores = run_beam(table, 1, length, 1, 0.0)
    np.testing.assert_array_equal(b_seqs[:, -1], g_seqs[:, -1])
    assert b_scores[0, -1] == pytest.approx(want_lp, rel=1e-5, abs=1e-5)


def eos_after(n_steps: int, vocab: int = 5, length: int = 10) -> np.ndarray:
    """Chain that always emits token 2 but EOS with near certainty once token 2 was fed twice."""
    table = np.full((vocab, vocab, vocab), -30.0, np.float32)
    table[:, :, 2] = 0.0
    table[2, 2, :] = -30.0
    table[2, 2, EOS] = 0.0
    return table


def test_early_exit_stops_the_loop():
    """With EOS certain at step 3 of 10, greedy and beam 1 stop after 3 model calls: the
    live beam falls ~30 nats behind the finished one and the bound stops the loop."""
    table = eos_after(3)
    calls: list = []
    seqs, lp = run_sample(table, 2, 10, counter=calls, topk=1)
    jax.effects_barrier()
    assert seqs[0, 0].tolist() == [2, 2, EOS] + [0] * 7
    assert len(calls) == 3
    calls.clear()
    seqs, scores = run_beam(table, 2, 10, 1, 0.6, counter=calls)
    jax.effects_barrier()
    assert seqs[0, -1].tolist() == [2, 2, EOS] + [0] * 7
    assert len(calls) == 3
    # Beam 4 must first collect 4 finished hypotheses (the others are ~30 nats worse).
    calls.clear()
    seqs, scores = run_beam(table, 2, 10, 4, 0.6, counter=calls)
    jax.effects_barrier()
    assert seqs[0, -1].tolist() == [2, 2, EOS] + [0] * 7
    assert len(calls) < 10
    # Control: a chain that never emits EOS runs all 10 steps.
    calls.clear()
    never = np.zeros((5, 5, 5), np.float32)
    never[..., EOS] = -30.0
    run_sample(never, 2, 10, counter=calls, topk=1)
    jax.effects_barrier()
    assert len(calls) == 10


def test_expand_and_gather_cache_leave_scalars_alone():
    cache = {"cache_index": jnp.asarray(3, jnp.int32),
             "layer": {"k": jnp.arange(2 * 3).reshape(2, 3), "v": jnp.arange(2).astype(jnp.float32)}}
    ex = decoding.expand_cache(cache, 2)
    assert int(ex["cache_index"]) == 3
    np.testing.assert_array_equal(ex["layer"]["k"], [[0, 1, 2], [0, 1, 2], [3, 4, 5], [3, 4, 5]])
    g = decoding.gather_cache({"cache_index": ex["cache_index"], "x": jnp.arange(4) * 10},
                              jnp.asarray([[1, 1], [1, 0]]), batch_size=2, beam_size=2)
    assert int(g["cache_index"]) == 3
    np.testing.assert_array_equal(g["x"], [10, 10, 30, 20])


# ---- sampling --------------------------------------------------------------------------------
def test_topk_sampling_respects_support_and_frequencies():
    """A first-order chain with fixed logits: every sampled token is in the top-k of its step,
    and the first-token frequencies over 4000 draws match the renormalised top-k softmax."""
    vocab, length, k = 8, 3, 3
    rng = np.random.default_rng(7)
    logits = rng.standard_normal((vocab, vocab)).astype(np.float32)
    logits[:, EOS] = -5.0                       # keep EOS out of the top-3 so sequences run on
    table = np.broadcast_to(logits[None], (vocab, vocab, vocab)).copy()
    seqs, lps = run_sample(table, 4, length, topk=k, temperature=0.7, num_decodes=1000,
                           decode_rng=jax.random.PRNGKey(1))
    flat = seqs.reshape(-1, length)
    prev = np.zeros(len(flat), int)
    for t in range(length):
        top = np.argsort(-logits[prev], axis=1)[:, :k]
        assert np.all((top == flat[:, t:t + 1]).any(axis=1))
        prev = flat[:, t]
    top0 = np.argsort(-logits[0])[:k]
    p = np.exp(log_softmax(logits[0][top0] / 0.7))
    freq = np.array([(flat[:, 0] == t).mean() for t in top0])
    np.testing.assert_allclose(freq, p, atol=0.03)
    # Reported log-probs are the model's unscaled log-probabilities of the drawn tokens.
    for row in (0, 1, 2):
        want = sum(log_softmax(logits[a])[b] for a, b in zip([0] + list(flat[row][:-1]), flat[row]))
        assert lps.reshape(-1)[row] == pytest.approx(want, rel=1e-5)
    assert np.all(np.diff(lps, axis=1) >= 0), "samples sorted best-last"


def test_topp_sampling_respects_nucleus():
    vocab = 6
    probs = np.array([0.05, 0.0001, 0.45, 0.3, 0.15, 0.0499])
    logits = np.log(probs).astype(np.float32)
    table = np.broadcast_to(logits[None, None], (vocab, vocab, vocab)).copy()
    seqs, _ = run_sample(table, 2, 1, topk=0, topp=0.7, num_decodes=500, decode_rng=jax.random.PRNGKey(3))
    # mass before token 2: 0, before 3: 0.45 (< .7 kept), before 4: 0.75 (dropped)
    assert set(np.unique(seqs).tolist()) == {2, 3}


def test_sampling_is_deterministic_given_rng():
    table = random_tables(np.random.default_rng(11), 1, 7, scale=1.0)
    kw = dict(topk=0, temperature=1.0, num_decodes=8)
    a, la = run_sample(table, 3, 6, decode_rng=jax.random.PRNGKey(5), **kw)
    b, lb = run_sample(table, 3, 6, decode_rng=jax.random.PRNGKey(5), **kw)
    c, _ = run_sample(table, 3, 6, decode_rng=jax.random.PRNGKey(6), **kw)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert not np.array_equal(a, c)


# ---- prompts, initial index, step cap ---------------------------------------------------------
def first_order(table2: np.ndarray):
    """Logits depend on the fed token only; ignores the cache (scalar-only cache)."""
    def fn(state):
        return jnp.asarray(table2)[state.cur_token[:, 0]], state.cache
    return fn


def test_prompt_forcing_initial_index_and_step_cap():
    vocab, length = 6, 8
    table2 = np.random.default_rng(21).standard_normal((vocab, vocab)).astype(np.float32)
    table2[:, EOS] = -20.0
    fn = first_order(table2)
    prompt = jnp.asarray([[0, 3, 4, 0, 0, 0, 0, 0]], jnp.int32)
    cache = {"cache_index": jnp.zeros((), jnp.int32)}

    seqs, lp = decoding.temperature_sample(prompt, cache, fn, EOS, topk=1)
    want, cur, want_lp = [3, 4], 4, 0.0
    for _ in range(length - 2):
        lps = log_softmax(table2[cur])
        cur = int(np.argmax(lps))
        want.append(cur)
        want_lp += lps[cur]
    assert np.asarray(seqs)[0, 0].tolist() == want
    assert float(lp[0, 0]) == pytest.approx(want_lp, rel=1e-5)        # prompt not scored

    seqs2, lp2 = decoding.temperature_sample(prompt, cache, fn, EOS, topk=1,
                                             initial_index=jnp.asarray([2]))
    assert np.asarray(seqs2)[0, 0].tolist() == want
    assert float(lp2[0, 0]) == pytest.approx(want_lp, rel=1e-5)

    seqs3, _ = decoding.temperature_sample(prompt, cache, fn, EOS, topk=1, max_decode_steps=4)
    assert np.asarray(seqs3)[0, 0].tolist() == want[:4] + [0] * 4

    bseqs, _ = decoding.beam_search(prompt, cache, fn, EOS, num_decodes=1, alpha=0.0)
    assert np.asarray(bseqs)[0, -1].tolist() == want


def test_beam_search_max_decode_len_and_bad_args():
    table = random_tables(np.random.default_rng(5), 1, 5)
    fn = toy_tokens_to_logits(jnp.asarray(table))
    seqs, scores = decoding.beam_search(jnp.zeros((2, 6), jnp.int32), toy_cache(2, 6), fn, EOS,
                                        num_decodes=2, max_decode_len=3)
    assert seqs.shape == (2, 2, 3) and scores.shape == (2, 2)
    # top-k larger than the vocabulary is no filter at all
    s_big, _ = decoding.temperature_sample(jnp.zeros((2, 6), jnp.int32), toy_cache(2, 6), fn, EOS,
                                           topk=100, num_decodes=2)
    assert s_big.shape == (2, 2, 6)
    with pytest.raises(ValueError):
        decoding.beam_search(jnp.zeros((2, 6), jnp.int32), toy_cache(2, 6), fn, EOS, num_decodes=0)
    with pytest.raises(ValueError):
        decoding.temperature_sample(jnp.zeros((2, 6), jnp.int32), toy_cache(2, 6), fn, EOS, topp=1.0)


def test_brevity_penalty_is_t5x_formula():
    assert float(decoding.brevity_penalty(0.6, 7)) == pytest.approx(((5 + 7) / 6) ** 0.6)
    assert float(decoding.brevity_penalty(0.0, 100)) == 1.0
    assert math.isclose(float(decoding.brevity_penalty(1.0, 1)), 1.0)
