"""`synthpre report EXP_DIR...`: the paper's tables and plots from finished fine-tuning runs.

Each fine-tuning run's score is the inference metric at the step of best teacher-forced
validation accuracy (the paper's protocol, spec 5; `select.select_checkpoint`). Scores are
averaged over seeds; "% of benefit" is (method - random) / (natural - random), averaged over
tasks (spec 5: inferred from the paper, not in the authors' code).
"""
from __future__ import annotations

import csv
import json
import math
import os
import statistics
import sys
from typing import Any, Optional

from synthpre_jax import errors, paths
from synthpre_jax.errors import UserError

RUN_META = "run.json"


def find_runs(exp_dirs: list[str]) -> list[dict]:
    """Fine-tuning run directories (they hold training_eval/) with their grid metadata."""
    runs = []
    for exp in exp_dirs:
        if os.path.isfile(exp):
            raise UserError(f"experiment directory {exp!r} is a file; give a directory")
        if not os.path.isdir(exp):
            raise UserError(f"experiment directory {exp!r} not found")
        for root, dirs, _ in os.walk(exp):
            if "training_eval" in dirs and os.sep + "pretrain" + os.sep not in root + os.sep:
                meta_path = os.path.join(root, RUN_META)
                meta = {}
                if os.path.exists(meta_path):
                    meta = _read_json(meta_path)
                parts = os.path.relpath(root, exp).split(os.sep)
                # default layout: finetune/<task>/<init>/seed<k>
                if len(parts) >= 4 and parts[0] == "finetune":
                    meta.setdefault("task_name", parts[1])
                    meta.setdefault("init", parts[2])
                    meta.setdefault("seed", parts[3])
                meta.setdefault("task_name", os.path.basename(os.path.dirname(root)) or root)
                meta.setdefault("init", os.path.basename(root))
                meta["dir"] = root
                runs.append(meta)
                dirs[:] = []
    if not runs:
        raise UserError(f"no finished fine-tuning runs (directories with training_eval/) under {exp_dirs}")
    return runs


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UserError(f"{path} is not readable JSON ({str(e).splitlines()[0][:120]}); "
                        "repair or remove it") from None
    if not isinstance(value, dict):
        raise UserError(f"{path} must hold a JSON object; repair or remove it")
    return value


def score_run(run: dict) -> Optional[dict]:
    """{'score', 'step', 'metric', 'max_val_accuracy'} at the step of best validation accuracy."""
    from synthpre_jax.select import select_checkpoint
    sel = select_checkpoint(run["dir"])
    metric = run.get("metric")
    for task, t in sel.get("tasks", {}).items():
        metrics = t.get("max_val_acc_metrics") or {}
        if not metrics:
            # no inference eval: fall back to teacher-forced accuracy (labelled as such)
            return {"score": 100.0 * t["max_accuracy"], "step": t["max_accuracy_step"],
                    "metric": "val_token_accuracy", "max_val_accuracy": t["max_accuracy"]}
        name = _pick_metric(metrics, metric)
        return {"score": float(metrics[name]), "step": t["max_accuracy_step"], "metric": name,
                "max_val_accuracy": t["max_accuracy"]}
    return None


def _pick_metric(metrics: dict, wanted: Optional[str]) -> str:
    if wanted:
        for k in metrics:
            if k == wanted or k.endswith("/" + wanted):
                return k
        raise UserError(f"metric {wanted!r} not logged; logged: {sorted(metrics)}")
    return sorted(metrics)[0]


def percent_of_benefit(method: float, random: float, natural: float) -> float:
    """(method - random) / (natural - random) * 100; NaN when natural == random."""
    denom = natural - random
    return float("nan") if denom == 0 else 100.0 * (method - random) / denom + 0.0  # no "-0%"


