"""Grid runner: plans the exact commands, rejects malformed grids with one line, and resumes an
interrupted grid without redoing finished runs."""
import os

import pytest
import yaml

from conftest import TINY_BINDINGS
from synthpre_jax import experiment
from synthpre_jax.errors import UserError

TINY = [b for b in TINY_BINDINGS if not b.startswith(("MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS"))]


def _grid(tmp_path, steps=3):
    return {"name": "t", "out_dir": str(tmp_path / "out"), "model_gin": "models/t5_tiny.gin",
            "bindings": TINY + ["CHECKPOINTS_TO_KEEP = None"],
            "pretrain": [{"name": "copy", "task": "toy_copy", "steps": steps, "batch_size": 8,
                          "eval_period": steps, "feature_lengths": {"inputs": 12, "targets": 12},
                          "select": "last"}],
            "finetune": {"tasks": [{"name": "copy", "task": "toy_copy", "steps": steps, "batch_size": 8,
                                    "eval_period": steps, "feature_lengths": {"inputs": 12, "targets": 12},
                                    "bindings": ["train.infer_eval_dataset_cfg = None"]}],
                         "inits": [{"name": "random", "init": "from_scratch"},
                                   {"name": "copy", "init": "load_all_but_embed", "source": "copy"}],
                         "seeds": [0]}}


def test_plan_and_dry_run(tmp_path, capsys):
    runs = experiment.plan(_grid(tmp_path))
    assert [r.name for r in runs] == ["pretrain/copy", "finetune/copy/random/seed0", "finetune/copy/copy/seed0"]
    assert runs[2].source == "copy"
    assert experiment.run_grid(runs, dry_run=True) == 0
    out = capsys.readouterr().out
    assert "INITIAL_CHECKPOINT_PATH='" in out and "checkpoint_<selected>" in out
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("mutate,msg", [
    (lambda g: g["pretrain"][0].pop("steps"), "steps"),
    (lambda g: g["finetune"]["inits"][1].pop("source"), "source"),
    (lambda g: g["finetune"]["inits"][0].update(init="scratch"), "init must be one of"),
    (lambda g: g.update(pretrian=[]), "unknown key"),
    (lambda g: g["pretrain"][0].update(feature_lengths={"inputs": 4}), "targets"),
    (lambda g: g["pretrain"][0].update(steps="abc"), r"pretrain\[0\]\.steps must be an integer, got 'abc'"),
    (lambda g: g["pretrain"][0].update(feature_lengths={"inputs": "many", "targets": 4}),
     r"feature_lengths\.inputs must be an integer"),
    (lambda g: g["finetune"].update(seeds=0), r"finetune\.seeds must be a list of integers"),
    (lambda g: g["finetune"]["inits"].append({"name": "ws", "init": "weight_stats", "source": "copy",
                                              "scheme": "per_param_mean_sdt"}),
     r"finetune\.inits\[2\]\.scheme: unknown weight-stats scheme 'per_param_mean_sdt'"),
])
def test_malformed_grid(tmp_path, mutate, msg):
    g = _grid(tmp_path)
    mutate(g)
    p = tmp_path / "g.yaml"
    p.write_text(yaml.safe_dump(g))
    with pytest.raises(UserError, match=msg):
        experiment.plan(experiment.load_grid(str(p)))


def test_bad_yaml(tmp_path):
    p = tmp_path / "g.yaml"
    p.write_text("pretrain: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        experiment.load_grid(str(p))


def test_resume_skips_finished_runs(tmp_path, capsys):
    g = _grid(tmp_path)
    runs = experiment.plan(g)
    # "interrupt" the grid after the pre-training run
    assert experiment.run_grid(runs[:1]) == 0
    first_mtime = os.path.getmtime(os.path.join(runs[0].model_dir, "checkpoint_3"))
    capsys.readouterr()
    assert experiment.run_grid(runs) == 0
    out = capsys.readouterr().out
    assert "pretrain/copy: finished, skipped" in out
    assert os.path.getmtime(os.path.join(runs[0].model_dir, "checkpoint_3")) == first_mtime
    for r in runs[1:]:
        assert experiment.is_finished(r), r.name
    init = open(os.path.join(runs[2].model_dir, "init.json")).read()
    assert "load_all_but_embed" in init and "checkpoint_3" in open(os.path.join(runs[2].model_dir, "run.json")).read()
    capsys.readouterr()
    assert experiment.run_grid(runs) == 0
    assert capsys.readouterr().out.count("finished, skipped") == 3


@pytest.mark.parametrize("dry_run", [False, True])
def test_misspelled_task_fails_before_anything_is_written(tmp_path, dry_run):
    g = _grid(tmp_path)
    g["finetune"]["tasks"][0]["task"] = "toy_cpy"  # the last runs of the grid
    p = tmp_path / "g.yaml"
    p.write_text(yaml.safe_dump(g))
    with pytest.raises(UserError, match=r"grid run finetune/copy/random/seed0: unknown task or mixture "
                                        r"'toy_cpy' \(did you mean 'toy_copy'"):
        experiment.main(["--grid", str(p)] + (["--dry-run"] if dry_run else []))
    assert not (tmp_path / "out").exists()


def test_misspelled_macro_in_grid_bindings_fails_first(tmp_path):
    g = _grid(tmp_path)
    g["finetune"]["tasks"][0]["bindings"].append("DROPOUT_RAT = 0.0")
    p = tmp_path / "g.yaml"
    p.write_text(yaml.safe_dump(g))
    with pytest.raises(UserError, match=r"finetune/copy/random/seed0: gin macro DROPOUT_RAT"):
        experiment.main(["--grid", str(p)])
    assert not (tmp_path / "out").exists()


def test_out_under_a_file_is_refused_in_dry_run_too(tmp_path):
    p = tmp_path / "g.yaml"
    p.write_text(yaml.safe_dump(_grid(tmp_path)))
    (tmp_path / "file").write_text("")
    for extra in ([], ["--dry-run"]):
        with pytest.raises(UserError, match="cannot be created: .*file is a file, not a directory"):
            experiment.main(["--grid", str(p), "--out", str(tmp_path / "file" / "out")] + extra)


def test_grid_file_that_is_a_directory_or_not_utf8(tmp_path):
    with pytest.raises(UserError, match="is a directory"):
        experiment.load_grid(str(tmp_path))
    p = tmp_path / "g.yaml"
    p.write_bytes("name: d\xe9mo\n".encode("latin-1"))
    with pytest.raises(UserError, match="is not UTF-8 text"):
        experiment.load_grid(str(p))


def test_missing_source_checkpoint_fails_before_anything_is_written(tmp_path):
    g = _grid(tmp_path)
    g["finetune"]["inits"][1]["source"] = str(tmp_path / "no_such_ckpt")
    p = tmp_path / "g.yaml"
    p.write_text(yaml.safe_dump(g))
    with pytest.raises(UserError, match="source checkpoint .*no_such_ckpt does not exist"):
        experiment.main(["--grid", str(p)])
    assert not (tmp_path / "out").exists()
