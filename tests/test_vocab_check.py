"""A checkpoint's embedding is only reused under the vocabulary it was trained with."""

import pytest

from synthpre_jax.data import vocab_check
from synthpre_jax.errors import UserError

A = {"inputs": {"class": "PassThroughVocabulary", "vocab_size": 32}, "targets": {"class": "PassThroughVocabulary", "vocab_size": 32}}
B = {"inputs": {"class": "SentencePieceVocabulary", "vocab_size": 4100}, "targets": {"class": "SentencePieceVocabulary", "vocab_size": 4100}}


def test_mismatch_refused_only_when_embedding_is_kept(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoint_10").mkdir(parents=True)
    vocab_check.write(str(run), A)
    ckpt = str(run / "checkpoint_10")
    with pytest.raises(UserError, match="vocabulary mismatch.*load_all_but_embed"):
        vocab_check.check_checkpoint_matches(ckpt, B, keeps_embedding=True)
    vocab_check.check_checkpoint_matches(ckpt, B, keeps_embedding=False)   # fresh embedding: fine
    vocab_check.check_checkpoint_matches(ckpt, A, keeps_embedding=True)    # same vocabulary: fine
    vocab_check.check_checkpoint_matches(str(tmp_path / "foreign"), B, keeps_embedding=True)  # nothing recorded


def test_describe_real_vocabularies():
    import seqio
    from synthpre_jax.data.offline_vocab import get_offline_vocabulary
    d = vocab_check.describe(get_offline_vocabulary())
    assert d["vocab_size"] == 4100 and len(d.get("model_sha256", "")) == 64
    assert vocab_check.describe(seqio.PassThroughVocabulary(32, eos_id=1)) == {"class": "PassThroughVocabulary", "vocab_size": 32}
