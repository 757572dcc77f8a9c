"""Bad input to `synthpre train` gives one line on stderr and exit code 2, never a traceback,
and MODEL_DIR is left as it was."""
import os

import gin
import pytest

from conftest import tiny_train_argv
from synthpre_jax import cli


def _run(argv, capsys):
    gin.clear_config()
    try:
        code = cli.main(["train"] + argv)
    finally:
        gin.clear_config()
    err = capsys.readouterr().err
    return code, [l for l in err.splitlines() if l.startswith("error:")], err


def _replace(argv, prefix, new):
    return [new if a.startswith(prefix) else a for a in argv]


CASES = {
    "unknown task": (lambda d: _replace(tiny_train_argv(d, 2), "--gin_bindings=MIXTURE_OR_TASK_NAME",
                                        "--gin.MIXTURE_OR_TASK_NAME='toy_cpy'"), "unknown task or mixture 'toy_cpy'.*toy_copy"),
    "unquoted string": (lambda d: tiny_train_argv(d, 2) + ["--gin.MIXTURE_OR_TASK_NAME=toy_copy"], "quotes"),
    "unknown configurable": (lambda d: tiny_train_argv(d, 2) + ["--gin.network.T5Config.embdim=3"], "embdim"),
    "missing MODEL_DIR": (lambda d: [a for a in tiny_train_argv(d, 2) if "MODEL_DIR" not in a], "MODEL_DIR"),
    "zero steps": (lambda d: tiny_train_argv(d, 0), "TRAIN_STEPS"),
    "missing gin file": (lambda d: ["--gin_file=models/t5_nope.gin"], "t5_nope.gin"),
    "bad feature lengths": (lambda d: tiny_train_argv(d, 2) + ["--gin.TASK_FEATURE_LENGTHS={'inputs': 0, 'targets': 4}"], "inputs"),
    "unknown flag": (lambda d: tiny_train_argv(d, 2) + ["--model_dir=/tmp/x"], "--model_dir"),
    "user module missing": (lambda d: tiny_train_argv(d, 2) + ["--gin.MIXTURE_OR_TASK_MODULE='no_such_tasks_mod'"], "no_such_tasks_mod"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_one_line_exit_2(name, tmp_path, capsys):
    make, pattern = CASES[name]
    model_dir = tmp_path / "run"
    code, lines, err = _run(make(model_dir), capsys)
    assert code == 2, err[-2000:]
    assert len(lines) == 1, err[-2000:]
    assert "Traceback" not in err
    import re
    assert re.search(pattern, lines[0]), lines[0]
    assert not model_dir.exists() or not any(p.name.startswith("checkpoint") for p in model_dir.iterdir())


def test_incompatible_checkpoint_in_model_dir(tmp_path, capsys):
    d = tmp_path / "run"
    code, _, err = _run(tiny_train_argv(d, 2, extra=["--gin.EVAL_STEPS=1"]), capsys)
    assert code == 0, err[-3000:]
    before = sorted(os.listdir(d))
    code, lines, err = _run(tiny_train_argv(d, 4, extra=["--gin.network.T5Config.emb_dim=48"]), capsys)
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert "shape" in lines[0] or "match" in lines[0], lines[0]
    assert sorted(os.listdir(d)) == before


def test_bad_input_is_exactly_one_line_without_tensorflow_load_noise():
    """TensorFlow's native libraries log at load time ("Could not find cuda drivers...")
    before its log settings apply; the CLI holds that back, so a mistake is one line."""
    import subprocess
    import sys

    from conftest import REPO, subprocess_env

    env = subprocess_env(1)
    env["SYNTHPRE_SPM_PATH"] = "/nonexistent/sentencepiece.model"
    for argv in (["inspect", "synthpre_nope"], ["train", "--gin_file=/nonexistent.gin"]):
        proc = subprocess.run([sys.executable, "-m", "synthpre_jax.cli", *argv], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("error: "), \
            proc.stderr[-2000:]


def test_a_non_utf8_input_file_is_a_user_error(tmp_path):
    from synthpre_jax.errors import UserError
    from synthpre_jax.infer import _read_lines

    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"caf\xe9 au lait\n")
    with pytest.raises(UserError, match="not UTF-8 text"):
        _read_lines(str(bad))
    with pytest.raises(UserError, match="is a directory; give a text file"):
        _read_lines(str(tmp_path))
