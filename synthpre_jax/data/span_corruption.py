"""T5's span-corruption objective as seqio preprocessors, with a NumPy reference core.

The objective (Raffel et al. 2020, §3.1.4), as T5's `span_corruption`:
  1. `select_random_chunk`: documents longer than 65,536 tokens keep one random
     65,536-token segment;
  2. `reduce_concat_tokens`: batches of 128 documents are concatenated (PAD=0
     stripped), so short documents fill whole examples;
  3. `split_tokens_to_inputs_length`: the stream is cut into segments of the
     length that noises to exactly the input length (568 tokens -> 512 inputs,
     114 targets, EOS included; `random_spans_helper`);
  4. `denoise`: round(len*0.15) noise tokens in round(noise/3) spans. The noise
     and non-noise token counts are each cut into that many non-empty spans
     uniformly at random; spans alternate non-noise, noise, ... (a segment
     starts clean and ends noisy). Each noise span becomes one sentinel in the
     inputs; the targets hold each noise span after its sentinel. Sentinels count
     down from the last id (vocab_size - 1 = 32099 = <extra_id_0>).
This module writes that algorithm itself (T5/seqio code is not a dependency).

Seeds are stateless and per example: each segment's noise mask is drawn from
(`seed`, a hash of the segment's tokens), so the output is a pure function of the
data and `seed` — independent of hosts, epochs, restarts and of seqio's seed
manager. Identical segments get identical masks. Masking and sentinels are
`synthetic.span_noise.span_corrupt_segments` (NumPy), called here on batches of
64 segments; the trainer's NumPy input path for span-corrupted synthetic tasks
runs the same function on its own, so both give the same examples.

The plain NumPy functions (`*_np`, drawing from a `np.random.Generator`) are the
reference: tests check them on hand-worked examples, `span_noise` against them,
and the masks' statistics against theirs.
"""
from __future__ import annotations

import functools
from typing import Mapping, Optional

import gin
import numpy as np
import seqio
import tensorflow as tf

from synthpre_jax.synthetic.ragged import Ragged
from synthpre_jax.synthetic.span_noise import (MEAN_NOISE_SPAN_LENGTH, NOISE_DENSITY,  # noqa: F401
                                               chunk_start, noise_counts, random_spans_helper,
                                               span_corrupt_segments)

DENOISE_BATCH = 64  # segments per NumPy call in `denoise`


# ---------------------------------------------------------------------------
# NumPy reference
# ---------------------------------------------------------------------------
def random_segmentation_np(num_items: int, num_segments: int,
                           rng: np.random.Generator) -> np.ndarray:
    """Split num_items into num_segments non-empty parts, uniformly over compositions."""
    cuts = np.sort(rng.permutation(num_items - 1)[:num_segments - 1] + 1)
    return np.diff(np.concatenate([[0], cuts, [num_items]]))


def random_spans_noise_mask_np(length: int, rng: np.random.Generator,
                               noise_density: float = NOISE_DENSITY,
                               mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH) -> np.ndarray:
    """Boolean mask of `length`: True marks noise (alternating clean/noise spans)."""
    orig = int(length)
    length = max(orig, 2)
    noise, spans = noise_counts(length, noise_density, mean_noise_span_length)
    noise_len = random_segmentation_np(noise, spans, rng)
    clean_len = random_segmentation_np(length - noise, spans, rng)
    lens = np.stack([clean_len, noise_len], axis=1).ravel()
    return np.repeat(np.tile([False, True], spans), lens)[:orig]


def noise_span_to_unique_sentinel_np(tokens: np.ndarray, noise_mask: np.ndarray,
                                     sentinel_start: int) -> np.ndarray:
    """Each run of masked tokens -> one sentinel, counting down from `sentinel_start`."""
    tokens = np.asarray(tokens)
    prev = np.concatenate([[False], noise_mask[:-1]])
    first = noise_mask & ~prev
    sentinels = sentinel_start + 1 - np.cumsum(first)
    return np.where(first, sentinels, tokens)[~(noise_mask & prev)].astype(tokens.dtype)


def span_corrupt_np(tokens: np.ndarray, rng: np.random.Generator, sentinel_start: int = 32099,
                    noise_density: float = NOISE_DENSITY,
                    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH):
    """(inputs, targets, noise_mask) of one segment, without EOS."""
    mask = random_spans_noise_mask_np(len(tokens), rng, noise_density, mean_noise_span_length)
    inputs = noise_span_to_unique_sentinel_np(tokens, mask, sentinel_start)
    targets = noise_span_to_unique_sentinel_np(tokens, ~mask, sentinel_start)
    return inputs, targets, mask