def build_table(runs: list[dict], random_init: str = "random", natural: Optional[str] = None) -> dict:
    """{task: {init: {'mean', 'std', 'n', 'scores', 'metric'}}} plus gains and % of benefit."""
    table: dict[str, dict[str, Any]] = {}
    for r in runs:
        s = score_run(r)
        if s is None:
            continue
        cell = table.setdefault(r["task_name"], {}).setdefault(r["init"], {"scores": [], "metric": s["metric"]})
        cell["scores"].append(s["score"])
    for task, inits in table.items():
        for init, c in inits.items():
            c["n"] = len(c["scores"])
            c["mean"] = statistics.fmean(c["scores"])
            c["std"] = statistics.pstdev(c["scores"]) if c["n"] > 1 else 0.0
        rand = inits.get(random_init, {}).get("mean")
        nat = inits.get(natural, {}).get("mean") if natural else None
        for init, c in inits.items():
            c["gain"] = None if rand is None else c["mean"] - rand
            c["benefit"] = None if (rand is None or nat is None) else percent_of_benefit(c["mean"], rand, nat)
    inits_all = sorted({i for t in table.values() for i in t})
    averages = {}
    for init in inits_all:
        vals = [table[t][init]["mean"] for t in table if init in table[t]]
        bens = [table[t][init]["benefit"] for t in table if init in table[t] and table[t][init]["benefit"] is not None
                and not math.isnan(table[t][init]["benefit"])]
        averages[init] = {"mean": statistics.fmean(vals) if vals else None,
                          "benefit": statistics.fmean(bens) if bens else None}
    return {"tasks": table, "averages": averages, "random_init": random_init, "natural": natural}


def to_markdown(t: dict, title: str = "Results") -> str:
    tasks = sorted(t["tasks"])
    inits = sorted({i for x in t["tasks"].values() for i in x}, key=lambda i: (i != t["random_init"], i))
    lines = [f"# {title}", "",
             "Score = inference metric at the step of best teacher-forced validation accuracy "
             "(mean ± std over seeds, n seeds). Gain is over random init. % of benefit = "
             "(method − random) / (natural − random)" + (f", natural = `{t['natural']}`." if t["natural"] else
                                                          " (no natural reference given)."), ""]
    head = "| init | " + " | ".join(f"{x} ({_metric(t, x)})" for x in tasks) + " | average | avg % of benefit |"
    lines += [head, "|" + "---|" * (len(tasks) + 3)]
    for init in inits:
        cells = []
        for task in tasks:
            c = t["tasks"][task].get(init)
            if c is None:
                cells.append("–")
                continue
            s = f"{c['mean']:.2f} ± {c['std']:.2f} (n={c['n']})"
            if c["gain"] is not None and init != t["random_init"]:
                s += f", {c['gain']:+.2f}"
            if c["benefit"] is not None and not math.isnan(c["benefit"]):
                s += f", {c['benefit']:.0f}%"
            cells.append(s)
        av = t["averages"][init]
        lines.append(f"| {init} | " + " | ".join(cells) + f" | {_fmt(av['mean'])} | "
                     f"{_fmt(av['benefit'], '%')} |")
    return "\n".join(lines) + "\n"


def _metric(t, task):
    return next(iter(t["tasks"][task].values()))["metric"]


def _fmt(v, suffix=""):
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}{suffix}"


def write_csv(t: dict, path: str) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["task", "init", "metric", "n", "mean", "std", "gain_over_random", "percent_of_benefit", "scores"])
        for task, inits in sorted(t["tasks"].items()):
            for init, c in sorted(inits.items()):
                w.writerow([task, init, c["metric"], c["n"], c["mean"], c["std"], c["gain"], c["benefit"],
                            " ".join(f"{s:.4f}" for s in c["scores"])])


