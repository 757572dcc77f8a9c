"""Input pipeline against the training step: examples/s, padding, and time spent waiting.

    python benchmarks/input_pipeline.py [--tasks synthpre_set,synthpre_identity,synthpre_induct]
        [--inputs_length 512 --targets_length 512] [--batch 2] [--rounds 3] [--loop_steps 6]
        [--smoke]

Three measurements, all in one process:
  pipeline   examples/s of the full seqio pipeline as training uses it
             (`synthpre_jax.data.dataset.get_dataset`: on-the-fly synthetic source, EOS,
             trimming, `EncDecFeatureConverter` with packing off and on, batching, prefetch,
             numpy iteration), per task; for packed rows an example is a segment. Also the
             non-padding fraction of the tokens (padding waste) and the pipeline's process
             CPU seconds per batch (on a CPU host that is taken from the training step).
             Without packing, the rows' lengths also give the padding waste: the model FLOPs
             of batches of --trim_group rows cut to their longest row (rounded up to
             --trim_bucket), relative to the full feature lengths (same loss; see
             trim_estimate).
  ratio      for the first task, pulling batches alternates with t5_small train steps on
             real batches of the same shapes (common.interleave): pipeline examples/s over
             the step's consumption in examples/s, median of per-round ratios.
  waiting    a loop that mirrors synthpre_jax/train.py (next(iterator) ->
             make_global_batch -> Trainer.train_step dispatched asynchronously, metrics
             fetched every `stats_period` steps): the time in next() + make_global_batch
             counts as waiting only when the previous step had already finished when the
             data arrived (the device sat idle); the fraction is of the loop's wall time.
             The same loop with a block after every step (no overlap) gives an upper bound.
             Each loop starts after its iterator's first batch (start-up, reported apart).
             The jitted step's compile-cache size before and after shows recompilation.

Writes benchmarks/results/input_pipeline.json (--smoke writes to {tmp}/synthpre_benchmarks_smoke/).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import train_step  # noqa: E402


def dataset_iter(task: str, lengths: dict, batch: int, pack: bool, seed: int = 0,
                 start_batch: int = 0) -> Iterator[dict]:
    """The training data iterator exactly as train.py makes it (one host)."""
    from synthpre_jax.data import dataset as data
    cfg = data.DatasetConfig(mixture_or_task_name=task, task_feature_lengths=lengths, split="train",
                             batch_size=batch, shuffle=True, seed=seed, pack=pack)
    return data.get_dataset(cfg, 0, 1, batch, num_epochs=None, start_batch=start_batch).as_numpy_iterator()


def examples_in(batch: dict) -> int:
    """Task examples in a batch: rows, or segments of packed rows."""
    seg = batch.get("decoder_segment_ids")
    if seg is None:
        return int(batch["decoder_target_tokens"].shape[0])
    return int(seg.max(axis=1).sum())


def nonpadding(batch: dict) -> tuple[int, int, int, int]:
    enc, tgt = batch["encoder_input_tokens"], batch["decoder_target_tokens"]
    return int((enc > 0).sum()), enc.size, int((tgt > 0).sum()), tgt.size


def pipeline_rate(it: Iterator[dict], batches: int) -> dict:
    """Pull `batches` batches: examples/s, rows/s, CPU s per batch, padding, row lengths."""
    import numpy as np
    n_ex = 0
    enc_nz = enc_all = tgt_nz = tgt_all = 0
    lengths: list = []
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(batches):
        b = next(it)
        n_ex += examples_in(b)
        a, b_, c, d = nonpadding(b)
        enc_nz, enc_all, tgt_nz, tgt_all = enc_nz + a, enc_all + b_, tgt_nz + c, tgt_all + d
        lengths.append(np.stack([(b["encoder_input_tokens"] > 0).sum(1),
                                 (b["decoder_target_tokens"] > 0).sum(1)], axis=1))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"batches": batches, "examples": n_ex, "wall_s": wall, "cpu_s": cpu,
            "examples_per_s": n_ex / wall, "batches_per_s": batches / wall,
            "cpu_s_per_batch": cpu / batches, "examples_per_row": n_ex / max(batches, 1) / b["decoder_target_tokens"].shape[0],
            "nonpadding_fraction_inputs": enc_nz / enc_all, "nonpadding_fraction_targets": tgt_nz / tgt_all,
            "_row_lengths": np.concatenate(lengths)}


def trim_estimate(row_lengths: Any, cfg: Any, lengths: dict, group: int, bucket: int) -> dict:
    """What trimming unpacked batches to their longest row would save (the padding waste).

    T5's masks make a padded example's loss and gradients independent of how much padding
    follows it (tests/test_network.py checks the logits), so a batch of `group` rows cut to
    its longest row, rounded up to a multiple of `bucket` (a few fixed shapes: few compiles),
    trains on the same examples with the same per-token loss. Returns the bucketed lengths
    over the groups of rows seen and the model FLOPs of such a step relative to the full one.
    """
    import numpy as np
    n = (len(row_lengths) // group) * group
    if n == 0:
        return {}
    g = row_lengths[:n].reshape(-1, group, 2).max(axis=1)
    full = np.array([lengths["inputs"], lengths["targets"]])
    bucketed = np.minimum(-(-g // bucket) * bucket, full)
    ratios = [common.train_step_flops(cfg, group, int(a), int(b))["total"] for a, b in bucketed]
    base = common.train_step_flops(cfg, group, int(full[0]), int(full[1]))["total"]
    return {"group_rows": group, "bucket": bucket, "groups": int(len(g)),
            "longest_inputs_max": int(g[:, 0].max()), "longest_targets_max": int(g[:, 1].max()),
            "bucketed_lengths_median": [float(np.median(bucketed[:, 0])), float(np.median(bucketed[:, 1]))],
            "flops_fraction_of_full": float(np.mean(ratios) / base),
            "rows_at_full_length_fraction": float(np.mean(row_lengths[:n] >= full[None, :], axis=0).max())}


def training_loop(trainer: Any, partitioner: Any, state: Any, shardings: Any, it: Iterator[dict],
                  batch: int, steps: int, stats_period: int, sync_every_step: bool) -> tuple[Any, dict]:
    """train.py's loop body, instrumented (see module docstring)."""
    import jax
    jitted = trainer.compile_train_step(shardings)
    cache_before = jitted._cache_size() if hasattr(jitted, "_cache_size") else None
    wait = data_s = 0.0
    hidden = 0
    pending, prev = [], None
    t_start = time.perf_counter()
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        idle_before = prev is None or prev.is_ready()
        host_batch = next(it)
        gbatch = partitioner.make_global_batch(host_batch, batch)
        t1 = time.perf_counter()
        idle_after = prev is None or prev.is_ready()
        data_s += t1 - t0
        if idle_before or idle_after:
            wait += t1 - t0          # the device had finished (at most this long idle)
        else:
            hidden += 1              # the data arrived while the previous step still ran
        state, sums = trainer.train_step(state, gbatch, shardings)
        prev = sums["loss"]
        pending.append(sums)
        if sync_every_step:
            jax.block_until_ready(sums)
        if step % stats_period == 0 or step == steps:
            jax.device_get(pending)
            pending = []
    jax.block_until_ready(state)
    total = time.perf_counter() - t_start
    cache_after = jitted._cache_size() if hasattr(jitted, "_cache_size") else None
    return state, {"steps": steps, "sync_every_step": sync_every_step, "total_s": total,
                   "data_s": data_s, "waiting_s": wait, "waiting_fraction": wait / total,
                   "data_fraction": data_s / total, "steps_data_hidden": hidden,
                   "step_s_mean": total / steps,
                   "compile_cache_size": [cache_before, cache_after]}


