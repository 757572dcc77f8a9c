"""Stop after step k and rerun the same command: the loss sequence equals an uninterrupted run
(dropout on, so the per-step RNG and the data position both have to be right)."""
from conftest import run_train_inprocess, tiny_train_argv

EXTRA = ["--gin.train.stats_period=1", "--gin.CHECKPOINT_PERIOD=4", "--gin.EVAL_PERIOD=100",
         "--gin.EVAL_STEPS=1", "--gin.DROPOUT_RATE=0.1"]


def _losses(result):
    return {m["step"]: m["loss"] for m in result["train_metrics"]}


def test_resume_equals_uninterrupted(tmp_path):
    full = _losses(run_train_inprocess(tiny_train_argv(tmp_path / "a", 10, extra=EXTRA)))
    first = _losses(run_train_inprocess(tiny_train_argv(tmp_path / "b", 4, extra=EXTRA)))
    second = run_train_inprocess(tiny_train_argv(tmp_path / "b", 10, extra=EXTRA))
    assert min(m["step"] for m in second["train_metrics"]) == 5  # continued, not restarted
    resumed = {**first, **_losses(second)}
    assert sorted(resumed) == sorted(full) == list(range(1, 11))
    for s in full:
        assert resumed[s] == full[s], (s, resumed[s], full[s])
