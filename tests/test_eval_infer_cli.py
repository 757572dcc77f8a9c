"""`synthpre eval` and `synthpre infer` on a tiny fine-tuned run with two checkpoints.

The references are the run's own inference eval (written by the training loop from the params
in memory) and the seqio pipeline: evaluating the saved checkpoints must reproduce the logged
metrics and predictions exactly, and `infer` on a text file must predict what the eval
predicted for the same words. Bad input is one line on stderr, exit code 2, and no output.
"""
import json
import os

import gin
import numpy as np
import pytest

import toy_eval_tasks as toy
from conftest import TINY_BINDINGS, run_train_inprocess, tiny_train_argv
from synthpre_jax import checkpoints, cli
from synthpre_jax import eval as eval_lib
from synthpre_jax import infer as infer_lib
from synthpre_jax.models import inference, network

TASK = "toy_copy_text"
STEPS, PERIOD = 100, 50


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("ft")
    extra = ["--gin_file=init/from_scratch.gin", "--gin.MIXTURE_OR_TASK_MODULE='toy_eval_tasks'",
             f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'", f"--gin.EVAL_PERIOD={PERIOD}", "--gin.EVAL_STEPS=2",
             "--gin.DROPOUT_RATE=0.0", "--gin.LEARNING_RATE=0.05",
             "--gin.utils.create_learning_rate_scheduler.warmup_steps=0",
             f"--gin.train.stats_period={PERIOD}", f"--gin.CHECKPOINT_PERIOD={PERIOD}"]
    run_train_inprocess(tiny_train_argv(d, STEPS, batch=32, extra=extra, run="runs/finetune.gin"))
    return d


def base_argv(run_file, checkpoint, task=TASK, extra=()):
    argv = ["--gin_file=models/t5_tiny.gin", f"--gin_file={run_file}"]
    argv += [f"--gin_bindings={b}" for b in TINY_BINDINGS]
    argv += ["--gin.MIXTURE_OR_TASK_MODULE=['toy_tasks', 'toy_eval_tasks']", f"--gin.MIXTURE_OR_TASK_NAME='{task}'",
             "--gin.TASK_FEATURE_LENGTHS={'inputs': 12, 'targets': 12}", "--gin.BATCH_SIZE=32",
             f"--gin.CHECKPOINT_PATH='{checkpoint}'"]
    return argv + list(extra)


def run(main, argv, capsys):
    gin.clear_config()
    try:
        code = cli.run_guarded(main, argv)
    finally:
        gin.clear_config()
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_eval_every_checkpoint_reproduces_training_inference_eval(run_dir, tmp_path, capsys):
    assert [s for s, _ in eval_lib.list_checkpoints(str(run_dir))] == [PERIOD, STEPS]
    assert [s for s, _ in eval_lib.list_checkpoints(str(run_dir), "latest")] == [STEPS]
    out = tmp_path / "eval"
    code, stdout, err = run(eval_lib.main, base_argv("runs/eval.gin", run_dir,
                                                     extra=[f"--gin.EVAL_OUTPUT_DIR='{out}'"]), capsys)
    assert code == 0, err[-3000:]
    assert "evaluated 2 checkpoint(s)" in stdout
    train_log = read_jsonl(run_dir / "inference_eval" / f"{TASK}-metrics.jsonl")
    eval_log = read_jsonl(out / "inference_eval" / f"{TASK}-metrics.jsonl")
    assert [r["step"] for r in eval_log] == [PERIOD, STEPS]
    assert eval_log == train_log                       # same params, same decoding: identical
    preds = read_jsonl(out / "inference_eval" / f"{TASK}-{STEPS:06d}.jsonl")
    assert len(preds) == toy.TEST_SIZE                 # eval.gin writes every prediction
    assert preds[:3] == read_jsonl(run_dir / "inference_eval" / f"{TASK}-{STEPS:06d}.jsonl")
    assert any(f.startswith("events") for f in os.listdir(out / "inference_eval" / TASK))

    # one checkpoint given directly
    one = tmp_path / "one"
    code, _, err = run(eval_lib.main, base_argv("runs/eval.gin", run_dir / f"checkpoint_{PERIOD}",
                                                extra=[f"--gin.EVAL_OUTPUT_DIR='{one}'"]), capsys)
    assert code == 0, err[-3000:]
    assert read_jsonl(one / "inference_eval" / f"{TASK}-metrics.jsonl") == train_log[:1]


