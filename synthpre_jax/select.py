"""`synthpre select RUN_DIR [--metrics em,f1]`: the paper's checkpoint selection (spec §5).

For each teacher-forced eval task of a finished run (MODEL_DIR/training_eval/<task>/):

1. read the scalar 'accuracy' (validation token accuracy) from every `events*` file of the
   task, in the order the files were written, so that a resumed run's files form one series
   (a step logged twice keeps its last value: the one the saved checkpoint belongs to);
2. max-accuracy step: the first step with the maximum accuracy (ties go to the earlier step);
3. the first step with accuracy >= 0.99, else the max-accuracy step (how the authors picked
   pre-training checkpoints);
4. the inference metrics at the max-accuracy step, from inference_eval/<task>-metrics.jsonl, or
   as the authors' `max_valid_acc_metric.py` does, the first inference_eval/*-metrics.jsonl
   ("max val acc metric not logged" when that step has none), plus each metric's maximum over
   all evaluated steps (an optimistic number, reported for comparison).

Event files are read with TensorBoard's own loader; values written as TF2 tensor summaries
(ours) and TF1 `simple_value`s (older T5X) are both understood.
"""
from __future__ import annotations

import glob
import json
import math
import os
import sys
from typing import Any, Iterable, Optional, Sequence

from synthpre_jax import errors
from synthpre_jax.errors import UserError

ACCURACY_TAG = "accuracy"
THRESHOLD_99 = 0.99
NOT_LOGGED = "max val acc metric not logged"


def _event_value(value: Any) -> Optional[float]:
    kind = value.WhichOneof("value")
    if kind == "simple_value":
        return float(value.simple_value)
    if kind == "tensor":
        from tensorboard.util import tensor_util
        arr = tensor_util.make_ndarray(value.tensor)
        return float(arr.reshape(-1)[0]) if arr.size == 1 else None
    return None


def _file_events(path: str, tag: str) -> tuple[float, list[tuple[int, float]]]:
    """(wall time of the file's first event, [(step, value)] of `tag` in file order)."""
    from tensorboard.backend.event_processing import event_file_loader

    first, out = math.inf, []
    try:
        for event in event_file_loader.EventFileLoader(path).Load():
            first = min(first, event.wall_time) if event.wall_time else first
            for v in event.summary.value:
                if v.tag == tag:
                    val = _event_value(v)
                    if val is not None:
                        out.append((int(event.step), val))
    except Exception as e:  # noqa: BLE001 - a truncated file ends the series read so far
        if not out:
            raise UserError(f"cannot read event file {path} ({str(e).splitlines()[0][:200]})") from None
    return first, out


def read_scalar_series(directory: str, tag: str = ACCURACY_TAG) -> list[tuple[int, float]]:
    """[(step, value)] of `tag` across all event files of `directory`, one value per step (the
    last written), ascending by step."""
    files = [f for f in glob.glob(os.path.join(directory, "events*")) if os.path.isfile(f)]
    loaded = sorted((_file_events(f, tag) + (f,) for f in files), key=lambda t: (t[0], t[2]))
    by_step: dict[int, float] = {}
    for _, events, _ in loaded:
        for step, value in events:
            by_step[step] = value
    return sorted(by_step.items())


def _jsonl_series(path: str, key: str) -> list[tuple[int, float]]:
    out: dict[int, float] = {}
    for rec in read_metrics_jsonl(path).values():
        if key in rec:
            out[int(rec["step"])] = float(rec[key])
    return sorted(out.items())


def read_metrics_jsonl(path: str) -> dict[int, dict]:
    """{step: record} of a metrics JSONL (a step logged twice keeps its last record)."""
    out: dict[int, dict] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                out[int(rec["step"])] = rec
            except (ValueError, KeyError, TypeError):
                raise UserError(f"{path} line {n} is not a JSON object with a 'step'") from None
    return out


def first_max(series: Sequence[tuple[int, float]]) -> tuple[int, float]:
    """(step, value) of the maximum value; the earliest step wins a tie."""
    best = None
    for step, value in series:
        if best is None or value > best[1]:
            best = (step, value)
    if best is None:
        raise ValueError("empty series")
    return best


def first_reaching(series: Sequence[tuple[int, float]], threshold: float = THRESHOLD_99
                   ) -> Optional[tuple[int, float]]:
    """(step, value) of the first step whose value is >= threshold, or None."""
    for step, value in series:
        if value >= threshold:
            return step, value
    return None


def _inference_file(run_dir: str, task: str) -> Optional[str]:
    own = os.path.join(run_dir, "inference_eval", f"{task}-metrics.jsonl")
    if os.path.isfile(own):
        return own
    found = sorted(glob.glob(os.path.join(run_dir, "inference_eval", "*-metrics.jsonl")))
    return found[0] if found else None


