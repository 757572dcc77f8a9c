"""The natural reference end to end on CPU: a tiny T5 pre-trained on natural_pydoc_span_corruption
learns (validation loss falls, and ends below what token frequencies alone give), and its
checkpoint fine-tunes on SCAN through the same path as a synthetic checkpoint
(`synthpre train` + runs/finetune.gin + init/load.gin + INITIAL_CHECKPOINT_PATH; inference eval
limited to 16 SCAN test examples to keep the test short).

The tiny model's embedding is 4224 rows (the 4100 offline ids rounded up to 128) rather than
32128 only to keep the test fast; ids beyond 4100 are never produced either way.
"""
import json

import numpy as np
import seqio

from conftest import run_train_inprocess, tiny_train_argv
from synthpre_jax import checkpoints
from synthpre_jax.checkpoint_utils import flatten_params

TASK = "natural_pydoc_span_corruption"
VOCAB = 4224
PRETRAIN_STEPS = 120
FINETUNE_STEPS = 40


def _common(lengths: str) -> list:
    return [f"--gin.network.T5Config.vocab_size={VOCAB}", "--gin.DROPOUT_RATE=0.0",
            "--gin.MIXTURE_OR_TASK_MODULE=None", f"--gin.TASK_FEATURE_LENGTHS={lengths}"]


def _unigram_cross_entropy() -> float:
    """Nats per target token of the best context-free model: training-target token
    frequencies (add-one smoothed) scored on the validation targets."""
    task = seqio.get_mixture_or_task(TASK)

    def targets(split):
        ds = task.get_dataset({"inputs": 64, "targets": 16}, split=split, shuffle=False)
        return np.concatenate([ex["targets"] for ex in ds.as_numpy_iterator()])

    counts = np.bincount(targets("train"), minlength=VOCAB) + 1.0
    return float(-np.log(counts / counts.sum())[targets("validation")].mean())


def test_pydoc_pretraining_learns_and_fine_tunes_on_scan(tmp_path):
    pre_dir, ft_dir = tmp_path / "pretrain", tmp_path / "finetune"
    extra = _common("{'inputs': 64, 'targets': 16}") + [
        f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'", "--gin.EVAL_PERIOD=40", "--gin.EVAL_STEPS=4",
        "--gin.utils.create_learning_rate_scheduler.factors='constant'",
        "--gin.utils.create_learning_rate_scheduler.base_learning_rate=0.02",
        "--gin.train.stats_period=40", f"--gin.CHECKPOINT_PERIOD={PRETRAIN_STEPS}"]
    result = run_train_inprocess(tiny_train_argv(pre_dir, PRETRAIN_STEPS, batch=16, extra=extra))
    evals = result["eval_metrics"][TASK]
    first, last = evals[0]["loss_per_nonpadding_target_token"], evals[-1]["loss_per_nonpadding_target_token"]
    assert last < first - 0.1, evals
    assert last < _unigram_cross_entropy() - 0.2, (last, evals)

    ckpt = pre_dir / f"checkpoint_{PRETRAIN_STEPS}"
    extra = _common("{'inputs': 16, 'targets': 64}") + [
        "--gin_file=init/load.gin", f"--gin.INITIAL_CHECKPOINT_PATH='{ckpt}'",
        "--gin.MIXTURE_OR_TASK_NAME='scan_simple'", "--gin.EVAL_PERIOD=20", "--gin.EVAL_STEPS=2",
        "--gin.train.stats_period=20", f"--gin.CHECKPOINT_PERIOD={FINETUNE_STEPS}",
        "--gin.EVALUATOR_NUM_EXAMPLES=16"]
    ft = run_train_inprocess(tiny_train_argv(ft_dir, FINETUNE_STEPS, batch=16, extra=extra,
                                             run="runs/finetune.gin"))
    record = json.loads((ft_dir / "init.json").read_text())
    assert record["mode"] == "load" and str(ckpt) in json.dumps(record), record
    losses = [m["loss"] for m in ft["train_metrics"]]
    assert np.isfinite(losses).all() and losses[-1] < losses[0], losses
    assert len(ft.get("infer_metrics", [])) == 2  # decoding + SCAN's metric ran at each eval

    # It started from the pre-trained weights: the layer-norm scales (1.0 at a fresh init) moved
    # far from 1 in pre-training and only a little more in 40 fine-tuning steps.
    pre = flatten_params(checkpoints.load_params(str(ckpt)))
    tuned = flatten_params(checkpoints.load_params(str(ft_dir / f"checkpoint_{FINETUNE_STEPS}")))
    norms = [k for k in pre if k.endswith("/scale")]
    assert len(norms) >= 10
    moved_in_pretraining = np.mean([np.abs(pre[k] - 1.0).mean() for k in norms])
    moved_in_finetuning = np.mean([np.abs(tuned[k] - pre[k]).mean() for k in norms])
    assert moved_in_finetuning < 0.5 * moved_in_pretraining, (moved_in_finetuning, moved_in_pretraining)
