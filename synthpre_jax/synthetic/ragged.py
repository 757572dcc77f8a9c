"""Ragged int32 batches (flat values + row lengths) and the vectorised ops the tasks use.

A block of examples is a dict feature -> `Ragged`. Keeping a block as two flat
arrays lets the generators work on all examples of a block with a handful of
NumPy calls instead of a Python loop per token.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from synthpre_jax.synthetic import native
from synthpre_jax.synthetic.native import sort_keys

ID_DTYPE = np.int32


@dataclass
class Ragged:
    values: np.ndarray   # int32 [total]
    lengths: np.ndarray  # int64 [rows]

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=ID_DTYPE)
        self.lengths = np.asarray(self.lengths, dtype=np.int64)

    # -- construction ----------------------------------------------------
    @classmethod
    def from_rows(cls, rows: Iterable[Sequence[int]]) -> "Ragged":
        rows = list(rows)
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        if rows and all(isinstance(r, list) for r in rows):  # Python ints: one conversion
            values = np.fromiter(itertools.chain.from_iterable(rows), dtype=ID_DTYPE,
                                 count=int(lengths.sum()))
        else:
            parts = [np.asarray(r, dtype=ID_DTYPE).reshape(-1) for r in rows]
            values = np.concatenate(parts) if parts else np.zeros(0, ID_DTYPE)
        return cls(values, lengths)

    @classmethod
    def concat(cls, parts: Sequence["Ragged"]) -> "Ragged":
        if not parts:
            return cls(np.zeros(0, ID_DTYPE), np.zeros(0, np.int64))
        return cls(np.concatenate([p.values for p in parts]),
                   np.concatenate([p.lengths for p in parts]))

    # -- access ------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def offsets(self) -> np.ndarray:
        out = np.zeros(len(self.lengths) + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=out[1:])
        return out

    @property
    def starts(self) -> np.ndarray:
        return self.offsets[:-1]

    def row_ids(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.lengths)), self.lengths)

    def positions(self) -> np.ndarray:
        """Position of each value inside its row."""
        return segment_positions(self.lengths)

    def row(self, j: int) -> np.ndarray:
        off = int(self.lengths[:j].sum())
        return self.values[off:off + int(self.lengths[j])]

    def rows(self) -> list[np.ndarray]:
        off = self.offsets.tolist()
        v = self.values
        return [v[a:b] for a, b in zip(off[:-1], off[1:])]

    def tolists(self) -> list[list[int]]:
        flat = self.values.tolist()
        out, off = [], 0
        for n in self.lengths.tolist():
            out.append(flat[off:off + n])
            off += n
        return out

    def slice(self, lo: int, hi: int) -> "Ragged":
        off = self.offsets
        return Ragged(self.values[off[lo]:off[hi]], self.lengths[lo:hi])

    def keep_values(self, keep: np.ndarray) -> "Ragged":
        """The values where `keep` (a mask over values) is set, in their rows."""
        kept = np.zeros(len(keep) + 1, dtype=np.int64)
        np.cumsum(keep, out=kept[1:])
        off = self.offsets
        return Ragged(self.values[keep], kept[off[1:]] - kept[off[:-1]])

    def select(self, keep: np.ndarray) -> "Ragged":
        keep = np.asarray(keep, dtype=bool)
        return Ragged(self.values[np.repeat(keep, self.lengths)], self.lengths[keep])



def segment_positions(lengths: np.ndarray) -> np.ndarray:
    """0..l-1 for each length l, concatenated (the position of each element in its segment)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    return np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)


def take_rows(r: Ragged, idx: np.ndarray) -> Ragged:
    """The rows `idx` of `r` (any order, repeats allowed), as one Ragged."""
    idx = np.asarray(idx, dtype=np.int64)
    if len(idx) and (idx.min() < -len(r) or idx.max() >= len(r)):
        raise IndexError("take_rows: row index out of range")
    idx = idx % max(len(r), 1)
    done = native.take_rows(r.values, r.starts, r.lengths, idx)
    if done is not None:
        return Ragged(done, r.lengths[idx])
    starts = r.starts[idx]
    lens = r.lengths[idx]
    out_start = np.cumsum(lens) - lens
    flat = np.repeat(starts - out_start, lens) + np.arange(int(lens.sum()))
    return Ragged(r.values[flat], lens)


