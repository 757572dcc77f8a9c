"""Helpers shared by the tests/test_reliability_*.py files (this module holds no tests).

The crash and multi-host tests need real processes (a SIGKILL has to kill something; two hosts
are two processes). Importing TensorFlow, seqio and JAX costs most of a tiny run's start-up, so
training processes are forked from a multiprocessing fork server that has imported them once
(no JAX backend is created there, so forking it is safe); each child then starts its own CPU
backend with the number of simulated devices it asks for.
"""
from __future__ import annotations

import multiprocessing
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

PRELOAD = ["jax", "jax.numpy", "numpy", "tensorflow", "seqio", "flax.linen", "optax", "orbax.checkpoint",
           "synthpre_jax.cli", "synthpre_jax.train", "synthpre_jax.checkpoints", "synthpre_jax.trainer",
           "synthpre_jax.data.dataset", "tasks.synthetic", "tasks.mixtures", "toy_tasks"]

# No eval set, one stats line per step: the progress lines are what the tests watch.
QUIET = ["--gin.train.stats_period=1", "--gin.EVAL_PERIOD=1000", "--gin.EVAL_STEPS=1",
         "--gin.train.train_eval_dataset_cfg=None"]


def context() -> multiprocessing.context.BaseContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def _redirect(log_path: str) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)


def start_devices(num_devices: int) -> None:
    """Give this (fresh) process `num_devices` simulated CPU devices; call before any JAX work."""
    import jax
    jax.config.update("jax_num_cpu_devices", int(num_devices))
    if num_devices > 1:  # see conftest.subprocess_env: cached multi-device executables deadlock
        jax.config.update("jax_enable_compilation_cache", False)
        from conftest import FAST_COMPILE_XLA_FLAGS  # read when the CPU backend starts
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE_XLA_FLAGS}".strip()


def _kill_self_at_commit(step_dir_name: str, after_rename: bool) -> None:
    """SIGKILL this process while Orbax commits `step_dir_name` (all data written, the
    temporary directory about to be renamed, or just renamed): a crash in the middle of an
    asynchronous checkpoint write, at a moment chosen exactly."""
    from orbax.checkpoint._src.path import atomicity
    original = atomicity.AtomicRenameTemporaryPath.finalize

    async def finalize(self, *args, **kwargs):
        if self.get_final().name == step_dir_name and not after_rename:
            os.kill(os.getpid(), signal.SIGKILL)
        out = await original(self, *args, **kwargs)
        if self.get_final().name == step_dir_name and after_rename:
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    atomicity.AtomicRenameTemporaryPath.finalize = finalize


def train_worker(log_path: str, argv: Sequence[str], num_devices: int = 1, fault: Optional[dict] = None) -> None:
    """`synthpre train ARGV` in a fresh forked process, output to `log_path`.

    fault: {'kill_at_commit': 'checkpoint_4', 'after_rename': False} kills the process while
    Orbax commits that step; {'file_size_limit': n} makes every write beyond n bytes per file
    fail with EFBIG from the start (a full disk, as far as the writer can tell).
    """
    import resource
    _redirect(log_path)
    start_devices(num_devices)
    fault = fault or {}
    if fault.get("kill_at_commit"):
        _kill_self_at_commit(fault["kill_at_commit"], fault.get("after_rename", False))
    if fault.get("file_size_limit"):
        resource.setrlimit(resource.RLIMIT_FSIZE, (fault["file_size_limit"], resource.RLIM_INFINITY))
    from synthpre_jax import cli
    sys.exit(cli.main(["train", *argv]))


class Worker:
    """A forked training process and its log."""

    def __init__(self, target: Callable, log_path: Path, *args):
        """Run `target(log_path, *args)` in a forked process."""
        self.log_path = Path(log_path)
        self.log_path.write_text("")
        self.proc = context().Process(target=target, args=(str(self.log_path), *args), daemon=True)
        self.proc.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 300) -> Optional[re.Match]:
        """Poll the log until `pattern` matches (None if the process ended first)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            m = re.search(pattern, self.log(), re.M)
            if m:
                return m
            if not self.proc.is_alive():
                return re.search(pattern, self.log(), re.M)
            time.sleep(0.005)
        raise TimeoutError(f"{pattern!r} not seen in {timeout}s; log:\n{self.log()[-3000:]}")

    def join(self, timeout: float = 300) -> int:
        self.proc.join(timeout)
        if self.proc.exitcode is None:
            self.proc.kill()
            self.proc.join(10)
            raise TimeoutError(f"worker still running after {timeout}s; log:\n{self.log()[-3000:]}")
        return self.proc.exitcode

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)


def start_train(argv: Sequence[str], log_path: Path, num_devices: int = 1, **fault) -> Worker:
    return Worker(train_worker, log_path, list(argv), num_devices, fault)


# --------------------------------------------------------------------------- checkpoints on disk
def read_state(step_dir: Path) -> dict:
    """{path: numpy array} of everything in an Orbax step directory, read on the host (no
    devices, so checkpoints written on any mesh or number of processes read the same)."""
    import jax
    import numpy as np
    import orbax.checkpoint as ocp
    from etils import epath

    from synthpre_jax import checkpoints as C
    from synthpre_jax.checkpoint_utils import tree_paths
    item = epath.Path(step_dir) / "state"
    tree = C._stored_tree(item)
    restore_args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    handler = ocp.PyTreeCheckpointHandler()
    try:
        out = handler.restore(item, args=ocp.args.PyTreeRestore(item=tree, restore_args=restore_args))
    finally:
        handler.close()
    return {k: np.asarray(v) for k, v in tree_paths(out).items()}


def differing_leaves(a: dict, b: dict) -> list:
    """Paths whose arrays differ in dtype, shape or any bit (plus paths only one side has)."""
    import numpy as np
    bad = sorted(set(a) ^ set(b))
    for k in sorted(set(a) & set(b)):
        x, y = np.asarray(a[k]), np.asarray(b[k])
        if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
            bad.append(k)
    return bad


def checkpoint_listing(model_dir: Path) -> dict:
    """{name: problem or None} of the visible checkpoint_<step> directories."""
    from synthpre_jax.checkpoint_utils import checkpoint_problem, step_dirs
    return {p.name: checkpoint_problem(p) for p in step_dirs(model_dir).values()}


def tree_digest(root: Path) -> dict:
    """{relative path: (size, sha1)} of every file under `root` ({} when it does not exist)."""
    import hashlib
    root = Path(root)
    if not root.exists():
        return {}
    if root.is_file():
        return {".": (root.stat().st_size, hashlib.sha1(root.read_bytes()).hexdigest())}
    out = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = ((p.stat().st_size, hashlib.sha1(p.read_bytes()).hexdigest())
                                         if p.is_file() else "dir")
    return out
