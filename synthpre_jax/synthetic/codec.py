"""Text <-> ids without TensorFlow: the T5 SentencePiece model, or a documented fallback.

The generators need a vocabulary for four things only: the task-name prefix,
decimal numbers (`length`, `count`), `yes`/`no` (`search`), and the text of
`nonsense_summary`. With the T5 SentencePiece model (`SentencePieceCodec`) the
ids equal the authors' data exactly. Without it (no network, no local copy),
`FallbackCodec` is used and a warning is logged once.

FallbackCodec, the deterministic fallback (ids are those of the T5 vocabulary
layout: 0 PAD, 1 EOS, 2 UNK, 32000..32099 the 100 extra ids, 32099 = <extra_id_0>):
  * whole words with a known T5 encoding, taken from the release spec and its
    samples, encode to exactly the authors' ids: every task prefix (`copy` ->
    [2405], `first_char` -> [166, 834, 4059], ...), `yes` -> [4273], `no` -> [150].
    So all simple-task inputs, and every target except `length`/`count`, equal the
    authors' data under the fallback too;
  * `<extra_id_k>` encodes to 32099 - k, as in seqio;
  * a word that is one ASCII punctuation mark or one to three lowercase ASCII
    letters gets one id of its own (`SHORT_WORDS`, ids 4.. upward skipping the
    known ids): the 3-letter
    nonsense words of `nonsense_summary` cost one id each, as SentencePiece
    pieces would cost one to three;
  * any other word encodes to 3 (the lone "▁" piece) followed by one id per UTF-8
    byte, byte b -> 31744 + b. So a number n encodes to [3, digit bytes...] and the
    authors' "drop a leading 3" rule leaves the digits: decoding gives str(n) back,
    but the ids differ from the T5 model's (e.g. 22 -> [31794, 31794], not [1630]);
  * decoding inverts all of the above; an id with no fallback piece decodes to
    `<id:N>` so that arbitrary symbol ids stay visible.
Whitespace is normalised like SentencePiece (runs collapse, ends are stripped).
"""
from __future__ import annotations

import itertools
import logging
import os
import re
from typing import Callable, Iterable, Optional, Protocol, Sequence

logger = logging.getLogger(__name__)

DEFAULT_SPM_PATH = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"
SPM_ENV_VAR = "SYNTHPRE_SPM_PATH"
BASE_VOCAB_SIZE = 32000
EXTRA_IDS = 100
PAD_ID, EOS_ID, UNK_ID, SPACE_ID = 0, 1, 2, 3
BYTE_BASE = BASE_VOCAB_SIZE - 256  # 31744..31999: one id per UTF-8 byte

# Whole words whose T5 SentencePiece encoding is known (release spec §1.2).
KNOWN_WORDS: dict[str, tuple[int, ...]] = {
    "copy": (2405,), "reverse": (7211,), "duplicate": (19197,),
    "first_char": (166, 834, 4059), "last_char": (336, 834, 4059),
    "length": (2475,), "set": (356,), "deduplicate": (20, 26, 413, 26221),
    "longest_word": (14783, 834, 6051), "count": (3476,), "search": (960,),
    "delete": (9268,), "sort": (1843,), "replace": (3601,), "union": (7021,),
    "intersect": (27806,),
    "set_1_minus_2": (356, 834, 536, 834, 14078, 834, 357),
    "set_2_minus_1": (356, 834, 357, 834, 14078, 834, 536),
    "yes": (4273,), "no": (150,),
}
# Pieces for decoding those ids. The split of multi-piece words is this
# module's reading (only the concatenation is known); "▁" marks a word start.
KNOWN_PIECES: dict[int, str] = {
    2405: "▁copy", 7211: "▁reverse", 19197: "▁duplicate", 166: "▁first", 834: "_",
    4059: "char", 336: "▁last", 2475: "▁length", 356: "▁set", 20: "▁de", 26: "d",
    413: "up", 26221: "licate", 14783: "▁longest", 6051: "word", 3476: "▁count",
    960: "▁search", 9268: "▁delete", 1843: "▁sort", 3601: "▁replace", 7021: "▁union",
    27806: "▁intersect", 536: "1", 14078: "minus", 357: "2", 4273: "▁yes", 150: "▁no",
    SPACE_ID: "▁",
}
_EXTRA_RE = re.compile(r"<extra_id_(\d+)>")


