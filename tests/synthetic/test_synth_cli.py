"""`synthpre gen` and `synthpre inspect` through `synthpre_jax.cli.main`."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import pytest
from synth_helpers import REPO

from synthpre_jax.cli import main
from synthpre_jax.synthetic.base import generate_range
from synthpre_jax.synthetic.codec import FallbackCodec
from synthpre_jax.synthetic.registry import make_task


@pytest.fixture(autouse=True)
def offline_vocab(monkeypatch):
    # `gen` never reads gs:// (no TensorFlow); point it at a missing local file = fallback.
    monkeypatch.setenv("SYNTHPRE_SPM_PATH", "/nonexistent/sentencepiece.model")


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_gen_release_format_is_the_authors_line_format(capsys):
    rc, out, _ = run(capsys, "gen", "union", "--num", "5", "--seed", "3", "--split", "validation",
                     "--format", "release")
    assert rc == 0
    ref = generate_range(make_task("union"), 3, "validation", 0, 5)
    lines = out.splitlines()
    assert len(lines) == 5
    for line, i, t in zip(lines, ref["inputs"].tolists(), ref["targets"].tolists()):
        a, b = line.split("\t")
        assert ast.literal_eval(a) == i and ast.literal_eval(b) == t and a.startswith("[7021, 32099")


def test_gen_ids_and_start(capsys):
    rc, out, _ = run(capsys, "gen", "copy", "--num", "2", "--start", "10")   # alias of identity
    rows = [json.loads(x) for x in out.splitlines()]
    ref = generate_range(make_task("identity"), 0, "train", 10, 12)
    assert [r["index"] for r in rows] == [10, 11]
    assert [r["inputs"] for r in rows] == ref["inputs"].tolists()


def test_gen_text_and_special_formats(capsys):
    rc, out, _ = run(capsys, "gen", "length", "--num", "1", "--format", "text")
    assert rc == 0 and out.startswith("### length example 0") and "inputs: length <extra_id_0>" in out
    rc, out, _ = run(capsys, "gen", "nesting_language_tiny", "--num", "2", "--format", "release")
    assert all(ast.literal_eval(x) for x in out.splitlines())
    rc, out, _ = run(capsys, "gen", "nonsense_summary", "--num", "1", "--format", "release")
    doc, summary = out.rstrip("\n").split("\t")
    assert doc.endswith(".") and summary.endswith(".")


def test_gen_output_file_is_complete(tmp_path, capsys):
    path = tmp_path / "out.txt"
    rc, out, _ = run(capsys, "gen", "sort_tiny", "--num", "7", "--format", "release",
                     "--output", str(path))
    assert rc == 0 and out == ""
    assert len(path.read_text().splitlines()) == 7
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


@pytest.mark.parametrize("argv,needle", [
    (["gen", "unoin"], "unknown synthetic task 'unoin' (did you mean 'union'"),
    (["gen", "union", "--format", "xml"], "invalid choice"),
    (["gen", "union", "--split", "dev"], "invalid choice"),
    (["gen", "union", "--num", "-1"], "--num"),
    (["gen"], "missing TASK"),
    (["gen", "search", "--length_range", "50,50"], "too small for search"),
    (["gen", "identity", "--length_range", "10"], "--length_range must be LO,HI"),
    (["gen", "nesting_language", "--num_tokens", "5"], "task nesting_language has no setting 'num_tokens'"),
    (["gen", "union", "--config", "order=sorted"], "order must be one of"),
    (["gen", "union", "--config", "order"], "--config takes KEY=VALUE"),
    (["gen", "induct", "--config", "max_length=60"], "draws fit max_length=60"),
    (["gen", "set", "--output", "/nonexistent_dir/x.txt"], "/nonexistent_dir is not a directory"),
    (["gen", "length", "--spm_path", "/nonexistent_dir/x.model"], "--spm_path /nonexistent_dir/x.model: No such file"),
    (["gen", "length", "--spm_path", __file__], "is not a SentencePiece model"),
    (["gen", "union", "--config", 'num_tokens="abc"'], "a setting has a value of the wrong type"),
    (["gen", "union", "--config", "ordr=sorted"], "has no setting 'ordr' (did you mean 'order'?); its settings: length_range"),
])
def test_gen_bad_input_is_one_line_exit_2(capsys, argv, needle):
    rc, out, err = run(capsys, *argv)
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and needle in err


def test_gen_task_settings_are_the_constructors(capsys):
    """--length_range/--num_tokens/--vocab_seed/--config reach the task as constructor
    settings: the same examples as make_task with them."""
    argv = ["gen", "search", "--num", "4", "--length_range", "10,40", "--num_tokens", "30",
            "--vocab_seed", "2", "--config", "balanced=false"]
    rc, out, _ = run(capsys, *argv)
    assert rc == 0
    task = make_task("search", length_range=(10, 40), num_tokens=30, vocab_seed=2,
                     balanced=False)
    ref = generate_range(task, 0, "train", 0, 4)
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["inputs"] for r in rows] == ref["inputs"].tolists()
    assert all(10 <= len(r["inputs"]) - 2 <= 40 for r in rows)
    rc, out, _ = run(capsys, "gen", "union", "--num", "2", "--config", "order=first_occurrence")
    ref = generate_range(make_task("union", order="first_occurrence"), 0, "train", 0, 2)
    assert rc == 0 and [json.loads(x)["targets"] for x in out.splitlines()] == ref["targets"].tolists()


def test_gen_dedup_keeps_the_first_line_of_each_input(capsys, monkeypatch):
    """--dedup is the authors' deduplicate_generated_data: the first line per distinct input
    (targets not compared), across generation blocks, in order."""
    from synthpre_jax.synthetic import cli as gen_cli

    monkeypatch.setattr(gen_cli, "CHUNK", 64)  # several blocks
    argv = ["gen", "first_token", "--num_tokens", "3", "--length_range", "1,3", "--num", "300",
            "--format", "release"]
    _, full, _ = run(capsys, *argv)
    rc, dedup, _ = run(capsys, *argv, "--dedup")
    seen, ref = set(), []
    for line in full.splitlines():
        if line.split("\t")[0] not in seen:
            seen.add(line.split("\t")[0])
            ref.append(line)
    assert rc == 0 and dedup.splitlines() == ref and 3 < len(ref) < 300


def test_gen_list(capsys):
    rc, out, _ = run(capsys, "gen", "--list")
    assert rc == 0 and "identity_vocab10" in out and "nesting_language" in out


def test_gen_imports_neither_tensorflow_nor_jax():
    code = ("import sys; from synthpre_jax.cli import main; main(['gen','induct','--num','1']);"
            "print(sorted(m for m in ('tensorflow','jax','seqio') if m in sys.modules))")
    env = dict(os.environ, PYTHONPATH=str(REPO), SYNTHPRE_SPM_PATH="/nonexistent")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_inspect_prints_decoded_examples(capsys):
    pytest.importorskip("seqio")
    rc, out, _ = run(capsys, "inspect", "synthpre_search", "--num", "2", "--split", "validation")
    assert rc == 0
    assert out.count("=== synthpre_search [validation] example") == 2
    assert "inputs (" in out and ("targets (2 ids): yes" in out or "targets (2 ids): no" in out)


@pytest.mark.parametrize("argv,needle", [
    (["inspect", "synthpre_serch"], "did you mean 'synthpre_search'"),
    (["inspect", "synthpre_search", "--split", "test"], "has no split 'test'"),
    (["inspect", "synthpre_search", "--lengths", "inputs:5"], "bad --lengths"),
])
def test_inspect_bad_input(capsys, argv, needle):
    pytest.importorskip("seqio")
    rc, out, err = run(capsys, *argv)
    assert rc == 2 and needle in err
    assert len([x for x in err.splitlines() if x.startswith("error:")]) == 1


def test_fallback_decoding_in_text_output():
    # yes/no and the prefixes keep the authors' ids, so they decode under the fallback too
    c = FallbackCodec()
    assert c.decode([960, 32099]) == "search <extra_id_0>" and c.decode([4273]) == "yes"


def test_gen_into_a_closed_pipe_stops_quietly():
    """`synthpre gen ... | head -1`: no BrokenPipeError traceback, exit 141 like `cat`."""
    env = dict(os.environ, SYNTHPRE_SPM_PATH="/nonexistent/x.model")
    proc = subprocess.Popen([sys.executable, "-m", "synthpre_jax.cli", "gen", "set", "--num", "200000"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert first.startswith(b'{"index": 0') and "Traceback" not in err and "BrokenPipe" not in err
