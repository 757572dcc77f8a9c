"""T5 span corruption: hand-worked examples, statistics, TF vs NumPy, the seqio pipeline."""
from __future__ import annotations

import gin
import numpy as np
import pytest

import synth_helpers  # noqa: F401
from synthpre_jax.data import span_corruption as sc
from synthpre_jax.synthetic import span_noise as sn
from synthpre_jax.synthetic.ragged import Ragged

tf = pytest.importorskip("tensorflow")
seqio = pytest.importorskip("seqio")


def test_random_spans_helper_hand_worked():
    # 568 tokens: round(85.2)=85 noise, round(85/3)=28 spans -> 483+28+1 = 512 inputs,
    # 85+28+1 = 114 targets; 569 would give 484+28+1 = 513 > 512.
    assert sc.random_spans_helper(512) == (568, 114)
    assert sc.noise_counts(568) == (85, 28)
    # 64 inputs: 71 tokens -> 11 noise (10.65), 4 spans (3.67) -> 60+4+1 = 65 > 64, so 70:
    # round(10.5)=10 (half to even), 3 spans -> 60+3+1 = 64, targets 10+3+1 = 14.
    assert sc.random_spans_helper(64) == (70, 14)


def test_sentinels_hand_worked():
    tokens = np.arange(10, 20)
    mask = np.array([0, 0, 1, 1, 0, 0, 0, 1, 0, 1], dtype=bool)
    inputs = sc.noise_span_to_unique_sentinel_np(tokens, mask, 32099)
    targets = sc.noise_span_to_unique_sentinel_np(tokens, ~mask, 32099)
    assert inputs.tolist() == [10, 11, 32099, 14, 15, 16, 32098, 18, 32097]
    assert targets.tolist() == [32099, 12, 13, 32098, 17, 32097, 19]
    assert sc.uncorrupt_np(inputs, targets).tolist() == tokens.tolist()


def test_mask_structure_hand_worked():
    mask = sc.random_spans_noise_mask_np(20, np.random.default_rng(0))
    assert mask.sum() == 3                      # round(20 * 0.15) = 3
    runs = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])) == 1)
    assert len(runs) == 1                       # round(3 / 3) = 1 span
    assert not mask[0] and mask[-1]             # clean first, noisy last


def test_statistics_over_10k_sequences():
    rng = np.random.default_rng(0)
    noise = total = spans = 0
    for _ in range(10_000):
        n = int(rng.integers(100, 600))
        toks = rng.integers(2, 32000, n)
        inputs, targets, mask = sc.span_corrupt_np(toks, rng)
        noise += mask.sum()
        total += n
        spans += int(np.sum(mask[1:] & ~mask[:-1]) + mask[0])
        assert np.array_equal(sc.uncorrupt_np(inputs, targets), toks)
    assert abs(noise / total - 0.15) < 0.01
    assert abs(noise / spans - 3.0) < 0.2


def test_counter_masks_have_t5_structure():
    for seed in range(20):
        n = 50 + 37 * seed
        toks = np.random.default_rng(seed).integers(2, 32000, n).astype(np.int32)
        mask = sn.noise_mask(toks, seed)
        noise, nspans = sc.noise_counts(n)
        assert len(mask) == n and mask.sum() == noise and not mask[0] and mask[-1]
        assert int(np.sum(mask[1:] & ~mask[:-1])) == nspans
    assert sn.noise_mask(np.array([7], np.int32), 0).tolist() == [False]  # T5's length-1 guard


def _span_lengths(mask):
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return edges[1::2] - edges[::2]


def test_counter_masks_are_distributed_like_the_reference():
    """Noise and clean span lengths over 4,000 segments of 100 tokens (15 noise tokens in
    5 spans): the counter-based masks against the permutation-based NumPy reference."""
    n, count = 100, 4000
    rng = np.random.default_rng(0)
    segments = Ragged(rng.integers(2, 32000, n * count).astype(np.int32), np.full(count, n))
    ours = sn.noise_masks(sn.segment_keys(segments, 3), n)
    ref = np.stack([sc.random_spans_noise_mask_np(n, rng) for _ in range(count)])
    for a, b in ((ours, ref), (~ours, ~ref)):
        ha = np.bincount(np.concatenate([_span_lengths(m) for m in a]), minlength=90)[:90]
        hb = np.bincount(np.concatenate([_span_lengths(m) for m in b]), minlength=90)[:90]
        assert ha.sum() == hb.sum()
        assert np.abs(ha / ha.sum() - hb / hb.sum()).max() < 0.015
    assert 0.12 < ours[:, 50].mean() < 0.18 and ours[:, 0].sum() == 0   # noise spread, clean start


