"""Targets of the 18 simple tasks, computed from raw inputs (release spec §1.2).

A raw input is what follows the task prefix and 32099: the sampled sequence, or
`arg1 32097 arg2` for binary tasks (`longest_word` separates words with 32098).
Every solver maps a batch of raw inputs (`Ragged`) to their targets; the
generator and `SimpleTask.solve` both call these functions, so the logic that
reproduces the authors' samples is the logic that generates data. Empty results
become [32096] in `SimpleTask.targets` (the authors' empty-output marker).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from synthpre_jax.synthetic.codec import Codec, strip_lone_space
from synthpre_jax.synthetic.pyset import native_matches_emulation, set_operation_lists
from synthpre_jax.synthetic.ragged import (ID_DTYPE, Ragged, first_occurrences, reverse_rows,
                                           split_at_first)

TASK_DIVIDER = 32099   # <extra_id_0>: task prefix | task input
WORD_DIVIDER = 32098   # <extra_id_1>: between words (longest_word)
ARG_DIVIDER = 32097    # <extra_id_2>: between the two arguments of binary tasks
EMPTY_OUTPUT = 32096   # <extra_id_3>: the whole target when the result is empty


class TargetVocab:
    """Numbers and yes/no in the task's vocabulary, cached."""

    def __init__(self, codec: Codec):
        self.codec = codec
        self.yes = list(codec.encode("yes"))
        self.no = list(codec.encode("no"))
        self._numbers: dict[int, list[int]] = {}

    def number(self, n: int) -> list[int]:
        """SPM.encode(str(n)) without a leading lone "▁" (the authors' rule)."""
        ids = self._numbers.get(n)
        if ids is None:
            ids = self._numbers[n] = strip_lone_space(self.codec.encode(str(int(n))))
        return ids

    def numbers(self, ns: np.ndarray) -> Ragged:
        return Ragged.from_rows([self.number(n) for n in np.asarray(ns).tolist()])


def find_sublist(seq: np.ndarray, query: np.ndarray) -> int:
    """Index of the first contiguous occurrence of `query` in `seq`, or -1.

    Same result as the authors' `_get_index_return_int` (an empty query is at 0),
    computed with a byte search on the int32 buffers.
    """
    if len(query) == 0:
        return 0
    if len(query) > len(seq):
        return -1
    hay, needle = seq.astype(ID_DTYPE).tobytes(), query.astype(ID_DTYPE).tobytes()
    start = 0
    while True:
        j = hay.find(needle, start)
        if j < 0:
            return -1
        if j % 4 == 0:
            return j // 4
        start = j + 1


def _per_row(left: Ragged, right: Ragged, fn: Callable) -> Ragged:
    lrows, rrows = left.rows(), right.rows()
    return Ragged.from_rows([fn(a, b) for a, b in zip(lrows, rrows)])


# -- unary ------------------------------------------------------------------
def solve_identity(raw: Ragged, tv: TargetVocab, order: str) -> Ragged:
    return Ragged(raw.values.copy(), raw.lengths.copy())


def solve_reverse(raw: Ragged, tv: TargetVocab, order: str) -> Ragged:
    return reverse_rows(raw)


def solve_duplicate(raw: Ragged, tv: TargetVocab, order: str) -> Ragged:
    return Ragged(np.repeat(raw.values, 2), raw.lengths * 2)


def solve_first_token(raw: Ragged, tv: TargetVocab, order: str) -> Ragged:
    ok = raw.lengths > 0
    return Ragged(raw.values[raw.starts[ok]], ok.astype(np.int64))


def solve_last_token(raw: Ragged, tv: TargetVocab, order: str) -> Ragged:
    ok = raw.lengths > 0
    return Ragged(raw.values[raw.offsets[1:][ok] - 1], ok.astype(np.int64))


def solve_length(raw: Ragged, tv: TargetVocab, order: str) -> Ragged:
    return tv.numbers(raw.lengths)


def solve_set(raw: Ragged, tv: TargetVocab, order: str) -> Ragged:
    """Distinct tokens in first-occurrence order (the authors' `set_task`)."""
    rows = raw.row_ids()
    key = rows.astype(np.int64) << 32 | raw.values.astype(np.int64)
    first = first_occurrences(key)
    return Ragged(raw.values[first], np.bincount(rows[first], minlength=len(raw)))


def solve_deduplicate(raw: Ragged, tv: TargetVocab, order: str) -> Ragged:
    """Consecutive repeats collapsed."""
    keep = np.ones(len(raw.values), dtype=bool)
    keep[1:] = raw.values[1:] != raw.values[:-1]
    keep[raw.starts[raw.lengths > 0]] = True
    return Ragged(raw.values[keep], np.bincount(raw.row_ids()[keep], minlength=len(raw)))


