"""Training-step speed against the hardware limit: steps/s, tokens/s, FLOPs and MFU.

    python benchmarks/train_step.py [--models t5_small,t5_base] [--batch 2]
        [--inputs_length 512 --targets_length 512] [--dtypes auto] [--remat none]
        [--rounds 5] [--gin.NAME=VALUE ...] [--smoke]

Each model is built exactly as a pre-training run builds it: `models/<name>.gin` +
`runs/pretrain.gin` parsed by gin, then `EncoderDecoderModel()`, `PjitPartitioner()` and
`Trainer()` from those bindings (Adafactor, z_loss 0, dropout 0.1, the T5X loss), and the
jitted, donated, sharded `Trainer.compile_train_step` is compiled ahead of time. Batches are
random token ids at full length (no padding: this measures the step, not the data; padding
waste is measured by input_pipeline.py).

FLOPs per step are counted analytically (common.train_step_flops: attention projections,
scores and values, MLP, logits; backward = 2x forward) and checked two ways: the dot_general
FLOPs of the traced step's jaxpr (what the program multiplies, forward and backward) and
XLA's `compiled.cost_analysis()` (all ops, elementwise included). MFU = achieved model FLOP/s
/ the FLOP/s of a large [n,n]@[n,n] matmul in the same dtype on the same devices, measured
alternately with the step in the same run (common.interleave), each matmul measurement lasting
about one step; reported are the median of the per-round ratios, the ratio of the best rounds
(least disturbed by other load) and the same ratio in process CPU time. dtype 'auto' is float32 on CPU and bfloat16 (activations; parameters and
optimizer state stay float32) on GPU/TPU.

Writes benchmarks/results/train_step.json (--smoke writes to {tmp}/synthpre_benchmarks_smoke/).
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SMOKE_BINDINGS = [  # a toy T5 that compiles and runs in seconds
    "network.T5Config.vocab_size = 128", "network.T5Config.emb_dim = 32",
    "network.T5Config.num_heads = 2", "network.T5Config.head_dim = 16",
    "network.T5Config.mlp_dim = 64", "network.T5Config.num_encoder_layers = 2",
    "network.T5Config.num_decoder_layers = 2", "DROPOUT_RATE = 0.0",
]


def build(model_name: str, bindings: list[str]) -> tuple[Any, Any, Any]:
    """(model, partitioner, trainer) exactly as `synthpre train` wires them for pre-training."""
    import gin
    from synthpre_jax import gin_utils, train as train_mod
    from synthpre_jax.models.model import EncoderDecoderModel
    from synthpre_jax.partitioning import PjitPartitioner
    from synthpre_jax.trainer import Trainer

    gin.clear_config()
    train_mod._register_configurables()
    gin_utils.parse_gin([f"models/{model_name}.gin", "runs/pretrain.gin"], bindings, [])
    model = EncoderDecoderModel()
    partitioner = PjitPartitioner()
    trainer = Trainer(model=model, partitioner=partitioner)
    return model, partitioner, trainer


def random_batch(vocab: int, batch: int, inputs_length: int, targets_length: int,
                 seed: int = 0) -> dict:
    """Full-length random examples with EncDecFeatureConverter's unpacked features."""
    import numpy as np
    rng = np.random.default_rng(seed)
    hi = max(3, min(vocab, 32000))
    enc = rng.integers(2, hi, (batch, inputs_length)).astype(np.int32)
    tgt = rng.integers(2, hi, (batch, targets_length)).astype(np.int32)
    dec = np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], axis=1)
    return {"encoder_input_tokens": enc, "decoder_input_tokens": dec,
            "decoder_target_tokens": tgt, "decoder_loss_weights": (tgt > 0).astype(np.int32)}


