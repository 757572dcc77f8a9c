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

from synthpre_jax.synthetic import native
from synthpre_jax.synthetic.codec import Codec, strip_lone_space
from synthpre_jax.synthetic.pyset import set_rows_split
from synthpre_jax.synthetic.ragged import (ID_DTYPE, Ragged, first_in_rows, first_occurrences,
                                           reverse_rows, segment_positions, split_at_first,
                                           split_spans, stable_sort_index, take_rows)

TASK_DIVIDER = 32099   # <extra_id_0>: task prefix | task input
WORD_DIVIDER = 32098   # <extra_id_1>: between words (longest_word)
ARG_DIVIDER = 32097    # <extra_id_2>: between the two arguments of binary tasks
EMPTY_OUTPUT = 32096   # <extra_id_3>: the whole target when the result is empty


NUMBER_TABLE_MAX = 1 << 16  # larger numbers are encoded one by one


class TargetVocab:
    """Numbers and yes/no in the task's vocabulary, cached."""

    def __init__(self, codec: Codec):
        self.codec = codec
        self.yes = list(codec.encode("yes"))
        self.no = list(codec.encode("no"))
        self.no_yes = Ragged.from_rows([self.no, self.yes])  # row 0: no, row 1: yes
        self._numbers: dict[int, list[int]] = {}
        self._table: Ragged | None = None  # number(n) for n in 0..N-1

    def number(self, n: int) -> list[int]:
        """SPM.encode(str(n)) without a leading lone "▁" (the authors' rule)."""
        ids = self._numbers.get(n)
        if ids is None:
            ids = self._numbers[n] = strip_lone_space(self.codec.encode(str(int(n))))
        return ids

    def numbers(self, ns: np.ndarray) -> Ragged:
        """`number(n)` for every n, gathered from a cached table of 0..max(ns)."""
        ns = np.asarray(ns, dtype=np.int64).reshape(-1)
        if len(ns) == 0:
            return Ragged(np.zeros(0, ID_DTYPE), np.zeros(0, np.int64))
        top = int(ns.max())
        if ns.min() < 0 or top >= NUMBER_TABLE_MAX:
            return Ragged.from_rows([self.number(n) for n in ns.tolist()])
        if self._table is None or len(self._table) <= top:
            size = max(top + 1, 2 * (0 if self._table is None else len(self._table)), 512)
            self._table = Ragged.from_rows([self.number(n) for n in range(size)])
        return take_rows(self._table, ns)


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
    return raw.keep_values(first_in_rows(raw))


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
    spans = split_spans(raw, ARG_DIVIDER)
    if spans is not None:
        seq, query = spans
        if (query[2] == 0).any():
            raise ValueError("count needs a query token after 32097")
        return tv.numbers(native.count_rows(raw.values, seq[1], seq[2], raw.values[query[1]]))
    seq, query = split_at_first(raw, ARG_DIVIDER)
    if (query.lengths == 0).any():
        raise ValueError("count needs a query token after 32097")
    q = query.values[query.starts]
    hits = seq.values == q[seq.row_ids()]
    return tv.numbers(np.bincount(seq.row_ids()[hits], minlength=len(raw)))


FIND_WORK_LIMIT = 1 << 22  # token comparisons per block before `find_rows` goes per row


def find_rows(seq: Ragged, query: Ragged) -> np.ndarray:
    """`find_sublist(seq_r, query_r)` for every row r, vectorised over the block.

    Candidate starts are the positions holding the query's first token with room
    for the whole query; every candidate is compared in full, and a row's answer
    is its first matching candidate. Inputs with very many candidates (e.g. long
    runs of one token) are searched row by row instead.
    """
    found = native.find_rows((seq.values, seq.starts, seq.lengths),
                             (query.values, query.starts, query.lengths))
    if found is not None:
        return found
    n = len(seq)
    qlen, slen = query.lengths, seq.lengths
    out = np.full(n, -1, dtype=np.int64)
    out[qlen == 0] = 0
    srow = seq.row_ids()
    spos = seq.positions()
    has_q = qlen > 0
    qfirst = np.zeros(n, dtype=ID_DTYPE)
    qfirst[has_q] = query.values[query.starts[has_q]]
    ql_of = qlen[srow]
    cand = np.flatnonzero((seq.values == qfirst[srow]) & (ql_of > 0)
                          & (spos + ql_of <= slen[srow]))
    crow = srow[cand]
    cl = qlen[crow]
    work = int(cl.sum())
    if work > FIND_WORK_LIMIT:
        return np.array([find_sublist(s, q) for s, q in zip(seq.rows(), query.rows())],
                        dtype=np.int64)
    if not len(cand):
        return out
    j = segment_positions(cl)
    eq = seq.values[np.repeat(cand, cl) + j] == query.values[np.repeat(query.starts[crow], cl) + j]
    bad = np.bincount(np.repeat(np.arange(len(cand)), cl)[~eq], minlength=len(cand))
    hit = np.flatnonzero(bad == 0)           # matching candidates, row-major
    hrow = crow[hit]
    first = np.ones(len(hit), dtype=bool)
    first[1:] = hrow[1:] != hrow[:-1]
    out[hrow[first]] = spos[cand[hit[first]]]
    return out