def _numeric(rec: dict) -> dict[str, float]:
    return {k: float(v) for k, v in rec.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def select_checkpoint(run_dir: str, metrics: Optional[Iterable[str]] = None) -> dict:
    """The paper's selection for every training_eval task of `run_dir` (see the module doc).

    Returns {'run_dir', 'tasks': {task: {'num_evals', 'max_accuracy_step', 'max_accuracy',
    'first_99_step', 'first_99_accuracy', 'reached_99', 'inference_metrics_file',
    'max_val_acc_metrics' ({metric: value} or None), 'max_val_acc_note' (None, or why there
    are no metrics), 'max_metrics' ({metric: {'value', 'step'}})}}}.
    """
    run_dir = os.path.expanduser(str(run_dir))
    if os.path.isfile(run_dir):
        raise UserError(f"run directory {run_dir} is a file; give a run directory (MODEL_DIR)")
    if not os.path.isdir(run_dir):
        raise UserError(f"run directory {run_dir} does not exist")
    eval_root = os.path.join(run_dir, "training_eval")
    tasks = sorted(d for d in (os.listdir(eval_root) if os.path.isdir(eval_root) else [])
                   if os.path.isdir(os.path.join(eval_root, d)))
    if not tasks:
        raise UserError(f"{run_dir} has no training_eval/<task>/ directories: was it trained with "
                        "teacher-forced evaluation (train_eval) on?")
    wanted = [m.strip() for m in metrics if m.strip()] if metrics is not None else None
    out: dict = {"run_dir": run_dir, "tasks": {}}
    for task in tasks:
        d = os.path.join(eval_root, task)
        series = read_scalar_series(d)
        if not series and os.path.isfile(os.path.join(d, "metrics.jsonl")):
            series = _jsonl_series(os.path.join(d, "metrics.jsonl"), ACCURACY_TAG)
        if not series:
            raise UserError(f"no '{ACCURACY_TAG}' scalars in {d}: no teacher-forced eval was logged there")
        best_step, best = first_max(series)
        hit = first_reaching(series)
        info: dict = {"num_evals": len(series), "max_accuracy_step": best_step, "max_accuracy": best,
                      "reached_99": hit is not None,
                      "first_99_step": hit[0] if hit else best_step,
                      "first_99_accuracy": hit[1] if hit else best,
                      "inference_metrics_file": None, "max_val_acc_metrics": None,
                      "max_val_acc_note": "no inference_eval/*-metrics.jsonl in the run", "max_metrics": {}}
        path = _inference_file(run_dir, task)
        if path is None and wanted:
            raise UserError(f"metric {wanted[0]!r} asked for, but {run_dir} logged no inference "
                            "metrics (no inference_eval/*-metrics.jsonl)")
        if path is not None:
            records = read_metrics_jsonl(path)
            available = sorted({k for r in records.values() for k in _numeric(r)})
            names = wanted if wanted is not None else available
            unknown = [m for m in names if m not in available]
            if unknown:
                raise UserError(f"metric {unknown[0]!r} is not in {path}; it has {available}")
            info["inference_metrics_file"] = path
            at = records.get(best_step)
            if at is None or not all(m in _numeric(at) for m in names):
                info["max_val_acc_note"] = NOT_LOGGED
            else:
                info["max_val_acc_metrics"] = {m: _numeric(at)[m] for m in names}
                info["max_val_acc_note"] = None
            for m in names:
                s = [(step, _numeric(r)[m]) for step, r in sorted(records.items()) if m in _numeric(r)]
                step, value = first_max(s)
                info["max_metrics"][m] = {"value": value, "step": step}
        out["tasks"][task] = info
    return out


def format_report(result: dict) -> str:
    lines = [f"run {result['run_dir']}"]
    for task, i in result["tasks"].items():
        lines.append(f"task {task}: max accuracy {i['max_accuracy']:.6g} at step {i['max_accuracy_step']} "
                     f"({i['num_evals']} evals)")
        lines.append(f"  first step with accuracy >= {THRESHOLD_99:g}: " +
                     (f"{i['first_99_step']} ({i['first_99_accuracy']:.6g})" if i["reached_99"]
                      else f"none; max-accuracy step {i['first_99_step']}"))
        if i["max_val_acc_metrics"] is not None:
            shown = ", ".join(f"{k} {v:.6g}" for k, v in i["max_val_acc_metrics"].items())
            lines.append(f"  max_val_acc metrics (step {i['max_accuracy_step']}, "
                         f"{os.path.relpath(i['inference_metrics_file'], result['run_dir'])}): {shown}")
        else:
            lines.append(f"  max_val_acc metrics: {i['max_val_acc_note']}")
        if i["max_metrics"]:
            shown = ", ".join(f"{k} {v['value']:.6g} (step {v['step']})" for k, v in i["max_metrics"].items())
            lines.append(f"  max metrics: {shown}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = errors.ArgumentParser(prog="synthpre select", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="a finished run directory (MODEL_DIR)")
    p.add_argument("--metrics", default=None, help="comma-separated inference metrics (default: all logged)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    try:
        args = p.parse_args(argv)
    except SystemExit as e:
        if e.code in (0, None):
            return 0
        raise UserError("bad arguments; usage: synthpre select RUN_DIR [--metrics a,b] [--json]") from None
    metrics = args.metrics.split(",") if args.metrics else None
    result = select_checkpoint(args.run_dir, metrics)
    print(json.dumps(result, indent=1) if args.json else format_report(result))
    return 0


if __name__ == "__main__":
    from synthpre_jax.cli import run_guarded
    sys.exit(run_guarded(main, sys.argv[1:]))
