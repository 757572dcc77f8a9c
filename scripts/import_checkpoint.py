"""Import a public T5 checkpoint (legacy T5X, T5X-Orbax or Hugging Face) into our Orbax format.

`INITIAL_CHECKPOINT_PATH` already accepts all three formats directly (checkpoints.load_params
autodetects them); importing once is worth it when the source is remote (gs://, read at every
fine-tuning run otherwise) or when you want a frozen local copy of the natural reference.

    python scripts/import_checkpoint.py \
        gs://t5-data/pretrained_models/t5x/t5_small/checkpoint_1000000 /ckpts/offshelf_t5_small
    # -> /ckpts/offshelf_t5_small/checkpoint_1000000 (params only; use it as INITIAL_CHECKPOINT_PATH)

The step of the written checkpoint is taken from a trailing `checkpoint_<step>` in the source
path (else 0) unless --step is given. Params are stored in float32, as T5X stores them.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synthpre_jax.cli import run_guarded  # noqa: E402


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", help="legacy T5X checkpoint dir, Orbax checkpoint, or HF model dir")
    p.add_argument("output", help="directory to write checkpoint_<step>/ into (a MODEL_DIR-like dir)")
    p.add_argument("--step", type=int, default=None, help="step number of the written checkpoint")
    args = p.parse_args(argv)
    from synthpre_jax import checkpoints
    from synthpre_jax.checkpoint_utils import flatten_params

    step = args.step
    if step is None:
        m = re.search(r"checkpoint_(\d+)/*$", args.source)
        step = int(m.group(1)) if m else 0
    params = checkpoints.load_params(args.source)
    where = checkpoints.save_params_checkpoint(args.output, params, step=step)
    flat = flatten_params(params)
    n = sum(int(v.size) for v in flat.values())
    print(f"wrote {where}: {len(flat)} tensors, {n:,} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(run_guarded(main, sys.argv[1:]))