def prepend(r: Ragged, const: Sequence[int]) -> Ragged:
    """Prefix every row with the same ids (e.g. task prefix + 32099)."""
    c = len(const)
    if c == 0:
        return r
    n = len(r)
    new_len = r.lengths + c
    out = np.empty(int(new_len.sum()), dtype=ID_DTYPE)
    new_starts = np.zeros(n, dtype=np.int64)
    np.cumsum(new_len[:-1], out=new_starts[1:])
    head = (new_starts[:, None] + np.arange(c)).ravel()
    mask = np.ones(len(out), dtype=bool)
    mask[head] = False
    out[head] = np.tile(np.asarray(const, dtype=ID_DTYPE), n)
    out[mask] = r.values
    return Ragged(out, new_len)


def join(parts: Sequence[Ragged], separators: Sequence[Sequence[int]] = ()) -> Ragged:
    """Row-wise concatenation: parts[0] sep[0] parts[1] sep[1] ... (same row count)."""
    n = len(parts[0])
    seps = [np.asarray(separators[k] if k < len(separators) else (), dtype=ID_DTYPE)
            for k in range(len(parts))]
    lengths = sum(p.lengths for p in parts) + sum(len(s) for s in seps)
    out = np.empty(int(lengths.sum()), dtype=ID_DTYPE)
    before = np.zeros(n, dtype=np.int64)  # row start + length of the earlier pieces
    np.cumsum(lengths[:-1], out=before[1:])
    for p, sep in zip(parts, seps):
        # One index per value: its row's slot start minus its offset in p, plus its index.
        shift = before - p.offsets[:-1]
        out[np.repeat(shift, p.lengths) + np.arange(len(p.values))] = p.values
        before += p.lengths
        if len(sep):
            out[before[:, None] + np.arange(len(sep))] = sep
            before += len(sep)
    return Ragged(out, lengths)


def shuffle_rows(r: Ragged, d) -> Ragged:
    """Independent uniform permutation of every row (`d`: a `Draws` stage for these rows).

    The permutation is `np.argsort(u + row)`, computed by `sorted_order`.
    """
    done = native.shuffle_rows(d.stream_keys(), r.lengths, r.values)
    if done is not None:
        return Ragged(done, r.lengths)
    u = d.numbers_unchecked(r.lengths)
    return Ragged(r.values[sorted_order(u, r.row_ids())], r.lengths)


