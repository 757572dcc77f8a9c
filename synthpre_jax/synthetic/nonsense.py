"""nonsense_summary: Krishna et al. (2021)'s 16 summarization transformations (spec §1.4).

A document is 10+U{-3..3} sentences of 10+U{-5..5} words drawn uniformly from a
fixed vocabulary of 5,000 three-letter words (word i spells i in base 26,
least significant letter first: 0 -> "aaa", 1 -> "baa"), each sentence ending
with " .". Three distinct transformations out of 16 are drawn; each inserts its
own keywords (made unique as `__d<N>__<keyword>__`) into the document, then each
produces summary lines from the modified document, in the same order.

Reading of the release where the spec is silent (`SUMM/ourtasks.py`):
  * "replaceable" words are those without "_" among all but a sentence's last
    word; sentences are chosen without replacement and processed in index order;
  * the document is its sentences joined by one space, the summary its lines
    joined by one space (the spec's "presumably space-joined");
  * where the release would fail an assertion (a sentence left with too few
    replaceable words for JoinClauses/BreakClauses after earlier insertions),
    the whole example is re-drawn;
  * inputs/targets are the document/summary encoded with the task's vocabulary.
"""
from __future__ import annotations

from itertools import chain
from typing import Callable, Optional

import numpy as np

from synthpre_jax.synthetic.base import SyntheticTask
from synthpre_jax.synthetic.codec import Codec, FallbackCodec
from synthpre_jax.synthetic.ragged import ID_DTYPE, Ragged
from synthpre_jax.synthetic.rng import Draws, UniformStream


class _Retry(Exception):
    """The sampled document cannot take this transformation; draw again."""


def nonsense_vocabulary(size: int = 5000) -> list[str]:
    slots = max(1, int(np.ceil(np.log(size) / np.log(26))))  # 3 letters for 677..17576 words
    out = []
    for i in range(size):
        w, v = "", i
        for _ in range(slots):
            w += chr(97 + v % 26)
            v //= 26
        out.append(w)
    return out


class _Keywords(list):
    """A transformation's keywords, with the set `_Doc.find` tests against built once
    (instead of once per call: up to 100 keywords, three calls per document)."""

    def __init__(self, words):
        super().__init__(words)
        self.set = frozenset(self)


def _kw(d: int, name: str) -> str:
    return f"__d{d}__{name}__"


def _replaceable(words: list[str]) -> list[int]:
    return [i for i, w in enumerate(words[:-1]) if "_" not in w]


class _Doc:
    """The document as sentences of words, plus the keyword bookkeeping."""

    def __init__(self, sentences: list[list[str]], st: UniformStream):
        self.s = sentences
        self.st = st
        self._marked: Optional[list[tuple[int, list[str]]]] = None
        self._touched: set[int] = set()  # lines handed to a modification (`lines`)

    def freeze(self) -> None:
        """The insertions are done: let `find` scan only the words holding a "_"
        (every keyword does, no vocabulary word does) instead of every word,
        once per output instead of once per transformation. Only the lines that
        `lines` handed out can hold one: every modification picks its lines there."""
        self._marked = [(i, m) for i, m in
                        ((i, [w for w in self.s[i] if "_" in w]) for i in sorted(self._touched))
                        if m]

    def choice(self, seq):
        if not seq:
            raise _Retry
        return seq[int(self.st.random() * len(seq))]

    def lines(self, k: int) -> list[int]:
        """k distinct sentence indices, sorted (`get_random_sent_indices`)."""
        if k > len(self.s):
            raise _Retry
        lines = sorted(self.st.sample_distinct(range(len(self.s)), k))
        self._touched.update(lines)  # every keyword is put on a line chosen here
        return lines

    def put(self, line: int, word: str, allowed: Optional[Callable[[int, int], bool]] = None) -> None:
        words = self.s[line]
        # a line without keywords (one C-level scan) can take any word but the final "."
        cand = _replaceable(words) if "_" in " ".join(words) else range(len(words) - 1)
        if allowed is not None:
            cand = [x for x in cand if allowed(x, len(words))]
        words[self.choice(cand)] = word

    def find(self, keywords) -> list[tuple[int, list[str]]]:
        """(line, keywords in it) for every line holding one (`find_line_indices_with_keywords`)."""
        kws = keywords.set if isinstance(keywords, _Keywords) else set(keywords)
        out = []
        for i, words in (self._marked if self._marked is not None else enumerate(self.s)):
            found = [w for w in words if w in kws]
            if found:
                out.append((i, list(dict.fromkeys(found))))
        return out

    def text(self, i: int) -> str:
        return " ".join(self.s[i])

    def document(self) -> str:
        return " ".join(" ".join(s) for s in self.s)