def plot(runs: list[dict], t: dict, out_dir: str) -> list[str]:
    """validation-accuracy curves per init (mean over seeds) and a bar chart of scores."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from synthpre_jax.summaries import read_jsonl
    paths = []
    for task in sorted(t["tasks"]):
        fig, ax = plt.subplots(figsize=(6, 4))
        by_init: dict[str, list[list[tuple[int, float]]]] = {}
        for r in runs:
            if r["task_name"] != task:
                continue
            te = os.path.join(r["dir"], "training_eval")
            for sub in sorted(os.listdir(te)) if os.path.isdir(te) else []:
                pts = [(m["step"], m["accuracy"]) for m in read_jsonl(os.path.join(te, sub, "metrics.jsonl"))]
                if pts:
                    by_init.setdefault(r["init"], []).append(sorted(pts))
        for init, curves in sorted(by_init.items()):
            steps = sorted({s for c in curves for s, _ in c})
            mean = [statistics.fmean([dict(c)[s] for c in curves if s in dict(c)]) for s in steps]
            ax.plot(steps, mean, marker="o", label=init)
        ax.set_xlabel("fine-tuning step")
        ax.set_ylabel("validation token accuracy")
        ax.set_title(f"{task}: validation accuracy by initialisation")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        p = os.path.join(out_dir, f"val_accuracy_{task}.png")
        fig.tight_layout()
        fig.savefig(p, dpi=120)
        plt.close(fig)
        paths.append(p)
    tasks = sorted(t["tasks"])
    inits = sorted({i for x in t["tasks"].values() for i in x}, key=lambda i: (i != t["random_init"], i))
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(5, 4 * len(tasks)), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        cells = [t["tasks"][task].get(i) for i in inits]
        ax.bar(range(len(inits)), [c["mean"] if c else 0 for c in cells],
               yerr=[c["std"] if c else 0 for c in cells], capsize=3,
               color=["#888888" if i == t["random_init"] else "#3b75af" for i in inits])
        ax.set_xticks(range(len(inits)))
        ax.set_xticklabels(inits, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{task} ({_metric(t, task)})")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    p = os.path.join(out_dir, "scores.png")
    fig.savefig(p, dpi=120)
    plt.close(fig)
    paths.append(p)
    return paths


def _check_init_names(runs: list[dict], args, natural: Optional[str]) -> None:
    """A misspelled --random or --natural would leave the gain and benefit columns empty
    without a word; the names must be initialisations the runs have."""
    inits = sorted({r["init"] for r in runs})
    for flag, name, given in (("--random", args.random, args.random != "random"),
                              ("--natural", args.natural, args.natural is not None)):
        if given and name not in inits:
            raise UserError(f"{flag} {name!r} is not an initialisation of these runs"
                            f"{errors.did_you_mean(name, inits)}; they have: {', '.join(inits)}")
    if args.random not in inits:
        print(f"warning: no runs with init {args.random!r}: no gain or % of benefit "
              "(name the random-init rows with --random)", file=sys.stderr)
    elif natural is not None and args.natural is None and natural not in inits:
        print(f"warning: the grid's natural init {natural!r} has no finished runs: "
              "no % of benefit", file=sys.stderr)


def main(argv: list[str]) -> int:
    p = errors.ArgumentParser(prog="synthpre report", description=__doc__.split("\n\n")[0])
    p.add_argument("exp_dirs", nargs="+")
    p.add_argument("--out", default=None, help="where report.md, results.csv and plots go (default: first EXP_DIR)")
    p.add_argument("--random", default="random", help="name of the random-init rows")
    p.add_argument("--natural", default=None, help="name of the natural-pre-training init rows")
    p.add_argument("--title", default="Fine-tuning results")
    args = p.parse_args(argv)
    if args.out is None and os.path.isdir(os.path.join(args.exp_dirs[0], "training_eval")):
        raise UserError(f"{args.exp_dirs[0]} is one fine-tuning run, not an experiment directory: "
                        "pass the experiment directory, or --out DIR to report this run alone")
    if args.out is not None:
        paths.check_dir_target(args.out, "--out")
    runs = find_runs(args.exp_dirs)
    natural = args.natural
    if natural is None:
        grid_meta = os.path.join(args.exp_dirs[0], "grid.json")
        if os.path.exists(grid_meta):
            natural = _read_json(grid_meta).get("natural")
    _check_init_names(runs, args, natural)
    table = build_table(runs, args.random, natural)
    out = args.out or args.exp_dirs[0]
    os.makedirs(out, exist_ok=True)  # creatable: checked above (--out) or exists (EXP_DIR)
    md = to_markdown(table, args.title)
    pngs = plot(runs, table, out)
    md += "\n" + "\n".join(f"![{os.path.basename(x)}]({os.path.basename(x)})" for x in pngs) + "\n"
    with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as f:
        f.write(md)
    write_csv(table, os.path.join(out, "results.csv"))
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(table, f, indent=1)
    print(md)
    print(f"wrote {os.path.join(out, 'report.md')}, results.csv, results.json and {len(pngs)} plots")
    return 0


if __name__ == "__main__":
    from synthpre_jax.cli import run_guarded
    sys.exit(run_guarded(main, sys.argv[1:]))
