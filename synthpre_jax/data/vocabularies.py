"""The vocabulary of the synthetic tasks: T5's SentencePiece model, or a documented fallback.

`get_default_vocabulary()` is what every task of this project uses. It returns a
`T5Vocabulary`, which decides lazily (on first use, never at import or task
registration) between
  * `seqio.SentencePieceVocabulary(path, extra_ids=100)`: the authors' vocabulary;
    ids equal the release data exactly; and
  * `FallbackVocabulary`: when the model cannot be read (no network, no local
    copy). Deterministic; task prefixes and yes/no keep the authors' ids, numbers
    and text do not (see `synthpre_jax.synthetic.codec` for the scheme). A warning
    is logged once.
The model path is, in order: $SYNTHPRE_SPM_PATH, the gin binding
`synthpre.spm_path.path`, then gs://t5-data/vocabs/cc_all.32000/sentencepiece.model.
Both vocabularies have 32,100 ids with the 100 extra ids at the top
(<extra_id_0> = 32099), so span-corruption sentinels and model shapes agree.
"""
from __future__ import annotations

import functools
import os
import threading
from typing import Optional

import gin
import numpy as np
import seqio
import tensorflow as tf

from synthpre_jax.synthetic import codec as codec_lib

DEFAULT_SPM_PATH = codec_lib.DEFAULT_SPM_PATH
DEFAULT_EXTRA_IDS = codec_lib.EXTRA_IDS


@gin.configurable(module="synthpre")
def spm_path(path: str = DEFAULT_SPM_PATH) -> str:
    """The SentencePiece model path; $SYNTHPRE_SPM_PATH overrides the gin binding."""
    return os.environ.get(codec_lib.SPM_ENV_VAR) or path


class FallbackVocabulary(seqio.Vocabulary):
    """seqio wrapper of `FallbackCodec`; same id layout and size as the T5 vocabulary.

    The TensorFlow methods call the Python codec through `tf.numpy_function`:
    the synthetic tasks emit ids directly and never tokenize inside tf.data, so
    this path only serves decoding for inspection and metrics.
    """

    def __init__(self, extra_ids: int = DEFAULT_EXTRA_IDS):
        super().__init__(extra_ids=extra_ids)
        self._codec = codec_lib.FallbackCodec()

    @property
    def codec(self) -> codec_lib.FallbackCodec:
        return self._codec

    @property
    def eos_id(self) -> int:
        return codec_lib.EOS_ID

    @property
    def unk_id(self) -> int:
        return codec_lib.UNK_ID

    @property
    def bos_id(self) -> Optional[int]:
        return None

    @property
    def _base_vocab_size(self) -> int:
        # Like SentencePieceVocabulary: the extra ids are part of the base size.
        return codec_lib.BASE_VOCAB_SIZE + self._extra_ids

    @property
    def vocab_size(self) -> int:
        return self._base_vocab_size

    def _encode(self, s: str):
        return self._codec.encode(s)

    def _decode(self, ids) -> str:
        return self._codec.decode([int(i) for i in ids])

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
        def enc(x):
            x = x.item() if isinstance(x, np.ndarray) else x
            return np.asarray(self._codec.encode(x.decode("utf-8")), dtype=np.int32)

        out = tf.numpy_function(enc, [s], tf.int32, stateful=False)
        out.set_shape([None])
        return out

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        def dec(x):
            if x.ndim == 1:
                return np.asarray(self._codec.decode(x.tolist()).encode("utf-8"), dtype=object)
            return np.asarray([self._codec.decode(r.tolist()).encode("utf-8") for r in x],
                              dtype=object)

        out = tf.numpy_function(dec, [ids], tf.string, stateful=False)
        out.set_shape(ids.shape[:-1])
        return out

    def __eq__(self, other) -> bool:
        return isinstance(other, FallbackVocabulary) and other.extra_ids == self.extra_ids

    def __hash__(self) -> int:
        return hash(("FallbackVocabulary", self.extra_ids))

    def __str__(self) -> str:
        return f"FallbackVocabulary(extra_ids={self.extra_ids})"