def _copy_kw(d: int, n_lines: int, distinct: bool, out_mode: str):
    kws = _Keywords(_kw(d, f"keyword_{i}") for i in range(10))

    def modify(doc: _Doc) -> None:
        lines = doc.lines(n_lines)
        put = doc.st.sample_distinct(kws, n_lines) if distinct else None
        for j, line in enumerate(lines):
            doc.put(line, put[j] if distinct else doc.choice(kws))

    def output(doc: _Doc) -> list[str]:
        found = doc.find(kws)
        if out_mode == "truncate":
            i, k = found[0]
            words = doc.s[i]
            return [" ".join(words[:words.index(k[0])] + ["."])]
        lines = [doc.text(i) for i, _ in found]
        if out_mode == "shuffle":
            doc.st.shuffle(lines)
        elif out_mode == "sorted":
            lines = [doc.text(i) for i, k in sorted(found, key=lambda f: f[1][0])]
        return lines

    return modify, output


def _quoted():
    bq, eq = _kw(7, "begin_quote"), _kw(7, "end_quote")

    def modify(doc: _Doc) -> None:
        line = doc.lines(1)[0]
        words = doc.s[line]
        n = len(words)
        b = doc.st.randint(0, n - 1) if n > 1 and "_" not in words[0] else doc.st.randint(1, n - 1)
        e = doc.st.randint(b + 1, n)
        doc.s[line] = words[:b] + [bq] + words[b:e] + [eq] + words[e:]

    def output(doc: _Doc) -> list[str]:
        i, _ = doc.find([bq, eq])[0]
        words = doc.s[i]
        out = " ".join(words[words.index(bq) + 1:words.index(eq)])
        return [out if out.endswith(".") else out + " ."]

    return modify, output


def _bulleted():
    bullet = _kw(8, "bullet")

    def modify(doc: _Doc) -> None:
        line = doc.lines(1)[0]
        doc.s[line] = [bullet] + doc.s[line]

    def output(doc: _Doc) -> list[str]:
        i, _ = doc.find([bullet])[0]
        return [" ".join(doc.s[i][1:])]

    return modify, output


def _one_keyword(d: int, kws: list[str], summarize: Callable[[_Doc, int, str], list[str]],
                 n_lines: Callable[[UniformStream], int] = lambda st: 1, distinct: bool = False):
    kws = _Keywords(kws)

    def modify(doc: _Doc) -> None:
        k = n_lines(doc.st)
        lines = doc.lines(k)
        put = doc.st.sample_distinct(kws, k) if distinct else None
        for j, line in enumerate(lines):
            doc.put(line, put[j] if distinct else doc.choice(kws))

    def output(doc: _Doc) -> list[str]:
        return summarize(doc, d, kws)

    return modify, output


def _classify(doc: _Doc, d: int, kws: list[str]) -> list[str]:
    kw = doc.find(kws)[0][1][0]
    return ["the keyword was positive ." if kws.index(kw) < 5 else "the keyword was negative ."]


def _class_keywords(d: int) -> list[str]:
    return [_kw(d, f"class_{c}_kw_{k}") for c in range(3) for k in range(3)]


def _replace_class(doc: _Doc, d: int, kws: list[str]) -> list[str]:
    i, k = doc.find(kws)[0]
    return [doc.text(i).replace(k[0], _kw(d, f"class_{kws.index(k[0]) // 3}"))]


