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
TASK = 1 << 18  # elements per task: ~1 ms of work, so hand-offs (~10 us) stay cheap
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
    lib.ws_minmax_gridsums_f32.argtypes = [_F32P, ctypes.c_int64, ctypes.c_int32, ctypes.c_int32,
                                           _F32P, ctypes.POINTER(ctypes.c_int32),
                                           ctypes.POINTER(ctypes.c_double)]
    lib.ws_minmax_gridsums_f32.restype = None
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
def _workers() -> int:
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, n or 1)


@functools.lru_cache(maxsize=1)
def _pool() -> concurrent.futures.ThreadPoolExecutor:
    # ctypes releases the GIL during each call, so the threads run the kernels in parallel
    return concurrent.futures.ThreadPoolExecutor(_workers(), "ws-native")


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


def _run(jobs: Sequence[tuple]) -> list:
    """fn(*args) for every (fn, *args) in `jobs`, on the pool (one hand-off for a whole pass
    over the tree: per-tensor hand-offs and their stragglers cost more than the work of the
    small tensors)."""
    if len(jobs) <= 1:
        return [job[0](*job[1:]) for job in jobs]
    return list(_pool().map(lambda job: job[0](*job[1:]), jobs))


def _pieces(blocks: Sequence[np.ndarray]) -> list[tuple[Any, int]]:
    """(pointer, length) pieces of TASK elements or fewer covering every block. Each pointer
    holds a reference to its slice (`ndarray.ctypes.data_as`), so a block that `_blocks`
    had to copy stays alive until the kernels have read it."""
    return [(b[start:start + TASK].ctypes.data_as(_F32P), min(TASK, len(b) - start))
            for b in blocks for start in range(0, len(b), TASK)]


_E_FLOOR = -96  # weight_stats._tensor_sum_parts clamps the exponent there


def _minmax_sums_piece(ptr: Any, n: int, bits: int) -> tuple:
    """(max, min, non-finite, the piece's exponent e, grid sums at e, e + 1, e + 2)."""
    hlb = np.empty(3, np.float32)
    e = ctypes.c_int32()
    sums = np.empty(3, np.float64)
    library().ws_minmax_gridsums_f32(ptr, n, bits, _E_FLOOR, hlb.ctypes.data_as(_F32P),
                                     ctypes.byref(e), sums.ctypes.data_as(ctypes.POINTER(ctypes.c_double)))
    return hlb[0], hlb[1], bool(hlb[2]), int(e.value), sums


def _exponent(m: np.float32, floor: int) -> int:
    return max(int(np.frexp(np.float32(m))[1]), floor)


def _per_tensor(results: list, owners: list[int], count: int) -> list[list]:
    grouped: list[list] = [[] for _ in range(count)]
    for r, t in zip(results, owners):
        grouped[t].append(r)
    return grouped


def sum_parts_all(tensors: Sequence[Any], bits: Sequence[int]) -> list[tuple]:
    """`weight_stats._tensor_sum_parts` of every tensor (the same values): (m, e, exact grid
    sum, max, min) each. One read of the tree: each piece's max/min and its grid sums at its
    own exponent and the two above it (from cache); only a piece whose max is below a quarter
    of its tensor's is read again, at the tensor's exponent."""
    lib = library()
    pieces = [_pieces([b for b in _blocks(x) if len(b)]) for x in tensors]
    owners = [t for t, ps in enumerate(pieces) for _ in ps]
    flat = [p for ps in pieces for p in ps]
    first = _per_tensor(_run([(_minmax_sums_piece, *p, bits[t]) for p, t in zip(flat, owners)]),
                        owners, len(tensors))
    out: list[Any] = []
    jobs, redo_owners = [], []
    for t, parts in enumerate(first):
        if not parts:  # an empty tensor
            out.append((np.float32(0), 0, 0.0, np.float32(-np.inf), np.float32(np.inf)))
            continue
        hi = np.float32(max(p[0] for p in parts))
        lo = np.float32(min(p[1] for p in parts))
        if any(p[2] for p in parts):  # inf or NaN: the caller reports the tensor
            out.append((np.float32(np.inf), 0, 0.0, hi, lo))
            continue
        m = np.maximum(hi, -lo)
        e = max(p[3] for p in parts)  # == _exponent(m, _E_FLOOR): frexp is monotonic
        total = 0.0
        for (ptr, n), (_, _, _, e_piece, sums) in zip(pieces[t], parts):
            if e - e_piece <= 2:
                total += sums[e - e_piece]  # integers below 2**53: exact in any order
            else:
                jobs.append((lib.ws_grid_sum_f32, ptr, n, np.float32(math.ldexp(1.0, bits[t] - e))))
                redo_owners.append(t)
        out.append([m, e, total, hi, lo])
    for t, total in zip(redo_owners, _run(jobs)):
        out[t][2] += total
    return [tuple(o) for o in out]


def squared_deviation_parts_all(tensors: Sequence[Any], mus: Sequence[Any], his: Sequence[Any],
                                los: Sequence[Any], bits: Sequence[int]) -> list[tuple]:
    """`weight_stats._tensor_squared_deviation_parts` of every tensor (the same values):
    (m, k, exact grid sum) each, in one pass over the whole tree."""
    lib = library()
    out, jobs, owners = [], [], []
    for t, x in enumerate(tensors):
        mu = np.float32(mus[t])
        m = np.maximum(np.float32(his[t] - mu), np.float32(mu - los[t]))
        k = _exponent(m, -100)
        kscale = np.float32(math.ldexp(1.0, -k))
        scale = np.float32(math.ldexp(1.0, bits[t]))
        out.append([m, k, 0.0])
        for ptr, n in _pieces([b for b in _blocks(x) if len(b)]):
            jobs.append((lib.ws_sqdev_sum_f32, ptr, n, mu, kscale, scale))
            owners.append(t)
    for t, total in zip(owners, _run(jobs)):
        out[t][2] += total
    return [tuple(o) for o in out]


