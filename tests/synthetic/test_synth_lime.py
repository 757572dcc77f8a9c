"""LIME (spec §1.3): layout, alphabet, lengths counted the authors' way, rule/case/result."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import synth_helpers  # noqa: F401
from synthpre_jax.synthetic.base import generate_range
from synthpre_jax.synthetic.lime import LIME_MODES, LimeTask

COLON, SEP, UPPER, LB, LOWER, MATH, RB = range(32000, 32007)


def parse_header(inp: list[int]):
    assert inp[0] == UPPER
    lo = inp.index(LOWER)
    variables = inp[1:lo]
    lower = inp[lo + 1:lo + 25]
    assert inp[lo + 25] == MATH
    math = inp[lo + 26:lo + 46]
    assert inp[lo + 46] == SEP
    return variables, lower, math, inp[lo + 47:]


def parse_case(case: list[int]) -> dict[int, list[int]]:
    out, i = {}, 0
    while i < len(case):
        u = case[i]
        assert case[i + 1] == COLON and case[i + 2] == LB
        j = case.index(RB, i + 3)
        out[u] = case[i + 3:j]
        i = j + 1
    return out


def substitute(rule: list[int], case: dict[int, list[int]]) -> list[int]:
    out = []
    for t in rule:
        out += case.get(t, [t])
    return out


def check(mode: str, inp: list[int], tgt: list[int]) -> None:
    variables, lower, math, body = parse_header(inp)
    assert 1 <= len(set(variables)) == len(variables) <= 5
    alphabet = variables + lower + math
    assert len(set(alphabet)) == len(alphabet) and all(2 <= t <= 31999 for t in alphabet)
    left, right = body[:body.index(SEP)], body[body.index(SEP) + 1:]
    if mode == "deduct":
        rule, case, result = left, parse_case(right), tgt
    elif mode == "induct":
        result, case, rule = left, parse_case(right), tgt
    else:
        rule, result, case = left, right, parse_case(tgt)
    assert list(case) == variables                      # case in U order
    assert substitute(rule, case) == result             # result = rule with the case substituted
    assert set(rule) <= set(variables) | set(math) and set(variables) <= set(rule)
    assert 11 <= len(rule) <= 29
    for u, s in case.items():
        assert 2 <= len(s) <= 8 and set(s) <= set(lower) | set(math)
    # Both sides <= 220 counted the authors' way: the case had |U|-1 commas.
    commas = len(variables) - 1
    n_in = len(inp) + (commas if mode in ("induct", "deduct") else 0)
    n_out = len(tgt) + (commas if mode == "abduct" else 0)
    assert n_in <= 220 and n_out <= 220
    specials = [t for t in inp + tgt if t >= 32000]
    assert set(specials) <= set(range(32000, 32007))


@pytest.mark.parametrize("mode", LIME_MODES)
@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**40))
def test_lime_examples(mode, seed):
    block = generate_range(LimeTask(mode), seed, "train", 0, 64)
    for inp, tgt in zip(block["inputs"].tolists(), block["targets"].tolists()):
        check(mode, inp, tgt)


def test_no_prefix_and_small_pool_variant():
    t = LimeTask("abduct", num_tokens=100)
    block = generate_range(t, 0, "validation", 0, 64)
    pool = set(t.pool.as_list())
    for inp, tgt in zip(block["inputs"].tolists(), block["targets"].tolists()):
        assert inp[0] == UPPER                               # no task prefix, no 32099
        assert {x for x in inp + tgt if x < 32000} <= pool
        check("abduct", inp, tgt)


def test_max_length_rejection_is_applied():
    t = LimeTask("induct", max_length=150)
    lens = generate_range(t, 0, "train", 0, 256)["inputs"].lengths
    assert lens.max() <= 150


def test_pool_too_small_rejected():
    with pytest.raises(ValueError):
        LimeTask("induct", num_tokens=50)


def test_variable_order_is_cpython_set_order():
    """U = list(set(pattern_chars)): with no hash collisions the order is by id mod the
    table size (8 slots for <= 4 distinct ids; 32 after the resize at the 5th)."""
    block = generate_range(LimeTask("deduct"), 0, "train", 0, 512)
    checked = 0
    for inp in block["inputs"].tolists():
        variables = parse_header(inp)[0]
        size = 8 if len(variables) <= 4 else 32
        residues = [v % size for v in variables]
        if len(set(residues)) == len(residues):
            assert residues == sorted(residues)
            checked += 1
    assert checked > 100


def test_first_occurrence_order_option():
    block = generate_range(LimeTask("deduct", order="first_occurrence"), 0, "train", 0, 256)
    unsorted = 0
    for inp in block["inputs"].tolists():
        variables = parse_header(inp)[0]
        unsorted += [v % 8 for v in variables] != sorted(v % 8 for v in variables)
    assert unsorted > 20   # not hash order


@pytest.mark.parametrize("mode", ["induct", "deduct", "abduct"])
def test_a_max_length_nothing_fits_is_rejected_not_looped_on(mode):
    """The header alone is 4 + |vars| + 24 + 20 ids: with max_length 60 nearly no draw fits
    and sampling would loop forever; the task refuses it when built."""
    with pytest.raises(ValueError, match="draws fit max_length=60"):
        LimeTask(mode, max_length=60)
    t = LimeTask(mode, max_length=110)  # tight but feasible
    assert generate_range(t, 0, "train", 0, 32)["inputs"].lengths.max() <= 110


CONFIGS = [dict(mode="induct"), dict(mode="deduct"), dict(mode="abduct"),
           dict(mode="abduct", num_tokens=100), dict(mode="induct", max_length=110),
           dict(mode="deduct", order="first_occurrence"),
           dict(mode="deduct", num_chars_range=(1, 3), pattern_length_range=(0, 4),
                subst_length_range=(0, 3)),
           dict(mode="abduct", num_upper=6, num_lower=3, num_math=2, num_chars_range=(2, 6),
                max_length=90)]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_block_sampler_equals_the_per_example_loop(cfg, monkeypatch):
    """The vectorised block sampler takes each row's numbers at the positions the per-example
    loop on Python lists takes them (rejection rounds, shuffle, substitutions): same examples,
    with the C set kernels and without them."""
    from synthpre_jax.synthetic import native
    from synthpre_jax.synthetic.rng import Draws

    t = LimeTask(**cfg)
    d = Draws.for_examples(11, "validation", t.key, range(5, 605))
    want = t.sample_rows_per_example(d)
    for kernels in (native.kernels, lambda: None):
        monkeypatch.setattr(native, "kernels", kernels)
        got = t.sample_rows(Draws.for_examples(11, "validation", t.key, range(5, 605)))
        for f in ("inputs", "targets"):
            assert got[f].tolists() == want[f].tolists(), f
