"""The downstream seqio tasks on offline data: small fixture files in the real release formats,
mocked TFDS for cnn_dailymail/squad, seqio's Evaluator on top, and `prepare-data`."""
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest
import seqio
import tensorflow_datasets as tfds

import tasks.downstream as ds_tasks
from conftest import subprocess_env
from synthpre_jax.data import downstream_formats as fmt
from synthpre_jax.data import prepare
from synthpre_jax.errors import UserError

LENGTHS = {"inputs": 64, "targets": 32}
MTOP_LINES = ["what is the weather today\t[IN:GET_WEATHER [SL:DATE_TIME today ] ]",
              "line without a tab",
              "two\ttabs\there",
              "set an alarm for 7 am\t[IN:CREATE_ALARM [SL:DATE_TIME for 7 am ] ]\r"]


def _write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _examples(task, split, lengths=LENGTHS):
    ds = seqio.get_mixture_or_task(task).get_dataset(lengths, split=split, shuffle=False)
    return list(ds.as_numpy_iterator())


def _decode(task, ids):
    return seqio.get_mixture_or_task(task).output_features["targets"].vocabulary.decode(ids.tolist())


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DOWNSTREAM_DATA_DIR", str(tmp_path))
    for split in ("train", "valid", "test"):
        _write(tmp_path / "mtop" / f"{split}.txt", MTOP_LINES)
        _write(tmp_path / "webqsp" / f"{split}.txt", ["who plays meg\tm.0abc", "x\ty"])
        _write(tmp_path / "retrosynthesis" / f"{split}.txt", ["CC(=O)Oc1ccccc1C(=O)O\tCC(=O)O.Oc1ccccc1C(=O)O"])
        stem = {"valid": "valid"}.get(split, split) + ".java-cs.txt"
        _write(tmp_path / "code_translation" / (stem + ".java"), ["public int f(){return 1;}", "void g(){}"])
        _write(tmp_path / "code_translation" / (stem + ".cs"), ["public int F(){return 1;}", "void G(){}"])
    return tmp_path


# ----------------------------------------------------------------------------- registry

def test_registered_tasks_settings_and_idempotence():
    import importlib
    before = {n: seqio.get_mixture_or_task(n) for n in ds_tasks.FEATURE_LENGTHS}
    importlib.reload(ds_tasks)  # registering again is a no-op
    assert all(seqio.get_mixture_or_task(n) is t for n, t in before.items())
    # the paper's table (spec §2)
    assert ds_tasks.MAX_DECODE_LENGTHS["cnndm_10k"] == 148 and ds_tasks.MAX_DECODE_LENGTHS["code_translation"] == 1024
    assert ds_tasks.FEATURE_LENGTHS["webqsp"] == {"inputs": 2048, "targets": 256}
    assert ds_tasks.INFER_EVAL_SPLITS["squad_v010_allanswers"] == "validation"
    assert ds_tasks.INFER_EVAL_SPLITS["mtop"] == "test"
    fns = {n: {f.__name__ for f in seqio.get_mixture_or_task(n).metric_fns} for n in ds_tasks.FEATURE_LENGTHS}
    assert fns["cnndm_10k"] == {"rouge"} and fns["squad_v010_allanswers"] == {"squad"}
    assert fns["retrosynthesis"] == {"semantic_parsing_metrics", "retrosynthesis_top1"}
    assert fns["code_translation"] == {"semantic_parsing_metrics", "bleu"}
    assert fns["scan_simple"] == {"exact_match"}


def test_registration_touches_no_file_and_no_network(tmp_path, monkeypatch):
    watched = str(tmp_path)

    def guard(orig):
        def wrapped(self, *a, **k):
            assert not str(self).startswith(watched), f"registration touched {self}"
            return orig(self, *a, **k)
        return wrapped

    for name in ("exists", "is_file", "is_dir", "stat", "open", "iterdir"):
        monkeypatch.setattr(pathlib.Path, name, guard(getattr(pathlib.Path, name)))
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("network at registration"))
    monkeypatch.setenv("DOWNSTREAM_DATA_DIR", watched)
    for name in ds_tasks.FEATURE_LENGTHS:
        seqio.TaskRegistry.remove(name)
    ds_tasks.register()
    assert set(ds_tasks.FEATURE_LENGTHS) <= set(seqio.TaskRegistry.names())


