"""CPU kernels for the weight-statistics transform, compiled on first use.

On a CPU the transform is bound by arithmetic and memory passes that XLA:CPU does not fuse
well (two reductions over one input run at 1.1 ns per element; the hash and the inverse CDF
fused in one loop spill vector registers). `native/weight_stats_kernels.c` does each pass in
one vectorised loop, on as many threads as the process may use (threads started in C for
each pass, so Python's GIL is not in the way):

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

import ctypes
import functools
import math
import os
from typing import Any, Optional, Sequence

import numpy as np

from synthpre_jax import native_build

SOURCE = native_build.NATIVE_DIR / "weight_stats_kernels.c"
# -ffp-contract=off: no FMA contraction, so float32 results are XLA's; -fno-trapping-math and
# -fno-math-errno let the selects and sqrt vectorise without changing any value.
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math",
         "-fno-strict-aliasing", "-fPIC", "-shared", "-pthread")
TASK = 1 << 18  # elements per job: ~80 us to read, ~0.4 ms to draw; hand-offs cost ~0.1 us


@functools.lru_cache(maxsize=1)
def library() -> Optional[ctypes.CDLL]:
    """The compiled kernels, or None (disabled, or no working compiler: logged once)."""
    lib = native_build.load(SOURCE, FLAGS, "the XLA programs")
    if lib is None:
        return None
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.ws_pass_minmax_gridsums.argtypes = [ctypes.c_int, i64, ptr, ptr, ptr, ctypes.c_int32, ptr,
                                            ptr, ptr]
    lib.ws_pass_grid_sum.argtypes = [ctypes.c_int, i64, ptr, ptr, ptr, ptr]
    lib.ws_pass_sqdev.argtypes = [ctypes.c_int, i64, ptr, ptr, ptr, ptr, ptr, ptr]
    lib.ws_pass_draw.argtypes = [ctypes.c_int, i64] + [ptr] * 9
    for name in ("ws_pass_minmax_gridsums", "ws_pass_grid_sum", "ws_pass_sqdev", "ws_pass_draw"):
        getattr(lib, name).restype = None
    return lib


@functools.lru_cache(maxsize=1)
def _workers() -> int:
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, n or 1)


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


def _addresses(arrays: Sequence[np.ndarray]) -> np.ndarray:
    return np.array([a.ctypes.data for a in arrays], np.uint64)


def _cut(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stretches of `lengths` elements cut into jobs of TASK elements or fewer: each job's
    stretch, its start within the stretch and its length (all stretches at once, no loop)."""
    per = -(-lengths // TASK)
    owner = np.repeat(np.arange(len(lengths)), per)
    first = np.repeat(np.cumsum(per) - per, per)  # each stretch's first job
    start = (np.arange(int(per.sum()), dtype=np.int64) - first) * TASK
    return owner, start, np.minimum(TASK, lengths[owner] - start)


class Pieces:
    """Every tensor cut into pieces of TASK elements or fewer, as parallel arrays (address,
    length, owning tensor), built once for both statistics passes. Holds the blocks (a block
    may be a copy `_blocks` made) so they stay alive while the kernels read them."""

    def __init__(self, tensors: Sequence[Any]):
        self.count = len(tensors)
        self.blocks, owner = [], []
        for t, x in enumerate(tensors):
            for b in _blocks(x):
                if len(b):
                    self.blocks.append(b)
                    owner.append(t)
        block, start, self.lens = _cut(np.array([len(b) for b in self.blocks], np.int64))
        self.owners = np.array(owner, np.int64)[block]
        self.addrs = _addresses(self.blocks)[block] + 4 * start.astype(np.uint64)
        # pieces of tensor t are [bounds[t], bounds[t + 1]) (owners ascend)
        self.bounds = np.searchsorted(self.owners, np.arange(self.count + 1))

    def __len__(self) -> int:
        return len(self.lens)


def _p(a: np.ndarray) -> int:
    return a.ctypes.data


_E_FLOOR = -96  # weight_stats._tensor_sum_parts clamps the exponent there


def sum_parts_all(pieces: Pieces, bits: Sequence[int]) -> list[tuple]:
    """`weight_stats._tensor_sum_parts` of every tensor (the same values): (m, e, exact grid
    sum, max, min) each. One read of the tree: each piece's max/min and its grid sums at its
    own exponent and the two above it (from cache); only a piece whose max is below a quarter
    of its tensor's is read again, at the tensor's exponent."""
    lib, n = library(), len(pieces)
    hlb = np.empty((n, 3), np.float32)
    e_piece = np.empty(n, np.int32)
    sums = np.empty((n, 3), np.float64)
    bits = np.asarray(bits, np.int64)
    piece_bits = bits[pieces.owners].astype(np.int32)
    lib.ws_pass_minmax_gridsums(_workers(), n, _p(pieces.addrs), _p(pieces.lens), _p(piece_bits),
                                _E_FLOOR, _p(hlb), _p(e_piece), _p(sums))
    # per tensor, over its pieces (tensors without pieces are empty)
    full = np.flatnonzero(np.diff(pieces.bounds) > 0)
    at = pieces.bounds[full]
    hi = np.full(pieces.count, -np.inf, np.float32)
    lo = np.full(pieces.count, np.inf, np.float32)
    bad = np.zeros(pieces.count, bool)
    if n:
        hi[full] = np.maximum.reduceat(hlb[:, 0], at)
        lo[full] = np.minimum.reduceat(hlb[:, 1], at)
        bad[full] = np.logical_or.reduceat(hlb[:, 2] != 0, at)
    m = np.maximum(hi, -lo)
    # the XLA program's exponent (frexp(0) is 0); a piece of zeros adds 0 at any exponent,
    # every other piece has e_piece <= e
    e = np.maximum(np.frexp(np.where(np.isfinite(m), m, 0))[1], _E_FLOOR)
    zero = (hlb[:, 0] == 0) & (hlb[:, 1] == 0)
    shift = np.where(zero, 0, e[pieces.owners] - e_piece)
    near = (shift <= 2) | bad[pieces.owners]
    # integers below 2**53: exact in any order
    taken = np.where(near, sums[np.arange(n), np.clip(shift, 0, 2)], 0.0)
    total = np.zeros(pieces.count, np.float64)
    if n:
        total[full] = np.add.reduceat(taken, at)
    redo = np.flatnonzero(~near)
    if len(redo):
        t = pieces.owners[redo]
        scale = np.ldexp(np.float32(1), (bits[t] - e[t]).astype(np.int32)).astype(np.float32)
        totals = np.empty(len(redo), np.float64)
        r_addrs, r_lens = pieces.addrs[redo], pieces.lens[redo]
        lib.ws_pass_grid_sum(_workers(), len(redo), _p(r_addrs), _p(r_lens), _p(scale),
                             _p(totals))
        np.add.at(total, t, totals)
    out = []
    for t in range(pieces.count):
        if pieces.bounds[t] == pieces.bounds[t + 1]:  # an empty tensor
            out.append((np.float32(0), 0, 0.0, np.float32(-np.inf), np.float32(np.inf)))
        elif bad[t]:  # inf or NaN: the caller reports the tensor
            out.append((np.float32(np.inf), 0, 0.0, hi[t], lo[t]))
        else:
            out.append((m[t], int(e[t]), float(total[t]), hi[t], lo[t]))
    return out


def squared_deviation_parts_all(pieces: Pieces, mus: Sequence[Any], his: Sequence[Any],
                                los: Sequence[Any], bits: Sequence[int]) -> list[tuple]:
    """`weight_stats._tensor_squared_deviation_parts` of every tensor (the same values):
    (m, k, exact grid sum) each, in one pass over the whole tree."""
    mu = np.asarray(mus, np.float32)
    m = np.maximum(np.asarray(his, np.float32) - mu, mu - np.asarray(los, np.float32))
    k = np.maximum(np.frexp(m)[1], -100)
    kscale = np.ldexp(np.float32(1), -k).astype(np.float32)
    scale = np.ldexp(np.float32(1), np.asarray(bits, np.int32)).astype(np.float32)
    o = pieces.owners
    p_mu, p_kscale, p_scale = mu[o], kscale[o], scale[o]
    totals = np.empty(len(pieces), np.float64)
    library().ws_pass_sqdev(_workers(), len(pieces), _p(pieces.addrs), _p(pieces.lens), _p(p_mu),
                            _p(p_kscale), _p(p_scale), _p(totals))
    total = np.zeros(pieces.count, np.float64)
    np.add.at(total, o, totals)  # integers below 2**53: exact in any order
    return [(m[t], int(k[t]), float(total[t])) for t in range(pieces.count)]


def aligned_empty(shape: tuple[int, ...]) -> np.ndarray:
    """float32 array on a 64-byte boundary: XLA's CPU client adopts such a buffer without a
    copy in `jax.device_put` (NumPy's own 16-byte-aligned arrays are copied)."""
    n = math.prod(shape)
    raw = np.empty(4 * n + 64, np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start:start + 4 * n].view(np.float32).reshape(shape)


def _row_bases(shape: tuple[int, ...], index: tuple[slice, ...]) -> tuple[np.ndarray, int]:
    """Global flat index of the first element of every row of the shard `index` of a tensor
    of `shape`, and the row length. A row is the longest contiguous run: trailing axes the
    shard covers whole are merged into it (an unsharded tensor is one row)."""
    if not shape:
        return np.zeros(1, np.int64), 1
    bounds = [s.indices(d)[:2] for s, d in zip(index, shape)]
    while len(shape) > 1 and bounds[-1] == (0, shape[-1]):  # merge a whole last axis
        (a, b), d = bounds[-2], shape[-1]
        shape, bounds = shape[:-2] + (shape[-2] * d,), bounds[:-2] + [(a * d, b * d)]
    strides = np.cumprod((1,) + shape[:0:-1])[::-1]  # row-major element strides
    base = np.array(bounds[-1][0], np.int64).reshape(())
    for axis in range(len(shape) - 2, -1, -1):
        start, stop = bounds[axis]
        coords = np.arange(start, stop, dtype=np.int64) * int(strides[axis])
        base = coords.reshape((-1,) + (1,) * base.ndim) + base
    return base.reshape(-1), bounds[-1][1] - bounds[-1][0]


class _DrawJobs:
    """The jobs of one `ws_pass_draw` call, as parallel arrays; holds every array the kernels
    will read or write until the call is done."""

    def __init__(self) -> None:
        self.cols: dict[str, list[np.ndarray]] = {k: [] for k in ("out", "base", "nrows",
                                                                  "rowlen")}
        self.params: list[tuple] = []  # (k0, k1, rule, mu, sigma) of each batch of rows or run
        self.counts: list[int] = []  # its number of jobs
        self.keep: list[np.ndarray] = []
        self.runs: list[tuple] = []  # (address, base, n, k0, k1, rule, mu, sigma) of each run

    def add(self, out: np.ndarray, bases: np.ndarray, rowlen: int, k0: int, k1: int, rule: int,
            mu: np.float32, sigma: np.float32) -> None:
        """Draw the rows starting at global flat indices `bases` (each `rowlen` long) into
        `out` (C-contiguous): rows longer than a job as runs, short ones several to a job."""
        if rowlen > TASK:
            self.keep.append(out)
            for r, base in enumerate(bases.tolist()):
                self.add_run(out.ctypes.data + 4 * r * rowlen, base, rowlen, k0, k1, rule, mu,
                             sigma)
            return
        rows = TASK // max(rowlen, 1)
        firsts = np.arange(0, len(bases), rows, dtype=np.int64)
        self.keep += [out, bases]
        c = self.cols
        c["out"].append(np.uint64(out.ctypes.data) + (4 * rowlen * firsts).astype(np.uint64))
        c["base"].append(np.uint64(bases.ctypes.data) + (8 * firsts).astype(np.uint64))
        c["nrows"].append(np.minimum(rows, len(bases) - firsts))
        c["rowlen"].append(np.full(len(firsts), rowlen, np.int64))
        self.params.append((k0, k1, rule, mu, sigma))
        self.counts.append(len(firsts))

    def add_run(self, address: int, base: int, n: int, k0: int, k1: int, rule: int,
                mu: np.float32, sigma: np.float32) -> None:
        """Draw global flat indices base..base+n-1 into the n floats at `address`. Runs are
        cut into jobs all at once in `run`: no NumPy work per tensor (~50 us each)."""
        self.runs.append((address, base, n, k0, k1, rule, mu, sigma))

    def _run_jobs(self) -> None:
        address, base, n, *params = (np.array(v) for v in zip(*self.runs))
        run, start, length = _cut(n.astype(np.int64))
        first = base.astype(np.int64)[run] + start  # the global flat index of each job
        self.keep.append(first)
        c = self.cols
        c["out"].append(address.astype(np.uint64)[run] + 4 * start.astype(np.uint64))
        c["base"].append(np.uint64(first.ctypes.data)
                         + 8 * np.arange(len(first), dtype=np.uint64))
        c["nrows"].append(np.ones(len(first), np.int64))
        c["rowlen"].append(length)
        self.params += [tuple(v) for v in zip(*params)]
        self.counts += np.bincount(run, minlength=len(self.runs)).tolist()

    def run(self) -> None:
        if self.runs:
            self._run_jobs()
        if not self.keep:
            return
        cols = [np.concatenate(self.cols[k]) for k in self.cols]
        k0, k1, rule, mu, sigma = zip(*self.params)
        cols += [np.repeat(np.array(v, dtype), self.counts) for v, dtype in (
            (k0, np.uint32), (k1, np.uint32), (rule, np.int32), (mu, np.float32),
            (sigma, np.float32))]
        library().ws_pass_draw(_workers(), len(cols[0]), *(_p(c) for c in cols))


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
    element i of each from `counter_rng`'s hash of (k0, k1, i), all in one pass (one C call,
    on every core).

    A request is dict(shape, sharding, k0, k1, rule, mu, sigma[, target]): with `target` (from
    `take_buffer`) the draws go into its buffers and it is returned; otherwise into new
    buffers. Each distinct shard is drawn once, on this host; replicas are copies of it."""
    import jax

    targets = [r.get("target") for r in requests]
    jax.block_until_ready([t for t in targets if t is not None])  # before writing into them
    jobs, finish = _DrawJobs(), []
    for r, target in zip(requests, targets):
        shape = tuple(r["shape"])
        if math.prod(shape) > 2 ** 32:
            raise ValueError(f"counter_rng draws tensors of up to 2**32 elements, got {shape}")
        rule = {"N(0,sigma)": 0, "N(mu,sigma)": 1}[r["rule"]]
        params = (int(r["k0"]), int(r["k1"]), rule, np.float32(r["mu"]), np.float32(r["sigma"]))
        shards = target.addressable_shards if target is not None else None
        if shards is not None and len(shards) == 1 and shards[0].data.size == math.prod(shape):
            # one buffer holding the whole tensor (row-major): one run, no NumPy view
            if shards[0].data.size:
                jobs.add_run(shards[0].data.unsafe_buffer_pointer(), 0, shards[0].data.size,
                             *params)
            finish.append((r, target, None, [], []))
            continue
        drawn: dict[tuple, np.ndarray] = {}
        copies: list[tuple[np.ndarray, np.ndarray]] = []
        if target is not None:
            devices = None
            slots = [(s.index, _buffer_view(s.data, s.index, shape)) for s in shards]
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
                jobs.add(out, bases, rowlen, *params)
            drawn[key] = out
            outs.append(out)
        finish.append((r, target, devices, outs, copies))
    jobs.run()
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
