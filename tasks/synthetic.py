"""Registers every synthetic pre-training task as a seqio Task named `synthpre_<name>`.

Importing this module registers (idempotently: re-importing or reloading
replaces the entries) one task per base task id and per configured variant of
`synthpre_jax.synthetic.registry`: `synthpre_identity`, ..., `synthpre_induct`,
`synthpre_nonsense_summary`, `synthpre_nesting_language`,
`synthpre_identity_vocab10`, `synthpre_union_tiny`, ... Each has splits
`train` (infinite, generated on the fly) and `validation` (10,000 examples),
features `inputs`/`targets` over the default vocabulary (T5 SentencePiece or
its fallback, decided on first use), EOS appended, and no metrics.
`nesting_language` produces targets-only documents and is trained with T5 span
corruption (`data/span_corruption.py`; the trainer runs the same chain in NumPy,
`synthetic/span_noise.py`). Nothing is read from disk or network at import time.

Register your own variant (e.g. for a tiny CPU demo):

    from tasks.synthetic import register_synthetic_task
    register_synthetic_task("identity", task_name="synthpre_identity_v50",
                            num_tokens=50, length_range=(5, 20))
"""
from __future__ import annotations

from typing import Optional

import seqio

from synthpre_jax.data.sources import DEFAULT_VALIDATION_SIZE, SyntheticDataSource
from synthpre_jax.data.span_corruption import span_corruption_preprocessors
from synthpre_jax.data.vocabularies import get_default_vocabulary
from synthpre_jax.synthetic.registry import BASE_TASK_IDS, VARIANTS, canonical_name, check_name

TASK_PREFIX = "synthpre_"
TARGETS_ONLY = frozenset({"nesting_language"})


def output_features(vocabulary: Optional[seqio.Vocabulary] = None) -> dict:
    vocab = vocabulary or get_default_vocabulary()
    return {"inputs": seqio.Feature(vocabulary=vocab, add_eos=True),
            "targets": seqio.Feature(vocabulary=vocab, add_eos=True)}


def _base_of(name: str) -> str:
    name = canonical_name(name)
    return VARIANTS[name][0] if name in VARIANTS else name


def register_synthetic_task(name: str, *, task_name: Optional[str] = None,
                            vocabulary: Optional[seqio.Vocabulary] = None, seed: int = 0,
                            validation_size: int = DEFAULT_VALIDATION_SIZE,
                            dedup_validation: bool = True, span_corruption_seed: int = 0,
                            pack_lengths: Optional[dict] = None, **config) -> seqio.Task:
    """Register synthetic task `name` (id, variant or alias) with optional settings.

    `config` goes to the task's constructor (e.g. num_tokens, length_range,
    order='first_occurrence', balanced=True). Re-registering a name replaces it.
    `pack_lengths` (e.g. {"inputs": 512, "targets": 512}) registers a pre-packed
    task (EOS and packing done in NumPy) for `seqio.PrePackedEncDecFeatureConverter`;
    not available for the span-corrupted nesting_language.
    """
    name = check_name(name)
    task_name = task_name or TASK_PREFIX + name
    vocab = vocabulary or get_default_vocabulary()
    source = SyntheticDataSource(name, config, vocabulary=vocab, seed=seed,
                                 validation_size=validation_size,
                                 dedup_validation=dedup_validation, pack_lengths=pack_lengths)
    if _base_of(name) in TARGETS_ONLY:
        if pack_lengths:
            raise ValueError("pack_lengths is not supported for span-corrupted tasks")
        preprocessors = span_corruption_preprocessors(seed=span_corruption_seed)
    elif pack_lengths:
        preprocessors = []  # EOS appended and examples packed by the source
    else:
        preprocessors = [seqio.preprocessors.append_eos_after_trim]
    seqio.TaskRegistry.remove(task_name)
    return seqio.TaskRegistry.add(
        task_name, source=source, output_features=output_features(vocab),
        preprocessors=preprocessors, metric_fns=[], shuffle_buffer_size=None)


REGISTERED: tuple[str, ...] = tuple(
    register_synthetic_task(n).name for n in (*BASE_TASK_IDS, *VARIANTS))
