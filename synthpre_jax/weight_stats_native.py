"""CPU kernels for the weight-statistics transform, compiled on first use.

On a CPU the transform is bound by arithmetic and memory passes that XLA:CPU does not fuse
well (two reductions over one input run at 1.1 ns per element; the hash and the inverse CDF
fused in one loop spill vector registers). `native/weight_stats_kernels.c` does each pass in
one vectorised loop, on as many threads as the process may use:

* statistics: the same float32 operations as the XLA programs of `weight_stats`, summed as
  integers, so every result is bit-identical to the XLA path (tests check this);
* draws: the same hash bits as `counter_rng` and the same inverse CDF with the kernel's own
  log, so values agree with XLA's to a few float32 ulps (XLA's own log differs between CPU
  and GPU in the same way). Element i of a tensor depends only on (key, i), so the draws are
  the same for every sharding.

The library is built with the system C compiler (`$CC`, else `cc`) for this CPU into
`$XDG_CACHE_HOME/synthpre_jax` (default ~/.cache) the first time it is needed (~1 s), keyed by
the source, the flags and the CPU's features. No compiler, a failed build, several processes
(their statistics need cross-host reductions), a non-float32 tensor or an accelerator: the
transform uses its XLA programs, which give the same statistics. `SYNTHPRE_NATIVE_KERNELS=0`
turns the kernels off.
"""
from __future__ import annotations

import concurrent.futures
import ctypes
import functools
import hashlib
import logging
import math
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

log = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "native" / "weight_stats_kernels.c"
# -ffp-contract=off: no FMA contraction, so float32 results are XLA's; -fno-trapping-math and
# -fno-math-errno let the selects and sqrt vectorise without changing any value.
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math",
         "-fno-strict-aliasing", "-fPIC", "-shared")
CHUNK = 1 << 20  # elements per task: large enough to amortise a thread hand-off
_F32P = ctypes.POINTER(ctypes.c_float)
_I64P = ctypes.POINTER(ctypes.c_int64)


def _cpu_features() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "synthpre_jax"


def _build(target: Path) -> None:
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        raise OSError(f"no C compiler ({compiler}) on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        proc = subprocess.run([compiler, *FLAGS, "-o", tmp, str(SOURCE)], capture_output=True,
                              text=True, timeout=120)
        if proc.returncode != 0:
            raise OSError(f"{compiler} failed: {proc.stderr.strip()[:300]}")
        os.replace(tmp, target)  # atomic: concurrent builders each publish a whole library
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@functools.lru_cache(maxsize=1)
def library() -> Optional[ctypes.CDLL]:
    """The compiled kernels, or None (disabled, or no working compiler: logged once)."""
    if os.environ.get("SYNTHPRE_NATIVE_KERNELS", "1") == "0":
        return None
    tag = hashlib.sha256("\n".join([SOURCE.read_text(encoding="utf-8"), " ".join(FLAGS),
                                    os.environ.get("CC") or "cc", platform.machine(),
                                    _cpu_features()]).encode()).hexdigest()[:16]
    target = _cache_dir() / f"weight_stats_kernels-{tag}.so"
    try:
        if not target.exists():
            _build(target)
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as e:
        log.info("weight-stats native kernels unavailable (%s); using the XLA programs", e)
        return None
    lib.ws_minmax_f32.argtypes = [_F32P, ctypes.c_int64, _F32P]
    lib.ws_minmax_f32.restype = None
    for name in ("ws_grid_sum_f32", "ws_sqdev_sum_f32"):
        getattr(lib, name).restype = ctypes.c_double
    lib.ws_grid_sum_f32.argtypes = [_F32P, ctypes.c_int64, ctypes.c_float]
    lib.ws_sqdev_sum_f32.argtypes = [_F32P, ctypes.c_int64, ctypes.c_float, ctypes.c_float,
                                     ctypes.c_float]
    lib.ws_draw_f32.argtypes = [_F32P, _I64P, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint32,
                                ctypes.c_uint32, ctypes.c_int, ctypes.c_float, ctypes.c_float]
    lib.ws_draw_f32.restype = None
    return lib


@functools.lru_cache(maxsize=1)
def _pool() -> concurrent.futures.ThreadPoolExecutor:
    # ctypes releases the GIL during each call, so the threads run the kernels in parallel
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return concurrent.futures.ThreadPoolExecutor(max(1, workers or 1), "ws-native")


