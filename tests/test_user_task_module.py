"""A user's own seqio task module, outside the repository, trains and evaluates through
`--gin.MIXTURE_OR_TASK_MODULE`: the way researchers register tasks from their codebases."""
import textwrap

import numpy as np

from conftest import run_train_inprocess, tiny_train_argv

# What a user writes: a TSV task in about ten lines: seqio plus our TSV splitter, vocabulary, metric.
USER_MODULE = '''
import os, seqio
from synthpre_jax.data.downstream_formats import split_tsv
from synthpre_jax.data.metrics import exact_match
from synthpre_jax.data.offline_vocab import get_offline_vocabulary

DATA = os.path.dirname(os.path.abspath(__file__))
vocab = get_offline_vocabulary()
if "user_scan_tsv" not in seqio.TaskRegistry.names():
    seqio.TaskRegistry.add(
        "user_scan_tsv",
        source=seqio.TextLineDataSource({s: os.path.join(DATA, s + ".tsv") for s in ("train", "validation")}),
        preprocessors=[split_tsv, seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
        output_features={k: seqio.Feature(vocab, add_eos=True) for k in ("inputs", "targets")},
        metric_fns=[exact_match])
'''


def _write_user_package(root):
    from synthpre_jax.data import scan
    pairs = [p for p in scan.all_pairs() if scan.num_actions(p) <= 8]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(pairs))
    for split, idx in (("train", order[:400]), ("validation", order[400:464])):
        (root / f"{split}.tsv").write_text("".join(f"{pairs[i][0]}\t{pairs[i][1]}\n" for i in idx))
    (root / "my_user_tasks.py").write_text(textwrap.dedent(USER_MODULE))


def test_user_tsv_module_trains_and_evaluates(tmp_path, monkeypatch):
    import seqio
    user_dir = tmp_path / "user_code"
    user_dir.mkdir()
    _write_user_package(user_dir)
    monkeypatch.syspath_prepend(str(user_dir))
    extra = ["--gin.MIXTURE_OR_TASK_MODULE='my_user_tasks'", "--gin.MIXTURE_OR_TASK_NAME='user_scan_tsv'",
             "--gin.TASK_FEATURE_LENGTHS={'inputs': 12, 'targets': 12}",
             "--gin.network.T5Config.vocab_size=4224",  # the offline vocabulary's 4100 ids, padded
             "--gin.EVAL_PERIOD=20", "--gin.EVAL_STEPS=2", "--gin.DROPOUT_RATE=0.0",
             "--gin.utils.create_learning_rate_scheduler.factors='constant'",
             "--gin.utils.create_learning_rate_scheduler.base_learning_rate=0.05",
             "--gin.train.stats_period=10", "--gin.CHECKPOINT_PERIOD=40"]
    model_dir = tmp_path / "run"
    result = run_train_inprocess(tiny_train_argv(model_dir, 40, batch=16, extra=extra))
    assert result["step"] == 40
    evals = result["eval_metrics"]["user_scan_tsv"]
    assert [e["step"] for e in evals] == [20, 40]
    assert (model_dir / "training_eval" / "user_scan_tsv").is_dir()
    losses = [m["loss"] for m in result["train_metrics"]]
    assert losses[-1] < losses[0] and evals[-1]["accuracy"] > 0.2  # it learned something (chance: 1/4100)
    assert "user_scan_tsv" in (model_dir / "config.gin").read_text()

    # The user's metric runs through seqio's Evaluator exactly as the inference evaluation calls
    # it: targets decoded from the validation ids, predictions decoded from the model's tokens.
    from seqio import evaluation
    ev = evaluation.Evaluator(mixture_or_task_name="user_scan_tsv", eval_split="validation",
                              feature_converter=seqio.EncDecFeatureConverter(pack=False),
                              sequence_length={"inputs": 12, "targets": 12}, async_compute_metrics=False)
    eos_only = np.array([1] + [0] * 11)  # a decoder's fixed-length output that is empty text
    half = lambda ds: [(i, ex["decoder_target_tokens"] if i % 2 else eos_only) for i, ex in ds.as_numpy_iterator()]
    scores, _ = ev.evaluate(compute_metrics=True, predict_fn=half)
    assert scores.result()["user_scan_tsv"] == {"em": 50.0}
