"""Example i is a pure function of (task, split, seed, i); hosts are disjoint; resume is exact."""
from __future__ import annotations

import numpy as np
import pytest

import synth_helpers  # noqa: F401
from synthpre_jax.synthetic.base import (example, generate, generate_range, iter_shard, key_bytes,
                                         validation_keys)
from synthpre_jax.synthetic.registry import BASE_TASK_IDS, make_task
from synthpre_jax.synthetic.rng import Draws, shard_indices

SOME = ["identity", "search", "union", "sort", "induct", "nonsense_summary", "nesting_language"]


def rows(block, feature="targets"):
    return block[feature].tolists()


@pytest.mark.parametrize("name", BASE_TASK_IDS)
def test_example_is_independent_of_chunking(name):
    t = make_task(name)
    n = 12 if name == "nonsense_summary" else 40
    whole = generate_range(t, 5, "train", 100, 100 + n)
    parts = generate_range(t, 5, "train", 100, 100 + n, chunk=7)
    scattered = generate(t, 5, "train", np.arange(100 + n - 1, 99, -1))  # reversed order
    for f in t.features:
        assert rows(whole, f) == rows(parts, f) == rows(scattered, f)[::-1]
    one = example(t, 5, "train", 100 + n - 1)
    assert all(one[f].tolist() == rows(whole, f)[-1] for f in t.features)


@pytest.mark.parametrize("name", SOME)
def test_seed_split_and_task_change_the_stream(name):
    t = make_task(name)
    a = rows(generate_range(t, 0, "train", 0, 8))
    assert rows(generate_range(t, 0, "train", 0, 8)) == a              # repeatable
    assert rows(generate_range(t, 1, "train", 0, 8)) != a              # seed
    assert rows(generate_range(t, 0, "validation", 0, 8)) != a         # split
    assert rows(generate_range(t, 2**40 + 7, "train", 0, 8)) != a      # large seeds


def test_variant_has_its_own_stream():
    a = make_task("identity")
    b = make_task("identity", length_range=(10, 219))
    assert a.key != b.key
    assert rows(generate_range(a, 0, "train", 0, 4)) != rows(generate_range(b, 0, "train", 0, 4))


@pytest.mark.parametrize("hosts", [1, 2, 3, 8])
def test_hosts_are_disjoint_cover_and_batch_independent(hosts):
    t = make_task("deduct")
    single = rows(generate_range(t, 0, "train", 0, 96), "inputs")
    per_host = []
    for h in range(hosts):
        ex = []
        for idx, block in iter_shard(t, 0, "train", hosts, h, 0, 96, chunk=5):
            assert (idx % hosts == h).all()
            ex += list(zip(idx.tolist(), rows(block, "inputs")))
        per_host.append(ex)
    # disjoint and covering, each example equal to the single-host one
    got = sorted(e for ex in per_host for e in ex)
    assert [i for i, _ in got] == list(range(96))
    assert [r for _, r in got] == single
    # global batch of B = b * hosts at step s is exactly indices [sB, (s+1)B)
    b = 4
    for s in range(96 // (b * hosts)):
        step = sorted(i for ex in per_host for i, _ in ex[s * b:(s + 1) * b])
        assert step == list(range(s * b * hosts, (s + 1) * b * hosts))


def test_resume_skips_without_regenerating():
    t = make_task("union")
    full = [(i.tolist(), rows(b)) for i, b in iter_shard(t, 0, "train", 2, 1, 0, 64, chunk=8)]
    resumed = [(i.tolist(), rows(b)) for i, b in iter_shard(t, 0, "train", 2, 1, 32, 64, chunk=8)]
    flat = [(i, r) for ids, rs in full for i, r in zip(ids, rs) if i >= 32]
    assert flat == [(i, r) for ids, rs in resumed for i, r in zip(ids, rs)]
    assert list(shard_indices(3, 2, 10, 20, chunk=2)) and \
        [x for c in shard_indices(3, 2, 10, 20, chunk=2) for x in c.tolist()] == [11, 14, 17]


def test_train_and_validation_disjoint_with_exclusion():
    """A 2-symbol, length-10 copy task has 1,024 inputs: collisions are certain, and the
    exclusion removes every training input that is also a validation input."""
    t = make_task("identity", num_tokens=2, length_range=(10, 10))
    keys = validation_keys(t, 0, 500, "inputs")
    assert 300 < len(keys) <= 500
    kept = dropped = 0
    for idx, block in iter_shard(t, 0, "train", stop_index=2000, exclude=keys, exclude_feature="inputs"):
        ks = key_bytes(block["inputs"])
        assert not set(ks) & keys
        kept += len(ks)
    dropped = 2000 - kept
    assert dropped > 500   # most of the 1,024 inputs are in validation


def test_draws_refuse_reuse():
    d = Draws.for_examples(0, "train", "x", [1, 2])
    s = d.sub("a")
    s.uniform(3)
    with pytest.raises(RuntimeError):
        s.uniform(3)


def test_counter_draws_are_uniform():
    u = Draws.for_examples(0, "train", "x", np.arange(1000)).sub("u").uniform(100)
    assert abs(u.mean() - 0.5) < 0.005 and u.min() >= 0 and u.max() < 1
    hist = np.bincount((u * 10).astype(int), minlength=10)
    assert (abs(hist - 10_000) < 500).all()
    # numbers of different examples and stages are uncorrelated
    m = Draws.for_examples(0, "train", "x", np.arange(2000)).sub("m").matrix(2)
    assert abs(np.corrcoef(m[:, 0], m[:, 1])[0, 1]) < 0.05
