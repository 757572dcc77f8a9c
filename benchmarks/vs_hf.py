"""Our training step against HF transformers' PyTorch T5 on the same machine and config.

    python benchmarks/vs_hf.py [--model t5_small] [--batch 2]
        [--inputs_length 512 --targets_length 512] [--rounds 6] [--smoke]

Both sides train the same network from the same weights on the same batch:
  ours  `Trainer.compile_train_step` built from models/<model>.gin + runs/pretrain.gin
        (forward, backward and Adafactor update in one jitted, donated XLA program);
  HF    `T5ForConditionalGeneration` (eager PyTorch, its default attention implementation)
        loaded with our initial parameters via `hf_convert.to_hf_state_dict`, dropout 0.1
        in train mode, `loss.backward()` and `transformers.optimization.Adafactor` with the
        same recipe (factored second moments, decay_rate -0.8 = T5X's 0.8 schedule, update
        clipping 1.0, parameter-scale updates with eps2 1e-3, no momentum, lr 0.01 = the
        pre-training schedule's value before step 10,000), then `zero_grad`.
So both do forward + backward + Adafactor step. PyTorch uses all cores
(`torch.set_num_threads(os.cpu_count())`), as XLA does. The two steps alternate (A B, B A, ...)
in one process; the ratio of tokens/s (ours / HF) is the median of the per-round ratios (also
given: the ratio of each side's best round, and of process CPU time per step).
Before timing, one deterministic forward pass of each checks that both compute the same
model (mean target cross-entropy; relative difference is reported).

Writes benchmarks/results/vs_hf.json (--smoke writes to {tmp}/synthpre_benchmarks_smoke/).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import train_step  # noqa: E402


def hf_side(cfg, params, host_batch: dict, lr: float):
    """(model, optimizer, step_fn, eval_loss_fn) for HF T5 with our parameters."""
    import numpy as np
    import torch
    import transformers
    from transformers.optimization import Adafactor
    from synthpre_jax.models import hf_convert

    model = transformers.T5ForConditionalGeneration(
        transformers.T5Config(**hf_convert.hf_config_dict(cfg)))
    if not cfg.logits_via_embedding and model.lm_head.weight is model.shared.weight:
        model.lm_head.weight = torch.nn.Parameter(model.shared.weight.detach().clone())
    state = hf_convert.to_hf_state_dict(params, cfg)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=True)
    opt = Adafactor(model.parameters(), lr=lr, eps=(1e-30, 1e-3), clip_threshold=1.0,
                    decay_rate=-0.8, beta1=None, weight_decay=0.0, scale_parameter=True,
                    relative_step=False, warmup_init=False)
    enc = torch.from_numpy(host_batch["encoder_input_tokens"].astype(np.int64))
    dec = torch.from_numpy(host_batch["decoder_input_tokens"].astype(np.int64))
    tgt = torch.from_numpy(host_batch["decoder_target_tokens"].astype(np.int64))
    labels = tgt.masked_fill(tgt == 0, -100)
    kw = dict(input_ids=enc, attention_mask=(enc > 0).long(), decoder_input_ids=dec,
              decoder_attention_mask=(tgt > 0).long(), labels=labels)

    def step():
        model.train()
        loss = model(**kw).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            return float(model(**kw).loss)

    return model, opt, step, eval_loss


def main(argv: Optional[list[str]] = None) -> dict:
    from synthpre_jax import gin_utils
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="t5_small")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--inputs_length", type=int, default=512)
    p.add_argument("--targets_length", type=int, default=512)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--smoke", action="store_true", help="toy model, 1 round: checks the script runs")
    p.add_argument("--out", default=None)
    gin_utils.add_gin_flags(p)
    args = p.parse_args(gin_utils.rewrite_gin_args(list(sys.argv[1:] if argv is None else argv)))
    bindings = list(args.gin_bindings) + ["network.T5Config.dtype = 'float32'"]
    if args.smoke:
        args.model, args.batch, args.inputs_length, args.targets_length = "t5_tiny", 2, 8, 8
        args.rounds, args.warmup = 1, 0
        bindings = train_step.SMOKE_BINDINGS + bindings
    out = Path(args.out) if args.out else (common.SMOKE_DIR / "vs_hf.json" if args.smoke
                                               else common.RESULTS / "vs_hf.json")

    import jax
    import numpy as np
    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    machine = common.machine_info(torch)
    import transformers
    machine["transformers"] = transformers.__version__

    common.log(f"[ours] {args.model}: building and compiling ...")
    prep = train_step.prepare_step(args.model, args.batch, args.inputs_length, args.targets_length, bindings)
    cfg, trainer, compiled, gbatch = prep["cfg"], prep["trainer"], prep["compiled"], prep["batch"]
    host = train_step.random_batch(cfg.vocab_size, args.batch, args.inputs_length, args.targets_length)
    params0 = jax.tree_util.tree_map(np.asarray, jax.device_get(prep["state"]["params"]))
    lr = float(trainer.learning_rate_fn(0))

    # Same model check: deterministic mean target cross-entropy on both sides.
    sums = jax.jit(prep["model"].eval_fn)(prep["state"]["params"], gbatch)
    ours_ce = float(sums["cross_ent_sum"]) / float(sums["weight_sum"])
    common.log("[hf] building ...")
    hf_model, _, hf_step, hf_eval = hf_side(cfg, params0, host, lr)
    hf_ce = hf_eval()
    common.log(f"  mean cross-entropy at init: ours {ours_ce:.6f}, HF {hf_ce:.6f}")

    box = {"state": prep["state"]}

    def ours_step():
        box["state"], s = compiled(box["state"], gbatch)
        jax.block_until_ready((box["state"], s))

    for _ in range(args.warmup):
        ours_step()
        hf_step()
    samples = common.interleave({"ours": ours_step, "hf": hf_step}, args.rounds,
                                progress=lambda m: common.log("  " + m))
    tokens = args.batch * (args.inputs_length + args.targets_length)
    o, h = samples["ours"], samples["hf"]
    ratio = common.pairwise_ratio([s["wall_s"] for s in h], [s["wall_s"] for s in o])
    ratio_cpu = common.pairwise_ratio([s["cpu_s"] for s in h], [s["cpu_s"] for s in o])
    flops = common.train_step_flops(cfg, args.batch, args.inputs_length, args.targets_length)
    res = {
        "model": args.model, "batch": args.batch, "inputs_length": args.inputs_length,
        "targets_length": args.targets_length, "dropout_rate": cfg.dropout_rate, "dtype": "float32",
        "optimizer": "Adafactor (ours: optimizers.Adafactor via optax; HF: transformers.optimization.Adafactor)",
        "hf_attn_implementation": getattr(hf_model.config, "_attn_implementation", None),
        "learning_rate": lr, "flops_per_step": flops["total"], "tokens_per_step": tokens,
        "init_mean_cross_entropy": {"ours": ours_ce, "hf": hf_ce,
                                    "relative_difference": abs(ours_ce - hf_ce) / max(abs(hf_ce), 1e-12)},
        "ours": {"step_s": common.summarize(o), "step_cpu_s": common.summarize(o, "cpu_s"),
                 "tokens_per_s": tokens / common.summarize(o)["median"],
                 "compile_s": prep["compile_s"]},
        "hf": {"step_s": common.summarize(h), "step_cpu_s": common.summarize(h, "cpu_s"),
               "tokens_per_s": tokens / common.summarize(h)["median"]},
        "tokens_per_s_ratio_ours_over_hf": ratio,
        "tokens_per_s_ratio_best_rounds": min(s["wall_s"] for s in h) / min(s["wall_s"] for s in o),
        "cpu_time_ratio_hf_over_ours": ratio_cpu,
        "samples": {"ours_s": [s["wall_s"] for s in o], "hf_s": [s["wall_s"] for s in h]},
        "load_average_at_end": common.load_now(),
    }
    common.write_json(out, {"benchmark": "vs_hf", "machine": machine, "args": vars(args), "results": res})
    print(f"\n{args.model} training step vs HF transformers {transformers.__version__} "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads), batch {args.batch}, "
          f"lengths {args.inputs_length}/{args.targets_length}, {machine['cpu_model']} "
          f"({machine['cpu_cores']} cores), commit {machine['commit'][:10]}"
          f"{' (dirty)' if machine['dirty'] else ''}")
    print(common.format_table(
        ["side", "step s (median)", "tokens/s", "CPU s/step", "init CE"],
        [["ours (JAX/XLA)", res["ours"]["step_s"]["median"], res["ours"]["tokens_per_s"],
          res["ours"]["step_cpu_s"]["median"], ours_ce],
         ["HF (PyTorch eager)", res["hf"]["step_s"]["median"], res["hf"]["tokens_per_s"],
          res["hf"]["step_cpu_s"]["median"], hf_ce]]))
    print(f"tokens/s ratio ours/HF: {ratio['median']:.2f} (per-round min {ratio['min']:.2f}, "
          f"max {ratio['max']:.2f}, {ratio['n']} rounds); best rounds "
          f"{res['tokens_per_s_ratio_best_rounds']:.2f}; CPU-time ratio {ratio_cpu['median']:.2f}")
    print(f"wrote {out}")
    return res


if __name__ == "__main__":
    main()