def test_missing_data_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("DOWNSTREAM_DATA_DIR", raising=False)
    with pytest.raises(UserError, match="DOWNSTREAM_DATA_DIR is not set"):
        _examples("mtop", "train")
    monkeypatch.setenv("DOWNSTREAM_DATA_DIR", str(tmp_path))
    with pytest.raises(UserError, match=r"missing data file .*webqsp.*valid\.txt.*prepare-data webqsp"):
        _examples("webqsp", "validation")
    # the gin macro wins over the environment
    import gin
    _write(tmp_path / "g" / "webqsp" / "valid.txt", ["q\ta"])
    gin.parse_config(f"DOWNSTREAM_DATA_DIR = '{tmp_path / 'g'}'")
    try:
        assert len(_examples("webqsp", "validation")) == 1
    finally:
        gin.clear_config()


# ----------------------------------------------------------------------------- file tasks

def test_release_tsv_tasks_drop_malformed_lines(data_dir):
    for split in ("train", "validation", "test"):
        exs = _examples("mtop", split)
        assert len(exs) == 2  # the line without a tab and the one with two tabs are dropped
        for ex in exs:
            assert set(ex) == {"inputs", "targets"}  # no *_pretokenized: targets come from ids
            assert ex["inputs"].dtype == np.int32 and ex["inputs"][-1] == 1 and ex["targets"][-1] == 1
    assert [p[1] for p in fmt.read_tsv_pairs(data_dir / "mtop" / "train.txt")] == \
        ["[IN:GET_WEATHER [SL:DATE_TIME today ] ]", "[IN:CREATE_ALARM [SL:DATE_TIME for 7 am ] ]"]
    assert fmt.count_tsv(data_dir / "mtop" / "test.txt") == (2, 2)
    assert len(_examples("webqsp", "train")) == 2 and len(_examples("retrosynthesis", "test")) == 1
    short = _examples("mtop", "train", {"inputs": 4, "targets": 3})
    assert all(len(e["inputs"]) <= 4 and e["targets"][-1] == 1 for e in short)  # EOS after trimming


def test_authors_bucket_layout_and_codexglue(data_dir, tmp_path):
    exs = _examples("code_translation", "validation")
    assert len(exs) == 2
    assert _decode("code_translation", exs[1]["targets"]).startswith("void G")
    # misaligned CodeXGLUE files: a clear error naming both files
    _write(data_dir / "code_translation" / "test.java-cs.txt.cs", ["only one line"])
    with pytest.raises(UserError, match="not aligned"):
        _examples("code_translation", "test")
    # the authors' `finetuning_data/<task>/` layout and their TSV code_translation files
    release = data_dir / "finetuning_data" / "code_translation"
    os.replace(data_dir / "code_translation", data_dir / "elsewhere")
    _write(release / "train.txt", ["public int f(){return 1;}\tpublic int F(){return 1;}"])
    assert len(_examples("code_translation", "train")) == 1


# ----------------------------------------------------------------------------- evaluator

def _evaluator(task, split):
    from seqio import evaluation
    return evaluation.Evaluator(mixture_or_task_name=task, feature_converter=seqio.EncDecFeatureConverter(pack=False),
                                eval_split=split, sequence_length=LENGTHS, async_compute_metrics=False)


def _evaluate(task, split, predict, evaluator=None):
    metrics_future, _ = (evaluator or _evaluator(task, split)).evaluate(compute_metrics=True, predict_fn=predict)
    return metrics_future.result()[task]


def test_seqio_evaluator_scores_file_tasks(data_dir):
    perfect = lambda ds: [(i, ex["decoder_target_tokens"]) for i, ex in ds.as_numpy_iterator()]
    mtop = _evaluator("mtop", "test")
    assert _evaluate("mtop", "test", perfect, mtop) == {"em": 100.0, "f1": 100.0}
    eos_only = lambda ds: [(i, np.array([1] + [0] * 31)) for i, _ in ds.as_numpy_iterator()]
    assert _evaluate("mtop", "test", eos_only, mtop) == {"em": 0.0, "f1": 0.0}
    out = _evaluate("retrosynthesis", "test", perfect)
    assert out["top1_accuracy"] == 100.0
    out = _evaluate("code_translation", "test", perfect)
    assert out["em"] == 100.0 and out["bleu"] == pytest.approx(100.0)


# ----------------------------------------------------------------------------- TFDS tasks

