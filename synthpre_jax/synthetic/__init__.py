"""Procedural generators for synthetic pre-training tasks: NumPy and stdlib only.

No TensorFlow or JAX import here or in any submodule, so generation runs
anywhere (`synthpre gen`, data-loader workers, other frameworks).

    from synthpre_jax.synthetic import make_task, example, generate_range
    task = make_task("union")                  # fallback vocabulary unless a codec is given
    ex = example(task, seed=0, split="train", i=123)   # {'inputs': ..., 'targets': ...}
    task.solve(raw_input)                      # the 18 simple tasks: target of a raw input
"""
from synthpre_jax.synthetic.base import (SyntheticTask, example, generate, generate_range,
                                         iter_shard, validation_keys)
from synthpre_jax.synthetic.codec import FallbackCodec, SentencePieceCodec, resolve_codec
from synthpre_jax.synthetic.registry import (ALIASES, BASE_TASK_IDS, VARIANTS, canonical_name,
                                             make_task, task_names)
from synthpre_jax.synthetic.rng import SPLIT_IDS, Draws

__all__ = [
    "SyntheticTask", "example", "generate", "generate_range", "iter_shard",
    "validation_keys", "FallbackCodec", "SentencePieceCodec", "resolve_codec", "ALIASES",
    "BASE_TASK_IDS", "VARIANTS", "canonical_name", "make_task", "task_names", "SPLIT_IDS", "Draws",
]
