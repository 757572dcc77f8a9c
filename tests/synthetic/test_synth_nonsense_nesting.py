"""nonsense_summary (spec §1.4) and nesting_language (spec §1.5)."""
from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

import synth_helpers  # noqa: F401
from synthpre_jax.synthetic.base import generate_range
from synthpre_jax.synthetic.codec import FallbackCodec
from synthpre_jax.synthetic.nesting import NestingLanguageTask, arcs
from synthpre_jax.synthetic.nonsense import (TRANSFORMATIONS, NonsenseSummaryTask, _Doc,
                                             _transformations, nonsense_vocabulary)
from synthpre_jax.synthetic.rng import Draws, UniformStream

KW = re.compile(r"__d(\d+)__\w+?__")


def test_vocabulary():
    v = nonsense_vocabulary()
    assert len(v) == 5000 == len(set(v))
    # 4999 = 7 + 10*26 + 7*676 -> letters h, k, h (least significant first)
    assert v[0] == "aaa" and v[1] == "baa" and v[26] == "aba" and v[4999] == "hkh"


def test_sixteen_transformations_three_per_document():
    assert len(TRANSFORMATIONS) == 16
    t = NonsenseSummaryTask()
    counts: Counter = Counter()
    for st in Draws.for_examples(0, "train", "t", np.arange(800)).streams(320):
        doc, summary, names = t.sample_text(st)
        assert len(set(names)) == 3
        counts.update(names)
        ids = {int(m) for m in KW.findall(doc)}
        # every keyword belongs to one of the applied transformations
        expected = {int(re.search(r"\d+", _TR_ID[n]).group()) for n in names}
        assert ids <= expected
        # 10 +- 3 sentences, each ending in "." (a quote placed at a sentence end can let a
        # later transformation overwrite that "." -- a quirk of the release, kept)
        assert 6 <= doc.split().count(".") <= 13
        for w in doc.split():
            assert w == "." or len(w) == 3 and w.isalpha() or KW.fullmatch(w)
    assert set(counts) == set(TRANSFORMATIONS)
    assert min(counts.values()) > 100


def test_block_documents_are_drawn_like_the_redraws():
    """The first document of every example comes from block-level draws (`_documents`);
    it must have the spec's shape: 10 +- 3 sentences of 10 +- 5 words, uniform."""
    t = NonsenseSummaryTask()
    docs = t._documents(Draws.for_examples(0, "train", t.key, np.arange(3000)))
    n_sent = Counter(len(doc) for doc in docs)
    assert set(n_sent) == set(range(7, 14))
    assert all(abs(c / 3000 - 1 / 7) < 0.025 for c in n_sent.values()), n_sent
    lens = Counter(len(s) - 1 for doc in docs for s in doc)
    total = sum(lens.values())
    assert set(lens) == set(range(5, 16))
    assert all(abs(c / total - 1 / 11) < 0.01 for c in lens.values()), lens
    assert all(s[-1] == "." and "." not in s[:-1] for doc in docs for s in doc)
    words = Counter(w for doc in docs[:600] for s in doc for w in s[:-1])
    assert len(words) > 4500 and set(words) <= set(t.words)


_TR_ID = {"CopyKeywordOneSentence": "d3", "CopyKeywordMultipleSentences": "d4",
          "CopyKeywordMultipleSentencesShuffled": "d5", "CopyKeywordMultipleSentencesSorted": "d6",
          "CopyQuoted": "d7", "CopyBulleted": "d8", "ClassifyKeyword": "d10",
          "ReplaceClassKeyword": "d11", "MajorityKeyword": "d12", "TopicSegregation": "d13",
          "ThresholdNumber": "d14", "LargestNumber": "d16", "ParaphraseWords": "d18",
          "JoinClauses": "d19", "BreakClauses": "d20", "TruncateSentence": "d21"}


def run_one(name: str, sentences: list[str], seed: int = 0) -> tuple[str, list[str]]:
    st = UniformStream(seed * 7919 + 1)
    doc = _Doc([s.split() for s in sentences], st)
    modify, output = _transformations()[name]
    modify(doc)
    return " ".join(" ".join(s) for s in doc.s), output(doc)


SENTS = ["aaa bbb ccc ddd eee fff .", "ggg hhh iii jjj kkk lll .", "mmm nnn ooo ppp qqq rrr .",
         "sss ttt uuu vvv www xxx .", "yyy zzz aab aac aad aae ."]