def test_squad_format_and_all_answer_metric():
    with tfds.testing.mock_data(num_examples=4):
        task = seqio.get_mixture_or_task("squad_v010_allanswers")
        raw = list(task.get_dataset(LENGTHS, split="validation", shuffle=False).as_numpy_iterator())
        assert len(raw) == 4
        ex = raw[0]
        assert ex["inputs_pretokenized"].decode().startswith("question: ")
        assert b" context: " in ex["inputs_pretokenized"]
        assert ex["targets_pretokenized"] == ex["answers"][0]
        answers = task.postprocess_fn("x", example=ex, is_target=True)
        assert answers == [a.decode() for a in ex["answers"]] and len(answers) > 1
        # a prediction equal to a later answer scores as a match (max over all answers)
        vocab = task.output_features["targets"].vocabulary
        by_index = [vocab.encode(e["answers"][-1].decode()) + [1] for e in raw]
        by_index = [np.pad(t, (0, LENGTHS["targets"] - len(t))) for t in by_index]  # as a decoder returns
        out = _evaluate("squad_v010_allanswers", "validation",
                        lambda ds: [(i, by_index[i]) for i, _ in ds.as_numpy_iterator()])
    assert out == {"em": 100.0, "f1": 100.0}


def test_unprepared_tfds_data_is_a_clear_error_not_a_download(tmp_path):
    seqio.set_tfds_data_dir_override(str(tmp_path))  # what --tfds_data_dir does
    try:
        with pytest.raises(UserError, match=r"squad/v1.1:3.0.0 is not prepared in .*prepare-data squad_v010_allanswers"):
            seqio.get_mixture_or_task("squad_v010_allanswers").get_dataset(LENGTHS, split="validation")
    finally:
        seqio.set_tfds_data_dir_override(None)


def test_squad_punctuation_padding_hand_checked():
    import tensorflow as tf
    ex = {"id": "1", "question": "What's 2+2?", "context": "It is 4.",
          "answers": {"text": ["4.", "four"], "answer_start": [6, 0]}}
    out = next(iter(ds_tasks.squad_format(tf.data.Dataset.from_tensors(ex)).as_numpy_iterator()))
    assert out["inputs"].decode() == "question: What ' s 2 + 2 ? context: It is 4 . "
    assert out["targets"].decode() == "4 . " and [a.decode() for a in out["answers"]] == ["4 . ", "four"]


def _fake_cnndm(self, split, **kwargs):
    import tensorflow as tf
    n = {"train": 40, "validation": 6, "test": 5}[split]
    return tf.data.Dataset.from_tensor_slices({
        "article": [f"Article {split.upper()} Nº {i}: Ünïcode TEXT." for i in range(n)],
        "highlights": [f"Summary {i} ." for i in range(n)],
        "id": [str(i) for i in range(n)], "publisher": ["cnn"] * n})


def test_cnndm_10k_subset_lowercase_and_splits(tmp_path, monkeypatch):
    monkeypatch.delenv("DOWNSTREAM_DATA_DIR", raising=False)
    monkeypatch.setenv("CNNDM_10K_SIZE", "7")
    with tfds.testing.mock_data(as_dataset_fn=_fake_cnndm):
        task = seqio.get_mixture_or_task("cnndm_10k")
        vocab = task.output_features["inputs"].vocabulary
        train = list(task.get_dataset(LENGTHS, split="train", shuffle=False).as_numpy_iterator())
        expected = fmt.subset_indices(40, size=7, seed=0)
        got = [vocab.decode(e["inputs"].tolist()) for e in train]
        assert got == [f"article train nº {i}: ünïcode text." for i in expected]
        assert len(list(task.get_dataset(LENGTHS, split="test", shuffle=False).as_numpy_iterator())) == 5
        # an indices file (Krishna et al.'s subset is defined by one) picks exactly those examples
        fmt.write_indices_file(tmp_path / "idx.txt", np.array([3, 0, 39]), comment="test subset")
        monkeypatch.setenv("CNNDM_10K_INDICES_FILE", str(tmp_path / "idx.txt"))
        train = list(task.get_dataset(LENGTHS, split="train", shuffle=False).as_numpy_iterator())
        assert [vocab.decode(e["targets"].tolist()) for e in train] == ["summary 0 .", "summary 3 .", "summary 39 ."]
        monkeypatch.setenv("CNNDM_10K_SIZE", "41")
        monkeypatch.delenv("CNNDM_10K_INDICES_FILE")
        with pytest.raises(UserError, match="cannot sample 41"):
            task.get_dataset(LENGTHS, split="train", shuffle=False)


def test_indices_file_that_is_a_directory_or_binary(tmp_path):
    with pytest.raises(UserError, match="is a directory"):
        fmt.read_indices_file(tmp_path)
    (tmp_path / "bin.txt").write_bytes(b"\xfe\xff\x00\x01")
    with pytest.raises(UserError, match="is not UTF-8 text"):
        fmt.read_indices_file(tmp_path / "bin.txt")


