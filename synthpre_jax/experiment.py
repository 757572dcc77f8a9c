"""`synthpre experiment --grid FILE`: pre-train -> select checkpoint -> fine-tune, as a grid.

A grid is a small YAML file (see gin_configs/experiments/*.yaml). Every run is an ordinary
`synthpre train` command in its own MODEL_DIR, so a grid is resumable for free: a run whose
final checkpoint exists is skipped, an interrupted one continues from its latest checkpoint.
`--dry-run` prints the commands without running anything.

    name: demo
    out_dir: demo_runs
    model_gin: models/t5_tiny.gin
    bindings: ["network.T5Config.dropout_rate = 0.0"]      # for every run
    pretrain:
      - {name: set, task: synthpre_set_tiny, steps: 300, batch_size: 32,
         feature_lengths: {inputs: 48, targets: 48}, select: max_accuracy}
    finetune:
      tasks:
        - {name: scan, task: scan_simple, steps: 400, batch_size: 32,
           feature_lengths: {inputs: 32, targets: 64}, metric: accuracy}
      inits:
        - {name: random, init: from_scratch}
        - {name: set, init: load_all_but_embed, source: set}
        - {name: set_stats, init: weight_stats, scheme: per_param_mean_std, source: set}
        - {name: ln_0.4, init: constant_preattn_ln, value: 0.4}
      seeds: [0]
    natural: pydoc            # optional: the init whose runs are the natural reference
"""
from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
import time
from typing import Any, Optional

from synthpre_jax import errors, paths
from synthpre_jax.errors import UserError

_INIT_MODES = ("from_scratch", "load", "load_all_but_embed", "weight_stats", "constant_preattn_ln")
_SELECT = ("last", "max_accuracy", "first_99")


@dataclasses.dataclass
class Run:
    """One `synthpre train` invocation of the grid."""
    kind: str                  # 'pretrain' | 'finetune'
    name: str                  # e.g. 'pretrain/set' or 'finetune/scan/set/seed0'
    model_dir: str
    steps: int
    argv: list
    source: Optional[str] = None   # pretrain name whose selected checkpoint this run needs
    meta: dict = dataclasses.field(default_factory=dict)

    def command(self) -> str:
        return "synthpre train " + " ".join(shlex.quote(a) for a in self.argv)


def load_grid(path: str) -> dict:
    import yaml
    if not os.path.exists(path):
        raise UserError(f"grid file {path!r} not found")
    if os.path.isdir(path):
        raise UserError(f"grid file {path!r} is a directory; give a YAML file")
    try:
        with open(path, encoding="utf-8") as f:
            grid = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise UserError(f"grid file {path!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"grid file {path!r} is not UTF-8 text ({e.reason} at byte {e.start}); "
                        "save it as UTF-8") from None
    if not isinstance(grid, dict):
        raise UserError(f"grid file {path!r} must be a mapping with 'pretrain' and/or 'finetune'")
    unknown = set(grid) - {"name", "out_dir", "model_gin", "bindings", "pretrain", "finetune", "natural", "gin_files"}
    if unknown:
        raise UserError(f"grid file {path!r}: unknown key(s) {sorted(unknown)}")
    return grid


def _require(d: dict, key: str, where: str) -> Any:
    if not isinstance(d, dict):
        raise UserError(f"grid: {where} must be a mapping (key: value, ...)")
    if key not in d:
        raise UserError(f"grid: {where} needs '{key}'")
    return d[key]


