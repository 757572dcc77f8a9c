"""Checkpoint selection (`synthpre select`, spec §5) on hand-made run directories whose event
files and inference JSONL hold known values: first max on ties, resumed runs spread over
several event files (ordered by when they were written, not by name), a max-accuracy step with
no inference metrics, and the first-99% rule."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from synthpre_jax import cli
from synthpre_jax import select as sel
from synthpre_jax.summaries import MetricWriter


def write_events(path, events, tensor=True):
    """An event file with [(step, wall_time, {tag: value})], as TF2 tensor summaries (ours) or TF1
    simple_values (older T5X)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as w:
        w.write(tf.compat.v1.Event(wall_time=events[0][1] - 1, file_version="brain.Event:2").SerializeToString())
        for step, wall, values in events:
            vals = []
            for tag, x in values.items():
                if tensor:
                    meta = tf.compat.v1.SummaryMetadata(
                        plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name="scalars"))
                    vals.append(tf.compat.v1.Summary.Value(tag=tag, metadata=meta,
                                                           tensor=tf.make_tensor_proto(np.float32(x))))
                else:
                    vals.append(tf.compat.v1.Summary.Value(tag=tag, simple_value=x))
            ev = tf.compat.v1.Event(wall_time=wall, step=step, summary=tf.compat.v1.Summary(value=vals))
            w.write(ev.SerializeToString())


def write_jsonl(path, records):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def acc_events(pairs, t0=1000.0):
    return [(s, t0 + k, {"accuracy": a, "loss": 1.0 - a}) for k, (s, a) in enumerate(pairs)]


def test_first_max_on_ties_and_metrics_at_that_step(tmp_path):
    run = tmp_path / "run"
    write_events(run / "training_eval" / "mtop" / "events.out.tfevents.1", acc_events(
        [(1000, 0.5), (2000, 0.75), (3000, 0.75), (4000, 0.625)]))
    write_jsonl(run / "inference_eval" / "mtop-metrics.jsonl", [
        {"step": 1000, "em": 10.0, "f1": 20.0}, {"step": 2000, "em": 30.0, "f1": 45.0},
        {"step": 3000, "em": 35.0, "f1": 45.0}, {"step": 4000, "em": 33.0, "f1": 50.0}])
    r = sel.select_checkpoint(str(run), ["em", "f1"])["tasks"]["mtop"]
    assert (r["max_accuracy_step"], r["max_accuracy"]) == (2000, 0.75)
    assert r["num_evals"] == 4
    assert r["max_val_acc_metrics"] == {"em": 30.0, "f1": 45.0} and r["max_val_acc_note"] is None
    # per-metric max over all steps, first step on ties (f1 45 at 2000 and 3000, then 50)
    assert r["max_metrics"] == {"em": {"value": 35.0, "step": 3000}, "f1": {"value": 50.0, "step": 4000}}
    assert (r["reached_99"], r["first_99_step"], r["first_99_accuracy"]) == (False, 2000, 0.75)
    # default: every logged metric
    assert set(sel.select_checkpoint(str(run))["tasks"]["mtop"]["max_val_acc_metrics"]) == {"em", "f1"}


def test_resumed_event_files_form_one_series(tmp_path):
    d = tmp_path / "run" / "training_eval" / "squad"
    # The first run (written first, but its name sorts last) saw 0.875 at step 300, then was
    # preempted; the resumed run logged step 300 again (0.8125: its value is the one kept) and
    # went on; the best is in the resumed file.
    write_events(d / "events.out.tfevents.z_first", acc_events([(100, 0.5), (200, 0.625), (300, 0.875)], t0=1000))
    write_events(d / "events.out.tfevents.a_resumed",
                 acc_events([(300, 0.8125), (400, 0.84375), (500, 0.84375)], t0=5000), tensor=False)
    series = sel.read_scalar_series(str(d))
    assert series == [(100, 0.5), (200, 0.625), (300, 0.8125), (400, 0.84375), (500, 0.84375)]
    r = sel.select_checkpoint(str(tmp_path / "run"))["tasks"]["squad"]
    assert (r["max_accuracy_step"], r["max_accuracy"]) == (400, 0.84375)
    assert r["max_val_acc_metrics"] is None and "no inference_eval" in r["max_val_acc_note"]


def test_files_written_by_the_training_loop(tmp_path):
    """The writer the trainer uses (summaries.MetricWriter) is what select reads."""
    run = tmp_path / "run"
    w = MetricWriter(str(run / "training_eval" / "toy"))
    for step, acc in ((10, 0.25), (20, 0.5), (30, 0.375)):
        w.write(step, {"loss": 3.0, "accuracy": acc})
    w.close()
    w = MetricWriter(str(run / "training_eval" / "toy"))   # a resumed run: a second file
    w.write(40, {"accuracy": 0.4375})
    w.close()
    assert len([f for f in os.listdir(run / "training_eval" / "toy") if f.startswith("events")]) == 2
    r = sel.select_checkpoint(str(run))["tasks"]["toy"]
    assert (r["max_accuracy_step"], r["max_accuracy"], r["num_evals"]) == (20, 0.5, 4)


