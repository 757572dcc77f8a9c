"""From a seqio task name to host-local numpy batches (T5X's DatasetConfig idea).

Determinism is what makes resume exact: the stream for (task, split, seed, host shard) is a
fixed sequence, so resuming at step s means skipping s batches. Synthetic tasks generate any
index directly (data/sources.py), so that skip is cheap for them.
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import sys
from typing import Iterator, Mapping, Optional, Sequence

import gin

from synthpre_jax.errors import UserError, did_you_mean

# Our own task modules, imported before resolving any name (cheap: no I/O at import).
BUILTIN_TASK_MODULES = ("tasks.synthetic", "tasks.mixtures", "tasks.downstream", "tasks.natural")


@gin.configurable(module="utils")
@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    """T5X's DatasetConfig fields (bound under the train/, train_eval/, infer_eval/ scopes)."""
    mixture_or_task_name: str = ""
    task_feature_lengths: Optional[Mapping[str, int]] = None
    split: str = "train"
    batch_size: int = 8
    shuffle: bool = True
    seed: Optional[int] = 0
    use_cached: bool = False
    pack: bool = False
    use_custom_packing_ops: bool = False
    module: Optional[str | Sequence[str]] = None
    use_memory_cache: bool = True
    trim_output_features: bool = True


def import_task_modules(module: Optional[str | Sequence[str]] = None) -> None:
    """Import our task modules and the user's (MIXTURE_OR_TASK_MODULE) so names resolve."""
    for name in BUILTIN_TASK_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # a real missing dependency inside the module
                raise
    if not module:
        return
    if os.getcwd() not in sys.path:  # let users point at a module in their working directory
        sys.path.insert(0, os.getcwd())
    for name in [module] if isinstance(module, str) else module:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise UserError(f"cannot import task module {name!r} (MIXTURE_OR_TASK_MODULE): {e}; "
                            "check the module path and that it is on PYTHONPATH") from None


def get_task_or_mixture(name: str):
    import seqio
    try:
        return seqio.get_mixture_or_task(name)
    except ValueError:
        known = list(seqio.TaskRegistry.names()) + list(seqio.MixtureRegistry.names())
        raise UserError(f"unknown task or mixture {name!r}{did_you_mean(name, known)}; "
                        "register it in a module given by MIXTURE_OR_TASK_MODULE, or run "
                        "'synthpre inspect' to list names") from None


def subtask_names(name: str) -> list[str]:
    """The tasks under a mixture (T5X evaluates each separately), or [name] for a task."""
    import seqio
    obj = get_task_or_mixture(name)
    if isinstance(obj, seqio.Mixture):
        return [t.name for t in obj.tasks]
    return [obj.name]


def _check(cfg: DatasetConfig) -> None:
    if not cfg.mixture_or_task_name:
        raise UserError("no task given: set MIXTURE_OR_TASK_NAME (e.g. --gin.MIXTURE_OR_TASK_NAME=\"'synthpre_set'\")")
    if not cfg.task_feature_lengths:
        raise UserError("TASK_FEATURE_LENGTHS is not set (e.g. --gin.TASK_FEATURE_LENGTHS=\"{'inputs': 512, 'targets': 512}\")")
    if not isinstance(cfg.task_feature_lengths, Mapping):
        raise UserError(f"TASK_FEATURE_LENGTHS must be a dict like {{'inputs': 512, 'targets': 512}}, "
                        f"got {cfg.task_feature_lengths!r}")
    for k in ("inputs", "targets"):
        v = cfg.task_feature_lengths.get(k)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UserError(f"TASK_FEATURE_LENGTHS[{k!r}] must be a positive integer, got {v!r}")
    if isinstance(cfg.batch_size, bool) or not isinstance(cfg.batch_size, int) or cfg.batch_size < 1:
        raise UserError(f"BATCH_SIZE must be a positive integer, got {cfg.batch_size!r}")


