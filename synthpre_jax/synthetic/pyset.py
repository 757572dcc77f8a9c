"""The iteration order of CPython `set`s of ints, for bit-compatible set-op targets.

The authors' targets for union/intersect/set1_minus_set2/set2_minus_set1 (and
the order of LIME's rule variables) are `list(<set expression>)`, so their token
order is CPython's hash-table layout. `EmulatedSet` re-implements the parts of
CPython 3.11's `Objects/setobject.c` that those expressions exercise: open
addressing with `LINEAR_PROBES = 9` linear probes, then perturbed probing
(`i = (i*5 + 1 + perturb) & mask`, `perturb >>= 5`); an initial table of 8;
growth to the smallest power of two > used*4 (used*2 above 50,000) once
fill*5 >= mask*3; `set_merge`'s up-front resize and table copy; and the
intersection/difference strategies (iterate the smaller set; copy-then-discard
when the left set is more than 4x larger, with dummy slots).

Why emulate when CPython is right here: the order must not change with the
interpreter (PyPy, or a future CPython that changes `setobject.c`). The
emulation is checked against the running interpreter on first use; when they
agree the interpreter's sets are used for single lists (~50x faster than the
emulation), otherwise the emulation.

Whole blocks of rows (`set_rows`, what the generators call) go through the
same emulation written in C (`native/synthetic_kernels.c`, built on first use):
~2-3 us per row of a set-operation task against ~20 us for Python lists and
sets per row. Without a C compiler, rows go one by one through the path above,
with the same results.

`order="first_occurrence"` is the documented canonical alternative: union is the
distinct tokens of s1 then s2 in first-occurrence order, the other operations
keep the first-occurrence order of their left operand.
"""
from __future__ import annotations

import functools
import platform
from typing import Iterable, Optional, Sequence

import numpy as np

from synthpre_jax.synthetic import native
from synthpre_jax.synthetic.ragged import Ragged, split_at_first, split_spans

LINEAR_PROBES = 9
PERTURB_SHIFT = 5
MINSIZE = 8
_MASK64 = (1 << 64) - 1
_MODULUS = (1 << 61) - 1  # sys.hash_info.modulus on 64-bit builds
ORDERS = ("cpython", "first_occurrence")


class _Dummy:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<dummy>"


DUMMY = _Dummy()


def int_hash(k: int) -> int:
    """Python's documented hash of an int (64-bit build)."""
    if k >= 0:
        return k % _MODULUS
    h = -((-k) % _MODULUS)
    return -2 if h == -1 else h