def test_infer_on_a_text_file_and_on_a_split(run_dir, tmp_path, capsys):
    words = [toy.word("test", i) for i in range(3)]
    lines = words + ["hello world", "abcdefghijklmnopqrstuvwxyz"]   # a space (dropped) and an overlong line
    inputs = tmp_path / "questions.txt"
    inputs.write_text("\n".join(lines) + "\n")
    out = tmp_path / "preds"
    code, stdout, err = run(infer_lib.main, base_argv("runs/infer.gin", run_dir, extra=[
        f"--gin.INFER_OUTPUT_DIR='{out}'", f"--gin.INPUT_FILE='{inputs}'"]), capsys)
    assert code == 0, err[-3000:]
    recs = read_jsonl(out / f"questions-{STEPS:06d}.jsonl")          # the run dir's latest checkpoint
    assert [r["inputs"] for r in recs] == lines and [r["index"] for r in recs] == list(range(5))
    logged = read_jsonl(run_dir / "inference_eval" / f"{TASK}-{STEPS:06d}.jsonl")
    assert [r["prediction"] for r in recs[:3]] == [r["prediction"] for r in logged]
    vocab = toy.LetterVocabulary()
    for r in recs:
        assert r["prediction"] == vocab.decode(r["prediction_ids"]) and r["score"] < 0
        assert len(r["prediction_ids"]) <= 12

    code, _, err = run(infer_lib.main, base_argv("runs/infer.gin", run_dir / f"checkpoint_{STEPS}", extra=[
        f"--gin.INFER_OUTPUT_DIR='{out}'", "--gin.INFER_NUM_EXAMPLES=4"]), capsys)
    assert code == 0, err[-3000:]
    recs = read_jsonl(out / f"{TASK}-{STEPS:06d}.jsonl")
    words = [toy.word("test", i) for i in range(4)]
    assert [r["targets"] for r in recs] == words
    assert [r["prediction"] for r in recs[:3]] == [r["prediction"] for r in logged]

    # INFER_MODE='score': the targets' log-likelihood, against score_batch on hand-made batches
    code, _, err = run(infer_lib.main, base_argv("runs/infer.gin", run_dir, extra=[
        f"--gin.INFER_OUTPUT_DIR='{out}'", "--gin.INFER_NUM_EXAMPLES=4", "--gin.INFER_MODE='score'"]), capsys)
    assert code == 0, err[-3000:]
    recs = read_jsonl(out / f"{TASK}-{STEPS:06d}-scores.jsonl")
    assert [r["targets"] for r in recs] == words
    x = np.zeros((4, 12), np.int32)
    for r, w in enumerate(words):
        x[r, : len(w) + 1] = vocab.encode(w) + [1]
    dec_in = np.concatenate([np.zeros((4, 1), np.int32), x[:, :-1]], axis=1)
    params = checkpoints.load_params(str(run_dir / f"checkpoint_{STEPS}"))
    module = network.Transformer(network.T5Config(vocab_size=32, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64,
                                                  num_encoder_layers=2, num_decoder_layers=2))
    ll = inference.score_batch(module, params, {"encoder_input_tokens": x, "decoder_input_tokens": dec_in,
                                                "decoder_target_tokens": x})
    np.testing.assert_allclose([r["score"] for r in recs], np.asarray(ll), rtol=1e-5)


def _check_error(code, err, pattern):
    lines = err.strip().splitlines()
    assert code == 2, err[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err, err[-3000:]
    assert pattern in lines[0], lines[0]


@pytest.mark.parametrize("name,task,extra,pattern", [
    ("mismatched checkpoint", TASK, ["--gin.network.T5Config.emb_dim=48"], "does not match the model"),
    ("no metric_fns", "toy_copy", [], "no metric_fns"),
    ("empty split", "toy_copy_text_empty", [], "is empty"),
    ("max decode length 0", TASK, ["--gin.MAX_DECODE_LENGTH=0"], "must be at least 1"),
    ("no checkpoint", TASK, ["--gin.CHECKPOINT_PATH='/nonexistent/run'"], "does not exist"),
])
def test_eval_errors(run_dir, tmp_path, capsys, name, task, extra, pattern):
    out = tmp_path / "eval"
    code, _, err = run(eval_lib.main, base_argv("runs/eval.gin", run_dir, task=task,
                                                extra=[f"--gin.EVAL_OUTPUT_DIR='{out}'"] + extra), capsys)
    _check_error(code, err, pattern)
    assert not out.exists()


def test_infer_errors(run_dir, tmp_path, capsys):
    out = tmp_path / "preds"
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    for extra, pattern in (([f"--gin.INPUT_FILE='{empty}'"], "is empty"),
                           ([f"--gin.INPUT_FILE='{tmp_path / 'nope.txt'}'"], "does not exist"),
                           ([f"--gin.INPUT_FILE='{empty}'", "--gin.INFER_MODE='score'"], "is empty"),
                           (["--gin.INFER_MODE='rank'"], "INFER_MODE")):
        code, _, err = run(infer_lib.main, base_argv("runs/infer.gin", run_dir,
                                                     extra=[f"--gin.INFER_OUTPUT_DIR='{out}'"] + extra), capsys)
        _check_error(code, err, pattern)
    assert not out.exists()

