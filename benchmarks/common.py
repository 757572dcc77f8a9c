"""Shared pieces of the benchmark scripts: machine description, timing, FLOP counts, output.

Why interleaving: the machines these scripts run on are often shared (the project's CPU box
has 2 cores and several contributors), so absolute rates drift by 2-3x within minutes. Every
ratio the scripts report (MFU, ours/HF, pipeline/consumption) is therefore computed from
measurements taken alternately in one process, pairwise per round, and summarised by the
median; wall time is primary, process CPU time is recorded next to it as a diagnostic that
other load inflates less.
"""
from __future__ import annotations

import datetime
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SMOKE_DIR = Path(tempfile.gettempdir()) / "synthpre_benchmarks_smoke"  # --smoke output: not results
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


# ---------------------------------------------------------------------------
# Machine and provenance
# ---------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo, else platform.processor())."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> dict:
    """HEAD of the repository and whether the working tree differs from it."""
    def run(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    head = run("rev-parse", "HEAD")
    dirty = bool(run("status", "--porcelain", "--untracked-files=no"))
    return {"commit": head or "unknown", "dirty": dirty}


def machine_info(torch_module: Any = None) -> dict:
    """Date, CPU, cores, load, library versions and the JAX devices (imports jax)."""
    import jax
    import jaxlib
    devices = jax.devices()
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        **git_commit(),
    }
    if torch_module is not None:
        info["torch"] = torch_module.__version__
        info["torch_threads"] = torch_module.get_num_threads()
    return info


