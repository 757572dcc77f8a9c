"""`make demo`: the main job on a laptop CPU, offline.

For now this is a short pre-training run of the tiny T5 on a small synthetic SeqIO task with
visible progress and T5X's outputs; issue "Experiments end to end" turns it into the paper in
miniature (pre-train -> fine-tune -> report).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from synthpre_jax.cli import run_guarded


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="synthpre demo")
    p.add_argument("--out", default="demo_runs", help="where the run directories go")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--task", default="synthpre_set_tiny")
    args = p.parse_args(argv)
    from synthpre_jax import train
    model_dir = os.path.abspath(os.path.join(args.out, f"pretrain_{args.task}"))
    print(f"[demo] pre-training t5_tiny on {args.task} for {args.steps} steps -> {model_dir}", flush=True)
    t0 = time.time()
    code = run_guarded(train.main, [
        "--gin_file=models/t5_tiny.gin", "--gin_file=runs/pretrain.gin",
        f"--gin.MIXTURE_OR_TASK_NAME='{args.task}'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 48, 'targets': 48}",
        f"--gin.TRAIN_STEPS={args.steps}", "--gin.BATCH_SIZE=32",
        f"--gin.EVAL_PERIOD={max(args.steps // 3, 1)}", "--gin.EVAL_STEPS=4",
        "--gin.train.stats_period=25",
        f"--gin.MODEL_DIR='{model_dir}'",
    ])
    if code == 0:
        print(f"[demo] finished in {time.time() - t0:.0f}s; TensorBoard: tensorboard --logdir {model_dir}")
    return code


if __name__ == "__main__":
    sys.exit(run_guarded(main, sys.argv[1:]))