def sorted_order(u: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """`np.argsort(u + rows)` for u in [0, 1) and ascending int row ids, faster.

    A float argsort is slower than `np.sort` of int64, so the order comes from
    `stable_sort_index` of the int key `row | top bits of u`. When the float keys
    `u + rows` are strictly increasing in that order, it is their unique sorted
    order, i.e. what `np.argsort` returns; otherwise (ties, which need nearly
    coinciding random numbers) `np.argsort` itself is used.
    """
    n = len(u)
    if n >= 2 and rows[0] >= 0:
        order = native.row_argsort(u, rows)  # per-row bucket sort in C, when there are no ties
        if order is not None:
            return order
    keys = u + rows
    if n < 2 or rows[0] < 0:
        return np.argsort(keys)
    ib = int(n - 1).bit_length()
    ub = 63 - ib - max(int(rows[-1]).bit_length(), 1)
    if ub < 24:
        return np.argsort(keys)
    composite = (u * float(1 << ub)).astype(np.int64)  # floor(u * 2^ub), monotone in u
    composite |= rows.astype(np.int64) << ub
    _, order = stable_sort_index(composite)
    k = keys[order]
    if not (k[1:] > k[:-1]).all():
        return np.argsort(keys)
    return order


def reverse_rows(r: Ragged) -> Ragged:
    off = r.offsets
    idx = np.repeat(off[1:] - 1, r.lengths) - r.positions()
    return Ragged(r.values[idx], r.lengths)


def unique_sorted(a: np.ndarray) -> np.ndarray:
    """Sorted distinct values (sort-based; NumPy 2's hash-based `unique` is slower here)."""
    s = sort_keys(a)
    if len(s) == 0:
        return s
    keep = np.empty(len(s), dtype=bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


def isin_sorted(probe: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """`np.isin` by sorting (NumPy 2's hash-based `isin` is slower on these sizes)."""
    s = sort_keys(keys)
    if len(s) == 0:
        return np.zeros(len(probe), dtype=bool)
    idx = np.minimum(np.searchsorted(s, probe), len(s) - 1)
    return s[idx] == probe


def first_in_rows(r: Ragged) -> np.ndarray:
    """Mask of the values that first occur in their row (C stamps, else a sort)."""
    mask = native.first_in_rows(r.values, r.lengths)
    if mask is None:
        mask = np.zeros(len(r.values), dtype=bool)
        mask[first_occurrences(r.row_ids().astype(np.int64) << 32 | r.values.astype(np.int64))] = True
    return mask


def first_occurrences(key: np.ndarray) -> np.ndarray:
    """Sorted indices of the first occurrence of each distinct value of `key`."""
    s, order = stable_sort_index(key)
    keep = np.empty(len(s), dtype=bool)
    if len(s):
        keep[0] = True
        np.not_equal(s[1:], s[:-1], out=keep[1:])
    return sort_keys(order[keep])


def fill_empty(r: Ragged, marker: int) -> Ragged:
    """Rows that are empty become [marker] (the authors' empty-output rule)."""
    empty = r.lengths == 0
    if not empty.any():
        return r
    lengths = np.where(empty, 1, r.lengths)
    out = np.empty(int(lengths.sum()), dtype=ID_DTYPE)
    starts = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    out[starts[empty]] = marker
    mask = np.ones(len(out), dtype=bool)
    mask[starts[empty]] = False
    out[mask] = r.values
    return Ragged(out, lengths)


def split_at_first(r: Ragged, sep: int) -> tuple[Ragged, Ragged]:
    """Each row -> (before the first `sep`, after it). Every row must contain `sep`."""
    hit = np.flatnonzero(r.values == sep)
    off = r.offsets
    # Rows of the hits, ascending: a row's first hit is where the row id changes.
    hit_rows = np.searchsorted(off, hit, side="right") - 1
    first = np.ones(len(hit), dtype=bool)
    np.not_equal(hit_rows[1:], hit_rows[:-1], out=first[1:])
    sep_pos = hit[first]
    if len(sep_pos) != len(r):
        raise ValueError(f"every raw input must contain the separator {sep}")
    left_len = sep_pos - off[:-1]
    right_len = r.lengths - left_len - 1
    return (Ragged(r.values[_spans(off[:-1], left_len)], left_len),
            Ragged(r.values[_spans(sep_pos + 1, right_len)], right_len))


def split_spans(r: Ragged, sep: int):
    """`split_at_first` without copies: (left, right) of every row as (values, starts,
    lengths) spans of r.values, or None without the C kernels. Every row must contain sep."""
    pos = native.first_index(r.values, r.offsets, sep)
    if pos is None:
        return None
    if (pos < 0).any():
        raise ValueError(f"every raw input must contain the separator {sep}")
    starts = r.starts
    return (r.values, starts, pos), (r.values, starts + pos + 1, r.lengths - pos - 1)


def rows_with_repeats(r: Ragged) -> np.ndarray:
    """Sorted indices of the rows that hold some value twice (values >= 0): by the C
    kernels' per-row bitmaps, else by sorting (row, value) keys (packed into uint32 when
    they fit, which sorts ~2x faster than int64)."""
    if not len(r.values):
        return np.zeros(0, np.int64)
    first = native.first_in_rows(r.values, r.lengths)
    if first is not None:
        repeats = np.zeros(len(first) + 1, dtype=np.int64)
        np.cumsum(~first, out=repeats[1:])
        off = r.offsets
        return np.flatnonzero(repeats[off[1:]] > repeats[off[:-1]])
    vb = max(int(r.values.max()).bit_length(), 1)
    dt = np.uint32 if vb + max(len(r) - 1, 1).bit_length() <= 32 else np.int64
    srt = sort_keys(r.row_ids().astype(dt) << dt(vb) | r.values.astype(dt))
    return unique_sorted(srt[1:][srt[1:] == srt[:-1]] >> dt(vb)).astype(np.int64)


def _spans(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Indices starts[k] .. starts[k] + lengths[k] - 1, for every k, concatenated."""
    return np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(
        int(lengths.sum()))


def partition_counts(d, n: np.ndarray, k: np.ndarray, nonzero: bool) -> np.ndarray:
    """Flat per-part sizes: row r splits n[r] into k[r] equally likely parts.

    A multinomial with equal probabilities is the histogram of uniform bin
    choices, which vectorises over rows. With `nonzero`, n-k balls are thrown and
    every part gets one more (the authors' `_random_partition_no_zeros`).
    `d` is a `Draws` stage for the rows.
    """
    n = np.asarray(n, dtype=np.int64)
    k = np.asarray(k, dtype=np.int64)
    balls = n - k if nonzero else n
    keys = d.stream_keys()
    if ((k > 0) | (balls <= 0)).all() and (balls >= 0).all():
        counts = native.partition(keys, balls, k)
        if counts is not None:
            return counts + 1 if nonzero else counts
    part_start = np.zeros(len(k), dtype=np.int64)
    np.cumsum(k[:-1], out=part_start[1:])
    kk = np.repeat(k, balls)
    bins = (d.numbers_unchecked(balls) * kk).astype(np.int64)
    bins = np.minimum(bins, kk - 1) + np.repeat(part_start, balls)
    counts = np.bincount(bins, minlength=int(k.sum()))
    return counts + 1 if nonzero else counts


class TokenPool:
    """The symbols a task draws from: T5 ids 2..31999, or a fixed sub-vocabulary."""

    def __init__(self, ids: np.ndarray | None = None):
        if ids is None:
            self.lo, self.hi = 2, 32000
            self.ids = None
        else:
            ids = np.unique(np.asarray(ids, dtype=np.int64))
            if len(ids) < 1 or ids.min() < 2:
                raise ValueError("a token pool needs ids >= 2")
            contiguous = ids[-1] - ids[0] + 1 == len(ids)
            self.lo, self.hi = (int(ids[0]), int(ids[-1]) + 1) if contiguous else (None, None)
            self.ids = None if contiguous else ids.astype(ID_DTYPE)
        self._list: list[int] | None = None

    @classmethod
    def sub_vocabulary(cls, num_tokens: int, vocab_seed: int = 0) -> "TokenPool":
        """`num_tokens` ids drawn once from 2..31999 (the copy-ablation sub-vocabulary)."""
        from synthpre_jax.synthetic.rng import config_generator

        if not 1 <= num_tokens <= 31998:
            raise ValueError("num_tokens must be in 1..31998")
        rng = config_generator(vocab_seed, f"sub_vocabulary:{num_tokens}", "vocab")
        return cls(2 + rng.choice(31998, size=num_tokens, replace=False))

    def __len__(self) -> int:
        return (self.hi - self.lo) if self.ids is None else len(self.ids)

    def draw(self, d, counts) -> np.ndarray:
        """counts[r] symbols for every row of the `Draws` stage d (flat)."""
        j = d.integers(len(self), counts)
        if self.ids is None:
            return (j + self.lo).astype(ID_DTYPE)
        return self.ids[j]

    def pick(self, u: np.ndarray) -> np.ndarray:
        """Pool symbols for uniform numbers u in [0, 1) (any shape)."""
        n = len(self)
        j = np.minimum((u * n).astype(np.int64), n - 1)
        if self.ids is None:
            return (j + self.lo).astype(ID_DTYPE)
        return self.ids[j]

    def as_list(self) -> list[int]:
        if self._list is None:
            self._list = (list(range(self.lo, self.hi)) if self.ids is None
                          else self.ids.tolist())
        return self._list

    def describe(self) -> str:
        return f"{self.lo}..{self.hi - 1}" if self.ids is None else f"{len(self.ids)} ids"


def append_eos_after_trim(r: Ragged, max_length: int | None, eos_id: int = 1) -> Ragged:
    """Trim rows to max_length-1 and append EOS (seqio's `append_eos_after_trim`)."""
    lengths = r.lengths if max_length is None else np.minimum(r.lengths, max_length - 1)
    keep = r.positions() < np.repeat(lengths, r.lengths)
    trimmed = Ragged(r.values[keep], lengths)
    ones = Ragged(np.full(len(r), eos_id, dtype=ID_DTYPE), np.ones(len(r), np.int64))
    return join([trimmed, ones])


def recut(blocks, size: int, count, concat, cut, keep_last: bool):
    """Re-cut a stream of blocks into blocks of exactly `size` items, in order.

    `count(b)` is a block's length, `concat(list)` joins blocks, `cut(b, lo, hi)`
    takes items lo..hi-1; the shorter remainder is yielded at the end if `keep_last`.
    """
    pending, have = [], 0
    for block in blocks:
        pending.append(block)
        have += count(block)
        if have < size:
            continue
        merged, start = concat(pending), 0
        while have - start >= size:
            yield cut(merged, start, start + size)
            start += size
        pending, have = [cut(merged, start, have)], have - start
    if keep_last and have:
        yield concat(pending)


def greedy_rows(lengths: np.ndarray, capacity: Sequence[int]) -> np.ndarray:
    """Row of each example when packing in order: a row closes when the next example
    would overflow any feature (lengths: [examples, features], each <= its capacity)."""
    rows = np.empty(len(lengths), dtype=np.int64)
    row, fill, cap = 0, [0] * len(capacity), list(capacity)
    for i, ex in enumerate(lengths.tolist()):
        if any(f + e > c for f, e, c in zip(fill, ex, cap)):
            row, fill = row + 1, ex
        else:
            fill = [f + e for f, e in zip(fill, ex)]
        rows[i] = row
    return rows


def pack_like_seqio(block: dict, lengths: dict) -> dict:
    """One group of examples packed into rows exactly as seqio's `trim_and_pack_dataset`.

    seqio packs groups of `max(lengths)` examples (its `padded_batch`); call this once
    per such group to reproduce its rows. Per group, as seqio does: each feature is
    trimmed to its length and then cut to as many leading ids as it has non-zero
    ids; examples join the current row while every feature fits; the last row is
    always written (an empty group gives one all-padding row). Returns int32
    [rows, length] arrays `<f>`, `<f>_positions` and `<f>_segment_ids`, the latter
    being seqio's `cumsum(position == 0) * (token != 0)` along the row.
    """
    feats = list(lengths)
    n = len(block[feats[0]])
    kept = {}
    for f in feats:
        r = block[f]
        nonzero = (r.positions() < np.repeat(np.minimum(r.lengths, lengths[f]), r.lengths)) & (r.values != 0)
        kept[f] = np.bincount(r.row_ids()[nonzero], minlength=n)
    row = greedy_rows(np.stack([kept[f] for f in feats], axis=1),
                      [lengths[f] for f in feats])
    num_rows = int(row[-1]) + 1 if n else 1
    new_row = np.ones(n, dtype=bool)
    new_row[1:] = row[1:] != row[:-1]
    out = {}
    for f in feats:
        r, size, length = block[f], kept[f], lengths[f]
        stream = np.cumsum(size) - size                  # start of each example, rows concatenated
        col = stream - np.repeat(stream[new_row], np.diff(np.append(np.flatnonzero(new_row), n)))
        within = segment_positions(size)
        src = np.repeat(r.starts, size) + within
        dst = np.repeat(row * length + col, size) + within
        tokens = np.zeros(num_rows * length, dtype=ID_DTYPE)
        positions = np.zeros(num_rows * length, dtype=ID_DTYPE)
        tokens[dst] = r.values[src]
        positions[dst] = within
        tokens, positions = tokens.reshape(num_rows, length), positions.reshape(num_rows, length)
        out[f], out[f + "_positions"] = tokens, positions
        out[f + "_segment_ids"] = (np.cumsum(positions == 0, axis=1, dtype=ID_DTYPE)
                                   * (tokens != 0)).astype(ID_DTYPE)
    return out


def stable_sort_index(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted keys, stable argsort) of non-negative int keys.

    When key and position fit in 63 bits together, both come from one sort of
    `key << b | position` (`native.sort_keys`: a radix sort, or NumPy's SIMD sort;
    several times faster than a stable argsort); the result is the same as
    `np.argsort(key, kind="stable")`.
    """
    key = np.asarray(key, dtype=np.int64)
    n = len(key)
    if n == 0:
        return key.copy(), np.zeros(0, np.int64)
    b = max(int(n - 1).bit_length(), 1)
    lo, hi = int(key.min()), int(key.max())
    if lo < 0 or hi.bit_length() + b > 63:
        order = np.argsort(key, kind="stable")
        return key[order], order
    if hi.bit_length() + b <= 32:  # half the bytes to sort
        packed = sort_keys((key.astype(np.uint32) << np.uint32(b)) | np.arange(n, dtype=np.uint32))
        return (packed >> np.uint32(b)).astype(np.int64), (packed & np.uint32((1 << b) - 1)).astype(np.int64)
    packed = sort_keys((key << b) | np.arange(n, dtype=np.int64))
    return packed >> b, packed & ((1 << b) - 1)
