"""The counter-based normal draws of the weight-statistics transform, against a NumPy
reimplementation of the hash and SciPy's float64 inverse error function, and against the
normal distribution (moments, Kolmogorov-Smirnov, serial and cross-key correlation)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from synthpre_jax import counter_rng


def _mix32_np(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64)
    m = np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x21F0AAAD)) & m
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0xD35A2D97)) & m
    return x ^ (x >> np.uint64(15))


def _reference(key_data: np.ndarray, shape) -> np.ndarray:
    k0, k1 = (np.uint64(int(w)) for w in np.asarray(key_data, np.uint32)[:2])
    i = np.arange(math.prod(shape), dtype=np.uint64).reshape(shape)
    bits = _mix32_np((_mix32_np(i ^ k0) + k1) & np.uint64(0xFFFFFFFF))
    v = ((bits >> np.uint64(8)).astype(np.float64) * 2 - (2 ** 24 - 1)) * 2.0 ** -24
    return math.sqrt(2) * special.erfinv(v)


@pytest.mark.parametrize("shape", [(7,), (33, 65), (3, 4, 129), ()])
def test_matches_a_float64_reference(shape):
    key = np.asarray(jax.random.key_data(jax.random.key(11)))
    got = np.asarray(jax.jit(counter_rng.standard_normal, static_argnums=1)(key, shape))
    ref = _reference(key, shape if shape else (1,)).reshape(shape)
    assert got.dtype == np.float32 and got.shape == shape
    np.testing.assert_allclose(got, ref, rtol=2e-6, atol=2e-6)


def test_is_a_standard_normal():
    key = jax.random.key_data(jax.random.key(0))
    z = np.asarray(counter_rng.standard_normal(key, (2000, 1000)), np.float64).ravel()
    n = z.size
    assert abs(z.mean()) < 5 / math.sqrt(n)
    assert abs(z.var() - 1) < 5 * math.sqrt(2 / n)
    assert abs(stats.skew(z)) < 5 * math.sqrt(6 / n)
    assert abs(stats.kurtosis(z)) < 5 * math.sqrt(24 / n)
    assert stats.kstest(z, "norm").pvalue > 1e-4
    assert abs(np.corrcoef(z[:-1], z[1:])[0, 1]) < 5 / math.sqrt(n)
    # the upper tail: P(z > 3) = 1.35e-3
    assert abs((z > 3).mean() - stats.norm.sf(3)) < 5 * math.sqrt(stats.norm.sf(3) / n)


def test_other_keys_and_shapes_of_one_key():
    a = np.asarray(counter_rng.standard_normal(jax.random.key_data(jax.random.key(1)), (500, 400)))
    b = np.asarray(counter_rng.standard_normal(jax.random.key_data(jax.random.key(2)), (500, 400)))
    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 5 / math.sqrt(a.size)
    # element i depends on i only: a reshaped draw is the same flat sequence
    c = np.asarray(counter_rng.standard_normal(jax.random.key_data(jax.random.key(1)), (200000,)))
    np.testing.assert_array_equal(a.ravel(), c)


def test_all_2_24_grid_points_are_finite_symmetric_and_accurate():
    """Every value the sampler can produce, against SciPy's float64 erfinv."""
    top = jnp.arange(2 ** 24, dtype=jnp.int32)
    v = (top * 2 - (2 ** 24 - 1)).astype(jnp.float32) * np.float32(2.0 ** -24)
    z = np.asarray(np.sqrt(np.float32(2)) * jax.jit(counter_rng.erfinv)(v), np.float64)
    assert np.isfinite(z).all() and 5.4 < z.max() < 5.5
    np.testing.assert_allclose(z, -z[::-1], atol=1e-6)
    assert abs(z.var() - 1) < 1e-6
    ref = math.sqrt(2) * special.erfinv(np.asarray(v, np.float64))
    err = np.abs(z - ref) / np.maximum(np.abs(ref), 1e-3)
    assert err.max() < 2e-6, (err.max(), np.asarray(v)[err.argmax()])


def test_longer_keys_are_accepted():
    rbg = jax.random.key_data(jax.random.key(3, impl="rbg"))
    z = np.asarray(counter_rng.standard_normal(rbg, (1000,)))
    assert np.isfinite(z).all() and 0.8 < z.std() < 1.2