def check_examples(cfg: DatasetConfig, shard_id: int = 0, num_shards: int = 1, sample: int = 64) -> None:
    """Fail early on data that cannot train: an empty split, or a feature length shorter than
    every sampled example (each one would be cut, e.g. a copy task's targets losing their end).

    Samples the first `sample` examples of this host's shard with the task's preprocessors but
    no length limit (so a host reads nothing outside its shard). Tasks whose preprocessors need the lengths (span corruption) are not probed; their
    problems surface from the real pipeline. Cut examples in a mix of lengths are normal
    (long documents), so only 'all of them' is an error.
    """
    import itertools

    import seqio
    obj = get_task_or_mixture(cfg.mixture_or_task_name)
    if cfg.split not in obj.splits:
        raise UserError(f"{cfg.mixture_or_task_name!r} has no split {cfg.split!r}; it has {sorted(obj.splits)}")
    try:
        ds = obj.get_dataset(sequence_length=None, split=cfg.split, use_cached=cfg.use_cached,
                             shuffle=False, num_epochs=1, seed=cfg.seed,
                             shard_info=seqio.ShardInfo(index=shard_id, num_shards=num_shards))
        examples = list(itertools.islice(ds.as_numpy_iterator(), sample))
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - not probeable this way; the real pipeline reports
        logging.debug("example probe of %s skipped: %s", cfg.mixture_or_task_name, e)
        return
    if not examples:
        raise UserError(f"the {cfg.split!r} split of {cfg.mixture_or_task_name!r} is empty; check the task's "
                        "data source (files, DOWNSTREAM_DATA_DIR, --tfds_data_dir)")
    features = obj.output_features if isinstance(obj, (seqio.Task, seqio.Mixture)) else {}
    for name, length in cfg.task_feature_lengths.items():
        lengths = [len(e[name]) for e in examples if name in e and getattr(e[name], "ndim", 0) == 1]
        if name in features and lengths and min(lengths) > length:
            raise UserError(f"TASK_FEATURE_LENGTHS[{name!r}]={length} is too short for "
                            f"{cfg.mixture_or_task_name!r}: all {len(lengths)} sampled examples are longer "
                            f"({min(lengths)} to {max(lengths)} tokens with EOS), so every one would be cut; "
                            f"set it to at least {max(lengths)}")


def get_dataset(cfg: DatasetConfig, shard_id: int = 0, num_shards: int = 1,
                per_host_batch_size: Optional[int] = None, num_epochs: Optional[int] = None,
                start_batch: int = 0, task_name: Optional[str] = None):
    """A batched tf.data.Dataset of this host's shard with EncDecFeatureConverter features."""
    _check(cfg)
    import_task_modules(cfg.module)
    name = task_name or cfg.mixture_or_task_name
    obj = get_task_or_mixture(name)
    if cfg.split not in obj.splits:
        raise UserError(f"task {name!r} has no split {cfg.split!r}; it has {sorted(obj.splits)}")
    batch_size = per_host_batch_size or cfg.batch_size
    fast = _numpy_fast_path(obj, cfg)
    if fast is not None:
        ds = _packed_synthetic_batches(obj, *fast, cfg, shard_id, num_shards, batch_size)
    else:
        ds = _seqio_batches(obj, cfg, shard_id, num_shards, batch_size, num_epochs)
    if start_batch:
        ds = ds.skip(start_batch)
    import tensorflow as tf
    return ds.prefetch(tf.data.AUTOTUNE)


def _seqio_batches(obj, cfg: DatasetConfig, shard_id: int, num_shards: int, batch_size: int,
                   num_epochs: Optional[int]):
    import seqio

    from synthpre_jax.data.packing import NumpyPackingEncDecFeatureConverter
    converter = NumpyPackingEncDecFeatureConverter(
        pack=cfg.pack, use_custom_packing_ops=cfg.use_custom_packing_ops)
    ds = seqio.get_dataset(obj, task_feature_lengths=dict(cfg.task_feature_lengths),
                           feature_converter=converter, dataset_split=cfg.split,
                           use_cached=cfg.use_cached, shuffle=cfg.shuffle, num_epochs=num_epochs,
                           shard_info=seqio.ShardInfo(index=shard_id, num_shards=num_shards),
                           verbose=False, seed=cfg.seed, trim_output_features=cfg.trim_output_features)
    return ds.batch(batch_size, drop_remainder=True)


def packable_synthetic_source(obj, cfg: DatasetConfig):
    """The SyntheticDataSource of `obj` when its packed training batches can be built in
    NumPy exactly as seqio builds them (else None); see `_numpy_fast_path`."""
    fast = _numpy_fast_path(obj, cfg)
    return None if fast is None else fast[0]


