"""`set_rows`, the block-at-a-time set emulation in C, against the Python emulation and
against CPython's own sets (independent references), and its fallback without a compiler."""
from __future__ import annotations

import platform
import random

import numpy as np
import pytest

import synth_helpers  # noqa: F401  (sys.path)
from synthpre_jax.synthetic import native, pyset
from synthpre_jax.synthetic.pyset import EmulatedSet, set_rows
from synthpre_jax.synthetic.ragged import Ragged

needs_kernels = pytest.mark.skipif(native.kernels() is None, reason="no C compiler here")
OPS = ("union", "intersection", "difference")


def _blocks(seed: int, count: int, rows: int = 120):
    """Random row pairs: small and huge id ranges (collisions, perturbed probing), empty rows,
    rows that grow tables up to 4096 slots, and |a| > 4|b| (CPython's copy-then-discard
    difference, which leaves dummies and may rebuild the table)."""
    rng = random.Random(seed)
    for _ in range(count):
        a_rows, b_rows = [], []
        for r in range(rows):
            hi = rng.choice([12, 64, 700, 31999, 2**31 - 1])
            na = rng.choice([0, 1, 4, 5, rng.randint(0, 40), rng.randint(0, 260),
                             rng.randint(300, 1500) if r % 40 == 0 else 18])
            nb = rng.choice([0, 1, 5, rng.randint(0, 40), rng.randint(0, 260), na // 9,
                             9 * na + 1 if na < 100 else 3])
            pool = [rng.randint(0, hi) for _ in range(max(1, (na + nb) // rng.choice([1, 2, 4])))]
            a_rows.append([rng.choice(pool) for _ in range(na)])
            b_rows.append([rng.choice(pool) for _ in range(nb)])
        yield a_rows, b_rows


@needs_kernels
def test_rows_equal_the_python_emulation():
    for a_rows, b_rows in _blocks(seed=1, count=6):
        a, b = Ragged.from_rows(a_rows), Ragged.from_rows(b_rows)
        assert set_rows("set", a).tolists() == [EmulatedSet(x).to_list() for x in a_rows]
        for op in OPS:
            want = [getattr(EmulatedSet(x), op)(EmulatedSet(y)).to_list()
                    for x, y in zip(a_rows, b_rows)]
            assert set_rows(op, a, b).tolists() == want, op


@needs_kernels
@pytest.mark.skipif(platform.python_implementation() != "CPython", reason="CPython's sets")
def test_rows_equal_cpython_sets():
    for a_rows, b_rows in _blocks(seed=2, count=10):
        a, b = Ragged.from_rows(a_rows), Ragged.from_rows(b_rows)
        got = {op: set_rows(op, a, b).tolists() for op in OPS}
        assert set_rows("set", a).tolists() == [list(set(x)) for x in a_rows]
        for i, (x, y) in enumerate(zip(a_rows, b_rows)):
            assert got["union"][i] == list(set(x).union(set(y)))
            assert got["intersection"][i] == list(set(x).intersection(set(y)))
            assert got["difference"][i] == list(set(x) - set(y))


def test_without_the_kernels_rows_go_through_python(monkeypatch):
    a_rows, b_rows = next(_blocks(seed=3, count=1, rows=60))
    a, b = Ragged.from_rows(a_rows), Ragged.from_rows(b_rows)
    fast = {op: set_rows(op, a, b).tolists() for op in OPS}
    monkeypatch.setattr(native, "kernels", lambda: None)
    for op in OPS:
        assert set_rows(op, a, b).tolists() == fast[op]
        assert set_rows(op, a, b).tolists() == [pyset.set_operation(op, x, y)
                                                for x, y in zip(a_rows, b_rows)]


def test_first_occurrence_order_and_negative_keys():
    a = Ragged.from_rows([[5, 3, 5, 7], [-4, 9, -4]])
    b = Ragged.from_rows([[7, 1], [9]])
    assert set_rows("union", a, b, "first_occurrence").tolists() == [[5, 3, 7, 1], [-4, 9]]
    # Negative keys hash differently from their value: the Python path handles them.
    assert set_rows("set", a).tolists() == [list(set([5, 3, 5, 7])), list(set([-4, 9, -4]))]
    with pytest.raises(ValueError):
        set_rows("union", a)
    with pytest.raises(ValueError):
        set_rows("set", a, b)


def test_empty_block():
    empty = Ragged(np.zeros(0, np.int32), np.zeros(0, np.int64))
    assert len(set_rows("union", empty, empty)) == 0
    assert len(set_rows("set", empty)) == 0


@pytest.mark.parametrize("swap", [False, True])
def test_split_rows_equal_split_then_set_rows(swap, monkeypatch):
    from synthpre_jax.synthetic.pyset import set_rows_split
    from synthpre_jax.synthetic.ragged import split_at_first

    a_rows, b_rows = next(_blocks(seed=4, count=1, rows=80))
    raw = Ragged.from_rows([[5] + x + [99, 7] + y for x, y in zip(a_rows, b_rows)])  # 99: sep
    s1, s2 = split_at_first(raw, 99)
    for op in OPS:
        want = set_rows(op, *((s2, s1) if swap else (s1, s2)))
        assert set_rows_split(op, raw, 99, swap).tolists() == want.tolists()
    with pytest.raises(ValueError, match="separator 99"):
        set_rows_split("union", Ragged.from_rows([[1, 99, 2], [3]]), 99)
    monkeypatch.setattr(native, "kernels", lambda: None)
    assert set_rows_split("union", raw, 99, swap).tolists() == set_rows(
        "union", *((s2, s1) if swap else (s1, s2))).tolists()
    with pytest.raises(ValueError, match="separator 99"):
        set_rows_split("union", Ragged.from_rows([[1, 99, 2], [3]]), 99)