class EmulatedSet:
    """A set of ints laid out exactly as CPython 3.11 lays out a `set`."""

    __slots__ = ("table", "mask", "fill", "used", "pos")

    def __init__(self, items: Iterable[int] = ()):
        self.table: list = [None] * MINSIZE
        self.mask = MINSIZE - 1
        self.fill = 0
        self.used = 0
        self.pos: dict[int, int] = {}
        for k in items:  # set(list): set_add_key per element, in order
            self.add(k)

    # -- table primitives ------------------------------------------------
    def _insert_clean(self, key: int) -> None:
        """setobject.c `set_insert_clean`: the table has no dummies and no `key`."""
        table, mask = self.table, self.mask
        h = int_hash(key) & _MASK64
        perturb = h
        i = h & mask
        while True:
            if table[i] is None:
                table[i] = key
                self.pos[key] = i
                return
            if i + LINEAR_PROBES <= mask:
                for j in range(i + 1, i + LINEAR_PROBES + 1):
                    if table[j] is None:
                        table[j] = key
                        self.pos[key] = j
                        return
            perturb >>= PERTURB_SHIFT
            i = (i * 5 + 1 + perturb) & mask

    def _resize(self, minused: int) -> None:
        """setobject.c `set_table_resize`."""
        newsize = MINSIZE
        while newsize <= minused:
            newsize <<= 1
        if newsize == MINSIZE and self.mask == MINSIZE - 1 and self.fill == self.used:
            return  # small table, no dummies: nothing to do
        old = self.table
        self.table = [None] * newsize
        self.mask = newsize - 1
        self.fill = self.used
        self.pos = {}
        for key in old:
            if key is not None and key is not DUMMY:
                self._insert_clean(key)

    def add(self, key: int) -> None:
        """setobject.c `set_add_entry` for a key whose hash is its int hash."""
        key = int(key)
        if key in self.pos:
            return
        table, mask = self.table, self.mask
        h = int_hash(key) & _MASK64
        perturb = h
        i = h & mask
        freeslot = None
        while True:
            probes = LINEAR_PROBES if i + LINEAR_PROBES <= mask else 0
            for j in range(i, i + probes + 1):
                entry = table[j]
                if entry is None:
                    if freeslot is not None:  # reuse a dummy: fill unchanged
                        table[freeslot] = key
                        self.pos[key] = freeslot
                        self.used += 1
                        return
                    table[j] = key
                    self.pos[key] = j
                    self.fill += 1
                    self.used += 1
                    if self.fill * 5 >= mask * 3:
                        self._resize(self.used * 2 if self.used > 50000 else self.used * 4)
                    return
                if entry is DUMMY and freeslot is None:
                    freeslot = j
            perturb >>= PERTURB_SHIFT
            i = (i * 5 + 1 + perturb) & mask

    def discard(self, key: int) -> None:
        j = self.pos.pop(int(key), None)
        if j is not None:
            self.table[j] = DUMMY
            self.used -= 1

    def __contains__(self, key: int) -> bool:
        return int(key) in self.pos

    def __len__(self) -> int:
        return self.used

    def __iter__(self):
        return (k for k in self.table if k is not None and k is not DUMMY)

    def to_list(self) -> list[int]:
        return list(iter(self))

    # -- set algebra as setobject.c does it --------------------------------
    def _merge(self, other: "EmulatedSet") -> None:
        """setobject.c `set_merge` (update from another set)."""
        if other is self or other.used == 0:
            return
        if (self.fill + other.used) * 5 >= self.mask * 3:
            self._resize((self.used + other.used) * 2)
        if self.fill == 0 and self.mask == other.mask and other.fill == other.used:
            self.table = list(other.table)
            self.pos = dict(other.pos)
            self.fill, self.used = other.fill, other.used
            return
        if self.fill == 0:
            self.fill = self.used = other.used
            for key in other.table:
                if key is not None and key is not DUMMY:
                    self._insert_clean(key)
            return
        for key in other.table:
            if key is not None and key is not DUMMY:
                self.add(key)

    def copy(self) -> "EmulatedSet":
        out = EmulatedSet()
        out._merge(self)
        return out

    def union(self, other: "EmulatedSet") -> "EmulatedSet":
        out = self.copy()
        if other is not self:
            out._merge(other)
        return out

    def intersection(self, other: "EmulatedSet") -> "EmulatedSet":
        if other is self:
            return self.copy()
        out = EmulatedSet()
        big, small = self, other
        if len(small) > len(big):
            big, small = small, big
        for key in small:
            if key in big:
                out.add(key)
        return out

    def difference(self, other: "EmulatedSet") -> "EmulatedSet":
        if (len(self) >> 2) > len(other):  # set_copy_and_difference
            out = self.copy()
            out._difference_update(other)
            return out
        out = EmulatedSet()
        for key in self:
            if key not in other:
                out.add(key)
        return out

    def _difference_update(self, other: "EmulatedSet") -> None:
        if other is self:
            self.__init__()
            return
        if (len(other) >> 3) > len(self):
            other = self.intersection(other)
        for key in list(other):
            self.discard(key)
        if self.fill - self.used <= self.mask // 4:
            return
        self._resize(self.used * 2 if self.used > 50000 else self.used * 4)


# -- the functions the tasks use ------------------------------------------------
def _first_occurrence(seq: Iterable[int]) -> list[int]:
    return list(dict.fromkeys(seq))


@functools.lru_cache(maxsize=1)
def native_matches_emulation() -> bool:
    """True when this interpreter's `set` order equals the emulation on probe cases.

    The probe cases exercise growth, merges of both shapes, the intersection
    swap and both difference strategies (including dummy-driven rebuilds).
    """
    if platform.python_implementation() != "CPython":
        return False
    cases = [
        ([5, 13, 21, 3, 11], [13, 7, 99, 3]),
        (list(range(40, 0, -3)), [8, 16, 24, 32, 40, 48, 56, 64]),
        ([1 << 40, 7, 1 << 20, 31999, 2, 64, 96, 32], [7, 32, 1 << 20]),
        ([i * 37 % 101 for i in range(90)], [i * 11 % 97 for i in range(12)]),
        ([i * 8 for i in range(60)], [i * 8 for i in range(0, 60, 2)]),
        ([31998, 2, 17000, 9, 8, 16, 24], []),
    ]
    for a, b in cases:
        ea, eb = EmulatedSet(a), EmulatedSet(b)
        sa, sb = set(a), set(b)
        if (list(sa) != ea.to_list() or list(sa.union(sb)) != ea.union(eb).to_list()
                or list(sa.intersection(sb)) != ea.intersection(eb).to_list()
                or list(sa - sb) != ea.difference(eb).to_list()
                or list(sb - sa) != eb.difference(ea).to_list()):
            return False
    return True


def _check_order(order: str) -> None:
    if order not in ORDERS:
        from synthpre_jax.errors import UserError

        raise UserError(f"unknown set order {order!r}; use one of {ORDERS}")


