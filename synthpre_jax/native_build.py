"""Build and load the package's small C libraries (`native/*.c`) on first use.

Why compile at run time: the libraries are optional accelerators of code that also exists in
Python, so an install needs no compiler and no wheel per platform; where a compiler is present
the first call builds the library (~1 s) into `$XDG_CACHE_HOME/synthpre_jax` (default
~/.cache), keyed by the source, the flags, the compiler name and the CPU's features, and later
processes load it from there. Any failure means "no library": callers fall back to their
Python/XLA path, which gives the same results. No JAX or TensorFlow import here, so the
synthetic generators can use it.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional, Sequence

log = logging.getLogger(__name__)

NATIVE_DIR = Path(__file__).resolve().parent / "native"


def cpu_features() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "synthpre_jax"


def _compile(source: Path, flags: Sequence[str], target: Path) -> None:
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        raise OSError(f"no C compiler ({compiler}) on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        proc = subprocess.run([compiler, *flags, "-o", tmp, str(source)], capture_output=True,
                              text=True, timeout=120)
        if proc.returncode != 0:
            raise OSError(f"{compiler} failed: {proc.stderr.strip()[:300]}")
        os.replace(tmp, target)  # atomic: concurrent builders each publish a whole library
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load(source: Path, flags: Sequence[str], what: str) -> Optional[ctypes.CDLL]:
    """The library built from `source` with `flags`, or None (turned off with
    `SYNTHPRE_NATIVE_KERNELS=0`, or no working compiler: logged once per caller, which caches
    the answer). `what` names the fallback in the log line."""
    if os.environ.get("SYNTHPRE_NATIVE_KERNELS", "1") == "0":
        return None
    tag = hashlib.sha256("\n".join([source.read_text(encoding="utf-8"), " ".join(flags),
                                    os.environ.get("CC") or "cc", platform.machine(),
                                    cpu_features()]).encode()).hexdigest()[:16]
    target = cache_dir() / f"{source.stem}-{tag}.so"
    try:
        if not target.exists():
            _compile(source, flags, target)
        return ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as e:
        log.info("native library %s unavailable (%s); using %s", source.name, e, what)
        return None
