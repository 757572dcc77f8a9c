"""Property tests of the 18 simple tasks: layout, ranges, and targets vs a plain-Python reference."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from synth_helpers import ARG, EMPTY, SPEC_PREFIX, TASKDIV, WORD, reference_target

from synthpre_jax.synthetic.codec import FallbackCodec, strip_lone_space
from synthpre_jax.synthetic.simple import BINARY_TASKS, SIMPLE_TASK_IDS, SimpleTask

CODEC = FallbackCodec()
TASKS = {t: SimpleTask(t, codec=CODEC) for t in SIMPLE_TASK_IDS}
TINY = {t: SimpleTask(t, codec=CODEC, num_tokens=100, length_range=(10, 40)) for t in SIMPLE_TASK_IDS}


def number(n):
    return strip_lone_space(CODEC.encode(str(n)))


def yes_no(found):
    return CODEC.encode("yes" if found else "no")


def check_block(task: SimpleTask, block: dict, pool: set | None) -> None:
    prefix = SPEC_PREFIX[task.task_id] + [TASKDIV]
    for inp, tgt in zip(block["inputs"].tolists(), block["targets"].tolists()):
        assert inp[:len(prefix)] == prefix
        raw = inp[len(prefix):]
        assert task.lo <= len(raw) <= task.hi
        n_arg, n_word = raw.count(ARG), raw.count(WORD)
        assert n_arg == (1 if task.task_id in BINARY_TASKS else 0)
        if task.task_id == "longest_word":
            assert raw[0] != WORD and raw[-1] != WORD
            assert all(not (p == WORD and q == WORD) for p, q in zip(raw, raw[1:]))
        else:
            assert n_word == 0
        symbols = [t for t in raw if t not in (ARG, WORD)]
        assert all(2 <= t <= 31999 for t in symbols)
        if pool is not None:
            assert set(symbols) <= pool
        assert tgt == reference_target(task.task_id, raw, number, yes_no)
        assert tgt.count(EMPTY) == 0 or tgt == [EMPTY]
        if task.task_id == "replace":
            seq, kv = raw[:raw.index(ARG)], raw[raw.index(ARG) + 1:]
            assert len(kv) == 2 and kv[0] in seq
        if task.task_id == "sort":
            seq, order = raw[:raw.index(ARG)], raw[raw.index(ARG) + 1:]
            assert set(seq) <= set(order) and len(order) <= len(seq)
        if task.task_id == "count":
            assert len(raw[raw.index(ARG) + 1:]) == 1


@pytest.mark.parametrize("task_id", SIMPLE_TASK_IDS)
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_generated_examples(task_id, seed):
    task = TASKS[task_id]
    check_block(task, task.sample_block(np.random.default_rng(seed), 24), None)


@pytest.mark.parametrize("task_id", SIMPLE_TASK_IDS)
@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_tiny_variants(task_id, seed):
    task = TINY[task_id]
    pool = set(task.pool.as_list())
    assert len(pool) == 100
    check_block(task, task.sample_block(np.random.default_rng(seed), 24), pool)


# -- solve on arbitrary raw inputs (edge cases the samplers rarely produce) ----------
small = st.integers(2, 12)
seqs = st.lists(small, max_size=30)


@settings(max_examples=60, deadline=None)
@given(seqs)
def test_solve_unary_arbitrary(raw):
    for t in ("identity", "reverse", "duplicate", "first_token", "last_token", "length", "set",
              "deduplicate"):
        assert TASKS[t].solve(raw) == reference_target(t, raw, number, yes_no), t


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(small, st.just(WORD)), max_size=30))
def test_solve_longest_word_arbitrary(raw):
    """Empty words (leading, trailing, repeated separators) and ties."""
    assert TASKS["longest_word"].solve(raw) == reference_target("longest_word", raw, number, yes_no)


@settings(max_examples=80, deadline=None)
@given(seqs, st.lists(small, min_size=2, max_size=6))
def test_solve_binary_arbitrary(seq, arg):
    raw = seq + [ARG] + arg
    for t in ("count", "search", "delete", "replace", "union", "intersect", "set1_minus_set2",
              "set2_minus_set1"):
        assert TASKS[t].solve(raw) == reference_target(t, raw, number, yes_no), t
    order = list(dict.fromkeys(seq)) + arg   # every token of seq appears in order
    raw = seq + [ARG] + order
    assert TASKS["sort"].solve(raw) == reference_target("sort", raw, number, yes_no)


def test_solve_rejects_malformed_binary_input():
    with pytest.raises(ValueError):
        TASKS["count"].solve([5, 6, 7])
    with pytest.raises(ValueError):
        TASKS["sort"].solve([5, 6, ARG, 6])


def test_copy_ablation_variants():
    from synthpre_jax.synthetic.registry import make_task

    rng = np.random.default_rng(0)
    for v in (2, 10, 1000, 10000):
        t = make_task(f"identity_vocab{v}")
        b = t.sample_block(rng, 32)
        raw = b["inputs"].values.reshape(32, -1)[:, 2:]
        assert raw.shape[1] == 252
        assert len(np.unique(raw)) <= v
        assert set(np.unique(raw).tolist()) <= set(t.pool.as_list())
    for n in (28, 252, 1020):
        b = make_task(f"identity_len{n}").sample_block(rng, 8)
        assert (b["inputs"].lengths == n + 2).all() and (b["targets"].lengths == n).all()
    # the sub-vocabulary is a fixed constant of the variant
    assert make_task("identity_vocab10").pool.as_list() == make_task("identity_vocab10").pool.as_list()


def test_infeasible_configurations_are_rejected():
    with pytest.raises(ValueError):
        SimpleTask("union", num_tokens=10)          # needs >= 109 distinct symbols
    with pytest.raises(ValueError):
        SimpleTask("count", length_range=(2, 10))  # seq ⟂ q needs lo > 2


SMALL_RANGES = [(1, 1), (1, 2), (2, 3), (3, 4), (4, 4), (5, 6), (10, 11), (10, 12), (10, 20),
                (50, 50), (50, 52), (100, 101), (219, 220), (220, 220)]


@pytest.mark.parametrize("task_id", SIMPLE_TASK_IDS)
def test_every_length_range_is_rejected_or_generates_promptly(task_id):
    """A length range a task cannot meet is a ValueError at construction, never a sampler
    that loops forever (search/delete with balanced coins used to spin on (50, 50))."""
    import signal

    def timeout(*_):
        raise TimeoutError

    old = signal.signal(signal.SIGALRM, timeout)
    try:
        for lo, hi in SMALL_RANGES:
            try:
                task = SimpleTask(task_id, length_range=(lo, hi))
            except ValueError:
                continue
            signal.alarm(10)
            try:
                block = task.sample_block(np.random.default_rng(lo * 1000 + hi), 64)
            except TimeoutError:
                pytest.fail(f"{task_id} {(lo, hi)}: sampling 64 examples took over 10 s")
            finally:
                signal.alarm(0)
            raw_len = block["inputs"].lengths - len(task.prefix)
            assert ((raw_len >= lo) & (raw_len <= hi)).all(), \
                (task_id, lo, hi, raw_len.min(), raw_len.max())
    finally:
        signal.signal(signal.SIGALRM, old)


def test_absent_acceptance_matches_a_simulation():
    import random

    from synthpre_jax.synthetic.simple import absent_acceptance

    for lo, hi in ((10, 220), (10, 20), (5, 30), (1, 4)):
        rng, hits, n = random.Random(lo * 1000 + hi), 0, 100_000
        for _ in range(n):
            if rng.random() < 0.01:
                q = rng.randint(lo + 1, hi)
                s = rng.randint(0, q - 1)
            else:
                s = rng.randint(lo, hi)
                q = rng.randint(lo, s)
            hits += lo <= s + 1 + q <= hi
        p = absent_acceptance(lo, hi)
        assert abs(hits / n - p) < 4 * (p * (1 - p) / n) ** 0.5 + 1e-4, (lo, hi, hits / n, p)
    assert absent_acceptance(50, 52) < 1e-3 and absent_acceptance(10, 20) > 1e-3
