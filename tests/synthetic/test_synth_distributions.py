"""Distribution checks against the spec, on 10,000 examples each (fixed seeds).

Reference values are computed here from the spec's sampler definitions by exact
enumeration (fractions), independently of the generator code.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from scipy import stats
from synth_helpers import ARG, WORD, contains

from synthpre_jax.synthetic.base import generate_range
from synthpre_jax.synthetic.lime import LimeTask
from synthpre_jax.synthetic.nesting import NestingLanguageTask
from synthpre_jax.synthetic.rng import Draws
from synthpre_jax.synthetic.simple import SimpleTask

N = 10_000


def raws(task: SimpleTask, n: int = N, seed: int = 0) -> list[list[int]]:
    block = generate_range(task, seed, "train", 0, n)
    k = len(task.prefix)
    return [r[k:] for r in block["inputs"].tolists()]


def acceptance(lo: int = 10, hi: int = 220) -> tuple[Fraction, Fraction]:
    """P(length accepted) for the query-present and query-absent samplers (spec §1.1)."""
    max_total = hi - 1
    max_q = max_total // 3
    present = Fraction(0)
    for q in range(1, max_q + 1):
        lens = range(2 * q, max_total - q + 1)
        ok = sum(1 for s in lens if lo <= s + 1 + q <= hi)
        present += Fraction(ok, len(lens)) / max_q
    rare = Fraction(0)
    for ql in range(lo + 1, hi + 1):
        rare += Fraction(sum(1 for s in range(0, ql) if lo <= s + 1 + ql <= hi), ql) / (hi - lo)
    main = Fraction(0)
    for s in range(lo, hi + 1):
        main += Fraction(sum(1 for ql in range(lo, s + 1) if s + 1 + ql <= hi), s - lo + 1) / (hi - lo + 1)
    return present, Fraction(1, 100) * rare + Fraction(99, 100) * main


def present_rate(p_present: float) -> float:
    a_p, a_a = acceptance()
    return float(p_present * a_p / (p_present * a_p + (1 - p_present) * a_a))


def found_fraction(task: SimpleTask) -> float:
    hits = 0
    for raw in raws(task):
        i = raw.index(ARG)
        hits += contains(raw[:i], raw[i + 1:])
    return hits / N


def test_search_yes_rate_matches_the_release_sampler():
    """The coin is 50/50, but absent-query draws overflow 220 tokens more often and are re-drawn."""
    expected = present_rate(0.5)
    assert 0.59 < expected < 0.61
    got = found_fraction(SimpleTask("search", balanced=False))
    assert abs(got - expected) < 0.02


def test_search_balanced_rate():
    """The default: the specified 50% yes."""
    assert abs(found_fraction(SimpleTask("search")) - 0.5) < 0.02


def test_delete_present_rate():
    assert abs(found_fraction(SimpleTask("delete", balanced=False)) - present_rate(0.75)) < 0.02
    assert abs(found_fraction(SimpleTask("delete")) - 0.75) < 0.02


def test_search_targets_agree_with_presence():
    t = SimpleTask("search")
    block = generate_range(t, 1, "train", 0, 2000)
    for inp, tgt in zip(block["inputs"].tolists(), block["targets"].tolists()):
        raw = inp[2:]
        i = raw.index(ARG)
        assert tgt == ([4273] if contains(raw[:i], raw[i + 1:]) else [150])


def uniform_ok(values, lo: int, hi: int) -> bool:
    counts = np.bincount(np.asarray(values) - lo, minlength=hi - lo + 1)
    assert len(counts) == hi - lo + 1
    return stats.chisquare(counts).pvalue > 1e-4


@pytest.mark.parametrize("task_id", ["identity", "reverse", "length"])
def test_uniform_length_histogram(task_id):
    assert uniform_ok([len(r) for r in raws(SimpleTask(task_id))], 10, 220)


def test_set_op_total_length_uniform():
    # T ~ U{9..219} and |raw| = T + 1
    assert uniform_ok([len(r) for r in raws(SimpleTask("union"))], 10, 220)


def test_longest_word_count_uniform():
    assert uniform_ok([r.count(WORD) + 1 for r in raws(SimpleTask("longest_word"))], 1, 110)


def test_count_query_fraction():
    """c ~ U{0..n}: the query's share of seq is uniform on [0, 1] (mean 1/2)."""
    fr = []
    for raw in raws(SimpleTask("count")):
        seq = raw[:-2]
        fr.append(seq.count(raw[-1]) / len(seq))
    assert abs(np.mean(fr) - 0.5) < 0.01
    assert stats.kstest(fr, "uniform").statistic < 0.03


def test_run_count_uniform_for_deduplicate():
    """k ~ U{1..n} runs: the number of runs divided by n is ~uniform (mean ~ 1/2)."""
    ratios = []
    t = SimpleTask("deduplicate")
    for raw in raws(t, 4000):
        ratios.append(len(t.solve(raw)) / len(raw))
    # adjacent runs may share a symbol with probability 1/31998: negligible
    assert abs(np.mean(ratios) - 0.5) < 0.02


def test_lime_rule_length():
    """Rule = 2*num_chars (U{3..5}) + pattern_length (U{5..19}): mean 20, range 11..29."""
    block = generate_range(LimeTask("induct"), 0, "train", 0, 4000)
    lens = block["targets"].lengths
    assert lens.min() >= 11 and lens.max() <= 29
    assert abs(lens.mean() - 20) < 0.2


def test_nesting_zipf_heads():
    t = NestingLanguageTask()
    toks = t.sentences(Draws.for_examples(0, "train", "zipf-test", np.arange(2000)), 10).values
    heads = toks[(toks - 2) % 2 == 0]
    c = np.bincount((heads - 2) // 2, minlength=4)
    assert abs(c[0] / c[1] - 2.0) < 0.1   # P(r) ∝ 1/(r+1)
    assert abs(c[0] / c[3] - 4.0) < 0.3
