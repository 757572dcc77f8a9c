"""The fast paths of the generators give exactly what the plain NumPy/Python forms give.

Each speed-up (packed sorts, vectorised sub-list search, guide-table Zipf ranks,
batched rejection rounds, the number table) is compared with the straightforward
computation it replaces, on random inputs chosen to hit its edge cases (ties,
tiny alphabets, empty rows, fallbacks).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from synthpre_jax.synthetic import simple as simple_mod
from synthpre_jax.synthetic import simple_solve
from synthpre_jax.synthetic.base import generate_range
from synthpre_jax.synthetic.codec import FallbackCodec
from synthpre_jax.synthetic.nesting import NestingLanguageTask
from synthpre_jax.synthetic.ragged import Ragged, sorted_order, stable_sort_index
from synthpre_jax.synthetic.registry import make_task
from synthpre_jax.synthetic.simple_solve import TargetVocab, find_rows, find_sublist

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("hi", [3, 1000, 1 << 40, 1 << 62])
def test_stable_sort_index_is_a_stable_argsort(hi):
    rng = np.random.default_rng(hi % 1000)
    key = rng.integers(0, hi, 5000)
    s, order = stable_sort_index(key)
    ref = np.argsort(key, kind="stable")
    assert (order == ref).all() and (s == key[ref]).all()
    s, order = stable_sort_index(np.zeros(0, np.int64))
    assert len(s) == 0 and len(order) == 0


def test_sorted_order_is_argsort_of_u_plus_row():
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 60, 300)
    rows = np.repeat(np.arange(300), lengths)
    u = rng.random(len(rows))
    assert (sorted_order(u, rows) == np.argsort(u + rows)).all()
    # Ties (equal draws, and draws that collide after adding the row) fall back.
    same = np.flatnonzero(rows == 10)[:2]
    u[same] = 0.25
    u[rows == 200] = np.minimum(u[rows == 200], 2.0 ** -50)
    assert (lengths[[10, 200]] >= 2).all()
    assert (sorted_order(u, rows) == np.argsort(u + rows)).all()


def test_find_rows_matches_find_sublist(monkeypatch):
    rng = np.random.default_rng(1)
    seqs = [rng.integers(2, 2 + rng.integers(1, 4), rng.integers(0, 25)).astype(np.int32)
            for _ in range(400)]
    queries = [rng.integers(2, 5, rng.integers(0, 5)).astype(np.int32) for _ in range(400)]
    ref = np.array([find_sublist(s, q) for s, q in zip(seqs, queries)])
    S, Q = Ragged.from_rows(seqs), Ragged.from_rows(queries)
    assert (find_rows(S, Q) == ref).all()
    assert (ref >= 0).any() and (ref < 0).any() and (ref == 0).any()
    monkeypatch.setattr(simple_solve, "FIND_WORK_LIMIT", 0)  # the row-by-row fallback
    assert (find_rows(S, Q) == ref).all()


def _authors_sort(seq: list, order: list) -> list:
    rank = {c: i for i, c in enumerate(order)}  # the last index of a repeated token wins
    return sorted(seq, key=lambda c: rank[c])


def test_solve_sort_matches_the_authors_rule():
    rng = np.random.default_rng(2)
    raws, refs = [], []
    for _ in range(300):
        order = rng.integers(2, 2 + rng.integers(1, 8), rng.integers(1, 10)).tolist()
        seq = [order[j] for j in rng.integers(0, len(order), rng.integers(0, 20))]
        raws.append(seq + [simple_solve.ARG_DIVIDER] + order)
        refs.append(_authors_sort(seq, order))
    got = simple_solve.solve_sort(Ragged.from_rows(raws), None, "cpython").tolists()
    assert got == refs
    with pytest.raises(ValueError):
        simple_solve.solve_sort(Ragged.from_rows([[5, simple_solve.ARG_DIVIDER, 6]]), None, "cpython")


def test_number_table_matches_single_numbers():
    tv = TargetVocab(FallbackCodec())
    ns = np.array([0, 7, 219, 3, 1000, 0, 12345])
    got = tv.numbers(ns).tolists()
    assert got == [list(TargetVocab(FallbackCodec()).number(int(n))) for n in ns]
    assert tv.numbers(np.zeros(0, np.int64)).tolists() == []


def test_encode_word_rows_matches_encode_words_row_by_row():
    """The block encoder of the word-by-word codec (nonsense_summary's inputs): words it has
    not seen (bytes, extra ids, non-ASCII), empty rows and a cold cache included."""
    rows = [["abc", "__d3__keyword_1__", "."], [], ["<extra_id_3>", "zz\u00e9", "abc"], ["."]]
    ids, lengths = FallbackCodec().encode_word_rows(rows)
    ref = [FallbackCodec().encode_words(r) for r in rows]
    assert lengths == [len(r) for r in ref] and ids == [i for r in ref for i in r]
    assert FallbackCodec().encode_word_rows([]) == ([], [])


@pytest.mark.parametrize("kw", [{}, {"num_pairs": 7}, {"zipf_exponent": 1.3}])
def test_zipf_guide_table_matches_searchsorted(kw):
    task = NestingLanguageTask(**kw)
    u = np.random.default_rng(3).random(200_000)
    edges = np.arange(1 << 16) / float(1 << 16)
    u = np.concatenate([u, edges, np.nextafter(edges[1:], 0), task._cdf[task._cdf < 1]])
    ref = np.minimum(np.searchsorted(task._cdf, u, side="right"), task.num_pairs - 1)
    assert (task.head_ranks(u) == ref).all()


@pytest.mark.parametrize("name,kw", [("search", {}), ("delete", {}),
                                     ("search", {"balanced": False}), ("delete_tiny", {})])
def test_query_rounds_batching_changes_nothing(monkeypatch, name, kw):
    task = make_task(name, **kw)
    a = generate_range(task, 3, "train", 100, 700)
    monkeypatch.setattr(simple_mod, "QUERY_ROUNDS_PER_PASS", 1)
    b = generate_range(task, 3, "train", 100, 700)
    for f in task.features:
        assert (a[f].values == b[f].values).all() and (a[f].lengths == b[f].lengths).all()


def test_malloc_tuning_can_be_switched_off():
    code = ("from synthpre_jax.synthetic.malloc_tuning import tune_malloc; "
            "print(tune_malloc(), tune_malloc())")
    env = dict(os.environ, SYNTHPRE_MALLOC_TUNING="0", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_malloc_tuning_survives_tensorflow_generator_datasets():
    """tf.data's GeneratorDatasetOp resets glibc's mmap threshold to 128 KB when its
    iterator starts; generation must re-apply the tuning, or every 1 MB temporary on
    the tf.data thread is fresh memory (256 page faults each)."""
    code = """
import resource, numpy as np, tensorflow as tf
from synthpre_jax.synthetic import make_task
from synthpre_jax.synthetic.base import generate
task = make_task("identity")
generate(task, 0, "train", np.arange(8))  # tuned here, before tf.data resets it
def faults():
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
def gen():
    generate(task, 0, "train", np.arange(8))
    np.ones(1 << 18, np.int32).sum()
    before = faults()
    for _ in range(50):
        np.ones(1 << 18, np.int32).sum()
    yield faults() - before
ds = tf.data.Dataset.from_generator(gen, output_signature=tf.TensorSpec([], tf.int64))
print(int(next(iter(ds))))
"""
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.split()
    assert int(out[-1]) < 50 * 256 // 4, out