@pytest.mark.parametrize("seed", range(5))
def test_hand_checked_transformations(seed):
    # Each output is recomputed here from the modified document, by the spec's table.
    doc, out = run_one("CopyKeywordOneSentence", SENTS, seed)
    line = next(s + " ." for s in doc.split(" . ") if "__d3__" in s)
    assert out == [line.replace(" . .", " .")]

    doc, out = run_one("TruncateSentence", SENTS, seed)
    s = next(s for s in doc.split(" . ") if "__d21__" in s).split()
    assert out == [" ".join(s[:next(i for i, w in enumerate(s) if "__d21__" in w)] + ["."])]

    doc, out = run_one("ThresholdNumber", SENTS, seed)
    n = int(re.search(r"__d14__(\d+)__", doc).group(1))
    assert out == ["the number was above or equal to threshold ." if n >= 50
                   else "the number was below threshold ."]

    doc, out = run_one("LargestNumber", SENTS, seed)
    nums = [int(x) for x in re.findall(r"__d16__(\d+)__", doc)]
    assert 1 <= len(nums) <= 4 and len(set(nums)) == len(nums)
    assert out == [f"The largest number is {max(nums)} ."]

    doc, out = run_one("MajorityKeyword", SENTS, seed)
    c = Counter(re.findall(r"__d12__keyword_(\d)__", doc))
    assert sum(c.values()) in (3, 5)
    assert out == [f"The keyword {c.most_common(1)[0][0]} occurred more number of times ."]

    doc, out = run_one("BreakClauses", SENTS, seed)
    words = next(s for s in doc.split(" . ") if "__d20__" in s).split()
    a, b = [i for i, w in enumerate(words) if "__d20__" in w]
    assert out == [" ".join(words[:a] + words[a:b] + ["."]), " ".join(words[:a] + words[b:] + ["."])]

    doc, out = run_one("CopyBulleted", SENTS, seed)
    assert doc.count("__d8__bullet__") == 1
    assert out[0] in SENTS

    doc, out = run_one("CopyQuoted", SENTS, seed)
    inner = re.search(r"__d7__begin_quote__ (.*?) ?__d7__end_quote__", doc).group(1)
    assert out == [inner if inner.endswith(".") else inner + " ."]


def test_encoded_with_the_vocabulary():
    t = NonsenseSummaryTask()
    block = generate_range(t, 0, "validation", 0, 16)
    d = Draws.for_examples(0, "validation", t.key, np.arange(16))
    texts = t.text_rows(d)
    codec = FallbackCodec()
    for (doc, summ), i, o in zip(texts, block["inputs"].tolists(), block["targets"].tolists()):
        assert i == codec.encode(doc) and o == codec.encode(summ)
        assert codec.decode(i) == doc
    assert block["inputs"].lengths.max() < 512       # compact fallback encoding


# -- nesting language -----------------------------------------------------------
def test_nesting_arcs_nest_and_ids_avoid_specials():
    t = NestingLanguageTask()
    block = generate_range(t, 3, "train", 0, 128)
    for row in block["targets"].rows():
        pairs = arcs(row)
        assert len(pairs) * 2 == len(row)
        assert row.min() >= 2 and row.max() <= 31999
    assert 16 * 4 <= block["targets"].lengths.min()


def test_nesting_depth_bound_and_config():
    t = NestingLanguageTask(num_pairs=50, max_depth=2, min_pairs=3, max_pairs=3,
                            sentences_per_example=1)
    assert "max_depth=2" in t.key
    for row in generate_range(t, 0, "train", 0, 200)["targets"].rows():
        assert len(row) == 6 and row.max() < 2 + 100
        depth = 0
        for tok in row:
            depth += 1 if (tok - 2) % 2 == 0 else -1
            assert 0 <= depth <= 2


def test_nesting_rejects_ids_outside_the_vocabulary():
    with pytest.raises(ValueError):
        NestingLanguageTask(num_pairs=16000)
    with pytest.raises(ValueError):
        NestingLanguageTask(first_id=0)


@pytest.mark.parametrize("name,settings", [
    ("nonsense_summary", dict(vocab_size=0)), ("nonsense_summary", dict(mean_num_sentences=0)),
    ("nonsense_summary", dict(mean_sentence_length=0)),
    ("nesting_language", dict(sentences_per_example=0)), ("nesting_language", dict(num_pairs=0)),
    ("deduct", dict(num_chars_range=(5, 3))), ("induct", dict(subst_length_range=(-1, 2))),
])
def test_settings_that_make_no_examples_are_rejected(name, settings):
    """Empty examples, an empty vocabulary or a reversed range are a ValueError when the
    task is built, not a crash (nonsense vocab_size=0 raised OverflowError) or empty rows."""
    from synthpre_jax.synthetic.registry import make_task

    with pytest.raises(ValueError):
        make_task(name, **settings)


def test_a_one_word_nonsense_vocabulary_is_one_letter():
    from synthpre_jax.synthetic.nonsense import nonsense_vocabulary

    assert nonsense_vocabulary(1) == ["a"] and nonsense_vocabulary(26)[-1] == "z"
    assert len(nonsense_vocabulary(27)[26]) == 2 and len(nonsense_vocabulary(5000)[0]) == 3


@pytest.mark.parametrize("settings", [{}, dict(max_depth=1), dict(min_pairs=1, max_pairs=40),
                                      dict(max_depth=3, open_prob=0.9, sentences_per_example=3)])
def test_nesting_walk_in_c_equals_the_numpy_walk(settings, monkeypatch):
    """The C stack walk draws only the numbers it reads, at the stream positions of the
    NumPy lockstep walk's matrices: the same sentences."""
    from synthpre_jax.synthetic import native

    if native.kernels() is None:
        pytest.skip("no C compiler here")
    t = NestingLanguageTask(**settings)
    fast = generate_range(t, 5, "train", 0, 700)["targets"]
    monkeypatch.setattr(native, "kernels", lambda: None)
    slow = generate_range(t, 5, "train", 0, 700)["targets"]
    assert np.array_equal(fast.lengths, slow.lengths) and np.array_equal(fast.values, slow.values)
