"""T5 span corruption: hand-worked examples, statistics, TF vs NumPy, the seqio pipeline."""
from __future__ import annotations

import numpy as np
import pytest

import synth_helpers  # noqa: F401
from synthpre_jax.data import span_corruption as sc

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


def test_tf_functions_match_numpy():
    for seed in range(20):
        n = 50 + 37 * seed
        mask = sc.random_spans_noise_mask_tf(tf.constant(n), [tf.constant([seed, 1], tf.int64),
                                                              tf.constant([seed, 2], tf.int64)]).numpy()
        noise, nspans = sc.noise_counts(n)
        assert len(mask) == n and mask.sum() == noise and not mask[0] and mask[-1]
        assert int(np.sum(mask[1:] & ~mask[:-1])) == nspans
        toks = np.random.default_rng(seed).integers(2, 32000, n).astype(np.int32)
        for m in (mask, ~mask):
            tf_out = sc.noise_span_to_unique_sentinel_tf(tf.constant(toks), tf.constant(m), 32099)
            assert tf_out.numpy().tolist() == sc.noise_span_to_unique_sentinel_np(toks, m, 32099).tolist()


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