def _short_words() -> dict[str, int]:
    """Each ASCII punctuation mark, then every word of 1-3 lowercase letters -> an id."""
    import itertools
    import string

    words = list(string.punctuation) + ["".join(p) for n in (1, 2, 3)
                                        for p in itertools.product(string.ascii_lowercase, repeat=n)]
    ids, i = {}, SPACE_ID + 1
    for w in words:
        while i in KNOWN_PIECES:
            i += 1
        ids[w] = i
        i += 1
    assert i < BYTE_BASE
    return ids


SHORT_WORDS: dict[str, int] = _short_words()
_SHORT_PIECES: dict[int, str] = {i: "▁" + w for w, i in SHORT_WORDS.items()}


class Codec(Protocol):
    """What the generators need from a vocabulary."""

    name: str
    exact: bool  # True when ids equal the T5 SentencePiece model's

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...


def _extra_piece(i: int) -> str:
    return f"<extra_id_{BASE_VOCAB_SIZE + EXTRA_IDS - 1 - i}>"


class FallbackCodec:
    """The deterministic stand-in for the T5 SentencePiece model (module docstring)."""

    name = "fallback"
    exact = False

    def __init__(self) -> None:
        self._cache: dict[str, tuple[int, ...]] = {}

    def encode_word(self, word: str) -> tuple[int, ...]:
        ids = self._cache.get(word)
        if ids is None:
            if word in KNOWN_WORDS:
                ids = KNOWN_WORDS[word]
            elif word in SHORT_WORDS:
                ids = (SHORT_WORDS[word],)
            else:
                m = _EXTRA_RE.fullmatch(word)
                if m and int(m.group(1)) < EXTRA_IDS:
                    ids = (BASE_VOCAB_SIZE + EXTRA_IDS - 1 - int(m.group(1)),)
                else:
                    ids = (SPACE_ID,) + tuple(BYTE_BASE + b for b in word.encode("utf-8"))
            if len(self._cache) < 100_000:
                self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        return self.encode_words(text.split())

    def _word_ids(self, words: list[str]) -> list[tuple[int, ...]]:
        parts = list(map(self._cache.get, words))  # cached words without a Python call each
        if None in parts:
            parts = [p if p is not None else self.encode_word(w) for p, w in zip(parts, words)]
        return parts

    def encode_words(self, words: list[str]) -> list[int]:
        """`encode(" ".join(words))` for words without whitespace: this codec is word by word."""
        return list(itertools.chain.from_iterable(self._word_ids(words)))

    def encode_word_rows(self, rows: Sequence[Sequence[str]]) -> tuple[list[int], list[int]]:
        """`[encode_words(r) for r in rows]` as one flat id list and the rows' lengths: one
        dictionary pass and one concatenation for a whole generated block."""
        parts = self._word_ids(list(itertools.chain.from_iterable(rows)))
        per_word = list(itertools.accumulate(map(len, parts), initial=0))
        ends = list(itertools.accumulate(map(len, rows)))
        lengths = [per_word[e] - per_word[b] for b, e in zip([0] + ends[:-1], ends)]
        return list(itertools.chain.from_iterable(parts)), lengths

    def decode(self, ids: Iterable[int]) -> str:
        parts: list[str] = []
        pending = bytearray()
        for i in ids:
            i = int(i)
            if BYTE_BASE <= i < BASE_VOCAB_SIZE:
                pending.append(i - BYTE_BASE)
                continue
            if pending:
                parts.append(pending.decode("utf-8", errors="replace"))
                pending = bytearray()
            if i in (PAD_ID, EOS_ID):
                continue
            if i in KNOWN_PIECES:
                parts.append(KNOWN_PIECES[i])
            elif i in _SHORT_PIECES:
                parts.append(_SHORT_PIECES[i])
            elif BASE_VOCAB_SIZE <= i < BASE_VOCAB_SIZE + EXTRA_IDS:
                parts.append("▁" + _extra_piece(i))
            elif i == UNK_ID:
                parts.append("▁<unk>")
            else:
                parts.append(f"▁<id:{i}>")
        if pending:
            parts.append(pending.decode("utf-8", errors="replace"))
        return "".join(parts).replace("▁", " ").strip()


