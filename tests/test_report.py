"""`synthpre report` on hand-made run directories with known numbers: the score is the
inference metric at the step of best validation accuracy; gain and % of benefit follow."""
import json
import math

import pytest

from synthpre_jax import report
from synthpre_jax.report import percent_of_benefit


def _run(root, task, init, seed, accs, metrics):
    d = root / "finetune" / task / init / f"seed{seed}"
    te = d / "training_eval" / task
    te.mkdir(parents=True)
    with open(te / "metrics.jsonl", "w") as f:
        for step, a in accs:
            f.write(json.dumps({"step": step, "accuracy": a, "loss": 1.0}) + "\n")
    ie = d / "inference_eval"
    ie.mkdir()
    with open(ie / f"{task}-metrics.jsonl", "w") as f:
        for step, m in metrics:
            f.write(json.dumps({"step": step, "em": m}) + "\n")
    return d


@pytest.fixture
def exp(tmp_path):
    # task a: best val acc at step 2 (tie with step 3 -> first max wins)
    _run(tmp_path, "a", "random", 0, [(1, .5), (2, .7), (3, .7)], [(1, 10.), (2, 20.), (3, 90.)])
    _run(tmp_path, "a", "random", 1, [(1, .6), (2, .5)], [(1, 30.), (2, 99.)])
    _run(tmp_path, "a", "natural", 0, [(1, .9)], [(1, 85.)])
    _run(tmp_path, "a", "set", 0, [(1, .5), (2, .8)], [(1, 0.), (2, 55.)])
    _run(tmp_path, "b", "random", 0, [(1, .5)], [(1, 40.)])
    _run(tmp_path, "b", "natural", 0, [(1, .5)], [(1, 60.)])
    _run(tmp_path, "b", "set", 0, [(1, .5)], [(1, 45.)])
    return tmp_path


def test_percent_of_benefit_formula():
    assert percent_of_benefit(55, 25, 85) == pytest.approx(50.0)
    assert percent_of_benefit(25, 25, 85) == 0.0
    assert math.isnan(percent_of_benefit(1, 2, 2))


def test_table_numbers(exp):
    t = report.build_table(report.find_runs([str(exp)]), "random", "natural")
    a = t["tasks"]["a"]
    assert a["random"]["scores"] == [20.0, 30.0] or sorted(a["random"]["scores"]) == [20.0, 30.0]
    assert a["random"]["mean"] == pytest.approx(25.0) and a["random"]["std"] == pytest.approx(5.0)
    assert a["set"]["mean"] == 55.0 and a["set"]["gain"] == pytest.approx(30.0)
    assert a["set"]["benefit"] == pytest.approx(50.0)          # (55-25)/(85-25)
    assert t["tasks"]["b"]["set"]["benefit"] == pytest.approx(25.0)   # (45-40)/(60-40)
    assert t["averages"]["set"]["benefit"] == pytest.approx(37.5)
    assert t["averages"]["natural"]["benefit"] == pytest.approx(100.0)


def test_cli_writes_markdown_csv_and_plots(exp, capsys):
    assert report.main([str(exp), "--natural", "natural"]) == 0
    md = (exp / "report.md").read_text()
    assert "55.00 ± 0.00 (n=1), +30.00, 50%" in md
    assert "| set |" in md and "37.50%" in md
    csv = (exp / "results.csv").read_text().splitlines()
    assert csv[0].startswith("task,init,metric,n,mean,std")
    assert (exp / "scores.png").stat().st_size > 1000
    assert (exp / "val_accuracy_a.png").stat().st_size > 1000


def test_no_runs_is_user_error(tmp_path):
    from synthpre_jax.errors import UserError
    with pytest.raises(UserError):
        report.find_runs([str(tmp_path)])


@pytest.mark.parametrize("flags, needle", [
    (["--natural", "naturl"], "--natural 'naturl' is not an initialisation of these runs (did you mean 'natural'?)"),
    (["--random", "rand0m"], "--random 'rand0m' is not an initialisation"),
])
def test_misspelled_init_name_is_user_error_and_writes_nothing(exp, flags, needle):
    from synthpre_jax.errors import UserError
    with pytest.raises(UserError) as e:
        report.main([str(exp)] + flags)
    assert needle in str(e.value) and "natural, random, set" in str(e.value)
    assert not (exp / "report.md").exists()


def test_one_run_dir_needs_out(exp, tmp_path_factory):
    from synthpre_jax.errors import UserError
    run = exp / "finetune" / "a" / "set" / "seed0"
    with pytest.raises(UserError, match="one fine-tuning run, not an experiment directory"):
        report.main([str(run)])
    assert not (run / "report.md").exists()
    out = tmp_path_factory.mktemp("one")
    assert report.main([str(run), "--out", str(out)]) == 0
    assert (out / "report.md").exists()


def test_unwritable_out_is_user_error(exp, tmp_path_factory):
    from synthpre_jax.errors import UserError
    blocker = tmp_path_factory.mktemp("x") / "a_file"
    blocker.write_text("")
    with pytest.raises(UserError, match="--out .*cannot be created: .*a_file is a file"):
        report.main([str(exp), "--out", str(blocker / "sub")])


def test_damaged_run_json_is_user_error(exp):
    from synthpre_jax.errors import UserError
    (exp / "finetune" / "a" / "set" / "seed0" / "run.json").write_text("{bad")
    with pytest.raises(UserError, match=r"run\.json is not readable JSON .*repair or remove it"):
        report.main([str(exp)])


def test_no_negative_zero_benefit():
    assert str(percent_of_benefit(36.0, 36.0, 27.0)) == "0.0"
