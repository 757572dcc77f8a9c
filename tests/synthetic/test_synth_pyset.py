"""The CPython set-order emulation against CPython itself (an independent reference)."""
from __future__ import annotations

import platform

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import synth_helpers  # noqa: F401  (sys.path)
from synthpre_jax.synthetic.pyset import (EmulatedSet, native_matches_emulation, set_list,
                                          set_operation)

CPYTHON = platform.python_implementation() == "CPython"
needs_cpython = pytest.mark.skipif(not CPYTHON, reason="the reference is CPython's own set")

# Small ranges force collisions and probing; wide ranges exercise perturbation.
ints = st.one_of(st.integers(0, 40), st.integers(2, 31999), st.integers(0, 2**62))
lists = st.lists(ints, max_size=260)


@needs_cpython
@settings(max_examples=300, deadline=None)
@given(lists)
def test_set_from_list_order(xs):
    assert EmulatedSet(xs).to_list() == list(set(xs))


@needs_cpython
@settings(max_examples=300, deadline=None)
@given(lists, lists)
def test_binary_operations_order(xs, ys):
    ex, ey = EmulatedSet(xs), EmulatedSet(ys)
    sx, sy = set(xs), set(ys)
    assert ex.union(ey).to_list() == list(sx.union(sy))
    assert ex.intersection(ey).to_list() == list(sx.intersection(sy))
    assert ex.difference(ey).to_list() == list(sx - sy)
    assert ey.difference(ex).to_list() == list(sy - sx)


@needs_cpython
@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 2**62), min_size=40, max_size=300),
       st.lists(st.integers(0, 2**62), max_size=8))
def test_copy_and_difference_path(xs, ys):
    """|left| > 4|right| takes CPython's copy-then-discard path (dummies, rebuilds)."""
    ys = ys + xs[:3]
    assert EmulatedSet(xs).difference(EmulatedSet(ys)).to_list() == list(set(xs) - set(ys))


@needs_cpython
def test_native_fast_path_is_enabled_on_cpython():
    assert native_matches_emulation()


@needs_cpython
@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(2, 31999), min_size=1, max_size=10))
def test_lime_variable_order(chars):
    """LIME's U = list(set(pattern_chars)) (<= 5 distinct, with repeats)."""
    assert set_list(chars) == list(set(chars))


def test_first_occurrence_order():
    assert set_list([5, 3, 5, 7, 3], order="first_occurrence") == [5, 3, 7]
    assert set_operation("union", [9, 4], [4, 1], "first_occurrence") == [9, 4, 1]
    assert set_operation("intersection", [9, 4, 1], [1, 9], "first_occurrence") == [9, 1]
    assert set_operation("difference", [9, 4, 1], [1], "first_occurrence") == [9, 4]


def test_hand_worked_collisions():
    # Table of 8: 11 -> slot 3. 3 also hashes to slot 3; linear probing needs 3+9 <= 7,
    # so it perturbs: perturb = 3 >> 5 = 0, i = (3*5 + 1 + 0) & 7 = 0 -> slot 0.
    s = EmulatedSet([11, 3])
    assert s.table[3] == 11 and s.table[0] == 3
    assert s.to_list() == [3, 11]
    # 40->0, 1->1, 33: slot 1 taken, no linear room (1+9 > 7), perturb 1 -> (5+1+1)&7 = 7;
    # 2->2; 7: slot 7 taken -> (35+1+0)&7 = 4. Fill 5: 25 >= 21, resize to 32 slots,
    # re-inserted in old slot order 40,1,2,7,33: 40->8, 1->1, 2->2, 7->7, 33->1 taken -> 3.
    assert EmulatedSet([40, 1, 33, 2, 7]).to_list() == [1, 2, 33, 7, 40]


def test_bad_order_is_a_user_error():
    from synthpre_jax.errors import UserError

    with pytest.raises(UserError):
        set_list([1], order="sorted")