class SentencePieceCodec:
    """The real T5 vocabulary through the `sentencepiece` package (no TensorFlow).

    `num_extra` extra ids beyond the processor's pieces (when they could not be
    added to the model) decode as `<extra_id_k>`, counting down from the top.
    """

    name = "sentencepiece"
    exact = True

    def __init__(self, processor, num_extra: int = 0) -> None:
        self._sp = processor
        self._size = processor.GetPieceSize()
        self._top = self._size + num_extra - 1

    @classmethod
    def from_bytes(cls, model: bytes, extra_ids: int = EXTRA_IDS) -> "SentencePieceCodec":
        """Load a model and add seqio's extra-id pieces (needs protobuf; else decoded by id)."""
        import sentencepiece as spm

        num_extra = extra_ids
        try:
            from sentencepiece import sentencepiece_model_pb2 as pb

            proto = pb.ModelProto.FromString(model)
            for k in reversed(range(extra_ids)):  # seqio's order: <extra_id_0> last
                proto.pieces.add(piece=f"▁<extra_id_{k}>", score=0.0,
                                 type=pb.ModelProto.SentencePiece.USER_DEFINED)
            model, num_extra = proto.SerializeToString(), 0
        except ImportError:
            pass
        sp = spm.SentencePieceProcessor()
        sp.LoadFromSerializedProto(model)
        return cls(sp, num_extra)

    def encode(self, text: str) -> list[int]:
        return list(self._sp.EncodeAsIds(text))

    def decode(self, ids: Iterable[int]) -> str:
        out: list[str] = []
        run: list[int] = []
        for i in ids:
            i = int(i)
            if i == EOS_ID:
                break
            if i >= self._size:
                if run:
                    out.append(self._sp.DecodeIds(run))
                    run = []
                out.append(f"<extra_id_{self._top - i}>")
            else:
                run.append(i)
        if run:
            out.append(self._sp.DecodeIds(run))
        return " ".join(s for s in out if s)


def configured_spm_path(path: Optional[str] = None) -> str:
    """The model path: an explicit `path`, else $SYNTHPRE_SPM_PATH, else the T5 default."""
    if path:
        return path
    return os.environ.get(SPM_ENV_VAR) or DEFAULT_SPM_PATH


_WARNED: set[str] = set()


def warn_fallback_once(path: str, why: str) -> None:
    if path not in _WARNED:
        _WARNED.add(path)
        logger.warning(
            "T5 SentencePiece model unavailable at %s (%s); using the deterministic fallback "
            "vocabulary (prefixes and yes/no keep the authors' ids; numbers and text do not). "
            "Set %s to a local copy of the model for exact ids.", path, why, SPM_ENV_VAR)


_CODECS: dict[str, Codec] = {}


def load_sentencepiece(path: str, reader: Optional[Callable[[str], bytes]] = None
                       ) -> SentencePieceCodec:
    """The model at `path` (local, or remote through `reader`); raises OSError when it cannot
    be read, and whatever sentencepiece raises when the bytes are not a model."""
    if "://" not in path:
        with open(path, "rb") as f:
            model = f.read()
    elif reader is not None:
        model = reader(path)
    else:
        raise OSError("remote path and no reader")
    return SentencePieceCodec.from_bytes(model)


def resolve_codec(path: Optional[str] = None,
                  reader: Optional[Callable[[str], bytes]] = None) -> Codec:
    """The codec for `path` (see `configured_spm_path`), cached per path.

    Local files are read directly. Other paths (gs://...) need a `reader`, which
    the seqio layer supplies (it may use TensorFlow's gfile); without one, or when
    reading fails, the fallback is returned and a warning is logged once.
    """
    path = configured_spm_path(path)
    if path in _CODECS:
        return _CODECS[path]
    codec: Codec
    try:
        codec = load_sentencepiece(path, reader)
    except Exception as e:  # any failure to obtain the model means: fall back
        warn_fallback_once(path, f"{type(e).__name__}: {str(e)[:120]}")
        codec = FallbackCodec()
    _CODECS[path] = codec
    return codec


def strip_lone_space(ids: Sequence[int]) -> list[int]:
    """The authors' rule for numbers: drop a leading lone "▁" (id 3)."""
    ids = list(ids)
    return ids[1:] if ids and ids[0] == SPACE_ID else ids
