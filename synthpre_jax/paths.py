"""Output directories that are proven writable before a long job starts writing into them."""
from __future__ import annotations

import os
import shutil
import tempfile

from synthpre_jax.errors import UserError


def make_writable_dir(path: str) -> None:
    """Create `path` (and parents) and write then remove a probe file in it.

    `os.access` says yes to root on a read-only mount and says nothing about quotas, so a real
    write is the only check that holds; raises OSError when it fails.
    """
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, f".write_probe_{os.getpid()}")
    with open(probe, "w") as f:
        f.write("ok")
    os.remove(probe)


def check_dir_target(path: str, what: str) -> None:
    """Raise one UserError line when `path` cannot become a directory of ours: it is a file,
    a parent is a file, or nothing can be created where it would go (e.g. under /proc). Leaves
    nothing behind, so commands can check their output directory before any slow work."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{what} {path} is a file, not a directory; choose another directory")
    parent = nearest_existing(path)
    if not os.path.isdir(parent):
        raise UserError(f"{what} {path} cannot be created: {parent} is a file, not a directory; "
                        "choose another directory")
    probe_in = path if os.path.isdir(path) else parent
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".synthpre_probe_", dir=probe_in))
    except OSError as e:
        raise UserError(f"{what} {path} is not writable ({e.strerror or e}); "
                        "choose another directory") from None


def remove_created(path: str, existed_before: str) -> None:
    """Remove `path` and every parent up to (not including) `existed_before`, the nearest
    ancestor that existed before the command created the rest: a failed command leaves no
    empty directory chain behind."""
    top = os.path.abspath(path)
    stop = os.path.abspath(existed_before)
    while os.path.dirname(top) != stop and os.path.dirname(top) != top:
        top = os.path.dirname(top)
    if top != stop:
        shutil.rmtree(top, ignore_errors=True)


def nearest_existing(path: str) -> str:
    """The nearest ancestor of `path` (or `path` itself) that exists."""
    p = os.path.abspath(path)
    while not os.path.exists(p):
        p = os.path.dirname(p)
    return p