def aligned_empty(shape: tuple[int, ...]) -> np.ndarray:
    """float32 array on a 64-byte boundary: XLA's CPU client adopts such a buffer without a
    copy in `jax.device_put` (NumPy's own 16-byte-aligned arrays are copied)."""
    n = math.prod(shape)
    raw = np.empty(4 * n + 64, np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start:start + 4 * n].view(np.float32).reshape(shape)


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


def _fill_jobs(out: np.ndarray, bases: np.ndarray, rowlen: int, k0: int, k1: int, rule: int,
               mu: np.float32, sigma: np.float32) -> list[tuple]:
    """`_run` jobs that draw the rows `bases` (each `rowlen` long) into `out`."""
    lib = library()
    rows = max(1, TASK // max(rowlen, 1))
    flat = out.reshape(-1)
    jobs = []
    for r0 in range(0, len(bases), rows):
        b = bases[r0:r0 + rows]  # data_as pointers hold references to their arrays
        jobs.append((lib.ws_draw_f32, flat[r0 * rowlen:].ctypes.data_as(_F32P),
                     b.ctypes.data_as(_I64P), len(b), rowlen, k0, k1, rule, mu, sigma))
    return jobs


@functools.lru_cache(maxsize=64)
def _take_program(sharding: Any):
    # x * 1 simplifies to x, and with the input donated XLA returns the input's own buffer:
    # no copy, unless XLA may not reuse it (e.g. memory adopted from a NumPy array), when it
    # copies into a buffer of its own. Either way the result's buffer is the program's alone.
    import jax

    return jax.jit(lambda x: x * np.float32(1), donate_argnums=0, out_shardings=sharding)


def take_buffer(fresh: Any) -> Any:
    """A float32 jax.Array that owns the donated `fresh` tensor's memory (already mapped, so
    writing it costs no page faults: ~0.1-0.3 s for a T5-base tree here), as a `draw_many`
    target. `fresh` is deleted."""
    return _take_program(fresh.sharding)(fresh)


def _shard_key(index: tuple, shape: tuple[int, ...]) -> tuple:
    return tuple(s.indices(d)[:2] for s, d in zip(index, shape))


def draw_many(requests: Sequence[dict]) -> list[Any]:
    """Float32 jax.Arrays of N(mu, sigma) ('N(mu,sigma)') or N(0, sigma) ('N(0,sigma)') draws,
    element i of each from `counter_rng`'s hash of (k0, k1, i), all in one pass on the pool.

    A request is dict(shape, sharding, k0, k1, rule, mu, sigma[, target]): with `target` (from
    `take_buffer`) the draws go into its buffers and it is returned; otherwise into new
    buffers. Each distinct shard is drawn once, on this host; replicas are copies of it."""
    import jax

    targets = [r.get("target") for r in requests]
    jax.block_until_ready([t for t in targets if t is not None])  # before writing into them
    jobs, finish = [], []
    for r, target in zip(requests, targets):
        shape = tuple(r["shape"])
        if math.prod(shape) > 2 ** 32:
            raise ValueError(f"counter_rng draws tensors of up to 2**32 elements, got {shape}")
        rule = {"N(0,sigma)": 0, "N(mu,sigma)": 1}[r["rule"]]
        params = (int(r["k0"]), int(r["k1"]), rule, np.float32(r["mu"]), np.float32(r["sigma"]))
        drawn: dict[tuple, np.ndarray] = {}
        copies: list[tuple[np.ndarray, np.ndarray]] = []
        if target is not None:
            devices = None
            slots = [(s.index, _buffer_view(s.data, s.index, shape)) for s in target.addressable_shards]
        else:
            index_map = r["sharding"].addressable_devices_indices_map(shape)
            devices = list(index_map)
            slots = [(index, None) for index in index_map.values()]
        outs = []
        for index, view in slots:
            key = _shard_key(index, shape)
            if key in drawn:
                if view is not None:
                    copies.append((view, drawn[key]))
                outs.append(drawn[key] if view is None else view)
                continue
            out = view if view is not None else aligned_empty(tuple(b - a for a, b in key))
            if out.size:
                bases, rowlen = _row_bases(shape, index)
                jobs += _fill_jobs(out, bases, rowlen, *params)
            drawn[key] = out
            outs.append(out)
        finish.append((r, target, devices, outs, copies))
    _run(jobs)
    results = []
    for r, target, devices, outs, copies in finish:
        for dst, src in copies:
            np.copyto(dst, src)
        if target is not None:
            results.append(target)
            continue
        results.append(jax.make_array_from_single_device_arrays(
            tuple(r["shape"]), r["sharding"],
            [jax.device_put(o, d) for o, d in zip(outs, devices)]))
    return results


def _buffer_view(data: Any, index: tuple, shape: tuple[int, ...]) -> np.ndarray:
    """A writable NumPy view of a single-device CPU array's buffer (row-major)."""
    local = tuple(b - a for a, b in _shard_key(index, shape))
    n = math.prod(local)
    ptr = data.unsafe_buffer_pointer()
    return np.ctypeslib.as_array((ctypes.c_float * max(n, 1)).from_address(ptr))[:n].reshape(local)


def draw(shape: tuple[int, ...], sharding: Any, k0: int, k1: int, rule: str, mu: float,
         sigma: float) -> Any:
    """One `draw_many` request into new buffers."""
    return draw_many([dict(shape=shape, sharding=sharding, k0=k0, k1=k1, rule=rule, mu=mu,
                           sigma=sigma)])[0]