def _is_cpu_f32(x: Any) -> bool:
    import jax

    if isinstance(x, np.ndarray):
        return x.dtype == np.float32
    return (isinstance(x, jax.Array) and x.dtype == np.float32
            and all(d.platform == "cpu" for d in x.sharding.device_set))


def usable(arrays: Sequence[Any]) -> bool:
    """Whether the statistics kernels can take these tensors (all float32, all on the CPU of
    this, the only, process: several processes need cross-host reductions, which the XLA
    programs do, with the same results)."""
    import jax

    return (library() is not None and jax.process_count() == 1
            and all(_is_cpu_f32(x) for x in arrays))


def can_draw(dtype: Any, sharding: Any) -> bool:
    """Whether `draw` can make a tensor of `dtype` with `sharding` (float32 on CPUs; with any
    number of processes, since each draws only its own shards)."""
    return (library() is not None and np.dtype(dtype) == np.float32
            and all(d.platform == "cpu" for d in sharding.device_set))


def _blocks(x: Any) -> list[np.ndarray]:
    """Flat float32 views of each distinct shard of x (no copies on the CPU)."""
    import jax

    if not isinstance(x, jax.Array):
        return [np.ascontiguousarray(x, np.float32).reshape(-1)]
    seen, out = set(), []
    for shard in x.addressable_shards:
        key = tuple((s.start, s.stop) for s in shard.index)
        if key not in seen:
            seen.add(key)
            out.append(np.ascontiguousarray(np.asarray(shard.data)).reshape(-1))
    return out


def _map_chunks(fn, blocks: Sequence[np.ndarray]) -> list:
    """fn(pointer, n) over CHUNK-sized pieces of every block, on the pool."""
    jobs = []
    for b in blocks:
        ptr = b.ctypes.data
        for start in range(0, len(b), CHUNK):
            n = min(CHUNK, len(b) - start)
            jobs.append((ctypes.cast(ptr + 4 * start, _F32P), n))
    if len(jobs) == 1:
        return [fn(*jobs[0])]
    return list(_pool().map(lambda job: fn(*job), jobs))


def _minmax(blocks: Sequence[np.ndarray]) -> tuple[np.float32, np.float32, bool]:
    lib = library()

    def one(ptr, n):
        out = np.empty(3, np.float32)
        lib.ws_minmax_f32(ptr, n, out.ctypes.data_as(_F32P))
        return out

    parts = _map_chunks(one, blocks)
    return (np.float32(max(p[0] for p in parts)), np.float32(min(p[1] for p in parts)),
            any(p[2] for p in parts))


def _exponent(m: np.float32, floor: int) -> int:
    return max(int(np.frexp(np.float32(m))[1]), floor)


def tensor_sum_parts(x: Any, bits: int) -> tuple:
    """`weight_stats._tensor_sum_parts` (same values): (m, e, exact grid sum, max, min)."""
    blocks = [b for b in _blocks(x) if len(b)]
    if not blocks:
        return (np.float32(0), 0, 0.0, np.float32(-np.inf), np.float32(np.inf))
    hi, lo, bad = _minmax(blocks)
    if bad:
        return (np.float32(np.inf), 0, 0.0, hi, lo)
    m = np.maximum(hi, -lo)
    e = _exponent(m, -96)
    scale = np.float32(math.ldexp(1.0, bits - e))
    lib = library()
    total = sum(_map_chunks(lambda p, n: lib.ws_grid_sum_f32(p, n, scale), blocks))
    return m, e, float(total), hi, lo


def squared_deviation_parts(x: Any, mu: np.float32, hi: np.float32, lo: np.float32,
                            bits: int) -> tuple:
    """`weight_stats._tensor_squared_deviation_parts` (same values): (m, k, exact grid sum)."""
    mu = np.float32(mu)
    m = np.maximum(np.float32(hi - mu), np.float32(mu - lo))
    k = _exponent(m, -100)
    kscale = np.float32(math.ldexp(1.0, -k))
    scale = np.float32(math.ldexp(1.0, bits))
    lib = library()
    blocks = [b for b in _blocks(x) if len(b)]
    total = sum(_map_chunks(lambda p, n: lib.ws_sqdev_sum_f32(p, n, mu, kscale, scale), blocks))
    return m, k, float(total)


