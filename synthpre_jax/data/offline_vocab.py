"""The offline SentencePiece vocabulary: T5-style ids, trained on text that ships with Python.

Why a second vocabulary: T5's SentencePiece model (gs://t5-data/vocabs/cc_all.32000) needs the
network or a prior download, but the CPU demo and the test-suite must run offline. This model is
committed to the package (`data/assets/offline_spm.model`) and is what every test and the demo
use. `scripts/build_offline_vocab.py` rebuilds it deterministically (one thread, no sampling,
no shuffling); a test checks the rebuild reproduces the committed pieces when run on the same
CPython text (`pydoc_data.topics` changes between Python releases, so the committed file, not
a rebuild, is the reference).

Layout, as T5's: pad=0, eos=1, unk=2, no bos; `OFFLINE_VOCAB_PIECES` (4000) pieces; seqio adds
`extra_ids` sentinels (<extra_id_0> is the last id), so with 100 extra ids there are 4100 ids.

Training text: every document of CPython's `pydoc_data.topics` (about 65k English words, a
small corpus: English outside Python's documentation splits into short pieces). The SCAN command
and action words are user-defined symbols with the word-start marker ("▁jump", "▁I_TURN_LEFT",
...), so a SCAN example costs exactly one token per word. (Repeating them in the training text
does not work: SentencePiece counts identical lines once.) The price: a word that *starts* with
a SCAN word is split after it ("android" -> "▁and" "r" "o" "id"), which is harmless.

Checkpoint compatibility: a model using this vocabulary may keep T5's embedding size of 32128
(`network.T5Config.vocab_size`). Ids >= 4100 are never produced by the tokenizer; they only hold
untrained rows, so such checkpoints stay shape-compatible with T5-sized ones (and
`load_all_but_embed` is the honest choice when moving between this vocabulary and T5's).
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Iterable

import gin

ASSET_DIR = Path(__file__).resolve().parent / "assets"
OFFLINE_SPM_MODEL = ASSET_DIR / "offline_spm.model"
# Records the Python version and the hash of the training text the committed model was built on.
OFFLINE_SPM_META = ASSET_DIR / "offline_spm.json"
OFFLINE_VOCAB_PIECES = 4000

SCAN_COMMAND_WORDS = ("jump", "walk", "run", "look", "turn", "left", "right", "around",
                      "opposite", "twice", "thrice", "and", "after")
SCAN_ACTION_WORDS = ("I_JUMP", "I_WALK", "I_RUN", "I_LOOK", "I_TURN_LEFT", "I_TURN_RIGHT")
SCAN_WORDS = SCAN_COMMAND_WORDS + SCAN_ACTION_WORDS

# The trainer's settings. Fixed here (not flags) so every rebuild is the same model.
TRAINER_CONFIG = dict(
    model_type="unigram",
    vocab_size=OFFLINE_VOCAB_PIECES,
    pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
    pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
    character_coverage=1.0,
    normalization_rule_name="nmt_nfkc",
    num_threads=1,
    input_sentence_size=0,
    shuffle_input_sentence=False,
    seed_sentencepiece_size=1000000,
    max_sentence_length=1 << 16,
    split_digits=False,
    user_defined_symbols=["\u2581" + w for w in SCAN_WORDS],
    byte_fallback=False,
)


def pydoc_topic_texts() -> list[str]:
    """The `pydoc_data.topics` documents, sorted by topic name (a stable order)."""
    from pydoc_data.topics import topics
    return [topics[k] for k in sorted(topics)]


def training_lines() -> list[str]:
    """The exact lines the vocabulary is trained on (non-empty, stripped)."""
    lines = []
    for doc in pydoc_topic_texts():
        lines.extend(ln.strip() for ln in doc.splitlines())
    return [ln for ln in lines if ln]


def training_text_sha256(lines: Iterable[str] | None = None) -> str:
    """Hash of the training text: a rebuild reproduces the asset only when this matches."""
    lines = training_lines() if lines is None else lines
    h = hashlib.sha256()
    for ln in lines:
        h.update(ln.encode("utf-8") + b"\n")
    return h.hexdigest()


def train_offline_spm() -> bytes:
    """Train the offline SentencePiece model in memory; returns the serialized model proto."""
    import sentencepiece as spm
    lines = training_lines()
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=out,
                                   minloglevel=2, **TRAINER_CONFIG)
    return out.getvalue()


def write_offline_spm(model_path: Path = OFFLINE_SPM_MODEL) -> dict:
    """Train and write the model plus its metadata JSON next to it; returns the metadata."""
    import platform
    model = train_offline_spm()
    model_path = Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    model_path.write_bytes(model)
    meta = {
        "python_version": platform.python_version(),
        "training_text_sha256": training_text_sha256(),
        "model_sha256": hashlib.sha256(model).hexdigest(),
        "pieces": OFFLINE_VOCAB_PIECES,
        "scan_words": list(SCAN_WORDS),
        "trainer_config": TRAINER_CONFIG,
    }
    model_path.with_suffix(".json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return meta


@gin.configurable(module="vocabularies")
def get_offline_vocabulary(extra_ids: int = 100):
    """The committed offline vocabulary as a `seqio.SentencePieceVocabulary`.

    4000 pieces + `extra_ids` sentinels. Models may keep vocab_size 32128 (see module docstring).
    """
    import seqio
    if not OFFLINE_SPM_MODEL.exists():
        from synthpre_jax.errors import UserError
        raise UserError(f"the offline vocabulary {OFFLINE_SPM_MODEL} is missing from the install; "
                        "reinstall the package or run scripts/build_offline_vocab.py")
    return seqio.SentencePieceVocabulary(str(OFFLINE_SPM_MODEL), extra_ids=extra_ids)
