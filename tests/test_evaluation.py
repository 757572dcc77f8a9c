"""Inference evaluation (synthpre_jax/evaluation.py) on toy tasks with metrics.

A tiny T5 is fine-tuned (runs/finetune.gin, so its inference-eval wiring is what runs) on
`toy_copy_text` until it copies about half of the test words. The reference for the metrics is
independent of seqio and of the evaluator: the test words come straight from the generator,
are tokenized by hand and decoded with `inference.predict_batch`, and exact match / mean
log-likelihood are computed here.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import toy_eval_tasks as toy
from conftest import run_train_inprocess, tiny_train_argv
from synthpre_jax import eval as eval_lib
from synthpre_jax import evaluation
from synthpre_jax import select as sel
from synthpre_jax.data.dataset import DatasetConfig
from synthpre_jax.errors import UserError
from synthpre_jax.models import inference, network
from synthpre_jax.models.model import EncoderDecoderModel
from synthpre_jax.partitioning import PjitPartitioner

STEPS, PERIOD, LEN = 150, 75, 12
TASK = "toy_copy_text"
TINY = network.T5Config(vocab_size=32, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64,
                        num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("ft")
    extra = ["--gin_file=init/from_scratch.gin", "--gin.MIXTURE_OR_TASK_MODULE='toy_eval_tasks'",
             f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'", f"--gin.EVAL_PERIOD={PERIOD}", "--gin.EVAL_STEPS=2",
             "--gin.DROPOUT_RATE=0.0", "--gin.LEARNING_RATE=0.05",
             "--gin.utils.create_learning_rate_scheduler.warmup_steps=0",
             f"--gin.train.stats_period={PERIOD}", f"--gin.CHECKPOINT_PERIOD={PERIOD}"]
    result = run_train_inprocess(tiny_train_argv(d, STEPS, batch=32, extra=extra, run="runs/finetune.gin"))
    params = jax.device_get(result["state"]["params"])
    return d, result, params


def encode_words(words, length=LEN):
    vocab = toy.LetterVocabulary()
    x = np.zeros((len(words), length), np.int32)
    for r, w in enumerate(words):
        ids = vocab.encode(w)[: length - 1] + [1]
        x[r, : len(ids)] = ids
    return x


def decoded_words(decodes):
    vocab = toy.LetterVocabulary()
    return [vocab.decode([int(t) for t in row]) for row in np.asarray(decodes)]


def setup_model(params):
    model = EncoderDecoderModel(module=network.Transformer(TINY))
    part = PjitPartitioner()
    _, shardings = eval_lib.abstract_params(model, part)
    return model, part, jax.device_put(params, shardings), shardings


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_training_writes_t5x_inference_outputs(trained):
    d, result, _ = trained
    ie = d / "inference_eval"
    logged = read_jsonl(ie / f"{TASK}-metrics.jsonl")
    assert [r["step"] for r in logged] == [PERIOD, STEPS]
    assert all(set(r) == {"step", "em"} for r in logged)
    assert [{"step": r["step"], f"{TASK}/em": r["em"]} for r in logged] == result["infer_metrics"]
    # TensorBoard scalars under inference_eval/<task>/ with seqio's 'eval/<metric>' tags
    tb = sel.read_scalar_series(str(ie / TASK), tag="eval/em")
    assert [s for s, _ in tb] == [PERIOD, STEPS]
    np.testing.assert_allclose([v for _, v in tb], [r["em"] for r in logged], rtol=1e-6)
    # the first JSON_WRITE_N_RESULTS=3 predictions with their inputs and targets, per step
    for step in (PERIOD, STEPS):
        rows = read_jsonl(ie / f"{TASK}-{step:06d}.jsonl")
        assert len(rows) == 3
        for i, row in enumerate(rows):
            assert row["input"]["inputs_pretokenized"] == toy.word("test", i) == row["target"]
            assert isinstance(row["prediction"], str)
    # and `synthpre select` reads the run: metrics at the max-validation-accuracy step
    r = sel.select_checkpoint(str(d))["tasks"][TASK]
    by_step = {x["step"]: x["em"] for x in logged}
    assert r["max_val_acc_metrics"] == {"em": by_step[r["max_accuracy_step"]]}


def test_reported_metric_is_what_the_decodes_imply(trained):
    d, result, params = trained
    words = [toy.word("test", i) for i in range(toy.TEST_SIZE)]
    cfg = inference.DecodeConfig(method="beam", num_decodes=4, alpha=0.6, max_decode_length=LEN)
    decodes, _ = inference.predict_batch(network.Transformer(TINY), params,
                                         {"encoder_input_tokens": jnp.asarray(encode_words(words))}, cfg)
    preds = decoded_words(decodes)
    em = 100.0 * np.mean([p == w for p, w in zip(preds, words)])
    reported = result["infer_metrics"][-1][f"{TASK}/em"]
    assert 0.0 < em < 100.0, preds      # a partly trained model: the check can fail both ways
    assert reported == pytest.approx(em, abs=1e-9)
    rows = read_jsonl(d / "inference_eval" / f"{TASK}-{STEPS:06d}.jsonl")
    assert [r["prediction"] for r in rows] == preds[:3]


def test_mixture_first_n_examples_padding_and_a_score_metric(trained, tmp_path):
    """EVALUATOR_NUM_EXAMPLES=5 at batch 4 (a padded last batch) on a mixture of a decoded and
    a scored task; every prediction written (JSON_WRITE_N_RESULTS=None)."""
    _, _, params = trained
    model, part, placed, shardings = setup_model(params)
    cfg = DatasetConfig(mixture_or_task_name="toy_copy_text_mix", task_feature_lengths={"inputs": LEN, "targets": LEN},
                        split=None, batch_size=4, shuffle=False, module="toy_eval_tasks")
    ev = evaluation.InferenceEvaluator(model, part, cfg, str(tmp_path), num_examples=5,
                                       json_write_n_results=None,
                                       decode_config=inference.DecodeConfig(method="greedy"), stream=False)
    assert [(t.name, t.split, t.num_examples, t.decode_config.max_decode_length) for t in ev.tasks] == [
        (TASK, "test", 5, LEN), ("toy_copy_text_scored", "test", 5, LEN)]
    metrics = ev.evaluate(7, placed, shardings)
    assert set(metrics) == {f"{TASK}/em", "toy_copy_text_scored/mean_log_likelihood"}
    for t in (TASK, "toy_copy_text_scored"):
        assert read_jsonl(tmp_path / "inference_eval" / f"{t}-metrics.jsonl")[0]["step"] == 7

    words = [toy.word("test", i) for i in range(5)]
    x = encode_words(words)
    rows = read_jsonl(tmp_path / "inference_eval" / f"{TASK}-000007.jsonl")
    assert [r["target"] for r in rows] == words       # the first 5, in order
    greedy, _ = inference.predict_batch(network.Transformer(TINY), params, {"encoder_input_tokens": jnp.asarray(x)},
                                        inference.DecodeConfig(method="greedy", max_decode_length=LEN))
    preds = decoded_words(greedy)
    assert [r["prediction"] for r in rows] == preds
    assert metrics[f"{TASK}/em"] == pytest.approx(100.0 * np.mean([p == w for p, w in zip(preds, words)]))

    dec_in = np.concatenate([np.zeros((5, 1), np.int32), x[:, :-1]], axis=1)
    ll = inference.score_batch(network.Transformer(TINY), params, {
        "encoder_input_tokens": jnp.asarray(x), "decoder_input_tokens": jnp.asarray(dec_in),
        "decoder_target_tokens": jnp.asarray(x)})
    assert metrics["toy_copy_text_scored/mean_log_likelihood"] == pytest.approx(float(np.mean(ll)), rel=1e-5)


@pytest.mark.parametrize("name,kwargs,pattern", [
    ("toy_copy", {}, "no metric_fns"),
    ("toy_copy_text_empty", {}, "is empty"),
    (TASK, {"split": "nosuch"}, "split"),
    (TASK, {"max_decode_lengths": {TASK: 0}}, "max decode length"),
    (TASK, {"num_examples": 0}, "EVALUATOR_NUM_EXAMPLES"),
])
def test_errors_are_user_errors_before_any_output(name, kwargs, pattern, tmp_path):
    model = EncoderDecoderModel(module=network.Transformer(TINY))
    split = kwargs.pop("split", None)
    cfg = DatasetConfig(mixture_or_task_name=name, task_feature_lengths={"inputs": LEN, "targets": LEN},
                        split=split, batch_size=4, module=["toy_tasks", "toy_eval_tasks"])
    with pytest.raises(UserError, match=pattern) as e:
        evaluation.InferenceEvaluator(model, PjitPartitioner(), cfg, str(tmp_path), stream=False, **kwargs)
    assert pattern in str(e.value).splitlines()[0]   # (gin appends its call context below)
    assert not (tmp_path / "inference_eval").exists()


def test_max_decode_length_and_split_choice():
    import seqio
    import tasks.downstream  # noqa: F401  (the paper's tables)
    beam = inference.DecodeConfig()
    assert evaluation.max_decode_length_for("cnndm_10k", 256, beam) == 148          # spec §2 table
    assert evaluation.max_decode_length_for("cnndm_10k", 256, inference.DecodeConfig(max_decode_length=20)) == 20
    assert evaluation.max_decode_length_for("my_task", 33, beam) == 33              # target length
    assert evaluation.max_decode_length_for("my_task", 33, beam, {"my_task": 7}) == 7
    with pytest.raises(UserError, match="max decode length"):
        evaluation.max_decode_length_for("my_task", None, beam)
    with pytest.raises(UserError, match="at least 1"):
        inference.DecodeConfig(max_decode_length=0)
    squad = seqio.get_mixture_or_task("squad_v010_allanswers")
    assert evaluation.infer_split(squad) == "validation"
    assert evaluation.infer_split(seqio.get_mixture_or_task("mtop")) == "test"
    assert evaluation.infer_split(squad, "test") is None


def test_predictions_file_decodes_inputs_without_pretokenized_text(tmp_path):
    """The paper's file tasks keep no 'inputs_pretokenized'; the predictions file then carries
    the inputs decoded through the task's vocabulary."""
    import seqio
    import tensorflow as tf
    words = ["abc", "hello", "zz"]
    ids = [toy.LetterVocabulary().encode(w) + [1] for w in words]
    ds = tf.data.Dataset.from_generator(
        lambda: ({"inputs": np.asarray(i, np.int32), "targets": np.asarray(i, np.int32)} for i in ids),
        output_signature={"inputs": tf.TensorSpec([None], tf.int32), "targets": tf.TensorSpec([None], tf.int32)})
    logger = evaluation._json_logger_cls(2)(str(tmp_path))
    logger.vocabularies["t"] = toy.LetterVocabulary()
    logger("t", 4, {"em": seqio.metrics.Scalar(50.0)}, ds, {"prediction": ["abc", "x", "zz"]}, words)
    rows = read_jsonl(tmp_path / "t-000004.jsonl")
    assert [(r["input"]["inputs_text"], r["target"], r["prediction"]) for r in rows] == [
        ("abc", "abc", "abc"), ("hello", "hello", "x")]
    assert rows[1]["input"]["inputs"] == ids[1]
    assert read_jsonl(tmp_path / "t-metrics.jsonl") == [{"step": 4, "em": 50.0}]