def set_list(seq: Sequence[int], order: str = "cpython") -> list[int]:
    """`list(set(seq))` in CPython order, or distinct tokens in first-occurrence order."""
    _check_order(order)
    seq = [int(x) for x in seq]
    if order == "first_occurrence":
        return _first_occurrence(seq)
    if native_matches_emulation():
        return list(set(seq))
    return EmulatedSet(seq).to_list()


def set_operation(op: str, s1: Sequence[int], s2: Sequence[int],
                  order: str = "cpython") -> list[int]:
    """`list(set(s1).union(set(s2)))`-style results, as the authors computed them.

    op is one of 'union', 'intersection', 'difference' (s1 - s2).
    """
    _check_order(order)
    return set_operation_lists(op, [int(x) for x in s1], [int(x) for x in s2], order)


def set_operation_lists(op: str, a: list, b: list, order: str = "cpython") -> list[int]:
    """`set_operation` for lists of Python ints (no conversion, no argument check)."""
    if order == "first_occurrence":
        if op == "union":
            return _first_occurrence(a + b)
        sb = set(b)
        if op == "intersection":
            return [x for x in _first_occurrence(a) if x in sb]
        if op == "difference":
            return [x for x in _first_occurrence(a) if x not in sb]
        raise ValueError(op)
    if native_matches_emulation():
        if op == "union":
            return list(set(a).union(set(b)))
        if op == "intersection":
            return list(set(a).intersection(set(b)))
        if op == "difference":
            return list(set(a) - set(b))
        raise ValueError(op)
    ea, eb = EmulatedSet(a), EmulatedSet(b)
    if op == "union":
        return ea.union(eb).to_list()
    if op == "intersection":
        return ea.intersection(eb).to_list()
    if op == "difference":
        return ea.difference(eb).to_list()
    raise ValueError(op)


# -- whole blocks of rows ---------------------------------------------------------
_OPS = {"set": 0, "union": 1, "intersection": 2, "difference": 3}


def _rows_native(op: str, a: tuple, b: Optional[tuple]) -> Optional[Ragged]:
    """`set_rows` in C, or None (no library, or keys the kernel's hash does not cover).
    An operand is (values, starts, lengths): row r is values[starts[r]:][:lengths[r]]."""
    lib = native.kernels()
    if lib is None or any(len(x[0]) and int(x[0].min()) < 0 for x in (a, b) if x is not None):
        return None
    bv, bs, bl = b if b is not None else a
    out = np.empty(max(int(a[2].sum() + (0 if b is None else bl.sum())), 1), dtype=np.int32)
    lengths = np.empty(len(a[2]), dtype=np.int64)
    native.call(lib.ps_rows, _OPS[op], len(lengths), native.as_c(a[0], np.int32),
                native.as_c(a[1], np.int64), native.as_c(a[2], np.int64),
                native.as_c(bv, np.int32), native.as_c(bs, np.int64), native.as_c(bl, np.int64),
                out, lengths, what="set emulation")
    return Ragged(out[:int(lengths.sum())], lengths)


def _operand(r: Ragged) -> tuple:
    return r.values, r.starts, r.lengths


def set_rows(op: str, a: Ragged, b: Optional[Ragged] = None,
             order: str = "cpython") -> Ragged:
    """Row r: `list(set(a_r))` (op 'set') or the `set_operation` of rows a_r and b_r, for a
    whole block: the C emulation when it is available, else row by row in Python."""
    _check_order(order)
    if op not in _OPS or (op == "set") != (b is None) or (b is not None and len(a) != len(b)):
        raise ValueError(f"set_rows: bad operation {op!r} or operands")
    if order == "cpython":
        out = _rows_native(op, _operand(a), None if b is None else _operand(b))
        if out is not None:
            return out
    if op == "set":
        return Ragged.from_rows([set_list(x, order) for x in a.tolists()])
    return Ragged.from_rows([set_operation_lists(op, x, y, order)
                             for x, y in zip(a.tolists(), b.tolists())])


def set_rows_split(op: str, raw: Ragged, sep: int, swap: bool = False,
                   order: str = "cpython") -> Ragged:
    """`set_rows(op, left, right)` of each row split at its first `sep` (left and right
    exchanged with `swap`), without copying the operands out when the kernels run. Every row
    must contain `sep`."""
    _check_order(order)
    spans = split_spans(raw, sep) if order == "cpython" else None
    if spans is not None:
        left, right = spans[::-1] if swap else spans
        out = _rows_native(op, left, right)
        if out is not None:
            return out
    s1, s2 = split_at_first(raw, sep)
    return set_rows(op, *((s2, s1) if swap else (s1, s2)), order=order)
