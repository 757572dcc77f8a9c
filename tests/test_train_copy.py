"""The whole training path learns: a tiny T5 reaches >95% teacher-forced token accuracy on a
copy task in a few hundred CPU steps, and writes T5X's outputs."""
import json
import os

from conftest import run_train_inprocess, tiny_train_argv


def test_tiny_t5_learns_copy(tmp_path):
    extra = ["--gin.EVAL_PERIOD=200", "--gin.EVAL_STEPS=4", "--gin.DROPOUT_RATE=0.0",
             "--gin.utils.create_learning_rate_scheduler.factors='constant'",
             "--gin.utils.create_learning_rate_scheduler.base_learning_rate=0.05",
             "--gin.train.stats_period=50", "--gin.CHECKPOINT_PERIOD=400"]
    result = run_train_inprocess(tiny_train_argv(tmp_path, 400, batch=32, extra=extra))
    acc = result["eval_metrics"]["toy_copy"][-1]["accuracy"]
    assert acc > 0.95, result["eval_metrics"]
    # T5X's outputs
    for rel in ("config.gin", "model-info.txt", "init.json", "train", "training_eval/toy_copy", "checkpoint_400"):
        assert os.path.exists(tmp_path / rel), rel
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "training_eval" / "toy_copy"))
    lines = [json.loads(l) for l in open(tmp_path / "train" / "metrics.jsonl")]
    assert {"loss", "accuracy", "cross_ent_loss", "learning_rate", "timing/seqs_per_second"} <= set(lines[0])
    assert lines[-1]["loss"] < lines[0]["loss"]