def solve_search(raw: Ragged, tv: TargetVocab, order: str) -> Ragged:
    spans = split_spans(raw, ARG_DIVIDER)
    at = native.find_rows(*spans) if spans is not None else find_rows(
        *split_at_first(raw, ARG_DIVIDER))
    return take_rows(tv.no_yes, (at >= 0).astype(np.int64))


def solve_delete(raw: Ragged, tv: TargetVocab, order: str) -> Ragged:
    spans = split_spans(raw, ARG_DIVIDER)
    if spans is not None:
        seq, query = spans
        at = native.find_rows(seq, query)
        return Ragged(native.cut_rows(seq, at, query[2]),
                      seq[2] - np.where(at >= 0, query[2], 0))
    seq, query = split_at_first(raw, ARG_DIVIDER)
    at = find_rows(seq, query)
    hit = at >= 0
    first = seq.offsets[:-1][hit] + at[hit]
    n = len(seq.values)
    # +1 where a deleted span starts, -1 where it ends: the running sum marks the spans.
    inside = np.cumsum(np.bincount(first, minlength=n + 1)
                       - np.bincount(first + query.lengths[hit], minlength=n + 1))[:n]
    return Ragged(seq.values[inside == 0], seq.lengths - np.where(hit, query.lengths, 0))


def solve_sort(raw: Ragged, tv: TargetVocab, order: str) -> Ragged:
    """seq stably sorted by each token's (last) index in `order`.

    Tokens of equal rank are equal, so the target is every order entry repeated as
    many times as seq has tokens whose last order occurrence it is. One sort of the
    order and seq tokens together by (row, token, order-before-seq) puts each seq
    token right after the order entries of its token, the last of which it counts for.
    """
    seq, ordr = split_at_first(raw, ARG_DIVIDER)
    n_o, n_s = len(ordr.values), len(seq.values)
    if n_s == 0:
        return Ragged(seq.values.copy(), seq.lengths)
    done = native.sort_rows(ordr.values, ordr.offsets, seq.values, seq.offsets)
    if done is not None:
        return Ragged(done, seq.lengths)
    rows = np.concatenate([ordr.row_ids(), seq.row_ids()]).astype(np.int64)
    vals = np.concatenate([ordr.values, seq.values]).astype(np.int64)
    if vals.min() < 0:
        raise ValueError("sort: token ids must be non-negative")
    vb = max(int(vals.max()).bit_length(), 1)
    key = (((rows << vb) | vals) << 1)
    key[n_o:] |= 1
    skey, idx = stable_sort_index(key)
    # For every sorted entry, the sorted position of the latest order entry so far.
    is_o = (skey & 1) == 0
    latest = np.where(is_o, np.arange(len(skey)), -1)
    np.maximum.accumulate(latest, out=latest)
    src = latest[~is_o]
    if (src < 0).any() or ((skey[np.maximum(src, 0)] >> 1) != (skey[~is_o] >> 1)).any():
        raise ValueError("sort: every token of seq must appear in order")
    counts = np.bincount(idx[src], minlength=n_o)
    return Ragged(np.repeat(ordr.values, counts), seq.lengths)


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
        """The authors' `list(set(x).union(set(y)))`, `.intersection`, `set(x) - set(y)`."""
        return set_rows_split(op, raw, ARG_DIVIDER, swap, order)
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
