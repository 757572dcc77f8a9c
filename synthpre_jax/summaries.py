"""Metric outputs: TensorBoard event files (T5X's layout and names), JSONL, and a progress line.

Events are written with tf.summary scalars, which store the value as a tensor, the form the
authors' extraction scripts and `synthpre select` read back. Only process 0 writes.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Mapping, Optional

import jax


class MetricWriter:
    """Scalars for one summary directory (e.g. MODEL_DIR/train, MODEL_DIR/training_eval/<task>)."""

    def __init__(self, directory: str, jsonl_name: str = "metrics.jsonl"):
        self.directory = directory
        self.enabled = jax.process_index() == 0
        self._tf_writer = None
        self._jsonl = os.path.join(directory, jsonl_name)
        if self.enabled:
            os.makedirs(directory, exist_ok=True)

    def _writer(self):
        if self._tf_writer is None:
            import tensorflow as tf
            self._tf_writer = tf.summary.create_file_writer(self.directory)
        return self._tf_writer

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        import tensorflow as tf
        with self._writer().as_default():
            for k, v in scalars.items():
                tf.summary.scalar(k, float(v), step=step)
        self._tf_writer.flush()
        with open(self._jsonl, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}}) + "\n")

    def close(self) -> None:
        if self._tf_writer is not None:
            self._tf_writer.close()


def read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class Progress:
    """'step 120/1000 (12%) | 3.4 steps/s | loss 2.31 | ETA 4m18s', redrawn in place on a
    terminal and printed as plain lines otherwise (logs, CI)."""

    def __init__(self, total_steps: int, start_step: int, stream=None):
        self.total = total_steps
        self.start = start_step
        self.t0 = time.time()
        self.stream = stream or sys.stdout
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.enabled = jax.process_index() == 0

    def update(self, step: int, loss: Optional[float] = None, extra: str = "") -> None:
        if not self.enabled:
            return
        done = max(step - self.start, 0)
        elapsed = max(time.time() - self.t0, 1e-9)
        rate = done / elapsed
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        pct = 100.0 * step / max(self.total, 1)
        parts = [f"step {step}/{self.total} ({pct:.0f}%)", f"{rate:.2f} steps/s"]
        if loss is not None:
            parts.append(f"loss {loss:.4g}")
        parts.append(f"ETA {_fmt(eta)}")
        if extra:
            parts.append(extra)
        line = " | ".join(parts)
        if self.tty:
            self.stream.write("\r" + line.ljust(100))
            if step >= self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        if self.enabled:
            if self.tty:
                self.stream.write("\n")
            self.stream.write(text + "\n")
            self.stream.flush()


def _fmt(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")
