"""nesting_language: a nested-dependency artificial language after Ri & Tsuruoka (ACL 2022).

The authors' generator is not public (spec §1.5), so this is our construction,
with every parameter configurable:

  * vocabulary: `num_pairs` head/dependent pairs (default 15,999, i.e. every T5
    id 2..31999: head of rank r is 2+2r, its dependent 3+2r). Ids never use 0
    (PAD, which `reduce_concat_tokens` strips), 1 (EOS) or the sentinels >= 32000;
  * heads are Zipf-distributed over ranks: P(rank r) ∝ (r+1)^-zipf_exponent
    (default 1.0, natural-language-like);
  * a sentence has `n ~ U{min_pairs..max_pairs}` dependency arcs (default 2..16,
    so 4..32 tokens). It is written left to right by a stack process: when both
    are allowed, open a new arc (emit a fresh Zipf head, push it) with
    probability `open_prob` (default 0.5), else close the innermost open arc
    (emit the dependent of the head on top of the stack). An arc must open when
    none is open, must close when `n` arcs were opened or `max_depth` (default
    8) are open. Arcs therefore nest like brackets, and `open_prob`/`max_depth`
    set the depth distribution;
  * an example (one line of the authors' file format) is a document of
    `sentences_per_example` sentences (default 16) concatenated. Training
    applies T5 span corruption, which concatenates examples again
    (`reduce_concat_tokens`) and cuts them to the noising length.

The examples are targets-only sequences (feature "targets").
"""
from __future__ import annotations

import numpy as np

from synthpre_jax.synthetic import native
from synthpre_jax.synthetic.base import SyntheticTask
from synthpre_jax.synthetic.ragged import ID_DTYPE, Ragged
from synthpre_jax.synthetic.rng import Draws, stream_numbers


GUIDE_BITS = 16      # head_ranks' guide table: 2^16 buckets of u
GUIDE_MAX_STEPS = 8  # wider buckets: plain binary search


