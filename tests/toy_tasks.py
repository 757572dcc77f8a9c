"""A user-style task module for the training-core tests: `toy_copy` over a 30-token vocabulary.

It is imported through MIXTURE_OR_TASK_MODULE exactly as a user's own module would be, and is
small enough that a tiny T5 learns it in a few hundred CPU steps.
"""
import numpy as np
import seqio
import tensorflow as tf

VOCAB_SIZE = 32          # ids 0 (pad) and 1 (eos) are special
MIN_LEN, MAX_LEN = 4, 10
VALIDATION_SIZE = 256


def _examples(split: str, shuffle_files: bool = False, seed=None):
    split_id = {"train": 0, "validation": 1}[split]

    def gen():
        i = 0
        while split == "train" or i < VALIDATION_SIZE:
            rng = np.random.default_rng([split_id, i])
            x = rng.integers(2, VOCAB_SIZE, size=int(rng.integers(MIN_LEN, MAX_LEN + 1)), dtype=np.int32)
            yield {"inputs": x, "targets": x.copy()}
            i += 1

    spec = {"inputs": tf.TensorSpec([None], tf.int32), "targets": tf.TensorSpec([None], tf.int32)}
    return tf.data.Dataset.from_generator(gen, output_signature=spec)


if "toy_copy" not in seqio.TaskRegistry.names():
    vocab = seqio.PassThroughVocabulary(size=VOCAB_SIZE, eos_id=1)
    seqio.TaskRegistry.add(
        "toy_copy",
        source=seqio.FunctionDataSource(_examples, splits=("train", "validation")),
        preprocessors=[seqio.preprocessors.append_eos_after_trim],
        output_features={"inputs": seqio.Feature(vocab, add_eos=True),
                         "targets": seqio.Feature(vocab, add_eos=True)},
        metric_fns=[])
