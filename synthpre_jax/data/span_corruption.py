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
(`seed`, a fingerprint of the segment's tokens), so the output is a pure function
of the data and `seed` — independent of hosts, epochs, restarts and of seqio's
seed manager. Identical segments get identical masks.

NumPy functions (`*_np`) are the reference implementation: tests check them on
hand-worked examples and statistics, and the TF functions against them.
"""
from __future__ import annotations

import functools
from typing import Mapping, Optional

import gin
import numpy as np
import seqio
import tensorflow as tf

NOISE_DENSITY = 0.15
MEAN_NOISE_SPAN_LENGTH = 3.0


# ---------------------------------------------------------------------------
# Lengths
# ---------------------------------------------------------------------------
def _round_half_even(x: float) -> int:
    return int(np.round(x))  # NumPy and TF both round half to even


def noise_counts(length: int, noise_density: float = NOISE_DENSITY,
                 mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH) -> tuple[int, int]:
    """(noise tokens, noise spans) for a segment, with T5's degeneracy guards."""
    length = max(int(length), 2)
    noise = min(max(_round_half_even(length * noise_density), 1), length - 1)
    spans = max(_round_half_even(noise / mean_noise_span_length), 1)
    return noise, spans


def random_spans_helper(inputs_length: int, noise_density: float = NOISE_DENSITY,
                        mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
                        extra_tokens_per_span_inputs: int = 1,
                        extra_tokens_per_span_targets: int = 1) -> tuple[int, int]:
    """(segment length, targets length) so that noised inputs + EOS fill `inputs_length`."""

    def lengths(tokens: int) -> tuple[int, int]:
        noise = _round_half_even(tokens * noise_density)
        spans = _round_half_even(noise / mean_noise_span_length)
        return (tokens - noise + spans * extra_tokens_per_span_inputs + 1,
                noise + spans * extra_tokens_per_span_targets + 1)

    tokens = inputs_length - 1
    while lengths(tokens + 1)[0] <= inputs_length:
        tokens += 1
    inputs, targets = lengths(tokens)
    if noise_density == 0.5 and targets > inputs:  # T5 keeps targets <= inputs here
        tokens -= 1
        targets -= 1
    return tokens, targets


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
# TensorFlow implementation (same algorithm)
# ---------------------------------------------------------------------------
def _content_seed(tokens: tf.Tensor, seed: int, salt: int) -> tf.Tensor:
    fp = tf.strings.to_hash_bucket_fast(tf.io.serialize_tensor(tokens), 2**62)
    return tf.stack([tf.constant(seed * 1000003 + salt, tf.int64), fp])


def random_segmentation_tf(num_items: tf.Tensor, num_segments: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    keys = tf.random.stateless_uniform(tf.reshape(num_items - 1, [1]), seed=seed)
    cuts = tf.sort(tf.argsort(keys)[:num_segments - 1] + 1)
    bounds = tf.concat([[0], tf.cast(cuts, tf.int32), tf.reshape(num_items, [1])], axis=0)
    return bounds[1:] - bounds[:-1]


def random_spans_noise_mask_tf(length: tf.Tensor, seeds, noise_density: float = NOISE_DENSITY,
                               mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH) -> tf.Tensor:
    orig = tf.cast(length, tf.int32)
    length = tf.maximum(orig, 2)
    noise = tf.cast(tf.round(tf.cast(length, tf.float64) * noise_density), tf.int32)
    noise = tf.minimum(tf.maximum(noise, 1), length - 1)
    spans = tf.maximum(tf.cast(tf.round(tf.cast(noise, tf.float64) / mean_noise_span_length),
                               tf.int32), 1)
    noise_len = random_segmentation_tf(noise, spans, seeds[0])
    clean_len = random_segmentation_tf(length - noise, spans, seeds[1])
    lens = tf.reshape(tf.stack([clean_len, noise_len], axis=1), [-1])
    pattern = tf.tile(tf.constant([False, True]), tf.reshape(spans, [1]))
    return tf.repeat(pattern, lens)[:orig]


def noise_span_to_unique_sentinel_tf(tokens: tf.Tensor, noise_mask: tf.Tensor,
                                     sentinel_start) -> tf.Tensor:
    prev = tf.concat([[False], noise_mask[:-1]], axis=0)
    first = tf.logical_and(noise_mask, tf.logical_not(prev))
    sentinels = tf.cast(sentinel_start, tokens.dtype) + 1 - tf.cumsum(tf.cast(first, tokens.dtype))
    out = tf.where(first, sentinels, tokens)
    return tf.boolean_mask(out, tf.logical_not(tf.logical_and(noise_mask, prev)))


# ---------------------------------------------------------------------------
# seqio preprocessors
# ---------------------------------------------------------------------------
@gin.configurable(module="synthpre", denylist=["dataset"])
def select_random_chunk(dataset: tf.data.Dataset, max_length: int = 65536,
                        feature_key: str = "targets", seed: int = 0) -> tf.data.Dataset:
    """Documents longer than `max_length` keep one uniformly chosen segment of it."""

    def fn(x):
        tokens = x[feature_key]
        n = tf.size(tokens)
        num = (n + max_length - 1) // max_length
        u = tf.random.stateless_uniform([], seed=_content_seed(tokens, seed, 1), maxval=1.0)
        start = tf.cast(tf.floor(u * tf.cast(num, tf.float32)), tf.int32) * max_length
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

    def fn(x):
        tokens = x["targets"]
        seeds = [_content_seed(tokens, seed, 2), _content_seed(tokens, seed, 3)]
        mask = random_spans_noise_mask_tf(tf.size(tokens), seeds, noise_density, mean_noise_span_length)
        return {input_feature_key: noise_span_to_unique_sentinel_tf(tokens, mask, sentinel),
                "targets": noise_span_to_unique_sentinel_tf(tokens, tf.logical_not(mask), sentinel)}

    return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


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
