"""seqio DataSource that generates synthetic examples on the fly, deterministically.

Example `i` of (task, split, seed) is `synthpre_jax.synthetic.example(...)`: a
pure function of those values (see `synthetic.rng`). This source streams those
examples into tf.data:
  * `train` is infinite; `validation` has `validation_size` examples (10,000);
  * `shard_info` (host h of H) gives host h the blocks h, h+H, ... of 32
    consecutive indices: hosts are disjoint and together cover every index, and
    when the per-host batch is a multiple of 32 the global batch at every step is
    the same whatever H is;
  * `start_index` resumes at a global index (e.g. step * global_batch) without
    generating the examples before it;
  * with `dedup_validation` (default), training examples whose input (targets
    for targets-only tasks) equals a validation input are dropped, so train and
    validation never overlap exactly; a dropped example keeps its index, so
    resuming stays exact;
  * no shuffle buffer: examples are i.i.d. already (`performs_internal_shuffling`);
  * with `pack_lengths` (e.g. {"inputs": 512, "targets": 512}) the source appends
    EOS after trimming and packs in NumPy, yielding rows with `*_segment_ids` /
    `*_positions` (for `data.packing.NumpyPackingEncDecFeatureConverter` or
    `seqio.PrePackedEncDecFeatureConverter`). The rows are exactly those
    `seqio.EncDecFeatureConverter(pack=True)` builds from one pass of the unpacked
    stream (same groups of max(lengths) examples, same greedy rule; seqio repeating a
    finite split would also pack across the epoch seam), without seqio's
    per-example TF maps and while-loop packing, which bound the standard path's
    rate (benchmarks/synthetic_throughput.py). A mixture of packed tasks would
    mix rows, not examples, so only single tasks use it (data/dataset.py).
The generator runs in a tf.data thread and yields chunks of `chunk_size` (256)
examples as ragged tensors, which are unbatched into examples.
"""
from __future__ import annotations

import threading
from typing import Iterator, Mapping, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from synthpre_jax.synthetic.base import SyntheticTask, iter_shard, validation_keys
from synthpre_jax.synthetic.ragged import Ragged, append_eos_after_trim, pack_like_seqio, recut
from synthpre_jax.synthetic.registry import make_task
from synthpre_jax.synthetic.span_noise import span_corrupt_stream

DEFAULT_VALIDATION_SIZE = 10_000
_VALIDATION_KEYS: dict[tuple, set] = {}
_KEYS_LOCK = threading.Lock()