def load_now() -> Optional[float]:
    """1-minute load average (how busy the shared machine was), or None."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------
class Sample(dict):
    """One timed call: {'wall_s', 'cpu_s'}."""


def timed(fn: Callable[[], Any]) -> Sample:
    """Wall and process-CPU seconds of fn() (fn must block until its result is ready)."""
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return Sample(wall_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0)


def interleave(fns: Mapping[str, Callable[[], Any]], rounds: int,
               progress: Optional[Callable[[str], None]] = None) -> dict[str, list[Sample]]:
    """Run every fn once per round, in turn, `rounds` times: {name: [Sample per round]}.

    The order alternates between rounds (A B, B A, ...) so neither side always runs right
    after the other (thread pools spinning down, caches) and slow drifts in machine load
    hit both sides alike.
    """
    names = list(fns)
    out: dict[str, list[Sample]] = {n: [] for n in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            out[n].append(timed(fns[n]))
        if progress:
            progress(f"round {r + 1}/{rounds}: " + ", ".join(
                f"{n} {out[n][-1]['wall_s']:.3g}s" for n in names))
    return out


def median(xs: Iterable[float]) -> float:
    xs = list(xs)
    return float(statistics.median(xs)) if xs else float("nan")


def summarize(samples: Sequence[Sample], key: str = "wall_s") -> dict:
    """Median, min, max of one field across rounds."""
    xs = [s[key] for s in samples]
    return {"median": median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def pairwise_ratio(num: Sequence[float], den: Sequence[float]) -> dict:
    """Median (and spread) of num[i] / den[i]: round-by-round ratios cancel slow drifts."""
    rs = [a / b for a, b in zip(num, den) if b > 0]
    return {"median": median(rs), "min": min(rs) if rs else float("nan"),
            "max": max(rs) if rs else float("nan"), "n": len(rs)}


# ---------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------
def t5_forward_flops(cfg: Any, batch: int, inputs_length: int, targets_length: int) -> dict:
    """Matmul FLOPs (2 per multiply-add) of one forward pass of the T5 encoder-decoder.

    Counted per component for the full (padded) shapes: q/k/v/out projections, attention
    scores (q.k) and values (p.v), the MLP (every wi of a gated MLP), and the output logits.
    Embedding lookups and relative-position biases are gathers (no FLOPs); norms, softmax,
    dropout and the loss are elementwise and excluded, as in the usual MFU convention.
    """
    b, le, ld = batch, inputs_length, targets_length
    d, h, dk, f, v = cfg.emb_dim, cfg.num_heads, cfg.head_dim, cfg.mlp_dim, cfg.vocab_size
    hd = h * dk
    n_wi = len(cfg.mlp_activations)
    te, td = b * le, b * ld

    def proj(tokens_q: int, tokens_kv: int) -> int:  # q, out on queries; k, v on keys
        return 2 * tokens_q * d * hd * 2 + 2 * tokens_kv * d * hd * 2

    def attn(lq: int, lk: int) -> int:  # scores and weighted values
        return 2 * (2 * b * h * lq * lk * dk)

    def mlp(tokens: int) -> int:
        return 2 * tokens * d * f * n_wi + 2 * tokens * f * d

    enc = {"attention_projections": proj(te, te), "attention_scores_values": attn(le, le),
           "mlp": mlp(te)}
    dec = {"attention_projections": proj(td, td) + proj(td, te),
           "attention_scores_values": attn(ld, ld) + attn(ld, le), "mlp": mlp(td)}
    parts = {
        "encoder_attention_projections": enc["attention_projections"] * cfg.num_encoder_layers,
        "encoder_attention_scores_values": enc["attention_scores_values"] * cfg.num_encoder_layers,
        "encoder_mlp": enc["mlp"] * cfg.num_encoder_layers,
        "decoder_attention_projections": dec["attention_projections"] * cfg.num_decoder_layers,
        "decoder_attention_scores_values": dec["attention_scores_values"] * cfg.num_decoder_layers,
        "decoder_mlp": dec["mlp"] * cfg.num_decoder_layers,
        "logits": 2 * td * d * v,
    }
    parts["total"] = sum(parts.values())
    return parts


def train_step_flops(cfg: Any, batch: int, inputs_length: int, targets_length: int) -> dict:
    """Forward, backward (= 2x forward: gradients w.r.t. activations and weights) and total."""
    fwd = t5_forward_flops(cfg, batch, inputs_length, targets_length)
    return {"forward": fwd["total"], "backward": 2 * fwd["total"], "total": 3 * fwd["total"],
            "forward_parts": fwd}


def jaxpr_dot_flops(closed_jaxpr: Any) -> int:
    """2*M*N*K summed over every dot_general of a jaxpr, recursing into sub-jaxprs
    (pjit, remat, custom_jvp/vjp, scan x length, while bodies once, cond's costliest branch).

    An independent count of what the traced program multiplies, to check the analytic count.
    """
    import numpy as np
    from jax.extend import core as jcore

    def sub_jaxprs(value: Any):
        if isinstance(value, jcore.ClosedJaxpr):
            yield value.jaxpr
        elif isinstance(value, jcore.Jaxpr):
            yield value
        elif isinstance(value, (tuple, list)):
            for x in value:
                yield from sub_jaxprs(x)

    def count(jaxpr: Any) -> int:
        total = 0
        for eqn in jaxpr.eqns:
            name = eqn.primitive.name
            if name == "dot_general":
                (lc, _), _ = eqn.params["dimension_numbers"]
                lhs = eqn.invars[0].aval.shape
                k = int(np.prod([lhs[i] for i in lc])) if lc else 1
                total += 2 * int(np.prod(eqn.outvars[0].aval.shape)) * k
                continue
            if name == "cond":
                total += max(count(b.jaxpr) for b in eqn.params["branches"])
                continue
            mult = int(eqn.params.get("length", 1)) if name == "scan" else 1
            for value in eqn.params.values():
                for sub in sub_jaxprs(value):
                    total += mult * count(sub)
        return total

    return count(closed_jaxpr.jaxpr)


def xla_cost(compiled: Any) -> dict:
    """XLA's own estimate for a compiled executable: {'flops', 'bytes_accessed'} (or {})."""
    try:
        ca = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return {}
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else {}
    if not ca:
        return {}
    return {"flops": float(ca.get("flops", float("nan"))),
            "bytes_accessed": float(ca.get("bytes accessed", float("nan")))}


# ---------------------------------------------------------------------------
# The matmul peak
# ---------------------------------------------------------------------------
def matmul_peak_fn(n: int, dtype: str, min_seconds: float = 0.5) -> tuple[Callable[[], Any], float]:
    """(fn, flops): fn runs enough [n,n]@[n,n] products (in `dtype`, jitted, one per device on
    every device, as the train step uses them all) to last about `min_seconds`; flops is what
    one call of fn computes.

    This is the same-run "hardware limit" that MFU divides by: what this backend's matmul
    achieves on this machine right now, rather than a datasheet number.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    dt = jnp.dtype(dtype)
    devices = jax.devices()
    d = len(devices)  # with several devices each multiplies its own [n, n] block of rows
    mesh = Mesh(np.asarray(devices), ("data",))
    rows, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    a = jax.device_put(jax.random.normal(jax.random.key(0), (d * n, n), jnp.float32).astype(dt), rows)
    b = jax.device_put(jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dt), rep)

    @functools.partial(jax.jit, out_shardings=rows)
    def mm(x, y):
        return jnp.dot(x, y, preferred_element_type=dt)

    jax.block_until_ready(mm(a, b))
    t0 = time.perf_counter()
    jax.block_until_ready(mm(a, b))
    one = max(time.perf_counter() - t0, 1e-6)
    reps = max(1, int(round(min_seconds / one)))

    def fn():
        out = None
        for _ in range(reps):
            out = mm(a, b)
        return jax.block_until_ready(out)

    return fn, float(2 * d * n ** 3 * reps)


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------
def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain fixed-width table (also valid Markdown)."""
    def fmt(x: Any) -> str:
        if isinstance(x, float):
            if x != x:
                return "n/a"
            if abs(x) >= 1e4 or (0 < abs(x) < 1e-2):
                return f"{x:.3g}"
            return f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}"
        return str(x)
    cells = [[fmt(c) for c in r] for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    return "\n".join([line, sep, *body])


def write_json(path: str | os.PathLike, payload: Mapping[str, Any]) -> Path:
    """Write atomically (tmp + rename) so a killed run leaves no half-written file."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=_jsonable))
    tmp.replace(out)
    return out


def _jsonable(x: Any) -> Any:
    try:
        import numpy as np
        if isinstance(x, np.generic):
            return x.item()
    except ImportError:
        pass
    return str(x)


def log(msg: str) -> None:
    """Progress line on stderr (stdout carries the table)."""
    print(msg, file=sys.stderr, flush=True)