def test_subset_indices_and_indices_files(tmp_path):
    a = fmt.subset_indices(287113, seed=0)
    assert len(a) == 10000 == len(set(a.tolist())) and np.all(np.diff(a) > 0) and a[-1] < 287113
    assert np.array_equal(a, fmt.subset_indices(287113, seed=0))
    assert not np.array_equal(a, fmt.subset_indices(287113, seed=1))
    (tmp_path / "dup.txt").write_text("1\n2\n1\n")
    with pytest.raises(UserError, match="repeats"):
        fmt.read_indices_file(tmp_path / "dup.txt")
    (tmp_path / "big.txt").write_text("# header\n5\n\n99\n")
    with pytest.raises(UserError, match="outside"):
        fmt.subset_indices(50, indices_file=tmp_path / "big.txt")
    assert fmt.subset_indices(100, indices_file=tmp_path / "big.txt").tolist() == [5, 99]


# ----------------------------------------------------------------------------- SCAN

def test_scan_tasks_yield_offline_examples():
    exs = _examples("scan_length", "test", ds_tasks.FEATURE_LENGTHS["scan_length"])
    assert len(exs) == 3920
    longest = max(len(e["targets"]) for e in exs)
    assert longest == 49  # 48 actions, one token each, plus EOS: fits the 64-token feature length
    assert max(len(e["inputs"]) for e in exs) <= ds_tasks.FEATURE_LENGTHS["scan_length"]["inputs"]
    val = _examples("scan_simple", "validation", ds_tasks.FEATURE_LENGTHS["scan_simple"])
    assert len(val) == round(0.05 * 16728)


# ----------------------------------------------------------------------------- prepare-data

def test_prepare_data_without_network_is_one_line(tmp_path):
    env = subprocess_env()
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env[var] = "http://127.0.0.1:9"  # a closed port: no network, even on a connected machine
    env.pop("no_proxy", None), env.pop("NO_PROXY", None)
    for task, url in (("mtop", prepare.RELEASE_BASE + "/mtop/train.txt"),
                      ("squad", prepare.TFDS_URLS["squad"])):
        r = subprocess.run([sys.executable, "-m", "synthpre_jax.data.prepare", task, "--out", str(tmp_path / "o")],
                           env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, r.stderr
        lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1 and url in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()  # created for the attempt, empty: removed again
    # a bad --indices file fails before any network access
    r = subprocess.run([sys.executable, "-m", "synthpre_jax.data.prepare", "cnndm_10k", "--out",
                        str(tmp_path / "o"), "--indices", str(tmp_path / "none.txt")],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "indices file" in r.stderr and "cannot reach" not in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()


def test_prepare_data_from_a_mirror_verifies_counts(tmp_path, capsys):
    from synthpre_jax.cli import run_guarded
    mirror, out = tmp_path / "mirror", tmp_path / "out"
    for name in ("train.txt", "valid.txt", "test.txt"):
        _write(mirror / "mtop" / name, MTOP_LINES)
    assert run_guarded(prepare.main, ["mtop", "--out", str(out), "--source", str(mirror / "mtop")]) == 0
    printed = capsys.readouterr().out
    assert "train.txt: 2 examples (2 lines without exactly one tab are dropped)" in printed
    assert (out / "mtop" / "test.txt").read_text(encoding="utf-8") == (mirror / "mtop" / "test.txt").read_text(encoding="utf-8")
    # CodeXGLUE with the wrong number of examples: refused, nothing left behind
    for stem in fmt.CODEXGLUE_SPLIT_STEMS.values():
        _write(mirror / "cx" / (stem + ".java"), ["a();"])
        _write(mirror / "cx" / (stem + ".cs"), ["A();"])
    assert run_guarded(prepare.main, ["code_translation", "--out", str(out), "--source", str(mirror / "cx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "published count is 10300" in err[0]
    assert not (out / "code_translation").exists() and not (out / "code_translation.partial").exists()
    assert run_guarded(prepare.main, ["code_translation", "--out", str(out), "--source", str(mirror / "cx"),
                                      "--skip-count-check"]) == 0
    assert "warning: train has 1 examples" in capsys.readouterr().out
    assert (out / "code_translation" / "test.java-cs.txt.cs").is_file()
    assert run_guarded(prepare.main, ["mtopp", "--out", str(out)]) == 2
    assert "did you mean 'mtop'" in capsys.readouterr().err
