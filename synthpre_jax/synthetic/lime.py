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
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from synthpre_jax.synthetic.base import SyntheticTask
from synthpre_jax.synthetic.pyset import ORDERS, set_list
from synthpre_jax.synthetic.ragged import Ragged, TokenPool
from synthpre_jax.synthetic.rng import Draws, UniformStream

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
        out = self.pool.pick(d.sub("try0").matrix(k)).astype(np.int64)
        attempt = 0
        while True:
            srt = np.sort(out, axis=1)
            bad = np.flatnonzero((srt[:, 1:] == srt[:, :-1]).any(axis=1))
            if not len(bad):
                return out
            attempt += 1
            out[bad] = self.pool.pick(d.take(bad).sub(f"try{attempt}").matrix(k))

    def sample_rows(self, d: Draws) -> dict:
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