def test_missing_step_is_reported_as_not_logged(tmp_path):
    run = tmp_path / "run"
    write_events(run / "training_eval" / "webqsp" / "events.out.tfevents.1",
                 acc_events([(5000, 0.5), (10000, 0.875), (15000, 0.75)]))
    write_jsonl(run / "inference_eval" / "webqsp-metrics.jsonl",
                [{"step": 5000, "em": 1.0}, {"step": 15000, "em": 3.0}])
    r = sel.select_checkpoint(str(run), ["em"])["tasks"]["webqsp"]
    assert r["max_accuracy_step"] == 10000
    assert r["max_val_acc_metrics"] is None and r["max_val_acc_note"] == sel.NOT_LOGGED
    assert r["max_metrics"]["em"] == {"value": 3.0, "step": 15000}


@pytest.mark.parametrize("pairs,expected", [
    ([(5000, 0.5), (10000, 0.9921875), (15000, 0.99609375), (20000, 0.9990234375)], (True, 10000, 0.9921875)),
    ([(5000, 0.5), (10000, 0.99), (15000, 0.995)], (True, 10000, float(np.float32(0.99)))),  # >= 0.99
    ([(5000, 0.5), (10000, 0.98828125), (15000, 0.984375)], (False, 10000, 0.98828125)),    # else the max
])
def test_first_step_reaching_99_percent(tmp_path, pairs, expected):
    run = tmp_path / "run"
    write_events(run / "training_eval" / "synthpre_set" / "events.out.tfevents.1", acc_events(pairs))
    r = sel.select_checkpoint(str(run))["tasks"]["synthpre_set"]
    assert (r["reached_99"], r["first_99_step"], r["first_99_accuracy"]) == expected


def test_mixture_with_three_eval_tasks_and_the_first_jsonl(tmp_path):
    """LIME's mixture has 3 training_eval folders; a task without its own inference JSONL uses
    the first inference_eval/*-metrics.jsonl, as the authors' script does."""
    run = tmp_path / "run"
    for k, task in enumerate(("lime_deduct", "lime_induct", "lime_abduct")):
        write_events(run / "training_eval" / task / "events.out.tfevents.1",
                     acc_events([(100, 0.5), (200, 0.5 + 0.125 * k), (300, 0.625)]))
    steps = (100, 200, 300)
    write_jsonl(run / "inference_eval" / "a_first-metrics.jsonl", [{"step": s, "em": s / 10} for s in steps])
    write_jsonl(run / "inference_eval" / "b_second-metrics.jsonl", [{"step": s, "em": -1.0} for s in steps])
    write_jsonl(run / "inference_eval" / "lime_induct-metrics.jsonl", [{"step": s, "em": s / 100} for s in steps])
    tasks = sel.select_checkpoint(str(run), ["em"])["tasks"]
    assert set(tasks) == {"lime_deduct", "lime_induct", "lime_abduct"}
    assert tasks["lime_deduct"]["max_accuracy_step"] == 300          # 0.5, 0.5, 0.625
    assert tasks["lime_induct"]["max_accuracy_step"] == 200          # 0.5, 0.625, 0.625: first max
    assert tasks["lime_abduct"]["max_accuracy_step"] == 200          # 0.5, 0.75, 0.625
    assert tasks["lime_abduct"]["max_val_acc_metrics"] == {"em": 20.0}
    assert tasks["lime_abduct"]["inference_metrics_file"].endswith("a_first-metrics.jsonl")
    assert tasks["lime_induct"]["max_val_acc_metrics"] == {"em": 2.0}   # its own file


def test_metrics_jsonl_fallback_without_event_files(tmp_path):
    run = tmp_path / "run"
    write_jsonl(run / "training_eval" / "toy" / "metrics.jsonl",
                [{"step": 10, "accuracy": 0.5}, {"step": 20, "accuracy": 0.25}])
    assert sel.select_checkpoint(str(run))["tasks"]["toy"]["max_accuracy_step"] == 10


def test_cli_report_and_errors(tmp_path, capsys):
    run = tmp_path / "run"
    write_events(run / "training_eval" / "mtop" / "events.out.tfevents.1", acc_events([(1000, 0.5), (2000, 0.75)]))
    write_jsonl(run / "inference_eval" / "mtop-metrics.jsonl", [{"step": 1000, "em": 1.5}, {"step": 2000, "em": 2.5}])
    assert cli.run_guarded(sel.main, [str(run), "--metrics", "em"]) == 0
    out = capsys.readouterr().out
    assert "max accuracy 0.75 at step 2000" in out and "em 2.5" in out
    assert cli.run_guarded(sel.main, [str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tasks"]["mtop"]["max_val_acc_metrics"] == {"em": 2.5}

    empty = tmp_path / "empty"
    empty.mkdir()
    for argv, pattern in (([str(run), "--metrics", "rouge1"], "rouge1"),
                          ([str(tmp_path / "nope")], "does not exist"),
                          ([str(empty)], "training_eval")):
        assert cli.run_guarded(sel.main, argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and pattern in err[0], err