def _int(value: Any, where: str) -> int:
    """A whole number from the grid, or one clear line naming the field."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UserError(f"grid: {where} must be an integer, got {value!r}")
    try:
        number = float(value) if isinstance(value, str) else value
        if number != int(number):
            raise ValueError
        return int(number)
    except (ValueError, OverflowError):
        raise UserError(f"grid: {where} must be an integer, got {value!r}") from None


def _lengths(d: dict, where: str) -> str:
    fl = _require(d, "feature_lengths", where)
    if not isinstance(fl, dict) or not {"inputs", "targets"} <= set(fl):
        raise UserError(f"grid: {where}.feature_lengths needs 'inputs' and 'targets'")
    return "{'inputs': %d, 'targets': %d}" % (_int(fl["inputs"], f"{where}.feature_lengths.inputs"),
                                              _int(fl["targets"], f"{where}.feature_lengths.targets"))


def _base_argv(grid: dict, run_gin: str, spec: dict, where: str, model_dir: str, seed: int) -> list:
    steps = _int(_require(spec, "steps", where), f"{where}.steps")
    if steps < 1:
        raise UserError(f"grid: {where}.steps must be >= 1")
    argv = [f"--gin_file={grid.get('model_gin', 'models/t5_tiny.gin')}", f"--gin_file={run_gin}"]
    argv += [f"--gin_file={g}" for g in grid.get("gin_files", [])]
    argv += [f"--gin.MIXTURE_OR_TASK_NAME='{_require(spec, 'task', where)}'",
             f"--gin.TASK_FEATURE_LENGTHS={_lengths(spec, where)}",
             f"--gin.TRAIN_STEPS={steps}",
             f"--gin.BATCH_SIZE={_int(spec.get('batch_size', 32), f'{where}.batch_size')}",
             f"--gin.MODEL_DIR='{model_dir}'", f"--gin.RANDOM_SEED={seed}"]
    period = _int(spec.get("eval_period", max(steps // 10, 1)), f"{where}.eval_period")
    argv += [f"--gin.EVAL_PERIOD={period}",
             f"--gin.EVAL_STEPS={_int(spec.get('eval_steps', 4), f'{where}.eval_steps')}",
             "--gin.train.stats_period="
             f"{_int(spec.get('stats_period', max(period // 2, 1)), f'{where}.stats_period')}"]
    for b in list(grid.get("bindings", [])) + list(spec.get("bindings", [])):
        argv.append(f"--gin_bindings={b}")
    return argv


def plan(grid: dict, out_dir: Optional[str] = None) -> list[Run]:
    """Every run of the grid, pre-training first, with its exact command line."""
    out = os.path.abspath(out_dir or grid.get("out_dir", "experiment_runs"))
    runs: list[Run] = []
    pre_names = set()
    for i, p in enumerate(grid.get("pretrain", []) or []):
        where = f"pretrain[{i}]"
        name = str(_require(p, "name", where))
        if p.get("select", "max_accuracy") not in _SELECT:
            raise UserError(f"grid: {where}.select must be one of {_SELECT}")
        pre_names.add(name)
        d = os.path.join(out, "pretrain", name)
        argv = _base_argv(grid, p.get("run_gin", "runs/pretrain.gin"), p, where, d,
                          _int(p.get("seed", 0), f"{where}.seed"))
        steps = _int(p["steps"], f"{where}.steps")
        argv.append(f"--gin.CHECKPOINT_PERIOD="
                    f"{_int(p.get('eval_period', max(steps // 10, 1)), f'{where}.eval_period')}")
        runs.append(Run("pretrain", f"pretrain/{name}", d, steps, argv,
                        meta={"select": p.get("select", "max_accuracy"), "task": p["task"]}))
    ft = grid.get("finetune") or {}
    if not isinstance(ft, dict):
        raise UserError("grid: finetune must be a mapping with 'tasks', 'inits' and 'seeds'")
    seeds = ft.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds:
        raise UserError(f"grid: finetune.seeds must be a list of integers, e.g. [0, 1, 2], got {seeds!r}")
    seeds = [_int(x, "finetune.seeds") for x in seeds]
    for t_i, t in enumerate(ft.get("tasks", []) or []):
        tw = f"finetune.tasks[{t_i}]"
        tname = str(_require(t, "name", tw))
        for i_i, init in enumerate(ft.get("inits", []) or []):
            iw = f"finetune.inits[{i_i}]"
            iname = str(_require(init, "name", iw))
            mode = _require(init, "init", iw)
            if mode not in _INIT_MODES:
                raise UserError(f"grid: {iw}.init must be one of {_INIT_MODES}, got {mode!r}")
            src = init.get("source")
            if mode in ("load", "load_all_but_embed", "weight_stats") and not src:
                raise UserError(f"grid: {iw} ({mode}) needs 'source' (a pretrain name or a checkpoint path)")
            for seed in seeds:
                d = os.path.join(out, "finetune", tname, iname, f"seed{seed}")
                argv = _base_argv(grid, t.get("run_gin", "runs/finetune.gin"), t, tw, d, int(seed))
                argv += [f"--gin.init_modes.InitConfig.mode='{mode}'"]
                if mode == "weight_stats":
                    from synthpre_jax.weight_stats_groups import resolve_scheme
                    scheme = _require(init, "scheme", iw)
                    try:
                        resolve_scheme(scheme)
                    except UserError as e:
                        raise UserError(f"grid: {iw}.scheme: {e}") from None
                    argv += [f"--gin.init_modes.InitConfig.scheme='{scheme}'"]
                if mode == "constant_preattn_ln":
                    argv += [f"--gin.init_modes.InitConfig.value={float(_require(init, 'value', iw))!r}"]
                if "learning_rate" in t:
                    argv += [f"--gin.LEARNING_RATE={float(t['learning_rate'])!r}"]
                source, path_source = None, None
                if src:
                    if src in pre_names:
                        source = src  # filled in after pre-training is selected
                    else:
                        argv += [f"--gin.INITIAL_CHECKPOINT_PATH='{src}'"]
                        path_source = src
                runs.append(Run("finetune", f"finetune/{tname}/{iname}/seed{seed}", d,
                                _int(t["steps"], f"{tw}.steps"), argv,
                                source=source, meta={"task": t["task"], "task_name": tname, "init": iname,
                                                     "seed": int(seed), "metric": t.get("metric"),
                                                     **({"init_source": path_source}
                                                        if path_source else {})}))
    if not runs:
        raise UserError("grid has no runs: add 'pretrain' and/or 'finetune.tasks' + 'finetune.inits'")
    return runs


def check_runs(runs: list[Run]) -> None:
    """Parse every run's gin config as `synthpre train` will and resolve its task, before
    anything is written or trained: a misspelled task or binding in the grid's last fine-tuning
    run should fail now, not after an hour of pre-training."""
    import gin

    from synthpre_jax import gin_utils
    from synthpre_jax import train as train_mod
    from synthpre_jax.data import dataset

    train_mod._register_configurables()
    for run in runs:
        src = run.meta.get("init_source")
        if src and not os.path.exists(os.path.expanduser(src)):
            raise UserError(f"grid run {run.name}: source checkpoint {src} does not exist; give a "
                            "pretrain name of the grid or an existing checkpoint path")
        argv = list(run.argv)
        if run.source:  # the selected pre-training checkpoint is only known after pre-training
            argv.append("--gin.INITIAL_CHECKPOINT_PATH='<selected>'")
        gin.clear_config()
        try:
            args = train_mod.parse_args(argv)
            gin_utils.parse_gin(args.gin_file, args.gin_bindings, args.gin_search_paths)
            dataset.import_task_modules(_macro("MIXTURE_OR_TASK_MODULE"))
            name = _macro("MIXTURE_OR_TASK_NAME")
            if isinstance(name, str):  # a run gin of the user's may route the task differently
                dataset.get_task_or_mixture(name)
        except UserError as e:
            raise UserError(f"grid run {run.name}: {str(e).splitlines()[0]}") from None
        finally:
            gin.clear_config()


def _macro(name: str) -> Any:
    """A gin macro's value, or None where the run's gin files do not define it."""
    import gin

    try:
        return gin.query_parameter(f"%{name}")
    except ValueError:
        return None


def _check_out_dir(out: str) -> None:
    """--out must be a directory we can create or write (checked in --dry-run too)."""
    paths.check_dir_target(out, "output directory")
    if os.path.isdir(out) and os.path.exists(os.path.join(out, "training_eval")):
        raise UserError(f"output directory {out} is a training run, not an experiment directory; "
                        "choose another --out")


def is_finished(run: Run) -> bool:
    return os.path.isdir(os.path.join(run.model_dir, f"checkpoint_{run.steps}")) and not any(
        n.startswith(f"checkpoint_{run.steps}.") for n in os.listdir(run.model_dir))


def selected_checkpoint(run: Run) -> str:
    """The pre-training checkpoint fine-tuning starts from (spec 4.3: first >= 99% or max acc)."""
    rule = run.meta.get("select", "max_accuracy")
    step = run.steps
    if rule != "last":
        from synthpre_jax.select import select_checkpoint
        sel = select_checkpoint(run.model_dir)
        key = "first_99_step" if rule == "first_99" else "max_accuracy_step"
        steps = [t.get(key) for t in sel.get("tasks", {}).values() if t.get(key) is not None]
        if steps:
            step = max(steps)  # a mixture: the latest of its tasks' choices
    path = os.path.join(run.model_dir, f"checkpoint_{step}")
    if not os.path.isdir(path):
        raise UserError(f"selected pre-training step {step} of {run.model_dir} has no checkpoint; "
                        "make CHECKPOINT_PERIOD equal to EVAL_PERIOD")
    return path


def run_grid(runs: list[Run], dry_run: bool = False, stream=None) -> int:
    """Run (or print) the grid; returns the number of failed runs."""
    from synthpre_jax import train as train_mod
    from synthpre_jax.cli import run_guarded
    import gin
    stream = stream or sys.stdout
    selected: dict[str, str] = {}
    failures = 0
    for k, run in enumerate(runs, 1):
        argv = list(run.argv)
        if run.source:
            pre = next(r for r in runs if r.kind == "pretrain" and r.name == f"pretrain/{run.source}")
            if run.source not in selected:
                selected[run.source] = (os.path.join(pre.model_dir, "checkpoint_<selected>") if dry_run
                                        else selected_checkpoint(pre))
            argv.append(f"--gin.INITIAL_CHECKPOINT_PATH='{selected[run.source]}'")
        header = f"[{k}/{len(runs)}] {run.name}"
        if dry_run:
            stream.write(header + "\n  synthpre train " + " ".join(shlex.quote(a) for a in argv) + "\n")
            continue
        if is_finished(run):
            stream.write(f"{header}: finished, skipped\n")
            stream.flush()
            continue
        os.makedirs(run.model_dir, exist_ok=True)
        with open(os.path.join(run.model_dir, "run.json"), "w", encoding="utf-8") as f:
            json.dump({"name": run.name, "kind": run.kind, **run.meta,
                       "init_checkpoint": selected.get(run.source) if run.source else None}, f, indent=1)
        stream.write(f"{header} -> {run.model_dir}\n")
        stream.flush()
        t0 = time.time()
        gin.clear_config()
        code = run_guarded(train_mod.main, argv)
        gin.clear_config()
        if code == train_mod.PREEMPTED_EXIT_CODE:
            stream.write(f"{header}: preempted (checkpoint saved); rerun the same command to continue\n")
            stream.flush()
            return failures + 1
        if code != 0:
            failures += 1
            stream.write(f"{header}: FAILED (exit {code})\n")
            if run.kind == "pretrain":
                raise UserError(f"pre-training run {run.name} failed; fix it before fine-tuning")
        else:
            stream.write(f"{header}: done in {time.time() - t0:.0f}s\n")
        stream.flush()
    return failures


def main(argv: list[str]) -> int:
    p = errors.ArgumentParser(prog="synthpre experiment", description=__doc__.split("\n\n")[0])
    p.add_argument("--grid", required=True, help="grid YAML file")
    p.add_argument("--out", default=None, help="output directory (overrides the grid's out_dir)")
    p.add_argument("--dry-run", action="store_true", help="print the runs and commands only")
    args = p.parse_args(argv)
    grid = load_grid(args.grid)
    runs = plan(grid, args.out)
    out = os.path.abspath(args.out or grid.get("out_dir", "experiment_runs"))
    _check_out_dir(out)
    check_runs(runs)
    if not args.dry_run:
        os.makedirs(out, exist_ok=True)  # creatable: _check_out_dir made sure
        with open(os.path.join(out, "grid.json"), "w", encoding="utf-8") as f:
            json.dump(grid, f, indent=1)
    failures = run_grid(runs, dry_run=args.dry_run)
    if not args.dry_run:
        print(f"grid {grid.get('name', args.grid)}: {len(runs) - failures}/{len(runs)} runs ok; "
              f"report: synthpre report {out}")
    return 1 if failures else 0


if __name__ == "__main__":
    from synthpre_jax.cli import run_guarded
    sys.exit(run_guarded(main, sys.argv[1:]))