def resolve_dtype(dtype: str) -> str:
    import jax
    if dtype != "auto":
        return dtype
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def prepare_step(model_name: str, batch: int, inputs_length: int, targets_length: int,
                 bindings: list[str]) -> dict:
    """Build, init and AOT-compile one model's train step; returns what timing needs."""
    import jax
    from synthpre_jax.train import _input_shapes

    model, partitioner, trainer = build(model_name, bindings)
    cfg = model.config
    shapes = _input_shapes({"inputs": inputs_length, "targets": targets_length}, batch, pack=False)
    _, shardings = trainer.abstract_state(shapes)
    state = trainer.state_from_params(trainer.init_params(shapes, shardings), shardings)
    host = random_batch(cfg.vocab_size, batch, inputs_length, targets_length)
    gbatch = partitioner.make_global_batch(host, batch)
    jitted = trainer.compile_train_step(shardings)
    t0 = time.perf_counter()
    with partitioner.context():
        lowered = jitted.lower(state, gbatch)
        compiled = lowered.compile()
        jaxpr = jax.make_jaxpr(trainer._train_step_fn)(state, gbatch)
    compile_s = time.perf_counter() - t0
    hlo = compiled.as_text()
    entry = hlo[hlo.find("\nENTRY"):]
    entry = entry[:entry.find("\n}")]
    # jit prunes unused inputs (e.g. Adafactor's placeholder statistics of unfactored params)
    used_inputs = len(set(re.findall(r"parameter\((\d+)\)", entry)))
    return {"donated_buffers_aliased": hlo.split("\n", 1)[0].count("-alias)"),
            "state_buffers_used": used_inputs - len(gbatch), "model": model, "cfg": cfg, "partitioner": partitioner, "trainer": trainer,
            "state": state, "batch": gbatch, "compiled": compiled, "compile_s": compile_s,
            "jaxpr_dot_flops": common.jaxpr_dot_flops(jaxpr), "xla": common.xla_cost(compiled),
            "n_params": sum(int(x.size) for x in jax.tree_util.tree_leaves(state["params"]))}


def run_variant(model_name: str, dtype: str, remat: str, args: argparse.Namespace) -> dict:
    """Measure one (model, dtype, remat) configuration; the peak is re-measured alongside."""
    import jax
    bindings = list(args.gin_bindings) + [f"network.T5Config.dtype = '{dtype}'",
                                          f"network.T5Config.remat_policy = '{remat}'"]
    if args.smoke:
        bindings = SMOKE_BINDINGS + bindings
    common.log(f"[{model_name} {dtype} remat={remat}] building and compiling ...")
    prep = prepare_step(model_name, args.batch, args.inputs_length, args.targets_length, bindings)
    cfg = prep["cfg"]
    flops = common.train_step_flops(cfg, args.batch, args.inputs_length, args.targets_length)
    common.log(f"  compiled in {prep['compile_s']:.1f}s; analytic {flops['total'] / 1e9:.1f} GFLOP/step, "
               f"jaxpr dots {prep['jaxpr_dot_flops'] / 1e9:.1f}, XLA {prep['xla'].get('flops', float('nan')) / 1e9:.1f}")
    compiled = prep["compiled"]
    box = {"state": prep["state"]}
    batch = prep["batch"]

    def step():
        box["state"], sums = compiled(box["state"], batch)
        jax.block_until_ready((box["state"], sums))
        box["loss"] = sums["loss"]

    step_guess = 0.0
    for _ in range(args.warmup):
        step_guess = common.timed(step)["wall_s"]
    # The peak runs about as long as a step, so both see the same machine load in a round.
    peak_seconds = args.peak_seconds if args.peak_seconds is not None else min(max(step_guess, 0.5), 60.0)
    peak_fn, peak_flops = common.matmul_peak_fn(args.peak_n, dtype, min_seconds=peak_seconds)
    loads = [common.load_now()]
    samples = common.interleave({"matmul": peak_fn, "train_step": step}, args.rounds,
                                progress=lambda m: common.log("  " + m))
    loads.append(common.load_now())
    st, mm = samples["train_step"], samples["matmul"]
    tokens = args.batch * (args.inputs_length + args.targets_length)
    step_s = common.summarize(st)
    step_cpu = common.summarize(st, "cpu_s")
    achieved = [flops["total"] / s["wall_s"] for s in st]
    peak = [peak_flops / s["wall_s"] for s in mm]
    mfu = common.pairwise_ratio(achieved, peak)
    # Best round of each (least disturbed by other load): the classic estimate on a busy machine.
    mfu_best = (flops["total"] / min(s["wall_s"] for s in st)) / (peak_flops / min(s["wall_s"] for s in mm))
    mfu_cpu = common.pairwise_ratio([flops["total"] / s["cpu_s"] for s in st],
                                    [peak_flops / s["cpu_s"] for s in mm])
    xla_flops = prep["xla"].get("flops", float("nan"))
    return {
        "model": model_name, "dtype": dtype, "remat_policy": remat,
        "dropout_rate": cfg.dropout_rate, "n_params": prep["n_params"],
        "batch": args.batch, "inputs_length": args.inputs_length, "targets_length": args.targets_length,
        "tokens_per_step": tokens, "compile_s": prep["compile_s"],
        "donated_buffers_aliased": prep["donated_buffers_aliased"],
        "state_buffers_used": prep["state_buffers_used"],
        "flops_per_step": flops, "jaxpr_dot_flops_per_step": prep["jaxpr_dot_flops"],
        "xla_cost_analysis": prep["xla"],
        "analytic_over_jaxpr_dots": flops["total"] / max(prep["jaxpr_dot_flops"], 1),
        "analytic_over_xla": flops["total"] / xla_flops if xla_flops == xla_flops else None,
        "step_s": step_s, "step_cpu_s": step_cpu,
        "steps_per_s": 1.0 / step_s["median"], "tokens_per_s": tokens / step_s["median"],
        "achieved_flops_per_s": common.median(achieved),
        "peak": {"matmul_n": args.peak_n, "dtype": dtype, "flops_per_call": peak_flops,
                 "flops_per_s": common.median(peak), "samples_s": [s["wall_s"] for s in mm]},
        "mfu": mfu, "mfu_best_rounds": mfu_best, "mfu_cpu_time": mfu_cpu,
        "step_samples_s": [s["wall_s"] for s in st], "load_average": loads,
        "final_loss": float(box["loss"]),
    }


