"""The generators' C kernels (`native/synthetic_kernels.c`), built on first use.

What NumPy does slowly for the generators: the counter-based random numbers (`rng`;
otherwise a dozen NumPy passes per number), CPython `set` layouts (`pyset.set_rows`,
otherwise Python sets per row), sorting integer keys (`sort_keys`, otherwise `np.sort`, a
comparison sort that some CPUs run 4-6x slower than others), per-row orders (shuffles,
first occurrences), sublist search, the sort task's target, and the nesting language's
per-sentence stack walk (otherwise one NumPy step per position). All are optional: without
a C compiler, or with `SYNTHPRE_NATIVE_KERNELS=0`, the NumPy/Python paths give the same
results (tests compare them). No JAX or TensorFlow import.
"""
from __future__ import annotations

import ctypes
import functools
from typing import Optional

import numpy as np

from synthpre_jax import native_build

SOURCE = native_build.NATIVE_DIR / "synthetic_kernels.c"
FLAGS = ("-O2", "-fPIC", "-shared")
MIN_RADIX = 2048  # below this many keys np.sort's call is cheaper than the radix passes


@functools.lru_cache(maxsize=1)
def kernels() -> Optional[ctypes.CDLL]:
    lib = native_build.load(SOURCE, FLAGS, "NumPy and Python sets")
    if lib is not None:
        ptr, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        lib.ps_rows.argtypes = [i32, i64, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr]
        lib.ps_rows.restype = i32
        for name in ("sk_sort_u64", "sk_sort_u32"):
            getattr(lib, name).argtypes = [i64, ptr, ptr, i32]
            getattr(lib, name).restype = i32
        lib.nl_walk.argtypes = [i64, ptr, ptr, ptr, ctypes.c_int32, ptr]
        lib.nl_walk.restype = None
        lib.sk_row_argsort.argtypes = [i64, ptr, ptr, ptr]
        lib.sk_row_argsort.restype = i32
        lib.sk_first_in_rows.argtypes = [i64, ptr, ptr, ctypes.c_int32, ptr]
        lib.sk_first_in_rows.restype = i32
        lib.rng_rows.argtypes = [i64, ptr, ptr, ctypes.c_uint64, ctypes.c_uint64, ptr]
        lib.rng_rows.restype = None
        lib.rng_at.argtypes = [i64, ptr, ptr, ptr]
        lib.rng_at.restype = None
        lib.rng_sub.argtypes = [i64, ptr, ctypes.c_uint64, ptr]
        lib.rng_sub.restype = None
        lib.rng_pick_pair_rows.argtypes = [i64, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ctypes.c_int32,
                                           ptr]
        lib.rng_pick_pair_rows.restype = None
        lib.rng_shuffle_rows.argtypes = [i64, ptr, ptr, ptr, ptr]
        lib.rng_shuffle_rows.restype = i32
        lib.rng_partition.argtypes = [i64, ptr, ptr, ptr, ptr]
        lib.rng_partition.restype = None
        lib.rng_distinct_rows.argtypes = [i64, ptr, ptr, ptr, i64, ctypes.c_uint64,
                                          ctypes.c_int32, ptr, ptr]
        lib.rng_distinct_rows.restype = i32
        lib.sk_first_index.argtypes = [i64, ptr, ptr, ctypes.c_int32, ptr]
        lib.sk_first_index.restype = None
        lib.sk_find_rows.argtypes = [i64, ptr, ptr, ptr, ptr, ptr, ptr, ptr]
        lib.sk_find_rows.restype = None
        lib.sk_cut_rows.argtypes = [i64, ptr, ptr, ptr, ptr, ptr, ptr]
        lib.sk_cut_rows.restype = None
        lib.sk_count_rows.argtypes = [i64, ptr, ptr, ptr, ptr, ptr]
        lib.sk_count_rows.restype = None
        lib.sk_take_rows.argtypes = [i64, ptr, ptr, ptr, ptr, ptr]
        lib.sk_take_rows.restype = None
        lib.sk_sort_rows.argtypes = [i64, ptr, ptr, ptr, ptr, ctypes.c_int32, ptr]
        lib.sk_sort_rows.restype = i64
    return lib


U64, I64, I32 = np.uint64, np.int64, np.int32


def as_c(a, dtype) -> np.ndarray:
    """`a` as a C-contiguous array of `dtype` (a copy only when needed)."""
    return np.ascontiguousarray(a, dtype=dtype)


def call(fn, *args, what: str = "") -> int:
    """`fn` with arrays passed by address; a negative return (out of memory) raises."""
    rc = fn(*[a.ctypes.data if isinstance(a, np.ndarray) else a for a in args])
    if rc is not None and rc < 0:
        raise MemoryError(f"{what}: out of memory")
    return rc


def _ids_ok(*arrays: np.ndarray) -> bool:
    """Every value in [0, 2**22): the range of the kernels' bitmaps."""
    return all(not len(a) or (int(a.min()) >= 0 and int(a.max()) < 1 << 22) for a in arrays)