def main(argv: Optional[list[str]] = None) -> dict:
    from synthpre_jax import gin_utils
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default="synthpre_set,synthpre_identity,synthpre_induct")
    p.add_argument("--model", default="t5_small")
    p.add_argument("--inputs_length", type=int, default=512)
    p.add_argument("--targets_length", type=int, default=512)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--pipeline_batches", type=int, default=512, help="batches per pipeline measurement")
    p.add_argument("--rounds", type=int, default=3, help="alternations of pipeline pulls and steps")
    p.add_argument("--loop_steps", type=int, default=6)
    p.add_argument("--stats_period", type=int, default=100, help="as train.py: min(eval_period, 100)")
    p.add_argument("--trim_group", type=int, default=128, help="rows per batch for the trimming estimate (paper: 128)")
    p.add_argument("--trim_bucket", type=int, default=128, help="trimmed lengths are rounded up to this")
    p.add_argument("--smoke", action="store_true", help="toy model, tiny task: checks the script runs")
    p.add_argument("--out", default=None)
    gin_utils.add_gin_flags(p)
    args = p.parse_args(gin_utils.rewrite_gin_args(list(sys.argv[1:] if argv is None else argv)))
    bindings = list(args.gin_bindings)
    if args.smoke:
        args.tasks, args.model, args.inputs_length, args.targets_length = "synthpre_identity_tiny", "t5_tiny", 128, 128
        args.batch, args.pipeline_batches, args.rounds, args.loop_steps = 2, 8, 1, 2
        args.trim_group, args.trim_bucket = 4, 32
        bindings = [b for b in train_step.SMOKE_BINDINGS if "vocab_size" not in b] + bindings
    out = Path(args.out) if args.out else (common.SMOKE_DIR / "input_pipeline.json" if args.smoke
                                               else common.RESULTS / "input_pipeline.json")
    import jax
    machine = common.machine_info()
    lengths = {"inputs": args.inputs_length, "targets": args.targets_length}
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]

    model, partitioner, trainer = train_step.build(args.model, bindings + ["network.T5Config.dtype = 'float32'"])

    # 1. Pipeline alone, every task, packing off and on.
    pipe_rows = []
    for task in tasks:
        for pack in (False, True):
            it = dataset_iter(task, lengths, args.batch, pack)
            warm = pipeline_rate(it, 2)  # graph building, validation-key set, first blocks
            r = pipeline_rate(it, args.pipeline_batches)
            r.update({"task": task, "pack": pack, "first_batches_s": warm["wall_s"]})
            row_lengths = r.pop("_row_lengths")
            if not pack:
                r["trim_estimate"] = trim_estimate(row_lengths, model.config, lengths,
                                                   args.trim_group, args.trim_bucket)
            pipe_rows.append(r)
            common.log(f"[pipeline] {task} pack={pack}: {r['examples_per_s']:.0f} examples/s, "
                       f"non-padding {r['nonpadding_fraction_inputs']:.2f}/{r['nonpadding_fraction_targets']:.2f}")

    # 2. The train step on real batches of the first task, alternating with pipeline pulls.
    common.log(f"[train step] {args.model}: building and compiling ...")
    from synthpre_jax.train import _input_shapes
    shapes = _input_shapes(lengths, args.batch, pack=False)
    _, shardings = trainer.abstract_state(shapes)
    state = trainer.state_from_params(trainer.init_params(shapes, shardings), shardings)
    it = dataset_iter(tasks[0], lengths, args.batch, pack=False)
    fixed = partitioner.make_global_batch(next(it), args.batch)
    box = {"state": trainer.train_step(state, fixed, shardings)[0]}  # compile + warm-up
    jax.block_until_ready(box["state"])
    per_pull = max(1, args.pipeline_batches // 4)
    counted = {"examples": 0}

    def pull():
        n = 0
        for _ in range(per_pull):
            n += examples_in(next(it))
        counted["examples"] = n

    def step():
        box["state"], s = trainer.train_step(box["state"], fixed, shardings)
        jax.block_until_ready((box["state"], s))

    samples = common.interleave({"pipeline": pull, "train_step": step}, args.rounds,
                                progress=lambda m: common.log("  " + m))
    pipe_eps = [counted["examples"] / s["wall_s"] for s in samples["pipeline"]]
    step_eps = [args.batch / s["wall_s"] for s in samples["train_step"]]
    ratio = common.pairwise_ratio(pipe_eps, step_eps)
    step_cpu = common.median(s["cpu_s"] for s in samples["train_step"])

    # 3. The training loop as train.py runs it (the paper's PACK=False; real data, a fresh
    #    iterator), then without overlap.
    loops = []
    for sync in (False, True):
        loop_it = dataset_iter(tasks[0], lengths, args.batch, pack=False, seed=1)
        t0 = time.perf_counter()
        next(loop_it)  # start-up (graph building, first blocks) is reported, not steady state
        startup_s = time.perf_counter() - t0
        box["state"], r = training_loop(trainer, partitioner, box["state"], shardings, loop_it,
                                        args.batch, args.loop_steps, args.stats_period, sync)
        r["iterator_startup_s"] = startup_s
        loops.append(r)
        common.log(f"[loop sync={sync}] waiting {100 * r['waiting_fraction']:.2f}% of "
                   f"{r['total_s']:.1f}s; data {100 * r['data_fraction']:.2f}%")

    res = {"tasks": tasks, "model": args.model, "batch": args.batch, "lengths": lengths,
           "pipeline": pipe_rows,
           "consumption": {"train_step_s": common.summarize(samples["train_step"]),
                           "train_step_cpu_s": step_cpu,
                           "examples_per_s": common.median(step_eps)},
           "pipeline_over_consumption": ratio,
           "pipeline_interleaved_examples_per_s": common.median(pipe_eps),
           "pipeline_cpu_share_of_step": (
               next(r for r in pipe_rows if r["task"] == tasks[0] and not r["pack"])["cpu_s_per_batch"]
               / step_cpu if step_cpu > 0 else None),
           "training_loop": loops}
    common.write_json(out, {"benchmark": "input_pipeline", "machine": machine, "args": vars(args),
                            "results": res})
    print(f"\ninput pipeline vs {args.model} train step, batch {args.batch}, lengths "
          f"{args.inputs_length}/{args.targets_length}, {machine['cpu_model']} ({machine['cpu_cores']} cores), "
          f"commit {machine['commit'][:10]}{' (dirty)' if machine['dirty'] else ''}")
    step_eps_med = res["consumption"]["examples_per_s"]
    print(common.format_table(
        ["task", "pack", "examples/s", "examples/row", "non-pad in", "non-pad tgt", "CPU s/batch",
         "x consumption"],
        [[r["task"], r["pack"], r["examples_per_s"], r["examples_per_row"], r["nonpadding_fraction_inputs"],
          r["nonpadding_fraction_targets"], r["cpu_s_per_batch"],
          r["examples_per_s"] / (step_eps_med * r["examples_per_row"])] for r in pipe_rows]))
    trims = [(r["task"], r["trim_estimate"]) for r in pipe_rows if r.get("trim_estimate")]
    if trims:
        print(f"\npadding waste without packing: batches of {args.trim_group} rows cut to their longest "
              f"row (rounded up to {args.trim_bucket}) give the same loss for")
        print(common.format_table(
            ["task", "longest inputs", "longest targets", "bucketed lengths (median)", "FLOPs vs full"],
            [[t, e["longest_inputs_max"], e["longest_targets_max"],
              "/".join(str(int(x)) for x in e["bucketed_lengths_median"]), e["flops_fraction_of_full"]]
             for t, e in trims]))
    print(f"pipeline / consumption (interleaved, {tasks[0]}, unpacked): {ratio['median']:.1f}x "
          f"(train step {res['consumption']['train_step_s']['median']:.2f}s = {step_eps_med:.2f} examples/s)")
    for r in loops:
        print(f"training loop ({'block every step' if r['sync_every_step'] else 'as train.py'}): "
              f"{100 * r['waiting_fraction']:.2f}% of step time waiting for data "
              f"(data handling {100 * r['data_fraction']:.2f}%, compile cache {r['compile_cache_size']})")
    print(f"wrote {out}")
    return res


if __name__ == "__main__":
    main()
