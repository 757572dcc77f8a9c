"""WordVocabulary and the `scan_*_words` tasks: the demo's fast SCAN variant must be SCAN."""
import numpy as np
import pytest
import seqio
import tensorflow as tf

import tasks.downstream as ds_tasks
from synthpre_jax.data import scan
from synthpre_jax.data.word_vocab import WordVocabulary


def test_python_and_tensorflow_paths_agree_on_every_scan_pair():
    vocab = ds_tasks.scan_word_vocabulary()
    assert vocab.vocab_size == 3 + 13 + 6 == 22
    pairs = scan.all_pairs()
    texts = [t for pair in pairs[::97] for t in pair]
    for text in texts:
        ids = vocab.encode(text)
        assert len(ids) == len(text.split()) and min(ids) >= 3  # one id per word, no unknowns
        assert vocab.decode(ids) == text
        np.testing.assert_array_equal(vocab.encode_tf(tf.constant(text)).numpy(), ids)
        assert vocab.decode_tf(tf.constant(ids + [1, 0, 0])).numpy().decode() == text


def test_hand_worked_ids_unknowns_padding_and_eos():
    vocab = WordVocabulary(["walk", "I_WALK", "twice"])
    assert vocab.encode("walk  twice\tfly") == [3, 5, 2]  # any whitespace; unknown -> unk (2)
    assert vocab.decode([3, 2, 5, 0, 1, 4, 4]) == "walk twice"  # unk and pad dropped; stops at EOS
    assert vocab.decode([4, 9, 3]) == "I_WALK walk"  # out of range -> unk -> dropped
    out = vocab.decode_tf(tf.constant([[3, 5, 1, 4], [4, 0, 0, 0]])).numpy().tolist()
    assert out == [b"walk twice", b"I_WALK"]
    assert vocab == WordVocabulary(["walk", "I_WALK", "twice"]) != WordVocabulary(["walk"])


@pytest.mark.parametrize("words", [[], ["a b"], ["a", "a"], [""]])
def test_rejects_bad_word_lists(words):
    with pytest.raises(ValueError):
        WordVocabulary(words)


def test_words_task_holds_the_same_examples_as_the_spm_task():
    lengths = {"inputs": 16, "targets": 64}
    a = seqio.get_mixture_or_task("scan_simple").get_dataset(lengths, split="test", shuffle=False)
    b = seqio.get_mixture_or_task("scan_simple_words").get_dataset(lengths, split="test", shuffle=False)
    va = seqio.get_mixture_or_task("scan_simple").output_features["targets"].vocabulary
    vb = seqio.get_mixture_or_task("scan_simple_words").output_features["targets"].vocabulary
    n = 0
    for x, y in zip(a.take(50).as_numpy_iterator(), b.take(50).as_numpy_iterator()):
        for k in ("inputs", "targets"):
            assert va.decode(x[k].tolist()) == vb.decode(y[k].tolist())
            assert y[k][-1] == 1 and len(y[k]) == len(x[k])  # EOS; one token per word in both
        n += 1
    assert n == 50
    assert ds_tasks.INFER_EVAL_SPLITS["scan_simple_words"] == "test"