def solve_longest_word(raw: Ragged, tv: TargetVocab, order: str) -> Ragged:
    """The first word of maximal length (words are separated by 32098)."""
    n = len(raw)
    rows = raw.row_ids()
    is_sep = raw.values == WORD_DIVIDER
    seps_before = np.cumsum(is_sep) - is_sep          # global, exclusive
    word = seps_before + rows                         # global word id of each token
    words_per_row = np.bincount(rows[is_sep], minlength=n) + 1
    word_row = np.repeat(np.arange(n), words_per_row)
    word_len = np.bincount(word[~is_sep], minlength=int(words_per_row.sum()))
    row_start = np.zeros(n, dtype=np.int64)
    np.cumsum(words_per_row[:-1], out=row_start[1:])
    row_max = np.maximum.reduceat(word_len, row_start) if n else np.zeros(0, np.int64)
    cand = np.flatnonzero(word_len == row_max[word_row])
    best = cand[first_occurrences(word_row[cand])]                                # one word per row
    keep = (~is_sep) & (word == best[rows]) & (row_max[rows] > 0)
    return Ragged(raw.values[keep], np.bincount(rows[keep], minlength=n))


# -- binary -----------------------------------------------------------------
def solve_count(raw: Ragged, tv: TargetVocab, order: str) -> Ragged:
    seq, query = split_at_first(raw, ARG_DIVIDER)
    if (query.lengths == 0).any():
        raise ValueError("count needs a query token after 32097")
    q = query.values[query.starts]
    hits = seq.values == q[seq.row_ids()]
    return tv.numbers(np.bincount(seq.row_ids()[hits], minlength=len(raw)))


def solve_search(raw: Ragged, tv: TargetVocab, order: str) -> Ragged:
    seq, query = split_at_first(raw, ARG_DIVIDER)
    return _per_row(seq, query, lambda s, q: tv.yes if find_sublist(s, q) >= 0 else tv.no)


def solve_delete(raw: Ragged, tv: TargetVocab, order: str) -> Ragged:
    seq, query = split_at_first(raw, ARG_DIVIDER)

    def one(s: np.ndarray, q: np.ndarray) -> np.ndarray:
        i = find_sublist(s, q)
        return s if i < 0 else np.concatenate([s[:i], s[i + len(q):]])

    return _per_row(seq, query, one)


def solve_sort(raw: Ragged, tv: TargetVocab, order: str) -> Ragged:
    """seq stably sorted by each token's (last) index in `order`."""
    seq, ordr = split_at_first(raw, ARG_DIVIDER)
    okey = ordr.row_ids().astype(np.int64) << 32 | ordr.values.astype(np.int64)
    # Last index of each (row, token) in order: the last entry of each run of a
    # stable sort of the keys.
    perm = np.argsort(okey, kind="stable")
    s = okey[perm]
    last = np.ones(len(s), dtype=bool)
    if len(s):
        np.not_equal(s[1:], s[:-1], out=last[:-1])
    ukey = s[last]
    last_pos = ordr.positions()[perm[last]]
    skey = seq.row_ids().astype(np.int64) << 32 | seq.values.astype(np.int64)
    at = np.searchsorted(ukey, skey)
    if len(skey) and (at.max() >= len(ukey) or (ukey[np.minimum(at, len(ukey) - 1)] != skey).any()):
        raise ValueError("sort: every token of seq must appear in order")
    rank = last_pos[at] if len(skey) else np.zeros(0, np.int64)
    perm = np.lexsort((rank, seq.row_ids()))  # stable: ties keep input order
    return Ragged(seq.values[perm], seq.lengths)


def solve_replace(raw: Ragged, tv: TargetVocab, order: str) -> Ragged:
    seq, kv = split_at_first(raw, ARG_DIVIDER)
    if (kv.lengths < 2).any():
        raise ValueError("replace needs [key, value] after 32097")
    k = kv.values[kv.starts]
    v = kv.values[kv.starts + 1]
    r = seq.row_ids()
    return Ragged(np.where(seq.values == k[r], v[r], seq.values), seq.lengths)


def _setop(op: str, swap: bool) -> Callable:
    def solve(raw: Ragged, tv: TargetVocab, order: str) -> Ragged:
        s1, s2 = split_at_first(raw, ARG_DIVIDER)
        a, b = (s2, s1) if swap else (s1, s2)
        pairs = zip(a.tolists(), b.tolists())
        if order == "cpython" and native_matches_emulation():
            # The authors' expressions on this interpreter's sets (checked equal to the
            # emulation): set(x).union(set(y)), .intersection(set(y)), set(x) - set(y).
            if op == "union":
                rows = [list(set(x).union(set(y))) for x, y in pairs]
            elif op == "intersection":
                rows = [list(set(x).intersection(set(y))) for x, y in pairs]
            else:
                rows = [list(set(x) - set(y)) for x, y in pairs]
        else:
            rows = [set_operation_lists(op, x, y, order) for x, y in pairs]
        return Ragged.from_rows(rows)
    return solve


SOLVERS: dict[str, Callable[[Ragged, TargetVocab, str], Ragged]] = {
    "identity": solve_identity,
    "reverse": solve_reverse,
    "duplicate": solve_duplicate,
    "first_token": solve_first_token,
    "last_token": solve_last_token,
    "length": solve_length,
    "set": solve_set,
    "deduplicate": solve_deduplicate,
    "longest_word": solve_longest_word,
    "count": solve_count,
    "search": solve_search,
    "delete": solve_delete,
    "sort": solve_sort,
    "replace": solve_replace,
    "union": _setop("union", False),
    "intersect": _setop("intersection", False),
    "set1_minus_set2": _setop("difference", False),
    "set2_minus_set1": _setop("difference", True),
}
