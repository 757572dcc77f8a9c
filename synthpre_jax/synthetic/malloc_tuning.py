"""Keep freed memory in the process heap, so block generation is not page-fault bound.

A block of 1024 examples makes NumPy temporaries of ~1 MB. glibc serves
allocations that large with `mmap` and unmaps them on `free`, and its heap
returns freed memory above 128 KB to the OS, so every temporary is fresh
memory and each of its pages faults on first touch. On the VMs we measured,
those faults cost 5-10x the arithmetic (a 120k-element float->int cast: 1.1 ms
vs 0.1 ms with the memory reused). Raising glibc's mmap and trim thresholds
(`mallopt`) lets the temporaries reuse heap memory; the price is that the
process keeps up to `TRIM_BYTES` of freed heap instead of returning it.

It changes a process-wide setting: only on glibc, and not at all when
`SYNTHPRE_MALLOC_TUNING=0`. It is re-applied before every generated block
(~1 us), not once: TensorFlow's `GeneratorDatasetOp` sets the mmap threshold
back to 128 KB each time such a kernel is built (its "Python 3.11 memory patch"),
that is, whenever a `tf.data.Dataset.from_generator` iterator starts. Applied
once, the tuning was lost exactly where our generators run, on tf.data threads:
NumPy work there took ~4x longer with ~50x the page faults.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

ENV_VAR = "SYNTHPRE_MALLOC_TUNING"
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_BYTES = 32 << 20   # glibc's largest allowed mmap threshold on 64-bit
TRIM_BYTES = 64 << 20

_mallopt = None  # libc's mallopt while tuning is on; False once it is found off


def _find_mallopt():
    if os.environ.get(ENV_VAR, "1") == "0" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False


def tune_malloc() -> bool:
    """(Re-)apply the thresholds; True when they are in effect."""
    global _mallopt
    if _mallopt is None:
        _mallopt = _find_mallopt()
    if not _mallopt:
        return False
    if _mallopt(M_MMAP_THRESHOLD, MMAP_BYTES) == 1 and _mallopt(M_TRIM_THRESHOLD, TRIM_BYTES) == 1:
        return True
    _mallopt = False
    return False
