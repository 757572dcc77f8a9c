"""T5X's loss against float64 NumPy: cross-entropy, z-loss, label smoothing (= KL to the
smoothed target), the normalising factors, and T5X's metric names."""
import numpy as np
import jax.numpy as jnp
import pytest

from synthpre_jax.errors import UserError
from synthpre_jax.models.model import (cross_entropy_with_logits, loss_weights_and_normalizer,
                                       metrics_from_sums)


def _np_logsoftmax(x):
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def test_plain_cross_entropy_and_z_loss():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 11)).astype(np.float32) * 3
    targets = rng.integers(0, 11, size=(2, 5))
    loss, zl = cross_entropy_with_logits(jnp.asarray(logits), jnp.asarray(targets), 11, 0.0, 1e-4)
    lsm = _np_logsoftmax(logits)
    ce = -np.take_along_axis(lsm, targets[..., None], -1)[..., 0]
    logz = np.log(np.exp(logits.astype(np.float64)).sum(-1))
    np.testing.assert_allclose(np.asarray(zl), 1e-4 * logz ** 2, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(loss), ce + 1e-4 * logz ** 2, rtol=1e-5)


def test_label_smoothing_is_kl_to_smoothed_targets():
    rng = np.random.default_rng(1)
    V, ls = 7, 0.1
    logits = rng.normal(size=(3, V)).astype(np.float32)
    targets = np.array([0, 3, 6])
    loss, _ = cross_entropy_with_logits(jnp.asarray(logits), jnp.asarray(targets), V, ls, 0.0)
    q = np.full((3, V), ls / (V - 1))
    q[np.arange(3), targets] = 1 - ls
    kl = (q * (np.log(q) - _np_logsoftmax(logits))).sum(-1)
    np.testing.assert_allclose(np.asarray(loss), kl, rtol=1e-5, atol=1e-6)


def test_normalizers():
    targets = jnp.array([[5, 6, 1, 0], [7, 1, 0, 0]])
    batch = {"decoder_target_tokens": targets}
    w, n = loss_weights_and_normalizer(batch, None)
    assert n is None and float(w.sum()) == 5
    _, n = loss_weights_and_normalizer(batch, "NUM_REAL_TARGET_TOKENS")
    assert float(n) == 5
    _, n = loss_weights_and_normalizer(batch, "NUM_TOTAL_TARGET_TOKENS")
    assert float(n) == 8
    _, n = loss_weights_and_normalizer(batch, 233.0)
    assert float(n) == 233.0
    w, n = loss_weights_and_normalizer(batch, "AVERAGE_PER_SEQUENCE")
    np.testing.assert_allclose(np.asarray(w), [[1 / 3, 1 / 3, 1 / 3, 0], [0.5, 0.5, 0, 0]])
    assert float(n) == 2
    # packed: two sequences in row 0
    packed = {"decoder_target_tokens": jnp.array([[5, 1, 6, 7, 1, 0]]),
              "decoder_segment_ids": jnp.array([[1, 1, 2, 2, 2, 0]])}
    w, n = loss_weights_and_normalizer(packed, "AVERAGE_PER_SEQUENCE")
    np.testing.assert_allclose(np.asarray(w), [[.5, .5, 1 / 3, 1 / 3, 1 / 3, 0]], rtol=1e-6)
    assert float(n) == 2
    with pytest.raises(UserError):
        loss_weights_and_normalizer(batch, "PER_TOKEN")


def test_metric_names_and_averaging():
    sums = {"loss": 10.0, "z_loss": 0.2, "cross_ent_sum": 9.8, "correct": 30.0, "weight_sum": 40.0,
            "num_tokens": 80.0, "nonpadding_tokens": 40.0, "num_examples": 8.0}
    m = metrics_from_sums(sums, steps=2)
    assert m["loss"] == 5.0 and m["accuracy"] == 0.75 and m["cross_ent_loss"] == 4.9
    assert m["nonpadding_fraction"] == 0.5
