"""Toy tasks *with metrics* for the evaluation, eval/infer CLI and selection tests.

`toy_copy_text`: copy a random lower-case word (4..10 letters). Its vocabulary maps 'a'..'z' to
ids 2..27 (pad 0, eos 1, 32 ids), so the tiny T5 of conftest.TINY_BINDINGS reads it, and
`synthpre infer` can tokenize a plain text file of inputs. metric_fns = exact match on the
decoded strings. Splits: train (endless), validation (128), test (TEST_SIZE).

Variants: `toy_copy_text_scored` (a score metric: mean target log-likelihood, exercising the
evaluator's score_fn), `toy_copy_text_empty` (its test split is empty), `toy_copy_text_mix`
(a mixture of toy_copy_text and toy_copy_text_scored).
"""
import numpy as np
import seqio
import tensorflow as tf

from synthpre_jax.data import metrics

VOCAB_SIZE = 32
MIN_LEN, MAX_LEN = 2, 5
SPLIT_SIZES = {"train": None, "validation": 128, "test": 48}
TEST_SIZE = SPLIT_SIZES["test"]
_OFFSET = ord("a") - 2   # 'a' -> 2


class LetterVocabulary(seqio.Vocabulary):
    """pad 0, eos 1, 'a'..'z' -> 2..27; other characters are dropped when encoding."""

    def __init__(self):
        super().__init__(extra_ids=0)

    @property
    def eos_id(self):
        return 1

    @property
    def unk_id(self):
        return None

    @property
    def _base_vocab_size(self):
        return VOCAB_SIZE

    def _encode(self, s):
        return [ord(c) - _OFFSET for c in s if "a" <= c <= "z"]

    def _decode(self, ids):
        return "".join(chr(int(i) + _OFFSET) for i in ids if 2 <= int(i) <= 27)

    def _encode_tf(self, s):
        cps = tf.strings.unicode_decode(s, "UTF-8")
        keep = tf.boolean_mask(cps, (cps >= ord("a")) & (cps <= ord("z")))
        return tf.cast(keep - _OFFSET, tf.int32)

    def _decode_tf(self, ids):
        ids = tf.cast(ids, tf.int32)
        keep = tf.boolean_mask(ids, (ids >= 2) & (ids <= 27))
        return tf.strings.unicode_encode(keep + _OFFSET, "UTF-8")

    def __eq__(self, other):
        return isinstance(other, LetterVocabulary)

    def __hash__(self):
        return hash("LetterVocabulary")


def word(split: str, i: int) -> str:
    """Example i of a split: a pure function of (split, i)."""
    rng = np.random.default_rng([{"train": 10, "validation": 11, "test": 12}[split], i])
    n = int(rng.integers(MIN_LEN, MAX_LEN + 1))
    return "".join(chr(ord("a") + int(k)) for k in rng.integers(0, 26, size=n))


def _source(sizes):
    def dataset_fn(split: str, shuffle_files: bool = False, seed=None):
        size = sizes[split]

        def gen():
            i = 0
            while size is None or i < size:
                w = word(split, i)
                yield {"inputs": w, "targets": w}
                i += 1

        spec = {"inputs": tf.TensorSpec([], tf.string), "targets": tf.TensorSpec([], tf.string)}
        return tf.data.Dataset.from_generator(gen, output_signature=spec)
    return seqio.FunctionDataSource(dataset_fn, splits=tuple(sizes))


def mean_log_likelihood(targets, scores):
    return {"mean_log_likelihood": float(np.mean(scores))}


def _add(name, sizes, metric_fns):
    if name in seqio.TaskRegistry.names():
        return
    vocab = LetterVocabulary()
    seqio.TaskRegistry.add(
        name, source=_source(sizes),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
        output_features={"inputs": seqio.Feature(vocab, add_eos=True),
                         "targets": seqio.Feature(vocab, add_eos=True)},
        metric_fns=metric_fns)


_add("toy_copy_text", SPLIT_SIZES, [metrics.exact_match])
_add("toy_copy_text_scored", SPLIT_SIZES, [mean_log_likelihood])
_add("toy_copy_text_empty", {**SPLIT_SIZES, "test": 0}, [metrics.exact_match])
if "toy_copy_text_mix" not in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.add("toy_copy_text_mix", ["toy_copy_text", "toy_copy_text_scored"],
                              default_rate=1.0)