def test_segments_are_corrupted_alike_in_any_batch():
    rng = np.random.default_rng(4)
    rows = [rng.integers(2, 32000, int(k)).astype(np.int32) for k in rng.integers(1, 40, 60)]
    rows += [rng.integers(2, 32000, 30).astype(np.int32) for _ in range(20)] + [rows[0][:0]]
    inputs, targets = sn.span_corrupt_segments(Ragged.from_rows(rows), 5, 32099)
    for i, toks in enumerate(rows):
        m = sn.noise_mask(toks, 5)
        assert inputs.row(i).tolist() == sc.noise_span_to_unique_sentinel_np(toks, m, 32099).tolist()
        assert targets.row(i).tolist() == sc.noise_span_to_unique_sentinel_np(toks, ~m, 32099).tolist()


def test_numpy_stream_equals_the_seqio_preprocessor():
    """The trainer's NumPy chain against the TF preprocessor, with groups of 128 documents,
    a partial last group and documents longer than select_random_chunk's length."""
    rng = np.random.default_rng(6)
    docs = [rng.integers(1, 30000, int(k)).astype(np.int32) for k in rng.integers(1, 90, 300)]
    docs[5] = rng.integers(2, 30000, 150).astype(np.int32)  # cut to one chunk below
    docs[9][3] = 0
    with gin.unlock_config():
        gin.bind_parameter("synthpre.select_random_chunk.max_length", 100)
    try:
        ref, lengths = _pipeline(docs, seed=3)
    finally:
        gin.clear_config()
    blocks = [Ragged.from_rows(docs[i:i + 70]) for i in range(0, len(docs), 70)]
    seg_len = sc.random_spans_helper(64)[0]
    got = []
    for inputs, targets in sn.span_corrupt_stream(iter(blocks), 3, seg_len, 32099, max_length=100):
        got += list(zip(inputs.tolists(), targets.tolists()))
    assert len(got) == len(ref) > 100
    for (i, t), ex in zip(got, ref):
        assert i + [1] == ex["inputs"].tolist() and t + [1] == ex["targets"].tolist()


class _Vocab(seqio.PassThroughVocabulary):
    def __init__(self):
        super().__init__(size=32100, eos_id=1)

    @property
    def vocab_size(self):
        return 32100


def _pipeline(docs, inputs_len=64, seed=0):
    feats = {"inputs": seqio.Feature(_Vocab(), add_eos=True),
             "targets": seqio.Feature(_Vocab(), add_eos=True)}
    ds = tf.data.Dataset.from_generator(lambda: ({"targets": d} for d in docs),
                                        output_signature={"targets": tf.TensorSpec([None], tf.int32)})
    lengths = {"inputs": inputs_len, "targets": sc.random_spans_helper(inputs_len)[1]}
    ds = sc.span_corruption(ds, lengths, feats, seed=seed)
    ds = seqio.preprocessors.append_eos_after_trim(ds, feats, lengths)
    return list(ds.as_numpy_iterator()), lengths


def test_seqio_preprocessor_end_to_end():
    rng = np.random.default_rng(1)
    docs = [rng.integers(2, 30000, int(rng.integers(5, 90))).astype(np.int32) for _ in range(300)]
    out, lengths = _pipeline(docs)
    stream = np.concatenate(docs)
    rebuilt = []
    for ex in out:
        assert ex["inputs"][-1] == 1 and ex["targets"][-1] == 1
        rebuilt.append(sc.uncorrupt_np(ex["inputs"][:-1], ex["targets"][:-1]))
    for ex in out[:-3]:  # full segments (the last of each 128-doc batch is shorter)
        if len(ex["inputs"]) == lengths["inputs"]:
            assert len(ex["targets"]) == lengths["targets"]
    assert np.array_equal(np.concatenate(rebuilt), stream)   # every token recoverable, in order
    assert sum(len(ex["inputs"]) == 64 for ex in out) > len(out) // 2


def test_seqio_preprocessor_is_deterministic_and_content_seeded():
    rng = np.random.default_rng(2)
    docs = [rng.integers(2, 30000, 70).astype(np.int32) for _ in range(40)]
    a, _ = _pipeline(docs)
    b, _ = _pipeline(docs)
    c, _ = _pipeline(docs, seed=1)
    assert all(np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(a, b))
    assert any(not np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(a, c))


def test_targets_length_check():
    feats = {"targets": seqio.Feature(_Vocab(), add_eos=True)}
    ds = tf.data.Dataset.from_tensors({"targets": tf.constant([5, 6], tf.int32)})
    with pytest.raises(ValueError):
        sc.span_corruption(ds, {"inputs": 512, "targets": 100}, feats)