class NestingLanguageTask(SyntheticTask):
    task_id = "nesting_language"
    features = ("targets",)
    _DEFAULTS = dict(num_pairs=15999, zipf_exponent=1.0, min_pairs=2, max_pairs=16,
                     open_prob=0.5, max_depth=8, sentences_per_example=16, first_id=2)

    def __init__(self, num_pairs: int = 15999, zipf_exponent: float = 1.0, min_pairs: int = 2,
                 max_pairs: int = 16, open_prob: float = 0.5, max_depth: int = 8,
                 sentences_per_example: int = 16, first_id: int = 2, codec=None):
        if first_id < 2 or first_id + 2 * num_pairs > 32000:
            raise ValueError("ids must stay within 2..31999 (no PAD/EOS, no sentinels)")
        if not 1 <= min_pairs <= max_pairs or max_depth < 1 or not 0 < open_prob <= 1:
            raise ValueError("need 1 <= min_pairs <= max_pairs, max_depth >= 1, 0 < open_prob <= 1")
        if num_pairs < 1 or sentences_per_example < 1:
            raise ValueError("need num_pairs >= 1 and sentences_per_example >= 1")
        self.num_pairs, self.zipf_exponent = int(num_pairs), float(zipf_exponent)
        self.min_pairs, self.max_pairs = int(min_pairs), int(max_pairs)
        self.open_prob, self.max_depth = float(open_prob), int(max_depth)
        self.sentences_per_example, self.first_id = int(sentences_per_example), int(first_id)
        weights = np.arange(1, self.num_pairs + 1, dtype=np.float64) ** -self.zipf_exponent
        self._cdf = np.cumsum(weights) / weights.sum()

    def config(self) -> dict:
        cur = dict(num_pairs=self.num_pairs, zipf_exponent=self.zipf_exponent,
                   min_pairs=self.min_pairs, max_pairs=self.max_pairs, open_prob=self.open_prob,
                   max_depth=self.max_depth, sentences_per_example=self.sentences_per_example,
                   first_id=self.first_id)
        return {k: v for k, v in cur.items() if v != self._DEFAULTS[k]}

    def head_ranks(self, u: np.ndarray) -> np.ndarray:
        """Zipf ranks for uniform numbers u: `searchsorted(cdf, u, side="right")`.

        A binary search per draw over 16k ranks is the slowest step of the task, so a
        guide table (the ranks at u = b/2^16) narrows each search to the few ranks of
        u's bucket, then a handful of vectorised compare-and-step passes finish it
        with the same result. Falls back to `searchsorted` when buckets are wide.
        """
        guide = self._guide()
        if guide is None:
            return np.minimum(np.searchsorted(self._cdf, u, side="right"), self.num_pairs - 1)
        lo, steps, cdf_ext = guide
        r = lo[(u * float(1 << GUIDE_BITS)).astype(np.int64)]
        for _ in range(steps):
            r += cdf_ext[r] <= u
        return np.minimum(r, self.num_pairs - 1)

    def _guide(self):
        if not hasattr(self, "_guide_cache"):
            edges = np.arange((1 << GUIDE_BITS) + 1, dtype=np.float64) / (1 << GUIDE_BITS)
            pos = np.searchsorted(self._cdf, edges, side="right")
            steps = int((pos[1:] - pos[:-1]).max())
            self._guide_cache = None if steps > GUIDE_MAX_STEPS else (
                pos[:-1].astype(np.int64), steps, np.append(self._cdf, np.inf))
        return self._guide_cache

    def sentences(self, d: Draws, k: int) -> Ragged:
        """k sentences per row of `d`, all written in lockstep (one NumPy step per position)."""
        rows = len(d)
        count = rows * k
        mp = self.max_pairs
        span = mp - self.min_pairs + 1
        u_n = d.sub("pairs").matrix(k).reshape(-1)
        n = self.min_pairs + np.minimum((u_n * span).astype(np.int64), span - 1)
        lib = native.kernels()
        if lib is not None and count:
            return self._sentences_native(lib, d, k, n)
        u_heads = d.sub("heads").matrix(k * mp).reshape(count, mp)
        used = np.arange(mp)[None, :] < n[:, None]   # heads past a sentence's n are never read
        heads = np.zeros((count, mp), dtype=ID_DTYPE)
        heads[used] = self.first_id + 2 * self.head_ranks(u_heads[used])
        moves = d.sub("moves").matrix(k * 2 * mp).reshape(count, 2 * mp)
        steps = 2 * int(n.max()) if count else 0
        # Sentences sorted by length (longest first), so the ones still being written
        # at position t are a prefix and every step works on array views.
        perm = np.argsort(-n, kind="stable")
        ns = n[perm]
        live = np.searchsorted(-2 * ns, -np.arange(steps), side="left")  # #(2n > t)
        may_open = np.ascontiguousarray((moves[:, :steps] < self.open_prob)[perm].T)
        # The loop tracks arcs by their open index k (int32, narrow and cheap); the
        # stack has a spare column D that takes the writes of sentences that close.
        D = self.max_depth
        ns32 = ns.astype(np.int32)
        stack = np.zeros(count * (D + 1), dtype=np.int32)
        arc = np.zeros((max(steps, 1), count), dtype=np.int32)   # k of the arc at (t, sentence)
        opens = np.zeros((max(steps, 1), count), dtype=bool)
        depth = np.zeros(count, dtype=np.int32)
        opened = np.zeros(count, dtype=np.int32)
        stack_base = np.arange(count, dtype=np.int32) * np.int32(D + 1)
        spare = stack_base + np.int32(D)
        one = np.int32(1)
        for t in range(steps):
            m = int(live[t])
            dp, op = depth[:m], opened[:m]
            do_open = (op < ns32[:m]) & (dp < D) & ((dp == 0) | may_open[t, :m])
            top = stack[stack_base[:m] + np.maximum(dp - one, 0)]
            arc[t, :m] = np.where(do_open, op, top)
            opens[t, :m] = do_open
            stack[np.where(do_open, stack_base[:m] + dp, spare[:m])] = op
            inc = do_open.astype(np.int32)
            dp += inc
            dp += inc
            dp -= one
            op += inc
        # Token = the arc's head, +1 where the position closes the arc.
        arc += (perm * mp).astype(np.int32)[None, :]
        out = heads.ravel()[arc]
        out += ~opens
        # Back to the original sentence order, one row per sentence, cut to its length.
        inv = np.empty_like(perm)
        inv[perm] = np.arange(count)
        rows = out.T[inv]
        lengths = 2 * n
        return Ragged(rows[np.arange(rows.shape[1])[None, :] < lengths[:, None]], lengths)

    def _sentences_native(self, lib, d: Draws, k: int, n: np.ndarray) -> Ragged:
        """`sentences` with the walk in C, drawing only the numbers it reads: sentence i of
        row r takes head p and move t from the same stream positions as the matrices of the
        NumPy path (i * max_pairs + p + 1 and i * 2 * max_pairs + t + 1)."""
        mp = self.max_pairs
        sent = np.arange(len(n))
        row, i = sent // k, sent % k
        heads_at = np.repeat(i * mp + 1 - (np.cumsum(n) - n), n) + np.arange(int(n.sum()))
        srow = np.repeat(row, n)
        heads = (self.first_id + 2 * self.head_ranks(
            stream_numbers(d.sub("heads").stream_keys()[srow], heads_at))).astype(np.int32)
        n2 = 2 * n
        moves_at = np.repeat(i * 2 * mp + 1 - (np.cumsum(n2) - n2), n2) + np.arange(int(n2.sum()))
        may_open = (stream_numbers(d.sub("moves").stream_keys()[np.repeat(row, n2)], moves_at)
                    < self.open_prob).view(np.uint8)
        out = np.empty(int(n2.sum()), dtype=np.int32)
        n = np.ascontiguousarray(n, dtype=np.int64)
        lib.nl_walk(len(n), n.ctypes.data, may_open.ctypes.data, heads.ctypes.data,
                    self.max_depth, out.ctypes.data)
        return Ragged(out, n2)

    def sample_rows(self, d: Draws) -> dict:
        k = self.sentences_per_example
        sents = self.sentences(d, k)
        per_example = sents.lengths.reshape(len(d), k).sum(axis=1)
        return {"targets": Ragged(sents.values, per_example)}


def arcs(sentence: np.ndarray, first_id: int = 2) -> list[tuple[int, int]]:
    """(head position, dependent position) of every arc; raises if brackets do not nest.

    A checker independent of the generator: heads are ids with even offset from
    `first_id`, and each dependent (head + 1) must close the innermost open head.
    """
    stack: list[int] = []
    out = []
    for pos, tok in enumerate(np.asarray(sentence).tolist()):
        if (tok - first_id) % 2 == 0:
            stack.append(pos)
        else:
            if not stack or sentence[stack[-1]] + 1 != tok:
                raise ValueError(f"token {tok} at {pos} does not close the innermost head")
            out.append((stack.pop(), pos))
    if stack:
        raise ValueError("unclosed heads")
    return out
