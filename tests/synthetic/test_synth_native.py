"""The generators' C kernels (`synthetic.native`) against NumPy and Python references."""
from __future__ import annotations

import numpy as np
import pytest

from synthpre_jax.synthetic import native
from synthpre_jax.synthetic.native import sort_keys

needs_kernels = pytest.mark.skipif(native.kernels() is None, reason="no C compiler here")


@needs_kernels
@pytest.mark.parametrize("dtype,bits", [(np.int64, 41), (np.int64, 63), (np.uint64, 64),
                                        (np.uint32, 25), (np.uint32, 32), (np.int32, 31),
                                        (np.int64, 11), (np.int64, 0)])
@pytest.mark.parametrize("n", [native.MIN_RADIX, 5000, 70001])
def test_radix_sort_equals_numpy(dtype, bits, n):
    rng = np.random.default_rng(bits * 7 + n)
    hi = np.iinfo(dtype).max if bits == np.iinfo(dtype).bits else (1 << bits) - 1
    a = rng.integers(0, hi, n, dtype=dtype, endpoint=True)
    a[::7] = a[3]  # repeats
    a[: n // 3] = np.sort(a[: n // 3])[::-1]  # a descending run
    if bits > 20:  # keys sharing their low digits: some passes are skipped, others not
        a[n // 2:] &= ~np.array((1 << 11) - 1, dtype=dtype)
    got = sort_keys(a)
    assert got.dtype == a.dtype and np.array_equal(got, np.sort(a))
    assert not np.shares_memory(got, a)


def test_fallbacks_give_numpy_results(monkeypatch):
    rng = np.random.default_rng(0)
    for a in (rng.integers(-50, 50, 5000), rng.integers(0, 9, 10), np.zeros(0, np.int64),
              rng.integers(0, 2**15, 5000).astype(np.int16)):
        assert np.array_equal(sort_keys(a), np.sort(a))
    monkeypatch.setattr(native, "kernels", lambda: None)
    a = rng.integers(0, 2**40, 9000)
    assert np.array_equal(sort_keys(a), np.sort(a))


@needs_kernels
def test_row_argsort_equals_numpy_argsort():
    from synthpre_jax.synthetic.ragged import sorted_order

    rng = np.random.default_rng(3)
    lengths = rng.integers(0, 300, 500)
    lengths[::17] = 1
    rows = np.repeat(np.arange(len(lengths)) + 7, lengths)
    u = rng.random(len(rows))
    u[:50] = rng.permutation(50) / 500  # distinct values crowded into a few buckets
    got = native.row_argsort(u, rows)
    assert got is not None and np.array_equal(got, np.argsort(u + rows))
    assert np.array_equal(sorted_order(u, rows), np.argsort(u + rows))
    # A tie (equal keys in a row) is np.argsort's to order: the kernel declines.
    u[10] = u[11] = 0.5
    rows[10] = rows[11]
    assert native.row_argsort(u, rows) is None
    k = u + rows
    assert np.array_equal(k[sorted_order(u, rows)], np.sort(k))


def test_first_in_rows_with_and_without_kernels(monkeypatch):
    from synthpre_jax.synthetic.ragged import Ragged, first_in_rows

    rng = np.random.default_rng(4)
    rows = [list(rng.integers(0, m, n)) for m, n in rng.integers(1, 400, (300, 2))]
    r = Ragged.from_rows(rows)
    want = np.concatenate([[v not in row[:i] for i, v in enumerate(row)] for row in rows])
    assert np.array_equal(first_in_rows(r), want)
    monkeypatch.setattr(native, "kernels", lambda: None)
    assert np.array_equal(first_in_rows(r), want)
    big = Ragged.from_rows([[1 << 30, 5, 1 << 30]])
    assert first_in_rows(big).tolist() == [True, True, False]


@needs_kernels
def test_counter_numbers_are_the_numpy_ones(monkeypatch):
    """uniform / integers / matrix / stream_numbers / sub: the kernels' values are bit-identical
    to the NumPy SplitMix64 path (zero counts, huge keys and counters included)."""
    from synthpre_jax.synthetic.rng import Draws, stream_numbers

    keys = np.array([0, 1, 2**64 - 1, 0x9E3779B97F4A7C15, 12345, 2**63], dtype=np.uint64)
    counts = np.array([3, 0, 7, 1, 200, 2])
    j = np.array([1, 2**40, 5, 0, 2**62, 77])

    def draw_all():
        return (Draws(keys).uniform(counts), Draws(keys).integers(31998, counts),
                Draws(keys).integers(1, 5), Draws(keys).matrix(9),
                Draws(keys).matrix_unchecked(4, offset=2**33), stream_numbers(keys, j),
                Draws(keys).sub("a stage").sub("try3").keys)

    fast = draw_all()
    monkeypatch.setattr(native, "kernels", lambda: None)
    slow = draw_all()
    for f, s in zip(fast, slow):
        assert f.dtype == s.dtype and f.shape == s.shape and np.array_equal(f, s)
    assert fast[0].min() >= 0 and fast[0].max() < 1 and fast[1].max() < 31998


def test_find_rows_with_and_without_kernels(monkeypatch):
    from synthpre_jax.synthetic.ragged import Ragged
    from synthpre_jax.synthetic.simple_solve import find_rows, find_sublist

    rng = np.random.default_rng(5)
    seqs, queries = [], []
    for _ in range(400):
        alphabet = int(rng.choice([2, 3, 50]))
        s = list(rng.integers(0, alphabet, int(rng.integers(0, 60))))
        if rng.random() < 0.4 and len(s) > 2:  # a query cut from the seq
            a = int(rng.integers(0, len(s) - 1))
            q = s[a:a + int(rng.integers(1, 8))]
        else:
            q = list(rng.integers(0, alphabet, int(rng.integers(0, 70))))
        seqs.append(s)
        queries.append(q)
    seq, query = Ragged.from_rows(seqs), Ragged.from_rows(queries)
    want = [find_sublist(np.array(s, np.int32), np.array(q, np.int32)) for s, q in zip(seqs, queries)]
    assert find_rows(seq, query).tolist() == want
    monkeypatch.setattr(native, "kernels", lambda: None)
    assert find_rows(seq, query).tolist() == want


def test_sort_target_with_and_without_kernels(monkeypatch):
    """solve_sort: seq stably sorted by each token's last index in order (order with
    repeats), the C path against the NumPy path and a per-row Python reference."""
    from synthpre_jax.synthetic.ragged import Ragged
    from synthpre_jax.synthetic.simple_solve import SOLVERS

    rng = np.random.default_rng(6)
    raws, want = [], []
    for _ in range(300):
        order = list(rng.integers(2, int(rng.choice([5, 40, 32000])), int(rng.integers(1, 30))))
        seq = [order[int(i)] for i in rng.integers(0, len(order), int(rng.integers(0, 50)))]
        rank = {v: i for i, v in enumerate(order)}  # the last index wins
        raws.append(seq + [32097] + order)
        want.append(sorted(seq, key=lambda v: rank[v]))
    raw = Ragged.from_rows(raws)
    solve = SOLVERS["sort"]
    assert solve(raw, None, "cpython").tolists() == want
    bad = Ragged.from_rows([[5, 32097, 5, 6], [7, 32097, 5]])
    with pytest.raises(ValueError, match="must appear in order"):
        solve(bad, None, "cpython")
    monkeypatch.setattr(native, "kernels", lambda: None)
    assert solve(raw, None, "cpython").tolists() == want
    with pytest.raises(ValueError, match="must appear in order"):
        solve(bad, None, "cpython")


@needs_kernels
def test_counter_picks_are_the_numpy_picks():
    from synthpre_jax.synthetic.ragged import Ragged, join
    from synthpre_jax.synthetic.rng import Draws

    rng = np.random.default_rng(7)
    keys1, keys2 = (rng.integers(0, 2**64, 300, dtype=np.uint64, endpoint=False)
                    for _ in range(2))
    sizes = rng.integers(1, 120, 300)
    counts1, counts2 = rng.integers(0, 250, 300), rng.integers(0, 250, 300)
    values = rng.integers(2, 32000, int(sizes.sum())).astype(np.int32)
    starts = np.cumsum(sizes) - sizes
    got = native.counter_pick_pair_rows(keys1, counts1, keys2, counts2, values, starts, sizes,
                                        32097)

    def picks(keys, counts):
        mm = np.repeat(sizes, counts)
        j = np.minimum((Draws(keys).uniform(counts) * mm).astype(np.int64), mm - 1)
        return Ragged(values[np.repeat(starts, counts) + j], counts)

    want = join([picks(keys1, counts1), picks(keys2, counts2)], [[32097]])
    assert np.array_equal(got, want.values)


@needs_kernels
def test_shuffle_rows_in_one_pass_equals_the_argsort_path(monkeypatch):
    from synthpre_jax.synthetic.ragged import Ragged, shuffle_rows
    from synthpre_jax.synthetic.rng import Draws

    rng = np.random.default_rng(8)
    lengths = rng.integers(0, 400, 700)
    lengths[::9] = 0
    r = Ragged(rng.integers(2, 32000, int(lengths.sum())).astype(np.int32), lengths)
    keys = rng.integers(0, 2**64, 700, dtype=np.uint64, endpoint=False)
    fast = shuffle_rows(r, Draws(keys))
    u = Draws(keys).uniform(lengths)
    want = r.values[np.argsort(u + r.row_ids())]
    assert np.array_equal(fast.values, want) and np.array_equal(fast.lengths, lengths)
    monkeypatch.setattr(native, "kernels", lambda: None)
    assert np.array_equal(shuffle_rows(r, Draws(keys)).values, want)


def test_partition_counts_with_and_without_kernels(monkeypatch):
    from synthpre_jax.synthetic.ragged import partition_counts
    from synthpre_jax.synthetic.rng import Draws

    rng = np.random.default_rng(9)
    keys = rng.integers(0, 2**64, 500, dtype=np.uint64, endpoint=False)
    k = rng.integers(1, 60, 500)
    n = k + rng.integers(0, 200, 500)
    for nonzero in (True, False):
        fast = partition_counts(Draws(keys), n, k, nonzero)
        with monkeypatch.context() as mp:
            mp.setattr(native, "kernels", lambda: None)
            slow = partition_counts(Draws(keys), n, k, nonzero)
        assert np.array_equal(fast, slow)
        sums = np.add.reduceat(fast, np.cumsum(k) - k)
        assert np.array_equal(sums, n) and (fast >= (1 if nonzero else 0)).all()


@pytest.mark.parametrize("num_tokens", [None, 300, 5000])
def test_set_op_examples_with_and_without_kernels(num_tokens, monkeypatch):
    """Sub-vocabulary draws with retries, operand picks and set layouts in C give the
    examples of the NumPy/Python path (contiguous pool, small pool, scattered ids)."""
    from synthpre_jax.synthetic.base import generate_range
    from synthpre_jax.synthetic.simple import SimpleTask

    t = SimpleTask("union", num_tokens=num_tokens)
    fast = generate_range(t, 2, "train", 0, 1500)
    monkeypatch.setattr(native, "kernels", lambda: None)
    slow = generate_range(t, 2, "train", 0, 1500)
    for f in ("inputs", "targets"):
        assert np.array_equal(fast[f].values, slow[f].values)
        assert np.array_equal(fast[f].lengths, slow[f].lengths)


def test_without_a_compiler_the_generators_give_the_same_examples(tmp_path):
    """A failed build is not an error: no kernels, the NumPy/Python paths, the same data."""
    import hashlib
    import os
    import subprocess
    import sys

    code = ("import hashlib\n"
            "from synthpre_jax.synthetic import native\n"
            "from synthpre_jax.synthetic.base import generate_range\n"
            "from synthpre_jax.synthetic.registry import make_task\n"
            "print(native.kernels() is None)\n"
            "for t in ('union', 'sort', 'induct', 'nesting_language'):\n"
            "    b = generate_range(make_task(t), 1, 'train', 0, 300)\n"
            "    print(hashlib.sha1(b['targets'].values.tobytes()).hexdigest())\n")
    env = dict(os.environ, CC=str(tmp_path / "no-such-cc"), XDG_CACHE_HOME=str(tmp_path),
               SYNTHPRE_SPM_PATH=str(tmp_path / "none.model"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.split()
    assert lines[0] == "True"
    from synthpre_jax.synthetic.base import generate_range
    from synthpre_jax.synthetic.registry import make_task

    for t, digest in zip(("union", "sort", "induct", "nesting_language"), lines[1:]):
        b = generate_range(make_task(t), 1, "train", 0, 300)
        assert hashlib.sha1(b["targets"].values.tobytes()).hexdigest() == digest, t


def test_count_search_delete_targets_with_and_without_kernels(monkeypatch):
    """The binary tasks' targets from spans of the raw rows (C) equal the split-and-NumPy
    path, on random rows with repeats, queries cut from the seq, empty parts and second
    separators."""
    from synthpre_jax.synthetic.codec import FallbackCodec
    from synthpre_jax.synthetic.ragged import Ragged
    from synthpre_jax.synthetic.simple_solve import SOLVERS, TargetVocab

    rng = np.random.default_rng(10)
    raws = []
    for _ in range(400):
        alphabet = int(rng.choice([2, 3, 40]))
        s = [int(x) for x in rng.integers(2, 2 + alphabet, int(rng.integers(0, 40)))]
        if s and rng.random() < 0.5:
            a = int(rng.integers(0, len(s)))
            q = s[a:a + int(rng.integers(1, 6))]
        else:
            q = [int(x) for x in rng.integers(2, 2 + alphabet, int(rng.integers(1, 6)))]
        if rng.random() < 0.1:
            q = q + [32097, 5]
        raws.append(s + [32097] + q)
    raw = Ragged.from_rows(raws)
    tv = TargetVocab(FallbackCodec())
    fast = {t: SOLVERS[t](raw, tv, "cpython").tolists() for t in ("count", "search", "delete")}
    with pytest.raises(ValueError):
        SOLVERS["count"](Ragged.from_rows([[3, 4, 32097]]), tv, "cpython")
    with pytest.raises(ValueError):
        SOLVERS["delete"](Ragged.from_rows([[3, 4]]), tv, "cpython")
    monkeypatch.setattr(native, "kernels", lambda: None)
    for t, got in fast.items():
        assert SOLVERS[t](raw, tv, "cpython").tolists() == got, t
    with pytest.raises(ValueError):
        SOLVERS["count"](Ragged.from_rows([[3, 4, 32097]]), tv, "cpython")


def test_take_rows_with_and_without_kernels(monkeypatch):
    from synthpre_jax.synthetic.ragged import Ragged, take_rows

    rng = np.random.default_rng(11)
    rows = [list(rng.integers(0, 99, int(n))) for n in rng.integers(0, 30, 200)]
    r = Ragged.from_rows(rows)
    idx = np.concatenate([rng.integers(0, 200, 500), [-1, -200, 0, 0]])
    want = [rows[i] for i in idx]
    assert take_rows(r, idx).tolists() == want
    with pytest.raises(IndexError):
        take_rows(r, [200])
    monkeypatch.setattr(native, "kernels", lambda: None)
    assert take_rows(r, idx).tolists() == want
    assert take_rows(r, np.zeros(0, np.int64)).tolists() == []