def uncorrupt_np(inputs: np.ndarray, targets: np.ndarray, sentinel_start: int = 32099,
                 num_sentinels: int = 100) -> np.ndarray:
    """Put the target spans back at their sentinels: the original segment."""
    lowest = sentinel_start - num_sentinels + 1
    spans: dict[int, list[int]] = {}
    current = None
    for t in np.asarray(targets).tolist():
        if lowest <= t <= sentinel_start:
            current = t
            spans[current] = []
        elif current is not None:
            spans[current].append(t)
    out: list[int] = []
    for t in np.asarray(inputs).tolist():
        out.extend(spans.get(t, []) if lowest <= t <= sentinel_start else [t])
    return np.asarray(out, dtype=np.asarray(inputs).dtype)


# ---------------------------------------------------------------------------
# seqio preprocessors
# ---------------------------------------------------------------------------
@gin.configurable(module="synthpre", denylist=["dataset"])
def select_random_chunk(dataset: tf.data.Dataset, max_length: int = 65536,
                        feature_key: str = "targets", seed: int = 0) -> tf.data.Dataset:
    """Documents longer than `max_length` keep one segment of it, chosen from (seed, the
    document's tokens) by `span_noise.chunk_start`."""

    def start_of(tokens):
        return np.int64(chunk_start(tokens, seed, max_length))

    def fn(x):
        tokens = x[feature_key]
        start = tf.cond(tf.size(tokens) > max_length,
                        lambda: tf.numpy_function(start_of, [tokens], tf.int64, stateful=False),
                        lambda: tf.constant(0, tf.int64))
        start = tf.reshape(start, [])
        return {feature_key: tokens[start:start + max_length]}

    return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def reduce_concat_tokens(dataset: tf.data.Dataset, feature_key: str = "targets",
                         batch_size: int = 128) -> tf.data.Dataset:
    """Concatenate `batch_size` consecutive documents (padding 0s removed)."""
    ds = dataset.map(lambda x: {feature_key: x[feature_key]}, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.padded_batch(batch_size, padded_shapes={feature_key: [-1]})

    def fn(x):
        flat = tf.reshape(x[feature_key], [-1])
        return {feature_key: tf.boolean_mask(flat, tf.not_equal(flat, 0))}

    return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def split_tokens(dataset: tf.data.Dataset, max_tokens_per_segment: int,
                 feature_key: str = "targets") -> tf.data.Dataset:
    """Cut each sequence into consecutive segments of `max_tokens_per_segment` (last shorter)."""

    def fn(x):
        tokens = x[feature_key]
        n = tf.size(tokens, out_type=tf.int64)
        full = n // max_tokens_per_segment
        rest = n - full * max_tokens_per_segment
        lengths = tf.concat([tf.fill([full], tf.constant(max_tokens_per_segment, tf.int64)),
                             tf.reshape(rest, [1])[:tf.cast(rest > 0, tf.int32)]], axis=0)
        return {feature_key: tf.RaggedTensor.from_row_lengths(tokens, lengths)}

    ds = dataset.filter(lambda x: tf.size(x[feature_key]) > 0)
    return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


def split_tokens_to_inputs_length(dataset: tf.data.Dataset, sequence_length: Mapping[str, int],
                                  feature_key: str = "targets",
                                  noise_density: float = NOISE_DENSITY,
                                  mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH
                                  ) -> tf.data.Dataset:
    tokens, _ = random_spans_helper(sequence_length["inputs"], noise_density, mean_noise_span_length)
    return split_tokens(dataset, tokens, feature_key)


def denoise(dataset: tf.data.Dataset, output_features: Mapping[str, seqio.Feature],
            noise_density: float = NOISE_DENSITY,
            mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH, seed: int = 0,
            input_feature_key: str = "inputs") -> tf.data.Dataset:
    """targets -> (inputs with sentinels, targets of sentinel + noise spans)."""
    vocab = output_features["targets"].vocabulary
    if input_feature_key in output_features and output_features[input_feature_key].vocabulary != vocab:
        raise ValueError("span corruption needs the same vocabulary for inputs and targets")
    sentinel = vocab.vocab_size - 1
    dtype = dataset.element_spec["targets"].dtype

    def corrupt(values, lengths):
        inputs, targets = span_corrupt_segments(Ragged(values, lengths), seed, sentinel,
                                                noise_density, mean_noise_span_length)
        out = dtype.as_numpy_dtype
        return inputs.values.astype(out), inputs.lengths, targets.values.astype(out), targets.lengths

    def fn(segments):
        parts = tf.numpy_function(corrupt, [segments.flat_values, segments.row_lengths()],
                                  [dtype, tf.int64, dtype, tf.int64], stateful=False)
        iv, il, tv, tl = (tf.ensure_shape(p, [None]) for p in parts)
        return {input_feature_key: tf.RaggedTensor.from_row_lengths(iv, il, validate=False),
                "targets": tf.RaggedTensor.from_row_lengths(tv, tl, validate=False)}

    # Segments go to NumPy DENOISE_BATCH at a time: one call instead of TF ops per segment.
    batches = dataset.map(lambda x: x["targets"]).ragged_batch(DENOISE_BATCH)
    return batches.map(fn, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


@gin.configurable(module="synthpre", denylist=["dataset", "sequence_length", "output_features"])
def span_corruption(dataset: tf.data.Dataset, sequence_length: Optional[Mapping[str, int]],
                    output_features: Mapping[str, seqio.Feature],
                    noise_density: float = NOISE_DENSITY,
                    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
                    merge_examples_to_reduce_padding: bool = True,
                    reduce_batch_size: int = 128, seed: int = 0,
                    input_feature_key: str = "inputs") -> tf.data.Dataset:
    """The whole T5 objective: chunk, concatenate, split to length, noise (module docstring)."""
    if sequence_length is None or sequence_length.get(input_feature_key) is None:
        raise ValueError("span_corruption needs sequence_length['inputs']")
    tokens_len, targets_len = random_spans_helper(sequence_length[input_feature_key],
                                                  noise_density, mean_noise_span_length)
    if sequence_length.get("targets") is not None and sequence_length["targets"] < targets_len:
        raise ValueError(f"targets length {sequence_length['targets']} < {targets_len} needed "
                         f"by span corruption for {sequence_length[input_feature_key]} inputs")
    ds = select_random_chunk(dataset, feature_key="targets", seed=seed)
    if merge_examples_to_reduce_padding:
        ds = reduce_concat_tokens(ds, feature_key="targets", batch_size=reduce_batch_size)
    ds = split_tokens(ds, tokens_len, feature_key="targets")
    return denoise(ds, output_features, noise_density, mean_noise_span_length, seed,
                   input_feature_key)


def span_corruption_preprocessors(seed: int = 0) -> list:
    """The preprocessor list of a span-corruption task: the objective, then EOS."""
    return [functools.partial(span_corruption, seed=seed), seqio.preprocessors.append_eos_after_trim]


def numpy_stream_settings(preprocessor, sequence_length: Mapping[str, int],
                          output_features: Mapping[str, seqio.Feature]) -> Optional[dict]:
    """The arguments of `span_noise.span_corrupt_stream` that give exactly what this
    seqio preprocessor gives (gin bindings included), or None where the NumPy chain
    does not cover it (another preprocessor, no merging, another feature key, a
    binding that is not a plain number, a length or vocabulary the preprocessor
    itself would reject)."""
    if not (isinstance(preprocessor, functools.partial) and preprocessor.func is span_corruption
            and not preprocessor.args):
        return None
    kw = {**gin.get_bindings(span_corruption), **preprocessor.keywords}
    defaults = dict(noise_density=NOISE_DENSITY, mean_noise_span_length=MEAN_NOISE_SPAN_LENGTH,
                    merge_examples_to_reduce_padding=True, reduce_batch_size=128, seed=0,
                    input_feature_key="inputs")
    if set(kw) - set(defaults):
        return None
    kw = {**defaults, **kw}
    chunk = gin.get_bindings(select_random_chunk)
    max_length = chunk.get("max_length", 65536)
    numbers = [kw["noise_density"], kw["mean_noise_span_length"], kw["reduce_batch_size"],
               kw["seed"], max_length]
    if (not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in numbers)
            or kw["merge_examples_to_reduce_padding"] is not True or kw["input_feature_key"] != "inputs"
            or set(chunk) - {"max_length"}):
        return None
    if "inputs" not in sequence_length or "targets" not in sequence_length:
        return None
    tokens, targets = random_spans_helper(sequence_length["inputs"], kw["noise_density"],
                                          kw["mean_noise_span_length"])
    vocab = output_features["targets"].vocabulary
    if sequence_length["targets"] < targets or output_features["inputs"].vocabulary != vocab:
        return None
    return dict(seed=int(kw["seed"]), segment_length=tokens, sentinel_start=vocab.vocab_size - 1,
                reduce_batch_size=int(kw["reduce_batch_size"]), noise_density=kw["noise_density"],
                mean_noise_span_length=kw["mean_noise_span_length"], max_length=int(max_length))