def _topics(doc: _Doc, d: int, kws: list[str]) -> list[str]:
    by_class: dict[int, list[int]] = {0: [], 1: [], 2: []}
    for i, k in doc.find(kws):
        by_class[kws.index(k[0]) // 3].append(i)
    out = []
    for c in range(3):
        out.append(f"section {_kw(d, f'class_{c}')}")
        out += [doc.text(i) for i in sorted(by_class[c])]
    return out


def _majority(doc: _Doc, d: int, kws: list[str]) -> list[str]:
    counts = [0, 0]
    for _, k in doc.find(kws):
        for w in k:
            counts[kws.index(w)] += 1
    return [f"The keyword {1 if counts[0] > counts[1] else 2} occurred more number of times ."]


def _threshold(doc: _Doc, d: int, kws: list[str]) -> list[str]:
    n = kws.index(doc.find(kws)[0][1][0])
    return ["the number was above or equal to threshold ." if n >= 50
            else "the number was below threshold ."]


def _largest(doc: _Doc, d: int, kws: list[str]) -> list[str]:
    return [f"The largest number is {max(kws.index(k[0]) for _, k in doc.find(kws))} ."]


def _paraphrase():
    src = _Keywords(_kw(18, f"src_{i}") for i in range(20))
    variants = {s: [_kw(18, f"target_{i}_{j}") for j in range(3)] for i, s in enumerate(src)}

    def modify(doc: _Doc) -> None:
        doc.put(doc.lines(1)[0], doc.choice(src))

    def output(doc: _Doc) -> list[str]:
        out = []
        for i, k in doc.find(src):
            words = list(doc.s[i])
            words[words.index(k[0])] = doc.choice(variants[k[0]])
            out.append(" ".join(words))
        return out

    return modify, output


def _join_clauses():
    kws = _Keywords(_kw(19, f"join_{i}") for i in range(5))

    def modify(doc: _Doc) -> None:
        lines = doc.lines(3)
        joiners = doc.st.sample_distinct(kws, 3)
        for line, j in zip(lines, joiners):
            doc.put(line, j, allowed=lambda x, n: x < n - 2)

    def output(doc: _Doc) -> list[str]:
        out = "The combined sentence is "
        for i, k in doc.find(kws):
            words = doc.s[i]
            out += k[0] + " " + " ".join(words[words.index(k[0]) + 1:-1]) + " "
        return [out + "."]

    return modify, output


def _break_clauses():
    kws = _Keywords(_kw(20, f"join_{i}") for i in range(5))

    def modify(doc: _Doc) -> None:
        line = doc.lines(1)[0]
        words = doc.s[line]
        allowed = [x for x in _replaceable(words) if x < len(words) - 1]
        if len(allowed) < 2:
            raise _Retry
        j0, j1 = doc.st.sample_distinct(kws, 2)
        p0, p1 = doc.st.sample_distinct(allowed, 2)
        words[p0], words[p1] = j0, j1

    def output(doc: _Doc) -> list[str]:
        i, k = doc.find(kws)[0]
        words = doc.s[i]
        a, b = sorted(words.index(w) for w in k[:2])
        prefix = words[:a]
        return [" ".join(prefix + words[a:b] + ["."]),
                " ".join(prefix + words[b:len(words) - 1] + ["."])]

    return modify, output


def _transformations() -> dict[str, tuple[Callable, Callable]]:
    return {
        "CopyKeywordOneSentence": _copy_kw(3, 1, False, "copy"),
        "CopyKeywordMultipleSentences": _copy_kw(4, 3, False, "copy"),
        "CopyKeywordMultipleSentencesShuffled": _copy_kw(5, 3, False, "shuffle"),
        "CopyKeywordMultipleSentencesSorted": _copy_kw(6, 3, True, "sorted"),
        "CopyQuoted": _quoted(),
        "CopyBulleted": _bulleted(),
        "ClassifyKeyword": _one_keyword(10, [_kw(10, f"keyword_{i}") for i in range(10)], _classify),
        "ReplaceClassKeyword": _one_keyword(11, _class_keywords(11), _replace_class),
        "MajorityKeyword": _one_keyword(12, [_kw(12, "keyword_1"), _kw(12, "keyword_2")], _majority,
                                        n_lines=lambda st: 2 * st.randint(1, 2) + 1),
        "TopicSegregation": _one_keyword(13, _class_keywords(13), _topics,
                                         n_lines=lambda st: st.randint(2, 5)),
        "ThresholdNumber": _one_keyword(14, [_kw(14, str(n)) for n in range(100)], _threshold),
        "LargestNumber": _one_keyword(16, [_kw(16, str(n)) for n in range(100)], _largest,
                                      n_lines=lambda st: st.randint(1, 4), distinct=True),
        "ParaphraseWords": _paraphrase(),
        "JoinClauses": _join_clauses(),
        "BreakClauses": _break_clauses(),
        "TruncateSentence": _copy_kw(21, 1, False, "truncate"),
    }


TRANSFORMATIONS: tuple[str, ...] = tuple(_transformations())


class NonsenseSummaryTask(SyntheticTask):
    """Documents of nonsense words and the summaries three transformations ask for."""

    task_id = "nonsense_summary"

    def __init__(self, codec: Optional[Codec] = None, vocab_size: int = 5000,
                 mean_num_sentences: int = 10, mean_sentence_length: int = 10,
                 num_transformations: int = 3):
        if vocab_size < 1 or mean_num_sentences < 1 or mean_sentence_length < 1:
            raise ValueError("nonsense_summary needs vocab_size, mean_num_sentences and "
                             "mean_sentence_length >= 1")
        self.codec = codec or FallbackCodec()
        self.vocab_size = vocab_size
        self.words = nonsense_vocabulary(vocab_size)
        self._word_array = np.array(self.words, dtype=object)
        self.mean_num_sentences, self.mean_sentence_length = mean_num_sentences, mean_sentence_length
        if not 1 <= num_transformations <= len(TRANSFORMATIONS):
            raise ValueError("num_transformations must be in 1..16")
        self.num_transformations = num_transformations
        self.transformations = _transformations()
        self._encode = getattr(self.codec, "encode", None)

    def config(self) -> dict:
        cur = (self.vocab_size, self.mean_num_sentences, self.mean_sentence_length,
               self.num_transformations)
        names = ("vocab_size", "sentences", "sentence_length", "transformations")
        return {n: c for n, c, d in zip(names, cur, (5000, 10, 10, 3)) if c != d}

    def sample_text(self, st: UniformStream) -> tuple[str, str, list[str]]:
        """(document, summary, names of the transformations applied)."""
        doc, summary, names = self._sample(st)
        return doc.document(), summary, names

    def _sample(self, st: UniformStream, first: Optional[list[list[str]]] = None
                ) -> tuple[_Doc, str, list[str]]:
        """`first` is the document of the first try (drawn for a whole block by
        `_documents`); a document that cannot take its transformations is re-drawn
        from `st`."""
        while True:
            if first is not None:
                sents, first = first, None
            else:
                n_sent = max(1, self.mean_num_sentences + st.randint(-3, 3))
                sents = []
                for _ in range(n_sent):
                    n_words = max(1, self.mean_sentence_length + st.randint(-5, 5))
                    sents.append(st.choices(self.words, n_words) + ["."])
            doc = _Doc(sents, st)
            names = st.sample_distinct(TRANSFORMATIONS, self.num_transformations)
            try:
                for name in names:
                    self.transformations[name][0](doc)
                doc.freeze()
                summary: list[str] = []
                for name in names:
                    summary += self.transformations[name][1](doc)
            except _Retry:
                continue
            return doc, " ".join(summary), names

    def _documents(self, d: Draws) -> list[list[list[str]]]:
        """Every row's first document (sentences of words, each ending with "."), drawn
        for the whole block with a few array operations instead of a Python call per
        sentence: same distribution as `_sample`'s re-draws."""
        ms, ml = self.mean_num_sentences, self.mean_sentence_length
        n_sent = np.maximum(1, ms + d.sub("sentences").randint(-3, 3))
        slots = max(1, ms + 3)
        u = d.sub("sentence lengths").matrix(slots)
        n_words = np.maximum(1, ml - 5 + np.minimum((u * 11).astype(np.int64), 10))
        n_words[np.arange(slots)[None, :] >= n_sent[:, None]] = 0
        u = d.sub("words").matrix(max(1, int(n_words.sum(axis=1).max())))
        idx = np.minimum((u * self.vocab_size).astype(np.int64), self.vocab_size - 1)
        out = []
        for words, lengths in zip(self._word_array[idx].tolist(), n_words.tolist()):
            sents, off = [], 0
            for n in lengths:
                if not n:
                    break
                sent = words[off:off + n]
                sent.append(".")
                sents.append(sent)
                off += n
            out.append(sents)
        return out

    def _samples(self, d: Draws) -> list[tuple[_Doc, str, list[str]]]:
        docs = self._documents(d)
        return [self._sample(st, doc) for st, doc in zip(d.sub("example").streams(64), docs)]

    def text_rows(self, d: Draws) -> list[tuple[str, str]]:
        """(document, summary) of every row."""
        return [(doc.document(), summary) for doc, summary, _ in self._samples(d)]

    def sample_rows(self, d: Draws) -> dict:
        samples = self._samples(d)
        enc = self.codec.encode
        # A codec that encodes word by word (the fallback) encodes the whole block at once
        # and takes the document's words as they are, without joining them into a text
        # only to split it again.
        enc_rows = getattr(self.codec, "encode_word_rows", None)
        if enc_rows is None:
            return {"inputs": Ragged.from_rows(enc(doc.document()) for doc, _, _ in samples),
                    "targets": Ragged.from_rows([enc(s) for _, s, _ in samples])}

        def ragged(rows: list[list[str]]) -> Ragged:
            ids, lengths = enc_rows(rows)
            return Ragged(np.fromiter(ids, ID_DTYPE, count=len(ids)), np.array(lengths, np.int64))

        return {"inputs": ragged([list(chain.from_iterable(doc.s)) for doc, _, _ in samples]),
                "targets": ragged([s.split() for _, s, _ in samples])}
