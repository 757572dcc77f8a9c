"""The 18 simple tasks of Wu et al. 2022 (release spec §1.0-§1.2), vectorised over examples.

Each sampler follows the authors' `tasks_with_tokens.py` draw for draw in
distribution (not in random stream): lengths, partitions, query placement, the
sub-vocabulary of the set operations, and the rejection of raw inputs outside
`length_range`, which re-draws the whole sampler (including the present/absent
coin of `search`/`delete`). That rejection is why the authors' data has ~60%
`yes` for `search` and ~82% query-present for `delete` rather than the coins'
50%/75% (short absent-query draws overflow 220 tokens and are re-drawn). The default,
`balanced=True`, re-draws within the chosen branch so the rates are the specified
50%/75%; `balanced=False` reproduces the release sampler's skewed rates.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from synthpre_jax.synthetic.base import SyntheticTask
from synthpre_jax.synthetic.codec import Codec, FallbackCodec
from synthpre_jax.synthetic import native
from synthpre_jax.synthetic.pyset import ORDERS
from synthpre_jax.synthetic.ragged import (ID_DTYPE, Ragged, TokenPool, fill_empty, isin_sorted,
                                           join, partition_counts, prepend, rows_with_repeats,
                                           segment_positions, shuffle_rows, take_rows,
                                           unique_sorted)
from synthpre_jax.synthetic.rng import Draws, stable_hash
from synthpre_jax.synthetic.simple_solve import (ARG_DIVIDER, EMPTY_OUTPUT, SOLVERS,
                                                 TASK_DIVIDER, WORD_DIVIDER, TargetVocab,
                                                 find_sublist)

# public task_id -> the authors' internal name (whose encoding is the prefix)
INTERNAL_NAMES: dict[str, str] = {
    "identity": "copy", "reverse": "reverse", "duplicate": "duplicate",
    "first_token": "first_char", "last_token": "last_char", "length": "length",
    "set": "set", "deduplicate": "deduplicate", "longest_word": "longest_word",
    "count": "count", "search": "search", "delete": "delete", "sort": "sort",
    "replace": "replace", "union": "union", "intersect": "intersect",
    "set1_minus_set2": "set_1_minus_2", "set2_minus_set1": "set_2_minus_1",
}
SIMPLE_TASK_IDS: tuple[str, ...] = tuple(INTERNAL_NAMES)
BINARY_TASKS = frozenset({"count", "search", "delete", "sort", "replace", "union",
                          "intersect", "set1_minus_set2", "set2_minus_set1"})
DEFAULT_LENGTH_RANGE = (10, 220)
QUERY_ROUNDS_PER_PASS = 4  # search/delete: rejection rounds drawn together


def _merge_rows(parts: list[tuple[np.ndarray, Ragged]], n: int) -> Ragged:
    """Rows of several (slots, Ragged) parts put back in slot order 0..n-1."""
    slots = np.concatenate([s for s, _ in parts]) if parts else np.zeros(0, np.int64)
    allr = Ragged.concat([r for _, r in parts])
    where = np.empty(n, dtype=np.int64)
    where[slots] = np.arange(len(slots))
    return take_rows(allr, where)


class SimpleTask(SyntheticTask):
    """One of the 18 simple tasks. `solve(raw_input)` gives the target ids."""

    def __init__(self, task_id: str, codec: Optional[Codec] = None,
                 length_range: Sequence[int] = DEFAULT_LENGTH_RANGE,
                 num_tokens: Optional[int] = None, vocab_seed: int = 0,
                 order: str = "cpython", balanced: bool = True):
        if task_id not in INTERNAL_NAMES:
            raise ValueError(f"unknown simple task {task_id!r}")
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}")
        lo, hi = int(length_range[0]), int(length_range[1])
        if not 1 <= lo <= hi:
            raise ValueError("length_range must satisfy 1 <= lo <= hi")
        self.task_id = task_id
        self.internal_name = INTERNAL_NAMES[task_id]
        self.binary = task_id in BINARY_TASKS
        self.codec = codec or FallbackCodec()
        self.lo, self.hi = lo, hi
        self.num_tokens, self.vocab_seed = num_tokens, vocab_seed
        self.pool = TokenPool() if num_tokens is None else TokenPool.sub_vocabulary(num_tokens, vocab_seed)
        self.order, self.balanced = order, balanced
        self.vocab = TargetVocab(self.codec)
        self.prefix = list(self.codec.encode(self.internal_name)) + [TASK_DIVIDER]
        self._check_feasible()

    def _check_feasible(self) -> None:
        t, lo, hi = self.task_id, self.lo, self.hi
        # search/delete: with `balanced` the query-absent half re-draws its lengths until the
        # raw length fits; a range where that almost never happens would never finish
        absent_fits = not self.balanced or absent_acceptance(lo, hi) >= MIN_ABSENT_ACCEPTANCE
        need = {"count": lo > 2, "replace": lo > 3, "sort": lo >= 2 and hi >= 2 * (lo // 2) + 1,
                "union": lo >= 3, "intersect": lo >= 3, "set1_minus_set2": lo >= 3,
                "set2_minus_set1": lo >= 3, "search": hi >= 4 and absent_fits,
                "delete": hi >= 4 and absent_fits,
                "longest_word": hi >= 2}
        if not need.get(t, True):
            hint = (f" (a query-absent example's raw length fits it with probability "
                    f"{absent_acceptance(lo, hi):.1e}; widen it or use balanced=False)"
                    if t in ("search", "delete") and hi >= 4 else "")
            raise ValueError(f"length_range {(lo, hi)} is too small for {t}{hint}")
        if t in ("union", "intersect", "set1_minus_set2", "set2_minus_set1") \
                and len(self.pool) < (hi - 1) // 2:
            raise ValueError(f"{t} needs at least {(hi - 1) // 2} tokens in the pool")

    def config(self) -> dict:
        cfg: dict = {}
        if (self.lo, self.hi) != DEFAULT_LENGTH_RANGE:
            cfg["length"] = f"{self.lo}..{self.hi}"
        if self.num_tokens is not None:
            cfg["num_tokens"] = self.num_tokens
            cfg["vocab_seed"] = self.vocab_seed
        if not self.balanced and self.task_id in ("search", "delete"):
            cfg["balanced"] = False
        return cfg  # `order` changes targets only, not the random stream

    # -- targets -----------------------------------------------------------
    def targets(self, raw: Ragged) -> Ragged:
        return fill_empty(SOLVERS[self.task_id](raw, self.vocab, self.order), EMPTY_OUTPUT)

    def solve(self, raw_input: Sequence[int]) -> list[int]:
        """Target ids of one raw input (the ids after 32099, separators included)."""
        return self.targets(Ragged.from_rows([raw_input])).values.tolist()

    def sample_rows(self, d: Draws) -> dict:
        raw = self.sample_raw(d)
        return {"inputs": prepend(raw, self.prefix), "targets": self.targets(raw)}

    # -- samplers (every draw is per row: see synthetic.rng) ------------------
    def sample_raw(self, d: Draws) -> Ragged:
        t = self.task_id
        if t in ("set", "deduplicate"):
            return self._runs(d, shuffle=(t == "set"))
        if t == "longest_word":
            return self._longest_word(d)
        if t == "count":
            return self._count(d)
        if t in ("search", "delete"):
            return self._query_task(d, threshold=0.5 if t == "search" else 0.25)
        if t == "sort":
            return self._sort(d)
        if t == "replace":
            return self._replace(d)
        if self.binary:
            return self._set_op(d)
        return self._uniform(d, self.lo, self.hi)

    def _tokens(self, d: Draws, counts) -> np.ndarray:
        return self.pool.draw(d, counts)

    def _uniform(self, d: Draws, lo, hi) -> Ragged:
        lengths = d.sub("len").randint(lo, hi)
        return Ragged(self._tokens(d.sub("tok"), lengths), lengths)

    def _runs(self, d: Draws, shuffle: bool) -> Ragged:
        """k ~ U{1..len} runs of nonzero length, symbols uniform (`_generate_deduplicate_data`)."""
        total = d.sub("len").randint(self.lo, self.hi)
        k = d.sub("runs").randint(1, total)
        counts = partition_counts(d.sub("parts"), total, k, nonzero=True)
        r = Ragged(np.repeat(self._tokens(d.sub("sym"), k), counts), total)
        return shuffle_rows(r, d.sub("shuffle")) if shuffle else r

    def _longest_word(self, d: Draws) -> Ragged:
        words = d.sub("words").randint(1, self.hi // 2)
        spaces = words - 1
        nonspace = d.sub("len").randint(np.maximum(self.lo - spaces, words), self.hi - spaces)
        wl = partition_counts(d.sub("parts"), nonspace, words, nonzero=True) + 1  # + separator
        vals = self._tokens(d.sub("tok"), nonspace + words)
        ends = np.cumsum(wl) - 1
        vals[ends] = WORD_DIVIDER
        keep = np.ones(len(vals), dtype=bool)
        keep[ends[np.cumsum(words) - 1]] = False          # no separator after the last word
        return Ragged(vals[keep], nonspace + spaces)

    def _count(self, d: Draws) -> Ragged:
        seq_len = d.sub("len").randint(self.lo - 2, self.hi - 2)
        q = self._tokens(d.sub("query"), 1)
        c = d.sub("count").randint(0, seq_len)
        seq = Ragged(self._tokens(d.sub("tok"), seq_len), seq_len)
        is_q = seq.positions() < np.repeat(c, seq_len)
        seq.values[is_q] = np.repeat(q, seq_len)[is_q]
        seq = shuffle_rows(seq, d.sub("shuffle"))
        return join([seq, Ragged(q, np.ones(len(q), np.int64))], [[ARG_DIVIDER]])

    def _sort(self, d: Draws) -> Ragged:
        max_total = self.hi - 1
        k = d.sub("order_len").randint(self.lo // 2, max_total // 2)
        order = Ragged(self._tokens(d.sub("order"), k), k)
        seq_len = d.sub("len").randint(k, max_total - k)
        counts = partition_counts(d.sub("parts"), seq_len, k, nonzero=True)
        kk = np.repeat(k, k)
        pick = np.repeat(order.starts, k) + np.minimum((d.sub("sym").uniform(k) * kk).astype(np.int64), kk - 1)
        seq = shuffle_rows(Ragged(np.repeat(order.values[pick], counts), seq_len), d.sub("shuffle"))
        return join([seq, order], [[ARG_DIVIDER]])

    def _replace(self, d: Draws) -> Ragged:
        seq = self._uniform(d, self.lo - 3, self.hi - 3)
        n = len(seq)
        # (row, token) keys; packed into int32 when they fit (a faster sort).
        vb = max(int(seq.values.max(initial=0)).bit_length(), 1)
        small = seq.values.min(initial=0) >= 0 and (max(n - 1, 0) << vb) < 2**31
        dt, shift = (np.int32, vb) if small else (np.int64, 32)
        key = (seq.row_ids().astype(dt) << dt(shift)) | seq.values.astype(dt)
        uniq = unique_sorted(key)
        per_row = np.bincount(uniq >> dt(shift), minlength=n)
        start = np.cumsum(per_row) - per_row
        pick = start + d.sub("key").randint(0, per_row - 1)
        k = (uniq[pick] & dt((1 << shift) - 1)).astype(ID_DTYPE)
        v = self._tokens(d.sub("value"), 1)
        kv = Ragged(np.stack([k, v], axis=1).ravel(), np.full(n, 2))
        return join([seq, kv], [[ARG_DIVIDER]])

    def _set_op(self, d: Draws) -> Ragged:
        total = d.sub("len").randint(self.lo - 1, self.hi - 1)
        n1 = d.sub("len1").randint(0, total)
        m = total // 2
        sub = self._distinct_rows(d.sub("subvocab"), m)

        n2 = total - n1
        if (m[(n1 > 0) | (n2 > 0)] > 0).all():  # both operands and the divider in one C pass
            rows = native.counter_pick_pair_rows(d.sub("s1").stream_keys(), n1,
                                                 d.sub("s2").stream_keys(), n2, sub.values,
                                                 sub.starts, m, ARG_DIVIDER)
            if rows is not None:
                return Ragged(rows, total + 1)

        def draw(stage: str, cnt: np.ndarray) -> Ragged:
            mm = np.repeat(m, cnt)
            j = np.minimum((d.sub(stage).uniform(cnt) * mm).astype(np.int64), mm - 1)
            return Ragged(sub.values[np.repeat(sub.starts, cnt) + j], cnt)

        return join([draw("s1", n1), draw("s2", n2)], [[ARG_DIVIDER]])

    def _distinct_rows(self, d: Draws, m: np.ndarray) -> Ragged:
        """Row r: m[r] distinct pool ids in random order (`random.sample`), by per-row retries
        (or, for a small pool, the first m[r] of a random permutation of it)."""
        size = len(self.pool)
        if size <= 4096 and size <= 4 * int(m.max(initial=0)) + 64:
            perm = np.argsort(d.sub("perm").matrix(size), axis=1)
            keep = np.arange(size)[None, :] < m[:, None]
            return Ragged(self.pool.pick((perm[keep] + 0.5) / size), m)
        pool = self.pool
        fast = native.distinct_rows(d.keys, m, _TRY_HASHES, size, pool.lo or 0, pool.ids)
        if fast is not None:  # the same rounds per row, in C
            return Ragged(fast, m)
        out = Ragged(self._tokens(d.sub("try0"), m), m)
        redo, attempt = rows_with_repeats(out), 0
        while len(redo):
            attempt += 1
            mask = np.zeros(len(m), dtype=bool)
            mask[redo] = True
            where = np.repeat(mask, m)
            values = self._tokens(d.take(redo).sub(f"try{attempt}"), m[redo])
            out.values[where] = values
            # Only re-drawn rows can hold repeats now: check just those.
            redo = redo[rows_with_repeats(Ragged(values, m[redo]))]
        return out

    # -- search / delete: query present or absent, then length rejection ------
    def _query_task(self, d: Draws, threshold: float) -> Ragged:
        """Each example re-draws (coin included, unless `balanced`) until its raw length
        is in range: the authors' rejection loop, with the rounds named per example.

        The raw length depends only on a few length draws, so every round draws just
        those; the tokens are drawn once, for the accepted round of each example
        (from the same stages as if every round had been drawn in full).
        """
        n = len(d)
        fixed = d.sub("coin").uniform(1) > threshold if self.balanced else None
        keys = np.empty(n, dtype=np.uint64)       # the accepted round's `try{k}` keys
        present = np.empty(n, dtype=bool)
        lens = np.empty((n, 3), dtype=np.int64)   # present: q, seq_len; absent: rare, seq, q
        pending = np.arange(n)
        attempt = 0
        while len(pending):
            # Rounds attempt..attempt+K-1 of every pending example in one pass (the
            # draws are per example and round, so batching them changes nothing).
            K = QUERY_ROUNDS_PER_PASS
            m = len(pending)
            sub = d.take(pending)
            dd = Draws(np.concatenate([sub.sub(f"try{attempt + r}").keys for r in range(K)]))
            pres = (np.tile(fixed[pending], K) if fixed is not None
                    else dd.sub("coin").uniform(1) > threshold)
            raw_len = np.empty(K * m, dtype=np.int64)
            ln = np.zeros((K * m, 3), dtype=np.int64)
            p, a = np.flatnonzero(pres), np.flatnonzero(~pres)
            if len(p):
                q, seq_len = self._present_lengths(dd.take(p).sub("present"))
                ln[p, 0], ln[p, 1] = q, seq_len
                raw_len[p] = seq_len + 1 + q
            if len(a):
                rare, seq_len, qlen = self._absent_lengths(dd.take(a).sub("absent"))
                ln[a, 0], ln[a, 1], ln[a, 2] = rare, seq_len, qlen
                raw_len[a] = seq_len + 1 + qlen
            ok = ((raw_len >= self.lo) & (raw_len <= self.hi)).reshape(K, m)
            first = np.argmax(ok, axis=0)               # the first accepted round
            got = ok[first, np.arange(m)]
            pick = (first * m + np.arange(m))[got]
            done = pending[got]
            keys[done] = dd.keys[pick]
            present[done] = pres[pick]
            lens[done] = ln[pick]
            pending = pending[~got]
            attempt += K
        parts = []
        p, a = np.flatnonzero(present), np.flatnonzero(~present)
        if len(p):
            parts.append((p, self._query_present(Draws(keys[p]).sub("present"),
                                                 lens[p, 0], lens[p, 1])))
        if len(a):
            parts.append((a, self._query_absent(Draws(keys[a]).sub("absent"), lens[a, 0] > 0,
                                                lens[a, 1], lens[a, 2])))
        return _merge_rows(parts, n)

    def _present_lengths(self, d: Draws) -> tuple[np.ndarray, np.ndarray]:
        max_total = self.hi - 1
        q = d.sub("qlen").randint(1, max_total // 3)
        return q, d.sub("len").randint(2 * q, max_total - q)

    def _absent_lengths(self, d: Draws) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lo, hi = self.lo, self.hi
        rare = d.sub("rare").uniform(1) < 0.01
        q_rare = d.sub("qlen_rare").randint(lo + 1, hi)
        seq_len = np.where(rare, d.sub("len_rare").randint(0, np.maximum(q_rare - 1, 0)),
                           d.sub("len").randint(lo, hi))
        qlen = np.where(rare, q_rare, d.sub("qlen").randint(lo, seq_len))
        return rare, seq_len, qlen

    def _query_present(self, d: Draws, q: np.ndarray, seq_len: np.ndarray) -> Ragged:
        """`generate_at_least_one_query_in_seq_data` with proportion 0.5 (lengths from
        `_present_lengths` on the same stage)."""
        n = len(d)
        occ = d.sub("occ").randint(1, seq_len // q)
        free = seq_len - occ * q
        chunks = partition_counts(d.sub("parts"), free, occ + 1, nonzero=False)
        query = Ragged(self._tokens(d.sub("query"), q), q)
        seq = Ragged(self._tokens(d.sub("tok"), seq_len), seq_len)
        # Segments per row: chunk0, q, chunk1, q, ..., chunk_occ.
        nseg = 2 * occ + 1
        seg = np.empty(int(nseg.sum()), dtype=np.int64)
        seg_row_start = np.cumsum(nseg) - nseg
        t = segment_positions(occ)
        qslot = np.repeat(seg_row_start, occ) + 2 * t + 1
        is_chunk = np.ones(len(seg), dtype=bool)
        is_chunk[qslot] = False
        seg[is_chunk] = chunks
        seg[qslot] = np.repeat(q, occ)
        seg_start = np.cumsum(seg) - seg
        qlen = np.repeat(q, occ)
        within = segment_positions(qlen)
        qpos = np.repeat(seg_start[qslot], qlen) + within
        qrow = np.repeat(np.repeat(np.arange(n), occ), qlen)
        seq.values[qpos] = query.values[query.starts[qrow] + within]
        return join([seq, query], [[ARG_DIVIDER]])

    def _query_absent(self, d: Draws, rare: np.ndarray, seq_len: np.ndarray,
                      qlen: np.ndarray) -> Ragged:
        """`generate_no_query_in_seq_data`: the query never occurs in seq (lengths from
        `_absent_lengths` on the same stage)."""
        seq = Ragged(self._tokens(d.sub("tok"), seq_len), seq_len)
        query = Ragged(self._tokens(d.sub("query"), qlen), qlen)
        suspect = _may_contain(seq, query) & ~rare
        if not suspect.any():
            return join([seq, query], [[ARG_DIVIDER]])
        s_start, q_start = seq.starts, query.starts
        for j in np.flatnonzero(suspect):  # a few rows per block: re-drawn in place
            s = seq.values[s_start[j]:s_start[j] + seq_len[j]]
            q = query.values[q_start[j]:q_start[j] + qlen[j]]
            attempt = 0
            while _authors_contains(s, q):
                attempt += 1
                dj = d.take([j]).sub(f"retry{attempt}")
                s[:] = self._tokens(dj.sub("tok"), int(seq_len[j]))
                q[:] = self._tokens(dj.sub("query"), int(qlen[j]))
        return join([seq, query], [[ARG_DIVIDER]])


_TRY_HASHES = np.array([stable_hash(f"try{a}", 64) for a in range(64)], dtype=np.uint64)
MIN_ABSENT_ACCEPTANCE = 1e-3  # at most ~1,000 rounds per query-absent example on average


def absent_acceptance(lo: int, hi: int) -> float:
    """Probability that one round of `_absent_lengths` gives a raw length in [lo, hi]:
    99%: seq_len ~ U{lo..hi}, qlen ~ U{lo..seq_len}; 1%: qlen ~ U{lo+1..hi},
    seq_len ~ U{0..qlen-1}; raw = seq_len + 1 + qlen (always >= lo)."""
    s = np.arange(lo, hi + 1)
    fits = np.clip(np.minimum(s, hi - 1 - s) - lo + 1, 0, None) / (s - lo + 1)
    normal = float(fits.mean())
    q = np.arange(lo + 1, hi + 1)
    rare = (float((np.clip(np.minimum(q - 1, hi - 1 - q) + 1, 0, None) / q).mean())
            if len(q) else 0.0)
    return 0.99 * normal + 0.01 * rare


def _may_contain(seq: Ragged, query: Ragged) -> np.ndarray:
    """Rows where the authors' containment test could succeed (vectorised screen).

    The string test needs every inner query number (query[1:-1]) to equal a seq
    number, so a row whose query[1] never occurs in seq is safe. Queries of at most
    two numbers are always checked in full.
    """
    n = len(seq)
    short = query.lengths <= 2
    probe = np.zeros(n, dtype=np.int32)  # query[1]; short rows are checked in full anyway
    probe[~short] = query.values[query.starts[~short] + 1]
    found = native.count_rows(seq.values, seq.starts, seq.lengths, probe)
    if found is not None:
        return (found > 0) | short
    probe_row = np.flatnonzero(~short)
    probe = query.values[query.starts[probe_row] + 1].astype(np.int64) | (probe_row.astype(np.int64) << 32)
    keys = seq.values.astype(np.int64) | (seq.row_ids().astype(np.int64) << 32)
    hit = np.zeros(n, dtype=bool)
    hit[probe_row[isin_sorted(probe, keys)]] = True
    return hit | short


def _authors_contains(seq: np.ndarray, query: np.ndarray) -> bool:
    """The authors' rejection test `str(query)[1:-1] in str(seq)`.

    It is stricter than a sublist test (the first/last query numbers may match a
    suffix/prefix of a seq number). Its inner numbers must match whole seq
    numbers, so the string test runs only when query[1:-1] occurs in seq.
    """
    if len(query) > 2 and find_sublist(seq, query[1:-1]) < 0:
        return False
    return ", ".join(map(str, query.tolist())) in ", ".join(map(str, seq.tolist()))