def sort_keys(a: np.ndarray) -> np.ndarray:
    """`np.sort(a)` of a 1-D integer array, by an LSD radix sort when the keys are
    non-negative and the kernels are available."""
    a = np.asarray(a)
    lib = kernels()
    if (lib is None or a.ndim != 1 or len(a) < MIN_RADIX or len(a) >= 2**32
            or a.dtype.kind not in "iu" or a.dtype.itemsize not in (4, 8)):
        return np.sort(a)
    if a.dtype.kind == "i" and int(a.min()) < 0:
        return np.sort(a)
    wide = a.dtype.itemsize == 8
    out = np.array(a, dtype=U64 if wide else np.uint32)
    call(lib.sk_sort_u64 if wide else lib.sk_sort_u32, len(out), out, np.empty_like(out),
          int(out.max()).bit_length(), what="radix sort")
    return out.view(a.dtype)


def row_argsort(u: np.ndarray, rows: np.ndarray) -> Optional[np.ndarray]:
    """`np.argsort(u + rows)` (u in [0, 1), rows non-decreasing, >= 0) when the kernels are
    available and no two keys tie; else None (the caller decides)."""
    lib = kernels()
    if lib is None:
        return None
    perm = np.empty(len(u), dtype=I64)
    rc = call(lib.sk_row_argsort, len(u), as_c(u, np.float64), as_c(rows, I64), perm,
               what="row argsort")
    return perm if rc == 0 else None


def first_in_rows(values: np.ndarray, lengths: np.ndarray) -> Optional[np.ndarray]:
    """Mask of the values that first occur in their row (values int32 in [0, 2**22)), or None
    when the kernels are unavailable or the values out of that range."""
    lib = kernels()
    values = as_c(values, I32)
    if lib is None or not _ids_ok(values):
        return None
    mask = np.empty(len(values), dtype=np.uint8)
    call(lib.sk_first_in_rows, len(lengths), as_c(lengths, I64), values,
          int(values.max()) if len(values) else 0, mask, what="first occurrences")
    return mask.view(bool)


def counter_rows(keys: np.ndarray, counts: np.ndarray, offset: int = 0,
                 n: int = 0) -> Optional[np.ndarray]:
    """Numbers offset+1 .. offset+counts[r] of every row key (flat): float64 uniforms, or with
    n > 0 integers in [0, n); None without the kernels."""
    lib = kernels()
    if lib is None:
        return None
    keys = as_c(keys, U64)
    counts = as_c(np.broadcast_to(counts, keys.shape), I64)
    out = np.empty(int(counts.sum()), dtype=I64 if n else np.float64)
    call(lib.rng_rows, len(keys), keys, counts, offset, n, out)
    return out


def counter_at(keys: np.ndarray, j: np.ndarray) -> Optional[np.ndarray]:
    """Number j[i] of key keys[i], elementwise, as float64 uniforms; None without the kernels."""
    lib = kernels()
    if lib is None:
        return None
    keys, j = np.broadcast_arrays(np.asarray(keys, dtype=U64), np.asarray(j, dtype=I64))
    out = np.empty(keys.shape, dtype=np.float64)
    call(lib.rng_at, keys.size, as_c(keys, U64), as_c(j, I64), out)
    return out


def counter_sub(keys: np.ndarray, h: int) -> Optional[np.ndarray]:
    """mix(keys ^ h), a stage's keys; None without the kernels."""
    lib = kernels()
    if lib is None:
        return None
    keys = as_c(keys, U64)
    out = np.empty_like(keys)
    call(lib.rng_sub, len(keys), keys, h, out)
    return out


def counter_pick_pair_rows(keys1: np.ndarray, counts1: np.ndarray, keys2: np.ndarray,
                           counts2: np.ndarray, values: np.ndarray, starts: np.ndarray,
                           sizes: np.ndarray, sep: int) -> Optional[np.ndarray]:
    """Row r: counts1[r] picks values[starts[r] + min(floor(u * sizes[r]), sizes[r] - 1)] with
    u the numbers 1, 2, ... of keys1[r], then `sep`, then counts2[r] picks with keys2[r]
    (flat); None without the kernels. Rows with picks need sizes > 0."""
    lib = kernels()
    if lib is None:
        return None
    counts1, counts2 = as_c(counts1, I64), as_c(counts2, I64)
    out = np.empty(int(counts1.sum() + counts2.sum()) + len(counts1), dtype=I32)
    call(lib.rng_pick_pair_rows, len(counts1), as_c(keys1, U64), counts1, as_c(keys2, U64),
         counts2, as_c(values, I32), as_c(starts, I64), as_c(sizes, I64), sep, out)
    return out


def shuffle_rows(keys: np.ndarray, lengths: np.ndarray, values: np.ndarray) -> Optional[np.ndarray]:
    """`ragged.shuffle_rows`'s values (row r permuted by np.argsort(u + r) of its counter
    numbers), or None without the kernels or when keys tie (np.argsort's call)."""
    lib = kernels()
    if lib is None:
        return None
    values = as_c(values, I32)
    out = np.empty_like(values)
    rc = call(lib.rng_shuffle_rows, len(keys), as_c(keys, U64), as_c(lengths, I64), values, out,
               what="shuffle rows")
    return out if rc == 0 else None