def _numpy_fast_path(obj, cfg: DatasetConfig) -> Optional[tuple]:
    """(source, span-corruption settings or None) when the training batches of `obj` can
    be built in NumPy exactly as seqio builds them, else None.

    That holds for a single synthetic task (not a mixture: seqio mixes examples before
    packing) whose preprocessors are `append_eos_after_trim`, or T5 span corruption then
    `append_eos_after_trim` with settings the NumPy chain covers
    (`span_corruption.numpy_stream_settings`, targets-only documents), on its infinite
    train stream, packed with the default (not custom-op) packing.
    """
    import seqio

    from synthpre_jax.data.sources import SyntheticDataSource
    from synthpre_jax.data.span_corruption import numpy_stream_settings
    if not cfg.pack or cfg.use_custom_packing_ops or not isinstance(obj, seqio.Task):
        return None
    source = obj.source
    if (not isinstance(source, SyntheticDataSource) or source.pack_lengths is not None
            or cfg.split != "train" or source.train_size is not None):
        return None
    feats = obj.output_features
    if set(cfg.task_feature_lengths) != {"inputs", "targets"} or not all(
            k in feats and feats[k].add_eos for k in ("inputs", "targets")):
        return None
    if feats["inputs"].vocabulary.eos_id != feats["targets"].vocabulary.eos_id:
        return None
    preprocessors = list(obj.preprocessors)
    if preprocessors == [seqio.preprocessors.append_eos_after_trim]:
        return source, None
    if (len(preprocessors) != 2 or preprocessors[1] != seqio.preprocessors.append_eos_after_trim
            or tuple(source.task.features) != ("targets",)):
        return None
    corruption = numpy_stream_settings(preprocessors[0], cfg.task_feature_lengths, feats)
    return None if corruption is None else (source, corruption)


def _packed_synthetic_batches(obj, source, corruption: Optional[dict], cfg: DatasetConfig,
                              shard_id: int, num_shards: int, batch_size: int):
    """Training batches of a synthetic task packed in NumPy: equal to seqio's
    `EncDecFeatureConverter(pack=True)` batches (tests/test_packing.py), at several times
    the rate, since no TF op runs per example or per row."""
    import tensorflow as tf

    from synthpre_jax.data.background import background_iter
    from synthpre_jax.data.packing import MODEL_FEATURES, packed_batches
    lengths = {k: int(cfg.task_feature_lengths[k]) for k in ("inputs", "targets")}
    eos = obj.output_features["targets"].vocabulary.eos_id
    model_lengths = {n: lengths["inputs" if n.startswith("encoder") else "targets"]
                     for n in MODEL_FEATURES}

    # Build the NumPy task and the validation keys here, not in the generator: that runs
    # on a tf.data thread, and loading a vocabulary there can wait for a TF thread pool
    # the generator itself occupies (a hang with one inter-op thread).
    source.excluded_keys(source.seed if cfg.seed is None else int(cfg.seed))

    def batches():
        groups = source.packing_groups(cfg.split, cfg.seed, shard_id, num_shards, lengths, eos,
                                       corruption)
        return packed_batches(groups, lengths, batch_size)

    def gen():  # on a tf.data thread: only takes batches made on a plain Python thread
        return background_iter(batches)  # itself, not wrapped: see background_iter

    sig = {n: tf.TensorSpec([batch_size, model_lengths[n]], tf.int32) for n in MODEL_FEATURES}
    return tf.data.Dataset.from_generator(gen, output_signature=sig)


def numpy_batches(ds) -> Iterator[dict]:
    """tf.data batches as numpy dicts."""
    yield from ds.as_numpy_iterator()


def take_batches(cfg: DatasetConfig, num_batches: int, shard_id: int, num_shards: int,
                 per_host_batch_size: int, task_name: Optional[str] = None) -> list[dict]:
    """A fixed list of evaluation batches (the same examples at every evaluation, as T5X).

    An eval split smaller than num_batches * batch wraps around, like T5X's repeat().take().
    """
    ds = get_dataset(cfg, shard_id, num_shards, per_host_batch_size, num_epochs=None, task_name=task_name)
    out = [b for _, b in zip(range(num_batches), ds.as_numpy_iterator())]
    if not out:
        raise UserError(f"the {cfg.split!r} split of {task_name or cfg.mixture_or_task_name!r} is empty")
    logging.info("eval set %s/%s: %d batches", task_name or cfg.mixture_or_task_name, cfg.split, len(out))
    return out