class T5Vocabulary(seqio.Vocabulary):
    """T5's SentencePiece vocabulary when readable, else `FallbackVocabulary`; decided lazily."""

    def __init__(self, sentencepiece_model_file: Optional[str] = None,
                 extra_ids: int = DEFAULT_EXTRA_IDS):
        super().__init__(extra_ids=extra_ids)
        self._path = sentencepiece_model_file
        self._resolved: Optional[seqio.Vocabulary] = None
        self._lock = threading.Lock()

    def __getstate__(self):
        return {"_path": self._path, "_extra_ids": self._extra_ids}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._resolved = None
        self._lock = threading.Lock()

    @property
    def path(self) -> str:
        return self._path or spm_path()

    def resolve(self) -> seqio.Vocabulary:
        """The concrete vocabulary (loads the model on first call)."""
        if self._resolved is None:
            with self._lock:
                if self._resolved is None:
                    self._resolved = _load(self.path, self._extra_ids)
        return self._resolved

    @property
    def is_fallback(self) -> bool:
        return isinstance(self.resolve(), FallbackVocabulary)

    @property
    def codec(self) -> codec_lib.Codec:
        """The TensorFlow-free codec the NumPy generators use."""
        v = self.resolve()
        if isinstance(v, FallbackVocabulary):
            return v.codec
        return codec_lib.SentencePieceCodec(v.tokenizer)

    # -- delegation (seqio's public encode/decode/encode_tf/decode_tf go through these) ---
    @property
    def eos_id(self):
        return self.resolve().eos_id

    @property
    def unk_id(self):
        return self.resolve().unk_id

    @property
    def pad_id(self) -> int:
        return self.resolve().pad_id

    @property
    def bos_id(self):
        return self.resolve().bos_id

    @property
    def _base_vocab_size(self) -> int:
        return self.resolve()._base_vocab_size

    @property
    def vocab_size(self) -> int:
        return self.resolve().vocab_size

    def _encode(self, s):
        return self.resolve()._encode(s)

    def _decode(self, ids):
        return self.resolve()._decode(ids)

    def _encode_tf(self, s):
        return self.resolve()._encode_tf(s)

    def _decode_tf(self, ids):
        return self.resolve()._decode_tf(ids)

    def __eq__(self, other) -> bool:
        return (isinstance(other, T5Vocabulary) and other._path == self._path
                and other._extra_ids == self._extra_ids)

    def __hash__(self) -> int:
        return hash(("T5Vocabulary", self._path, self._extra_ids))

    def __str__(self) -> str:
        state = "unresolved" if self._resolved is None else str(self._resolved)
        return f"T5Vocabulary(path={self._path or 'default'}, {state})"


_LOAD_LOCK = threading.Lock()
_LOADED: dict[tuple[str, int], seqio.Vocabulary] = {}


def _load(path: str, extra_ids: int) -> seqio.Vocabulary:
    """SentencePiece vocabulary for `path`, or the fallback with one warning per path."""
    key = (path, extra_ids)
    with _LOAD_LOCK:
        if key not in _LOADED:
            try:
                vocab = seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)
                vocab.tokenizer  # force the read now, so failure is decided here
                _LOADED[key] = vocab
            except Exception as e:  # unreadable path, no network, corrupt model
                codec_lib.warn_fallback_once(path, f"{type(e).__name__}: {str(e)[:120]}")
                _LOADED[key] = FallbackVocabulary(extra_ids)
        return _LOADED[key]


@functools.lru_cache(maxsize=None)
def _default(path: Optional[str], extra_ids: int) -> T5Vocabulary:
    return T5Vocabulary(path, extra_ids)


def get_default_vocabulary(sentencepiece_model_file: Optional[str] = None,
                           extra_ids: int = DEFAULT_EXTRA_IDS) -> T5Vocabulary:
    """The vocabulary of the synthetic tasks (one shared object per path)."""
    return _default(sentencepiece_model_file, extra_ids)


def get_t5_vocabulary(sentencepiece_model_file: Optional[str] = None,
                      extra_ids: int = DEFAULT_EXTRA_IDS) -> T5Vocabulary:
    """T5's vocabulary as the downstream tasks use it: the same (lazy, falling back) object
    as `get_default_vocabulary`, so synthetic and downstream ids always agree."""
    return get_default_vocabulary(sentencepiece_model_file, extra_ids)
