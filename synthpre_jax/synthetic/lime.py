"""LIME induct / deduct / abduct (Wu et al. 2021), as the release generates them (spec §1.3).

Per example: a fresh alphabet of 68 distinct ids (24 UPPER rule variables, 24
LOWER, 20 MATH); `num_chars ~ U{3..5}` variables, `pattern_length ~ U{5..19}`
MATH symbols; `2*num_chars` variable draws whose distinct values U are ordered
by CPython `set` iteration (as `list(set(pattern_chars))`); the rule is the
shuffled variables + MATH symbols; the case maps each u in U to U{2..8} symbols
of LOWER+MATH; the result is the rule with the case substituted.

  header = 32002 U... 32004 LOWER(24) 32005 MATH(20) 32001
  deduct: header rule 32001 case   -> result
  induct: header result 32001 case -> rule
  abduct: header rule 32001 result -> case
  case  = u 32000 32003 s1..sk 32006 for each u in U order (the authors' commas removed)

Examples whose input or target exceeds 220 tokens, counted the authors' way
(before the commas between case entries are removed), are re-drawn. The
authors re-draw the alphabet too; the acceptance test does not depend on the
alphabet's symbols, so keeping it is the same distribution. No task prefix.

Each example draws from its own counter-based stream (`rng.UniformStream`), in the order
the release's loop calls `random`. A block is sampled with NumPy calls over all its rows
at once (`sample_rows`), taking every row's numbers at the stream positions the
per-example loop would (`sample_rows_per_example`, kept as the reference; a test checks
they agree): ~6 us per example instead of ~45 us.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from synthpre_jax.synthetic.base import SyntheticTask
from synthpre_jax.synthetic.pyset import ORDERS, set_list, set_rows
from synthpre_jax.synthetic.ragged import (Ragged, TokenPool, join, rows_with_repeats,
                                           segment_positions, take_rows)
from synthpre_jax.synthetic.rng import Draws, UniformStream, stream_numbers

COLON, SEP, UPPER, LBRACKET, LOWER, MATH, RBRACKET = 32000, 32001, 32002, 32003, 32004, 32005, 32006
LIME_MODES = ("induct", "deduct", "abduct")


class LimeTask(SyntheticTask):
    """One LIME mode; `lime` is the equal-rate mixture of the three."""

    def __init__(self, mode: str, num_tokens: Optional[int] = None, vocab_seed: int = 0,
                 max_length: int = 220, order: str = "cpython", num_upper: int = 24,
                 num_lower: int = 24, num_math: int = 20, num_chars_range=(3, 5),
                 pattern_length_range=(5, 19), subst_length_range=(2, 8), codec=None):
        if mode not in LIME_MODES:
            raise ValueError(f"LIME mode must be one of {LIME_MODES}")
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}")
        self.task_id = mode
        self.mode = mode
        self.num_tokens, self.vocab_seed = num_tokens, vocab_seed
        self.pool = TokenPool() if num_tokens is None else TokenPool.sub_vocabulary(num_tokens, vocab_seed)
        self.sizes = (num_upper, num_lower, num_math)
        if len(self.pool) < sum(self.sizes):
            raise ValueError(f"LIME needs at least {sum(self.sizes)} tokens in the pool")
        for name, (lo, hi), least in (("num_chars_range", num_chars_range, 1),
                                      ("pattern_length_range", pattern_length_range, 0),
                                      ("subst_length_range", subst_length_range, 0)):
            if not least <= lo <= hi:
                raise ValueError(f"{name} must be (lo, hi) with {least} <= lo <= hi, "
                                 f"got {(lo, hi)}")
        if num_chars_range[1] > num_upper:
            raise ValueError("num_chars_range exceeds the number of UPPER symbols")
        self.max_length = max_length
        self.order = order
        self.num_chars_range = tuple(num_chars_range)
        self.pattern_length_range = tuple(pattern_length_range)
        self.subst_length_range = tuple(subst_length_range)
        self._defaults = (None, 220, "cpython", (24, 24, 20), (3, 5), (5, 19), (2, 8))
        self._check_feasible()

    def config(self) -> dict:
        cur = (self.num_tokens, self.max_length, self.order, self.sizes, self.num_chars_range,
               self.pattern_length_range, self.subst_length_range)
        names = ("num_tokens", "max_length", "order", "sizes", "num_chars", "pattern_length",
                 "subst_length")
        cfg = {n: c for n, c, d in zip(names, cur, self._defaults) if c != d}
        if self.num_tokens is not None:
            cfg["vocab_seed"] = self.vocab_seed
        return cfg

    def _alphabets(self, d: Draws) -> np.ndarray:
        """Row r: distinct pool ids (`random.sample(vocab, k=68)`), by per-row retries."""
        k = sum(self.sizes)
        if len(self.pool) <= 4 * k:  # small pool: a random permutation per row
            perm = np.argsort(d.sub("perm").matrix(len(self.pool)), axis=1)[:, :k]
            return self.pool.pick((perm + 0.5) / len(self.pool)).astype(np.int64)
        out = self.pool.pick(d.sub("try0").matrix(k))  # int32 ids: a faster sort than int64
        bad, attempt = _repeats(out), 0
        while len(bad):
            attempt += 1
            out[bad] = self.pool.pick(d.take(bad).sub(f"try{attempt}").matrix(k))
            bad = bad[_repeats(out[bad])]  # only re-drawn rows can repeat now
        return out.astype(np.int64)

    def sample_rows(self, d: Draws) -> dict:
        """A block at a time: every row's round of draws in one pass of NumPy calls, the
        rows that do not fit drawing again. The numbers are those the per-example loop
        (`sample_rows_per_example`, kept as the reference) takes from each row's stream,
        at the same positions, so the examples are the same."""
        alpha = self._alphabets(d.sub("alphabet"))
        keys = d.sub("structure").stream_keys()
        rows, used = np.arange(len(keys)), np.zeros(len(keys), np.int64)
        done, ins, outs = [], [], []
        while len(rows):
            fits, used_now, built = self._block_round(keys[rows], alpha[rows], used[rows])
            if built is not None:
                done.append(rows[fits])
                ins.append(built[0])
                outs.append(built[1])
            used[rows] += used_now
            rows = rows[~fits]
        order = np.argsort(np.concatenate(done)) if done else np.zeros(0, np.int64)
        return {"inputs": take_rows(Ragged.concat(ins), order),
                "targets": take_rows(Ragged.concat(outs), order)}

    def _block_round(self, keys: np.ndarray, alpha: np.ndarray, used: np.ndarray) -> tuple:
        """One `_round` for every row, vectorised: (fits, numbers used, (inputs, targets) of
        the rows that fit, or None). Row r's stream has given `used[r]` numbers so far."""
        nu, nl, nm = self.sizes
        (c0, c1), (p0, p1) = self.num_chars_range, self.pattern_length_range
        s0, s1 = self.subst_length_range
        n = len(keys)
        ar = np.arange(n)

        def numbers(r: np.ndarray, j: np.ndarray) -> np.ndarray:
            return stream_numbers(keys[r], j)

        def randint(u: np.ndarray, lo: int, hi: int) -> np.ndarray:
            return lo + np.minimum((u * (hi - lo + 1)).astype(np.int64), hi - lo)

        nc = randint(numbers(ar, used + 1), c0, c1)
        pl = randint(numbers(ar, used + 2), p0, p1)
        cnt = 2 * nc
        length = cnt + pl
        rc = np.repeat(ar, cnt)
        cidx = (numbers(rc, used[rc] + 3 + segment_positions(cnt)) * nc[rc]).astype(np.int64)
        variables = set_rows("set", Ragged(alpha[rc, cidx], cnt), order=self.order)
        nv = variables.lengths
        rv = variables.row_ids()
        rank = np.zeros((n, c1), np.int64)  # alphabet index of a variable -> its place in U
        rank[rv, np.argmax(alpha[rv, :c1] == variables.values[:, None], axis=1)] = \
            variables.positions()
        # Substitution lengths, variable by variable in U's order (their numbers follow the
        # pattern's and the shuffle's), and where each one's symbols start.
        nxt = used + 3 + length + np.maximum(length - 1, 0)
        slen = np.zeros((n, c1), np.int64)
        sfirst = np.zeros((n, c1), np.int64)
        for p in range(int(nv.max(initial=0))):
            a = np.flatnonzero(nv > p)
            sl = randint(numbers(a, nxt[a]), s0, s1)
            slen[a, p], sfirst[a, p] = sl, nxt[a] + 1
            nxt[a] += 1 + sl
        result_len = np.bincount(rc, weights=slen[rc, rank[rc, cidx]], minlength=n).astype(
            np.int64) + pl
        case_len = slen.sum(axis=1) + 5 * nv - 1  # the authors' count, commas included
        body = {"induct": (result_len + 1 + case_len, length),
                "deduct": (length + 1 + case_len, result_len),
                "abduct": (length + 1 + result_len, case_len)}[self.mode]
        fits = (4 + nv + nl + nm + body[0] <= self.max_length) & (body[1] <= self.max_length)
        used_now = nxt - used - 1
        if not fits.any():
            return fits, used_now, None
        return fits, used_now, self._build(np.flatnonzero(fits), numbers, alpha, used, nc, pl,
                                           cidx, rc, variables, rank, slen, sfirst)

    def _build(self, a, numbers, alpha, used, nc, pl, cidx, rc, variables, rank, slen,
               sfirst) -> tuple:
        """(inputs, targets) of rows `a`: the math symbols, the shuffle and the substitution
        symbols are drawn only for the rows that fit (the others need just their lengths)."""
        nu, nl, nm = self.sizes
        m, c1 = len(a), rank.shape[1]
        ua, cnt, pl_a = used[a], 2 * nc[a], pl[a]
        length = cnt + pl_a
        ra = np.repeat(np.arange(m), pl_a)
        midx = nu + nl + (numbers(a[ra], ua[ra] + 3 + cnt[ra] + segment_positions(pl_a))
                          * nm).astype(np.int64)
        # The pattern (chars, then math symbols) as alphabet indices in a padded matrix,
        # shuffled in place: Fisher-Yates from the end, vectorised over rows, step j swapping
        # position L-1-j of every row with L-1-j > 0. Rows sorted by length, longest first,
        # so the rows of step j are a prefix.
        width = int(length.max())
        pat = np.zeros((m, width), np.int64)
        pat[np.arange(width)[None, :] < cnt[:, None]] = cidx[np.isin(rc, a)]
        is_math = ((np.arange(width)[None, :] >= cnt[:, None])
                   & (np.arange(width)[None, :] < length[:, None]))
        pat[is_math] = midx
        steps = np.maximum(length - 1, 0)
        by_len = np.argsort(-steps, kind="stable")
        jj = np.arange(max(width - 1, 0))
        sl, lsorted = steps[by_len], length[by_len]
        valid = jj[None, :] < sl[:, None]
        u = np.zeros(valid.shape)
        rows_v = np.repeat(by_len, sl)
        u[valid] = numbers(a[rows_v], ua[rows_v] + 3 + length[rows_v] + segment_positions(sl))
        pos_i = lsorted[:, None] - 1 - jj[None, :]
        base = (by_len * width)[:, None]
        swap_i = np.ascontiguousarray((base + pos_i).T)
        swap_k = np.ascontiguousarray((base + (u * (pos_i + 1)).astype(np.int64)).T)
        count = valid.sum(axis=0)
        flat = pat.ravel()
        for j in range(width - 1):
            pi, pk = swap_i[j, :count[j]], swap_k[j, :count[j]]
            t = flat[pi]
            flat[pi] = flat[pk]
            flat[pk] = t
        in_row = np.arange(width)[None, :] < length[:, None]
        pattern_idx = pat[in_row]
        rp = np.repeat(np.arange(m), length)
        al = alpha[a]
        # Substitutions: segment (row, p) for p < nv, row-major, as ids of LOWER + MATH.
        nv = variables.lengths[a]
        has = np.arange(c1)[None, :] < nv[:, None]
        seg_len = slen[a][has]
        seg_row = np.repeat(np.arange(m), nv)
        vr = np.repeat(seg_row, seg_len)
        sidx = nu + (numbers(a[vr], np.repeat(sfirst[a][has], seg_len)
                             + segment_positions(seg_len)) * (nl + nm)).astype(np.int64)
        sub_vals = al[vr, sidx]
        seg_start = np.zeros((m, c1), np.int64)
        seg_start[has] = np.cumsum(seg_len) - seg_len
        # Result: each pattern symbol, a variable replaced by its substitution; gathered
        # from the substitutions followed by the alphabets.
        is_var = pattern_idx < c1
        pv = rank[a][rp, np.minimum(pattern_idx, c1 - 1)]
        piece_len = np.where(is_var, slen[a][rp, pv], 1)
        src = np.concatenate([sub_vals, al.ravel()])
        piece_start = np.where(is_var, seg_start[rp, pv],
                               len(sub_vals) + rp * al.shape[1] + pattern_idx)
        result = _gather(src, piece_start, piece_len,
                         np.bincount(rp, weights=piece_len, minlength=m).astype(np.int64))
        pattern = Ragged(al[rp, pattern_idx], length)
        # Case: per variable in U order, u : [ s.. ].
        vars_a = take_rows(variables, a)
        case_seg = seg_len + 4
        cs = np.cumsum(case_seg) - case_seg
        case_vals = np.empty(int(case_seg.sum()), np.int32)
        case_vals[cs] = vars_a.values
        case_vals[cs + 1] = COLON
        case_vals[cs + 2] = LBRACKET
        case_vals[cs + case_seg - 1] = RBRACKET
        case_vals[np.repeat(cs + 3 - seg_start[has], seg_len) + np.arange(len(sub_vals))] = sub_vals
        case = Ragged(case_vals, np.bincount(seg_row, weights=case_seg, minlength=m).astype(
            np.int64))
        # Header: UPPER U LOWER lower MATH math SEP; LOWER..SEP is the same width in every row.
        fixed = np.empty((m, nl + nm + 3), np.int32)
        fixed[:, 0], fixed[:, nl + 1], fixed[:, -1] = LOWER, MATH, SEP
        fixed[:, 1:nl + 1], fixed[:, nl + 2:-1] = al[:, nu:nu + nl], al[:, nu + nl:]
        first, second = {"induct": (result, case), "deduct": (pattern, case),
                         "abduct": (pattern, result)}[self.mode]
        none = Ragged(np.zeros(0, np.int32), np.zeros(m, np.int64))
        inputs = join([none, vars_a, Ragged(fixed.ravel(), np.full(m, nl + nm + 3)), first,
                       second], [[UPPER], [], [], [SEP]])
        return inputs, {"induct": pattern, "deduct": result, "abduct": case}[self.mode]

    def sample_rows_per_example(self, d: Draws) -> dict:
        """The per-example loop on Python lists (the reference for `sample_rows`)."""
        alphas = self._alphabets(d.sub("alphabet")).tolist()
        streams = d.sub("structure").streams(128)
        nu, nl, nm = self.sizes
        ins, outs = [], []
        for alpha, stream in zip(alphas, streams):
            upper, lower, math = alpha[:nu], alpha[nu:nu + nl], alpha[nu + nl:]
            inp, tgt = self._one(stream, upper, lower, math)
            ins.append(inp)
            outs.append(tgt)
        return {"inputs": Ragged.from_rows(ins), "targets": Ragged.from_rows(outs)}

    def _round(self, st: UniformStream, upper: list, lower: list, math: list) -> tuple:
        """One draw of the structure, and whether both sides fit `max_length`."""
        lo_math = lower + math
        c0, c1 = self.num_chars_range
        p0, p1 = self.pattern_length_range
        s0, s1 = self.subst_length_range
        limit = self.max_length
        num_chars = st.randint(c0, c1)
        pattern_length = st.randint(p0, p1)
        chars = st.choices(upper[:num_chars], 2 * num_chars)
        variables = set_list(chars, self.order)
        pattern = chars + st.choices(math, pattern_length)
        st.shuffle(pattern)
        subst = {u: st.choices(lo_math, st.randint(s0, s1)) for u in variables}
        result = []
        for t in pattern:
            result.extend(subst[t] if t in subst else (t,))
        case_len = sum(len(s) + 5 for s in subst.values()) - 1  # u : [ s.. ] , (last , dropped)
        header_len = 4 + len(variables) + len(lower) + len(math)
        body = {"induct": (len(result) + 1 + case_len, len(pattern)),
                "deduct": (len(pattern) + 1 + case_len, len(result)),
                "abduct": (len(pattern) + 1 + len(result), case_len)}[self.mode]
        fits = header_len + body[0] <= limit and body[1] <= limit
        return fits, variables, pattern, subst, result

    def _check_feasible(self, rounds: int = 300) -> None:
        """A max_length (or size ranges) that the structure almost never fits would make
        sampling loop forever: require one of `rounds` fixed draws to fit."""
        st = UniformStream(12345)
        nu, nl, nm = self.sizes
        ids = list(range(10_000, 10_000 + nu + nl + nm))
        upper, lower, math = ids[:nu], ids[nu:nu + nl], ids[nu + nl:]
        if not any(self._round(st, upper, lower, math)[0] for _ in range(rounds)):
            raise ValueError(f"LIME {self.mode}: none of {rounds} draws fit "
                             f"max_length={self.max_length}; raise it or shorten the ranges")

    def _one(self, st: UniformStream, upper: list, lower: list, math: list) -> tuple:
        while True:
            fits, variables, pattern, subst, result = self._round(st, upper, lower, math)
            if fits:
                break
        header = [UPPER] + variables + [LOWER] + lower + [MATH] + math + [SEP]
        case = []
        for u in variables:
            case += [u, COLON, LBRACKET] + subst[u] + [RBRACKET]
        if self.mode == "induct":
            return header + result + [SEP] + case, pattern
        if self.mode == "deduct":
            return header + pattern + [SEP] + case, result
        return header + pattern + [SEP] + result, case


def _gather(src: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
            row_lengths: np.ndarray) -> Ragged:
    """Pieces src[starts[k]:starts[k] + lengths[k]] concatenated, cut into rows."""
    shift = starts - (np.cumsum(lengths) - lengths)
    return Ragged(src[np.repeat(shift, lengths) + np.arange(int(lengths.sum()))], row_lengths)


def _repeats(m: np.ndarray) -> np.ndarray:
    """Indices of the rows of matrix `m` that hold some value twice."""
    return rows_with_repeats(Ragged(m.ravel(), np.full(len(m), m.shape[1])))