def main(argv: Optional[list[str]] = None) -> dict:
    from synthpre_jax import gin_utils
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="t5_small,t5_base",
                   help="comma-separated gin_configs/models/<name>.gin")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--inputs_length", type=int, default=512)
    p.add_argument("--targets_length", type=int, default=512)
    p.add_argument("--dtypes", default="auto", help="comma-separated: auto, float32, bfloat16")
    p.add_argument("--remat", default="none", help="comma-separated: none, full, minimal")
    p.add_argument("--rounds", type=int, default=5, help="alternations of step and matmul")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--peak_n", type=int, default=None, help="matmul size (default 2048 CPU, 8192 else)")
    p.add_argument("--peak_seconds", type=float, default=None,
                   help="seconds per matmul measurement (default: one step's duration)")
    p.add_argument("--smoke", action="store_true", help="toy model, 1 round: checks the script runs")
    p.add_argument("--out", default=None)
    gin_utils.add_gin_flags(p)
    args = p.parse_args(gin_utils.rewrite_gin_args(list(sys.argv[1:] if argv is None else argv)))
    if args.smoke:
        args.models, args.batch, args.inputs_length, args.targets_length = "t5_tiny", 2, 8, 8
        args.rounds, args.warmup, args.peak_seconds = 1, 0, 0.01
        args.peak_n = args.peak_n or 64
    import jax
    args.peak_n = args.peak_n or (2048 if jax.default_backend() == "cpu" else 8192)
    out = Path(args.out) if args.out else (common.SMOKE_DIR / "train_step.json" if args.smoke
                                               else common.RESULTS / "train_step.json")
    machine = common.machine_info()
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        for dtype in [resolve_dtype(d.strip()) for d in args.dtypes.split(",") if d.strip()]:
            for remat in [r.strip() for r in args.remat.split(",") if r.strip()]:
                rows.append(run_variant(name, dtype, remat, args))
    payload = {"benchmark": "train_step", "machine": machine, "args": vars(args), "results": rows}
    common.write_json(out, payload)
    print(f"\ntrain step, batch {args.batch}, lengths {args.inputs_length}/{args.targets_length}, "
          f"{machine['device_kind']} x{machine['device_count']} ({machine['cpu_model']}, "
          f"{machine['cpu_cores']} cores), commit {machine['commit'][:10]}"
          f"{' (dirty)' if machine['dirty'] else ''}")
    print(common.format_table(
        ["model", "dtype", "remat", "steps/s", "tokens/s", "GFLOP/step", "XLA/analytic",
         "achieved GFLOP/s", "peak GFLOP/s", "MFU", "MFU (best rounds)", "MFU (CPU time)"],
        [[r["model"], r["dtype"], r["remat_policy"], r["steps_per_s"], r["tokens_per_s"],
          r["flops_per_step"]["total"] / 1e9,
          (r["xla_cost_analysis"].get("flops", float("nan")) / r["flops_per_step"]["total"]),
          r["achieved_flops_per_s"] / 1e9, r["peak"]["flops_per_s"] / 1e9,
          r["mfu"]["median"], r["mfu_best_rounds"], r["mfu_cpu_time"]["median"]] for r in rows]))
    print(f"wrote {out}")
    return payload


if __name__ == "__main__":
    main()
