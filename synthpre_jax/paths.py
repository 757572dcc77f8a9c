"""Output directories that are proven writable before a long job starts writing into them."""
from __future__ import annotations

import os


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