def partition(keys: np.ndarray, balls: np.ndarray, k: np.ndarray) -> Optional[np.ndarray]:
    """Per-part ball counts (flat, row after row) of balls[r] uniform throws into k[r] parts
    with each row's counter numbers; None without the kernels. Rows with balls need k > 0."""
    lib = kernels()
    if lib is None:
        return None
    k = as_c(k, I64)
    counts = np.zeros(int(k.sum()), dtype=I64)
    call(lib.rng_partition, len(keys), as_c(keys, U64), as_c(balls, I64), k, counts)
    return counts


def distinct_rows(keys: np.ndarray, m: np.ndarray, hashes: np.ndarray, n: int, lo: int,
                  ids: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """Row r: m[r] distinct pool ids drawn from stage try0, try1, ... (stage hashes given)
    until they hold no repeat; None without the kernels, for ids >= 2**22, or when a row
    needs more rounds than hashes."""
    lib = kernels()
    ids = None if ids is None else as_c(ids, I32)
    if lib is None or (ids is None and lo + n > 1 << 22) or (ids is not None and not _ids_ok(ids)):
        return None
    m = as_c(m, I64)
    out = np.empty(int(m.sum()), dtype=I32)
    rc = call(lib.rng_distinct_rows, len(keys), as_c(keys, U64), m, as_c(hashes, U64), len(hashes),
               n, lo, ids, out, what="distinct rows")
    return out if rc == 0 else None


def find_rows(seq: tuple, query: tuple) -> Optional[np.ndarray]:
    """First position of each row's query in its seq (-1: absent; 0: empty query), or None
    without the kernels. seq and query are (values, starts, lengths) spans."""
    lib = kernels()
    if lib is None:
        return None
    out = np.empty(len(seq[1]), dtype=I64)
    call(lib.sk_find_rows, len(out), as_c(seq[0], I32), as_c(seq[1], I64), as_c(seq[2], I64),
         as_c(query[0], I32), as_c(query[1], I64), as_c(query[2], I64), out)
    return out


def cut_rows(span: tuple, at: np.ndarray, cut: np.ndarray) -> Optional[np.ndarray]:
    """The values of each row of the (values, starts, lengths) span without
    [at, at + cut) where at >= 0, flat; None without the kernels."""
    lib = kernels()
    if lib is None:
        return None
    at, cut = as_c(at, I64), as_c(cut, I64)
    out = np.empty(int(span[2].sum() - cut[at >= 0].sum()), dtype=I32)
    call(lib.sk_cut_rows, len(at), as_c(span[0], I32), as_c(span[1], I64), as_c(span[2], I64),
         at, cut, out)
    return out


def count_rows(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
               probe: np.ndarray) -> Optional[np.ndarray]:
    """How often probe[r] occurs in row r's span of values; None without the kernels."""
    lib = kernels()
    if lib is None:
        return None
    out = np.empty(len(starts), dtype=I64)
    call(lib.sk_count_rows, len(out), as_c(values, I32), as_c(starts, I64), as_c(lengths, I64),
         as_c(probe, I32), out)
    return out


def take_rows(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
              idx: np.ndarray) -> Optional[np.ndarray]:
    """The values of rows idx (any order, repeats allowed) of a ragged, flat; None without
    the kernels."""
    lib = kernels()
    if lib is None:
        return None
    idx, lengths = as_c(idx, I64), as_c(lengths, I64)
    out = np.empty(int(lengths[idx].sum()), dtype=I32)
    call(lib.sk_take_rows, len(idx), as_c(values, I32), as_c(starts, I64), lengths, idx, out)
    return out


def sort_rows(order_values: np.ndarray, order_offsets: np.ndarray, seq_values: np.ndarray,
              seq_offsets: np.ndarray) -> Optional[np.ndarray]:
    """The sort task's target values (seq sorted by each token's last index in order), or None
    without the kernels or for values outside [0, 2**22). A seq token missing from its order
    is a ValueError."""
    lib = kernels()
    ov, sv = as_c(order_values, I32), as_c(seq_values, I32)
    if lib is None or not _ids_ok(ov, sv):
        return None
    top = max(int(ov.max()) if len(ov) else 0, int(sv.max()) if len(sv) else 0)
    out = np.empty(len(sv), dtype=I32)
    rc = call(lib.sk_sort_rows, len(order_offsets) - 1, ov, as_c(order_offsets, I64), sv,
               as_c(seq_offsets, I64), top, out, what="sort rows")
    if rc > 0:
        raise ValueError("sort: every token of seq must appear in order")
    return out


def first_index(values: np.ndarray, offsets: np.ndarray, sep: int) -> Optional[np.ndarray]:
    """Index of each row's first `sep` inside the row (-1: none); None without the kernels."""
    lib = kernels()
    if lib is None:
        return None
    pos = np.empty(len(offsets) - 1, dtype=I64)
    call(lib.sk_first_index, len(pos), as_c(values, I32), as_c(offsets, I64), sep, pos)
    return pos
