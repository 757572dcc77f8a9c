"""`make demo`: the paper in miniature on a laptop CPU, offline, in a few minutes.

Runs the grid gin_configs/experiments/demo.yaml (pre-train a tiny T5 on Set and a
small natural corpus; fine-tune on SCAN from each initialisation; select each run's score at
its best validation accuracy) and writes report.md with a table and plots. Rerunning resumes
and skips finished runs. The numbers are whatever they turn out to be.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import time

from synthpre_jax import errors
from synthpre_jax.cli import import_tensorflow_quietly, run_guarded

GRID = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    "gin_configs", "experiments", "demo.yaml")


class _DropKnown(logging.Filter):
    """seqio warnings that are expected in the demo and would only alarm a first-time user:
    SCAN's evaluation lengths leave room (fixed shapes compile once), and the on-the-fly sources
    are uncached by design (every example is a pure function of its index)."""
    KNOWN = ("Given sequence lengths are longer than necessary", "Using an uncached FunctionDataset")

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(k in msg for k in self.KNOWN)


_DROP_KNOWN = _DropKnown()


def _quiet_known_warnings() -> None:
    absl = logging.getLogger("absl")
    if _DROP_KNOWN not in absl.filters:
        absl.addFilter(_DROP_KNOWN)


def _simulates_several_cpu_devices(env) -> bool:
    flags = re.search(r"--xla_force_host_platform_device_count=(\d+)", env.get("XLA_FLAGS", ""))
    count = int(flags.group(1)) if flags else 1
    return max(count, int(env.get("JAX_NUM_CPU_DEVICES", "1") or 1)) > 1


def main(argv: list[str]) -> int:
    p = errors.ArgumentParser(prog="synthpre demo")
    p.add_argument("--out", default="demo_runs", help="where the run directories and the report go")
    p.add_argument("--grid", default=GRID)
    args = p.parse_args(argv)
    out = os.path.abspath(args.out)
    # Identical shapes across runs compile once: keep XLA's compilation cache with the runs.
    # Not with several simulated CPU devices: jax 0.10's XLA:CPU deadlocks in collectives of
    # an executable loaded from that cache (tests/conftest.py has the details).
    if not _simulates_several_cpu_devices(os.environ):
        os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(out, ".jax_cache"))
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    _quiet_known_warnings()
    from synthpre_jax import experiment, report
    t0 = time.time()
    print(f"[demo] grid {args.grid} -> {out}", flush=True)
    code = experiment.main(["--grid", args.grid, "--out", out])
    if code != 0:
        print("[demo] some runs failed; the report covers the finished ones", flush=True)
    code = report.main([out, "--title", "synthpre-jax demo: tiny T5, SCAN (simple split)"]) or code
    print(f"[demo] done in {(time.time() - t0) / 60:.1f} min; report: {os.path.join(out, 'report.md')}", flush=True)
    return code


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import_tensorflow_quietly()
    sys.exit(run_guarded(main, sys.argv[1:]))