class SyntheticDataSource(seqio.DataSource):
    """On-the-fly examples of one synthetic task (module docstring)."""

    def __init__(self, task_name: str, task_config: Optional[Mapping] = None,
                 vocabulary: Optional[seqio.Vocabulary] = None, seed: int = 0,
                 validation_size: int = DEFAULT_VALIDATION_SIZE, start_index: int = 0,
                 splits: Sequence[str] = ("train", "validation"), dedup_validation: bool = True,
                 chunk_size: int = 256, train_size: Optional[int] = None,
                 pack_lengths: Optional[Mapping[str, int]] = None):
        super().__init__(splits=splits, num_input_examples=None, caching_permitted=False,
                         performs_internal_shuffling=True)
        self.task_name = task_name
        self.task_config = dict(task_config or {})
        self._vocabulary = vocabulary
        self.seed = int(seed)
        self.validation_size = int(validation_size)
        self.train_size = train_size
        self.start_index = int(start_index)
        self.dedup_validation = dedup_validation
        self.chunk_size = int(chunk_size)
        self.pack_lengths = dict(pack_lengths) if pack_lengths else None
        self._task: Optional[SyntheticTask] = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"SyntheticDataSource({self.task_name!r}, config={self.task_config}, "
                f"seed={self.seed}, validation_size={self.validation_size})")

    @property
    def vocabulary(self) -> seqio.Vocabulary:
        if self._vocabulary is None:
            from synthpre_jax.data.vocabularies import get_default_vocabulary

            self._vocabulary = get_default_vocabulary()
        return self._vocabulary

    @property
    def task(self) -> SyntheticTask:
        """The NumPy task, built on first use with the vocabulary's codec."""
        if self._task is None:
            with self._lock:
                if self._task is None:
                    self._task = make_task(self.task_name, codec=codec_for(self.vocabulary),
                                           **self.task_config)
        return self._task

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True

    def list_shards(self, split: str) -> Sequence[str]:
        return [split]

    def num_input_examples(self, split: str) -> Optional[int]:
        if split == "validation":
            return self.validation_size
        return self.train_size

    def split_bounds(self, split: str) -> tuple[int, Optional[int]]:
        if split == "validation":
            return 0, self.validation_size
        if split == "train":
            stop = self.train_size
            return self.start_index, stop
        return 0, self.validation_size  # "test": a further held-out stream

    def excluded_keys(self, seed: int) -> Optional[set]:
        """Validation keys for the train split (computed once per task and seed)."""
        if not self.dedup_validation or self.validation_size <= 0:
            return None
        task = self.task
        feature = "inputs" if "inputs" in task.features else task.features[0]
        key = (task.key, seed, self.validation_size, feature, id(type(task)))
        with _KEYS_LOCK:
            if key not in _VALIDATION_KEYS:
                _VALIDATION_KEYS[key] = validation_keys(task, seed, self.validation_size, feature)
            return _VALIDATION_KEYS[key]

    def iter_blocks(self, split: str, seed: Optional[int] = None, shard_index: int = 0,
                    num_shards: int = 1):
        """(indices, block) of this host's share of a split, in stream order."""
        if split not in self.splits:
            raise ValueError(f"split {split!r} not in {self.splits}")
        seed = self.seed if seed is None else int(seed)
        start, stop = self.split_bounds(split)
        task = self.task
        exclude = self.excluded_keys(seed) if split == "train" else None
        feature = "inputs" if "inputs" in task.features else task.features[0]
        return iter_shard(task, seed, split, num_shards, shard_index, start, stop,
                          exclude=exclude, exclude_feature=feature, chunk=self.chunk_size)

    def get_dataset(self, split: str = "train", shuffle: bool = True, seed: Optional[int] = None,
                    shard_info: Optional[seqio.ShardInfo] = None, *,
                    sequence_length: Optional[Mapping[str, int]] = None,
                    use_cached: bool = False, num_epochs: Optional[int] = 1) -> tf.data.Dataset:
        del shuffle, sequence_length, use_cached, num_epochs  # i.i.d. stream; seqio repeats
        index, count = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)
        features = self.task.features
        if self.pack_lengths is not None:
            return self._packed_dataset(split, seed, index, count)

        def gen():
            for _, block in self.iter_blocks(split, seed, index, count):
                yield _flatten([block], features)

        sig = {}
        for f in features:
            sig[f + "/values"] = tf.TensorSpec([None], tf.int32)
            sig[f + "/lengths"] = tf.TensorSpec([None], tf.int64)
        ds = tf.data.Dataset.from_generator(gen, output_signature=sig)

        def to_ragged(d):
            return {f: tf.RaggedTensor.from_row_lengths(d[f + "/values"], d[f + "/lengths"],
                                                        validate=False) for f in features}

        return ds.map(to_ragged).unbatch()

    def packing_groups(self, split: str, seed: Optional[int], shard_index: int, num_shards: int,
                       lengths: Mapping[str, int], eos_id: int,
                       span_corruption: Optional[Mapping] = None) -> Iterator[dict]:
        """This host's examples with EOS appended after trimming, in the groups of
        max(lengths) examples that seqio's packing works on (`seqio_packing_groups`).

        With `span_corruption` (`span_noise.span_corrupt_stream`'s arguments) the
        examples are the span-corrupted segments of the (targets-only) documents."""
        blocks = (b for _, b in self.iter_blocks(split, seed, shard_index, num_shards))
        if span_corruption is not None:
            pairs = span_corrupt_stream((b["targets"] for b in blocks), **span_corruption)
            blocks = ({"inputs": i, "targets": t} for i, t in pairs)
        blocks = ({f: append_eos_after_trim(b[f], lengths[f], eos_id) for f in lengths}
                  for b in blocks)
        return seqio_packing_groups(blocks, max(lengths.values()))

    def _packed_dataset(self, split, seed, index, count) -> tf.data.Dataset:
        lengths = self.pack_lengths
        if not set(lengths) <= set(self.task.features):
            raise ValueError(f"pack_lengths {sorted(lengths)} not in features {self.task.features}")

        eos = self.vocabulary.eos_id  # resolved here, not on the tf.data thread

        def gen():
            for group in self.packing_groups(split, seed, index, count, lengths, eos):
                yield pack_like_seqio(group, lengths)

        sig = {}
        for f, n in lengths.items():
            for suffix in ("", "_segment_ids", "_positions"):
                sig[f + suffix] = tf.TensorSpec([None, n], tf.int32)
        return tf.data.Dataset.from_generator(gen, output_signature=sig).unbatch()


def seqio_packing_groups(blocks: Iterator[dict], size: int) -> Iterator[dict]:
    """Re-cut a stream of example blocks into groups of exactly `size` examples (the
    last one shorter), the groups seqio's packing works on, so that packing each
    group gives seqio's rows."""
    return recut(blocks, size, lambda b: len(next(iter(b.values()))),
                 lambda bs: {f: Ragged.concat([b[f] for b in bs]) for f in bs[0]},
                 lambda b, lo, hi: {f: r.slice(lo, hi) for f, r in b.items()}, keep_last=True)


class _VocabularyCodec:
    """Any seqio vocabulary as a generator codec (encode/decode in Python)."""

    name = "seqio"
    exact = False

    def __init__(self, vocab: seqio.Vocabulary):
        self._vocab = vocab

    def encode(self, text: str) -> list:
        return list(self._vocab.encode(text))

    def decode(self, ids) -> str:
        return self._vocab.decode([int(i) for i in ids])


def codec_for(vocab: seqio.Vocabulary):
    """The TensorFlow-free codec the NumPy generators use with `vocab`."""
    from synthpre_jax.synthetic.codec import SentencePieceCodec

    if hasattr(vocab, "codec"):
        return vocab.codec
    if isinstance(vocab, seqio.SentencePieceVocabulary):
        return SentencePieceCodec(vocab.tokenizer)
    return _VocabularyCodec(vocab)


def _flatten(parts: list, features: Sequence[str]) -> dict:
    out = {}
    for f in features:
        out[f + "/values"] = np.concatenate([p[f].values for p in parts])
        out[f + "/lengths"] = np.concatenate([p[f].lengths for p in parts])
    return out
