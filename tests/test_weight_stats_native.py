"""The compiled CPU kernels of the weight-statistics transform against its XLA programs:
statistics bit for bit, draws to float32 rounding, every shard layout, and the fallback when
no compiler is there."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import jax
import numpy as np
import pytest

from test_weight_stats import flat, make_trees
from synthpre_jax import counter_rng, weight_stats as ws, weight_stats_native as wn

needs_kernels = pytest.mark.skipif(wn.library() is None,
                                   reason="no C compiler here: the transform uses its XLA programs")


def _tensors():
    rng = np.random.default_rng(5)
    return [rng.standard_normal((300, 700)).astype(np.float32) * 0.05 + 0.01,
            rng.standard_normal((513,)).astype(np.float32) * 30,
            (rng.standard_normal((64, 33)) * 1e-20).astype(np.float32),  # tiny: deep exponents
            np.zeros((7,), np.float32),
            np.full((3, 3), -2.5, np.float32),
            (rng.standard_normal((2, 3, 1000)) * 3e4).astype(np.float32),
            # pieces (wn.TASK elements) whose max is 1/2, 1/4 and 1/1000 of the tensor's: the
            # grid sums at the piece's exponent + 1 and + 2, and a second read at the tensor's
            np.concatenate([rng.uniform(-s, s, wn.TASK) for s in (0.4, 0.2, 0.9e-3, 0.8)]
                           ).astype(np.float32).reshape(4, -1)]


@needs_kernels
def test_statistics_are_bit_identical_to_the_xla_programs(monkeypatch):
    tensors = [jax.device_put(x) for x in _tensors()]
    groups = [[0], [1, 2], [3], [4], [5], [6]]
    assert wn.usable(tensors)
    native = ws.group_statistics(tensors, groups)
    monkeypatch.setattr(wn, "library", lambda: None)
    assert not wn.usable(tensors)
    xla = ws.group_statistics(tensors, groups)
    np.testing.assert_array_equal(native[0], xla[0])
    np.testing.assert_array_equal(native[1], xla[1])
    # and both against float64 NumPy
    for g, mu, sd in zip(groups, *native):
        ref = np.concatenate([_tensors()[i].astype(np.float64).ravel() for i in g])
        assert mu == pytest.approx(ref.mean(), rel=1e-6, abs=1e-30)
        assert sd == pytest.approx(ref.std(), rel=1e-6, abs=1e-30)


@needs_kernels
@pytest.mark.parametrize("shape", [(1000, 3000), (17,), (), (3, 5, 7)])
def test_draws_match_counter_rng_to_float32_rounding(shape):
    key = jax.random.key(3)
    k0, k1 = (int(v) for v in counter_rng.key_words(jax.random.key_data(key)))
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    for rule, mu in (("N(mu,sigma)", 0.5), ("N(0,sigma)", 0.0)):
        got = wn.draw(shape, sharding, k0, k1, rule, 0.5, 2.0)
        assert got.shape == shape and got.dtype == np.float32 and got.sharding == sharding
        ref = np.asarray(mu + 2.0 * counter_rng.standard_normal(jax.random.key_data(key), shape),
                         np.float64)
        # the same hash bits and inverse CDF; only the log's last bits differ (|z| <= 5.42)
        np.testing.assert_allclose(np.asarray(got), ref, rtol=0, atol=2e-6 * 2.0 * 5.5)


def test_row_bases_index_every_shard_layout():
    rng = np.random.default_rng(0)
    for shape in [(6, 10), (4, 6, 8), (9,), (2, 3, 4, 5)]:
        full = np.arange(np.prod(shape)).reshape(shape)
        for _ in range(10):
            index = []
            for d in shape:
                a = int(rng.integers(0, d))
                b = int(rng.integers(a + 1, d + 1))
                index.append(slice(a, b))
            bases, rowlen = wn._row_bases(shape, tuple(index))
            want = full[tuple(index)].reshape(-1, rowlen)
            np.testing.assert_array_equal(bases, want[:, 0])
            np.testing.assert_array_equal(want - want[:, :1], np.broadcast_to(np.arange(rowlen), want.shape))


@needs_kernels
def test_transform_with_and_without_kernels(monkeypatch):
    """Same statistics, and draws equal to float32 rounding (the XLA programs are what an
    accelerator runs)."""
    source, fresh = make_trees(seed=4)
    native, report_n = ws.transform_with_report(source, fresh, "per_param_mean_std", 9)
    monkeypatch.setattr(wn, "library", lambda: None)
    xla, report_x = ws.transform_with_report(source, fresh, "per_param_mean_std", 9)
    assert [(g.mean, g.std) for g in report_n] == [(g.mean, g.std) for g in report_x]
    for k, v in flat(xla).items():
        np.testing.assert_allclose(np.asarray(flat(native)[k]), np.asarray(v), rtol=1e-5,
                                   atol=1e-6, err_msg=k)


def test_no_compiler_falls_back_to_xla(tmp_path):
    """A failed build is not an error: the kernels are off and the transform still runs."""
    code = ("from synthpre_jax import weight_stats_native as wn, weight_stats as ws\n"
            "from test_weight_stats import make_trees\n"
            "assert wn.library() is None\n"
            "s, f = make_trees(seed=1)\n"
            "ws.transform(s, f, 'per_param_scale', 0)\n"
            "print('fallback ok')\n")
    env = dict(os.environ, CC=str(tmp_path / "no-such-cc"), XDG_CACHE_HOME=str(tmp_path),
               PYTHONPATH=os.pathsep.join([os.path.dirname(__file__),
                                           os.environ.get("PYTHONPATH", "")]),
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "fallback ok" in proc.stdout, proc.stderr[-2000:]
    assert not list(tmp_path.rglob("*.so"))


@needs_kernels
@pytest.mark.parametrize("threads", [1, 3, 64])
def test_results_do_not_depend_on_the_number_of_threads(monkeypatch, threads):
    """The passes hand pieces to threads from a counter in C: any thread count (fewer or more
    threads than pieces) gives the same statistics and draws bit for bit."""
    tensors = _tensors()
    groups = [[0], [1, 2], [3], [4], [5], [6]]
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    reference = ws.group_statistics(tensors, groups), wn.draw((700, 1300), sharding, 5, 6,
                                                              "N(mu,sigma)", 0.25, 3.0)
    monkeypatch.setattr(wn, "_workers", lambda: threads)
    got = ws.group_statistics(tensors, groups), wn.draw((700, 1300), sharding, 5, 6,
                                                        "N(mu,sigma)", 0.25, 3.0)
    for a, b in zip(reference[0], got[0]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.asarray(reference[1]), np.asarray(got[1]))


def _piece_sums(x: np.ndarray, bits: int, floor_e: int = -96):
    """ws_minmax_gridsums_f32 on one piece: (max, min, exponent, three grid sums)."""
    import ctypes
    lib = wn.library()
    f = lib.ws_minmax_gridsums_f32
    f.restype = None
    f.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_int32,
                  ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    x = np.ascontiguousarray(x, np.float32)
    hlb, e, sums = np.zeros(3, np.float32), np.zeros(1, np.int32), np.zeros(3, np.float64)
    f(x.ctypes.data, x.size, bits, floor_e, hlb.ctypes.data, e.ctypes.data, sums.ctypes.data)
    return hlb, int(e[0]), sums


@needs_kernels
def test_streamed_grid_sums_equal_whole_piece_sums():
    _check_streamed_grid_sums()


@needs_kernels
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 build flags")
def test_portable_build_gives_the_same_results(monkeypatch, tmp_path):
    """Built for a baseline x86-64 CPU (no AVX2: the plain-C loops instead of the intrinsics),
    the kernels give the same sums, and statistics bit-identical to the XLA programs."""
    flags = tuple("-march=x86-64" if f == "-march=native" else f for f in wn.FLAGS)
    monkeypatch.setattr(wn, "FLAGS", flags)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    wn.library.cache_clear()
    try:
        assert wn.library() is not None and list(tmp_path.rglob("*.so"))
        _check_streamed_grid_sums()
        test_statistics_are_bit_identical_to_the_xla_programs(monkeypatch)
    finally:
        monkeypatch.undo()
        wn.library.cache_clear()


def _check_streamed_grid_sums():
    """The first read streams a piece through L1 in sub-blocks with a running exponent: sums
    must equal sum(rint(x * 2**(bits - f))) over the whole piece at f = e, e + 1, e + 2, also
    when a later sub-block raises the exponent by 1, 2 or more, after zero sub-blocks, with
    grid values of exactly +-2**bits, and for lengths that are not multiples of the blocks."""
    rng = np.random.default_rng(11)
    sub = 4096
    top = np.float32(np.nextafter(np.float32(0.5), np.float32(0)))  # just below 2**-1
    cases = {
        "raise by 1": [rng.uniform(-0.3, 0.3, sub), rng.uniform(-0.6, 0.6, sub + 5)],
        "raise by 2": [rng.uniform(-0.2, 0.2, 2 * sub), rng.uniform(-0.7, 0.7, 100)],
        "raise by 9": [rng.uniform(-1e-3, 1e-3, sub + 1), rng.uniform(-0.9, 0.9, 3 * sub - 7)],
        "zeros first": [np.zeros(2 * sub), rng.uniform(-3e-5, 3e-5, 777)],
        "zeros between": [rng.uniform(-2, 2, sub), np.zeros(sub), rng.uniform(-9, 9, 50)],
        "all zeros": [np.zeros(sub + 3)],
        "grid edges": [np.full(48, top), np.full(48, -top), rng.uniform(-0.5, 0.5, 29)],
        "tiny": [rng.standard_normal(5000) * 1e-30],
        "short": [np.array([0.25, -0.125, 3.0])],
    }
    for name, parts in cases.items():
        x = np.concatenate(parts).astype(np.float32)
        for bits in (29, 24):
            hlb, e, sums = _piece_sums(x, bits)
            assert (hlb[0], hlb[1], hlb[2]) == (x.max(), x.min(), 0), name
            m = np.float32(max(x.max(), -x.min()))
            if m == 0:
                assert e == -96 and not sums.any(), name
                continue
            assert e == max(int(np.frexp(m)[1]), -96), name
            for j in range(3):
                want = np.rint(x * np.float32(2.0 ** (bits - e - j))).astype(np.int64).sum()
                assert sums[j] == want, (name, bits, j)
    bad = np.concatenate([rng.uniform(-1, 1, sub + 9), [np.inf], rng.uniform(-4, 4, 10)])
    hlb, _, _ = _piece_sums(bad.astype(np.float32), 29)
    assert hlb[2] == 1 and hlb[0] == np.inf


@needs_kernels
def test_kernel_normals_at_every_input_against_float64():
    """Every value the kernel's inverse CDF can produce (all 2**24 uniforms), against SciPy's
    float64 erfinv, to the bound the XLA sampler meets (test_counter_rng), and the two
    samplers within float32 rounding of each other."""
    import ctypes
    from scipy import special
    lib = wn.library()
    f = lib.ws_normals_of_tops
    f.restype = None
    f.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]
    top = np.arange(2 ** 24, dtype=np.int32)
    z32 = np.empty(top.size, np.float32)
    f(top.ctypes.data, top.size, z32.ctypes.data)
    z = z32.astype(np.float64)
    v = (top * 2 - (2 ** 24 - 1)).astype(np.float32) * np.float32(2.0 ** -24)
    assert np.isfinite(z).all() and 5.4 < z.max() < 5.5
    np.testing.assert_allclose(z, -z[::-1], atol=1e-6)
    assert abs(z.var() - 1) < 1e-6
    ref = np.sqrt(2) * special.erfinv(v.astype(np.float64))
    err = np.abs(z - ref) / np.maximum(np.abs(ref), 1e-3)
    assert err.max() < 2e-6, (err.max(), v[err.argmax()])
    xla = np.asarray(np.sqrt(np.float32(2)) * jax.jit(counter_rng.erfinv)(v), np.float64)
    assert np.abs(z - xla).max() < 2e-6


@needs_kernels
def test_huge_values_give_the_same_statistics_on_both_paths(monkeypatch):
    """|x| near float32's max: the deviations' scale 2**-k is subnormal for k >= 127, which
    XLA flushes to zero (the XLA programs gave std 0); both paths now agree with NumPy."""
    rng = np.random.default_rng(8)
    x = (rng.uniform(-1, 1, 1000) * 1e38).astype(np.float32)
    native = ws.group_statistics([x], [[0]])
    monkeypatch.setattr(wn, "library", lambda: None)
    xla = ws.group_statistics([jax.device_put(x)], [[0]])
    np.testing.assert_array_equal(native[0], xla[0])
    np.testing.assert_array_equal(native[1], xla[1])
    ref = x.astype(np.float64)
    assert native[0][0] == pytest.approx(ref.mean(), rel=1e-6)
    assert native[1][0] == pytest.approx(ref.std(), rel=1e-6)