_HUGE = 2 << 20  # bytes of a transparent huge page on x86-64 and most arm64 kernels
_MADV_HUGEPAGE = 14


@functools.lru_cache(maxsize=1)
def _madvise() -> Optional[Any]:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def _aligned_empty(shape: tuple[int, ...]) -> np.ndarray:
    """float32 array on a 64-byte boundary (XLA's CPU client adopts such a buffer without a
    copy in `jax.device_put`). A large one starts on a 2 MiB boundary and asks the kernel for
    transparent huge pages: its first touch then costs one page fault per 2 MiB instead of
    per 4 KiB (~0.1 s less for a T5-base tree here, where THP is 'madvise')."""
    n = math.prod(shape)
    nbytes = 4 * n
    align = _HUGE if nbytes >= 2 * _HUGE else 64
    raw = np.empty(nbytes + align, np.uint8)
    off = -raw.ctypes.data % align
    out = raw[off:off + nbytes].view(np.float32).reshape(shape)
    if align == _HUGE and (madvise := _madvise()) is not None:
        madvise(raw.ctypes.data + off, nbytes - nbytes % _HUGE, _MADV_HUGEPAGE)  # a hint only
    return out


def _row_bases(shape: tuple[int, ...], index: tuple[slice, ...]) -> tuple[np.ndarray, int]:
    """Global flat index of the first element of every row (last axis) of the shard `index`
    of a tensor of `shape`, and the row length."""
    if not shape:
        return np.zeros(1, np.int64), 1
    bounds = [s.indices(d)[:2] for s, d in zip(index, shape)]
    strides = np.cumprod((1,) + shape[:0:-1])[::-1]  # row-major element strides
    base = np.array(bounds[-1][0], np.int64).reshape(())
    for axis in range(len(shape) - 2, -1, -1):
        start, stop = bounds[axis]
        coords = np.arange(start, stop, dtype=np.int64) * int(strides[axis])
        base = coords.reshape((-1,) + (1,) * base.ndim) + base
    return base.reshape(-1), bounds[-1][1] - bounds[-1][0]


def _fill(out: np.ndarray, bases: np.ndarray, rowlen: int, k0: int, k1: int, rule: int,
          mu: np.float32, sigma: np.float32) -> None:
    lib = library()
    rows_per_job = max(1, CHUNK // max(rowlen, 1))
    jobs = []
    flat = out.reshape(-1)
    for r0 in range(0, len(bases), rows_per_job):
        r1 = min(len(bases), r0 + rows_per_job)
        jobs.append((flat[r0 * rowlen:], bases[r0:r1]))

    def one(job):
        o, b = job
        lib.ws_draw_f32(o.ctypes.data_as(_F32P), b.ctypes.data_as(_I64P), len(b), rowlen,
                        k0, k1, rule, mu, sigma)

    if len(jobs) == 1:
        one(jobs[0])
    else:
        list(_pool().map(one, jobs))


def draw(shape: tuple[int, ...], sharding: Any, k0: int, k1: int, rule: str, mu: float,
         sigma: float) -> Any:
    """A float32 jax.Array of `shape` with `sharding`: N(mu, sigma) ('N(mu,sigma)') or
    N(0, sigma) ('N(0,sigma)') draws, element i from `counter_rng`'s hash of (k0, k1, i).
    Each distinct shard is computed once, on this host, straight into its own buffer."""
    import jax

    if math.prod(shape) > 2 ** 32:
        raise ValueError(f"counter_rng draws tensors of up to 2**32 elements, got {shape}")
    rule_id = {"N(0,sigma)": 0, "N(mu,sigma)": 1}[rule]
    done: dict[tuple, np.ndarray] = {}
    per_device = []
    for device, index in sharding.addressable_devices_indices_map(shape).items():
        key = tuple(s.indices(d)[:2] for s, d in zip(index, shape))
        if key not in done:
            bases, rowlen = _row_bases(shape, index)
            local = tuple(b - a for a, b in key)
            out = _aligned_empty(local)
            if out.size:
                _fill(out, bases, rowlen, k0, k1, rule_id, np.float32(mu), np.float32(sigma))
            done[key] = out
        per_device.append(jax.device_put(done[key], device))
    return jax.make_array_from_single_device_arrays(shape, sharding, per_device)
