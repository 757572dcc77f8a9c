"""seqio's encoder-decoder packing, done on blocks of examples in NumPy.

`seqio.EncDecFeatureConverter(pack=True)` packs with a `tf.while_loop` that
appends one example at a time to growing tensors, then maps every packed row
through more TF ops. On one CPU core that path tops out at 2-3k examples/s
(benchmarks/synthetic_throughput.py), below the 5k/s one host core should deliver
to keep a T5-small step fed. Why this is written by hand: seqio has no faster
packer that runs without its custom-op binary. Both entry points here produce
the *same rows*, feature for feature and bit for bit, as seqio's TF-ops packing:
`NumpyPackingEncDecFeatureConverter`, a drop-in converter (the trainer uses it;
pass it to `seqio.get_dataset` yourself), and `packed_batches`, whole training
batches straight from NumPy example groups (the trainer's path for a single
synthetic task, data/dataset.py). The rules they share with seqio:

  * examples are trimmed to the task feature lengths and taken in groups of
    `max(lengths)` (seqio's `padded_batch` size); packing restarts with every
    group and its last row is always emitted;
  * within a group, an example joins the current row when every feature still
    fits, else the row is closed (greedy, order kept);
  * seqio measures an example by its number of non-zero ids and keeps that
    many leading ids; this converter does the same, so even inputs with
    padding ids inside behave as they do under seqio;
  * segment ids are seqio's `cumsum(position == 0) * (token != 0)`, decoder
    inputs are `make_autoregressive_inputs` with the segment ids, loss weights
    mark non-padding targets.

In the converter a group is ragged-batched in TF, packed in one
`tf.numpy_function` call and unbatched in C++: one batching step per example
instead of a loop iteration and a map. That gains only 1.1-1.7x, because the
per-example stages before any converter (source, EOS map, `Task.get_dataset`'s
maps, ~60-70 us each here) remain; `packed_batches` avoids them too (4-9x).
Without packing, and with seqio's custom packing ops, the converter is seqio's own.
"""
from __future__ import annotations

from typing import Iterator, Mapping

import numpy as np
import seqio
import tensorflow as tf

from synthpre_jax.synthetic.ragged import Ragged, pack_like_seqio, recut

MODEL_FEATURES = ("encoder_input_tokens", "decoder_target_tokens", "decoder_input_tokens",
                  "decoder_loss_weights", "encoder_segment_ids", "decoder_segment_ids",
                  "encoder_positions", "decoder_positions")
PACKED_FEATURES = tuple(k + s for k in ("inputs", "targets") for s in ("", "_segment_ids", "_positions"))
ROW_BATCH = 64  # pre-packed rows converted per NumPy call


def model_features(packed: Mapping[str, np.ndarray], bos_id: int = 0) -> dict[str, np.ndarray]:
    """`EncDecFeatureConverter._convert_example` on packed rows [rows, length], in NumPy."""
    targets = np.asarray(packed["targets"], dtype=np.int32)
    seg = np.asarray(packed["targets_segment_ids"], dtype=np.int32)
    # the previous target within the same segment, else BOS (column 0 is always BOS)
    same = seg[:, 1:] == seg[:, :-1]
    decoder_inputs = np.full(targets.shape, bos_id, dtype=np.int32)
    decoder_inputs[:, 1:] = np.where(same, targets[:, :-1], np.int32(bos_id))
    return {
        "encoder_input_tokens": np.asarray(packed["inputs"], dtype=np.int32),
        "decoder_target_tokens": targets,
        "decoder_input_tokens": decoder_inputs,
        "decoder_loss_weights": (targets != 0).astype(np.int32),
        "encoder_segment_ids": np.asarray(packed["inputs_segment_ids"], dtype=np.int32),
        "decoder_segment_ids": seg,
        "encoder_positions": np.asarray(packed["inputs_positions"], dtype=np.int32),
        "decoder_positions": np.asarray(packed["targets_positions"], dtype=np.int32),
    }


def is_prepacked(ds: tf.data.Dataset) -> bool:
    """Rows already packed by the source (`SyntheticDataSource(pack_lengths=...)`)."""
    return all(k in ds.element_spec for k in PACKED_FEATURES)


def _numpy_map(ds: tf.data.Dataset, fn, inputs: list[str], outputs: list[str],
               lengths: Mapping[str, int]) -> tf.data.Dataset:
    """Map batches of `ds` through a NumPy function of dense [rows, length] features."""
    def apply(batch):
        flat = tf.numpy_function(lambda *a: tuple(fn(dict(zip(inputs, a)))[n] for n in outputs),
                                 [batch[k] for k in inputs], [tf.int32] * len(outputs),
                                 stateful=False)
        return {n: tf.ensure_shape(t, [None, lengths[n]]) for n, t in zip(outputs, flat)}
    return ds.map(apply, num_parallel_calls=tf.data.AUTOTUNE)


class NumpyPackingEncDecFeatureConverter(seqio.EncDecFeatureConverter):
    """`seqio.EncDecFeatureConverter` whose packing runs on groups in NumPy (module doc).

    A dataset whose rows are already packed (see `is_prepacked`) is only converted,
    in batches of rows.
    """

    def _convert_features(self, ds: tf.data.Dataset,
                          task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
        if not self.pack or self._use_custom_packing_ops or self._passthrough_features:
            return super()._convert_features(ds, task_feature_lengths)
        lengths = {k: int(task_feature_lengths[k]) for k in ("inputs", "targets")}
        model_lengths = self.get_model_feature_lengths(lengths)
        bos = int(self.bos_id)
        names = list(MODEL_FEATURES)
        if is_prepacked(ds):
            # no per-row cast: `model_features` casts each batch of rows
            return _numpy_map(ds.batch(ROW_BATCH), lambda rows: model_features(rows, bos),
                              list(PACKED_FEATURES), names, model_lengths).unbatch()
        keys = list(lengths)
        ds = ds.map(lambda x: {k: tf.cast(x[k], tf.int32) for k in keys},
                    num_parallel_calls=tf.data.AUTOTUNE)

        def pack(batch):
            flat = [t for k in keys for t in (batch[k].flat_values, batch[k].row_splits)]

            def run(*a):
                group = {k: Ragged(a[2 * i], np.diff(a[2 * i + 1])) for i, k in enumerate(keys)}
                out = model_features(pack_like_seqio(group, lengths), bos)
                return tuple(out[n] for n in names)

            out = tf.numpy_function(run, flat, [tf.int32] * len(names), stateful=False)
            return {n: tf.ensure_shape(t, [None, model_lengths[n]]) for n, t in zip(names, out)}

        # seqio packs groups of max(lengths) examples (its padded_batch size)
        return ds.ragged_batch(max(lengths.values())).map(
            pack, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


def packed_batches(groups: Iterator[Mapping[str, Ragged]], lengths: Mapping[str, int],
                   batch_size: int, bos_id: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Model-feature batches of `batch_size` packed rows from groups of examples.

    The batches `NumpyPackingEncDecFeatureConverter` (or seqio's converter) followed
    by `.batch(batch_size, drop_remainder=True)` would give, built without any
    per-row TF work; a last incomplete batch is dropped.
    """
    rows = (model_features(pack_like_seqio(g, lengths), bos_id) for g in groups)
    return recut(rows, batch_size, lambda r: len(r["decoder_target_tokens"]),
                 lambda rs: {n: np.concatenate([r[n] for r in rs]) for n in MODEL_FEATURES},
                 lambda r, lo, hi: {n: v[lo:hi] for n, v in r.items()}, keep_last=False)
