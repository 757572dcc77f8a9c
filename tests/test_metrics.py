"""Downstream metrics against hand-computed values and their reference libraries."""
import sys

import numpy as np
import pytest

from synthpre_jax.data import metrics
from synthpre_jax.errors import UserError


# ----------------------------------------------------------------------------- ROUGE

def test_rouge_single_example_hand_computed():
    # one example: every bootstrap sample is that example, so mid = its score exactly.
    # rouge1: 3 shared unigrams, P = 3/3, R = 3/6 -> F = 2/3; rouge2: 2 shared bigrams of 2 and 5.
    out = metrics.rouge(["the cat sat on the mat"], ["the cat sat"])
    assert out["rouge1"] == pytest.approx(100 * 2 / 3)
    assert out["rouge2"] == pytest.approx(100 * 2 * 1 * 0.4 / 1.4)
    assert set(out) == {"rouge1", "rouge2", "rougeLsum"}


def test_rouge_lsum_splits_sentences_on_space_period_space():
    # Flat LCS of "a b c d" vs "c d a b" is 2 (F = 0.5); with " . " -> " .\n" each reference
    # sentence is matched by a predicted one, so the summary-level LCS is complete.
    out = metrics.rouge(["a b . c d ."], ["c d . a b ."])
    assert out["rougeLsum"] == pytest.approx(100.0)
    flat = metrics.rouge(["a b c d"], ["c d a b"])
    assert flat["rougeLsum"] == pytest.approx(50.0)


def test_rouge_no_stemming_and_empty_prediction():
    assert metrics.rouge(["cats running"], ["cat run"])["rouge1"] == 0.0  # a stemmer would match
    assert metrics.rouge(["something"], [""]) == {"rouge1": 0.0, "rouge2": 0.0, "rougeLsum": 0.0}


def test_rouge_matches_rouge_score_bootstrap_and_is_deterministic():
    from rouge_score import rouge_scorer, scoring
    rng = np.random.default_rng(3)
    words = "the a cat dog sat ran on under mat tree . ünïcode".split()
    targets = [" ".join(rng.choice(words, 12)) for _ in range(40)]
    preds = [" ".join(rng.choice(words, 9)) for _ in range(40)]
    state = np.random.get_state()
    ours = metrics.rouge(targets, preds)
    after = np.random.get_state()
    assert all(np.array_equal(a, b) for a, b in zip(state[1:2], after[1:2]))  # global RNG untouched
    assert metrics.rouge(targets, preds) == ours
    # the library called directly with the same preparation and seed
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeLsum"], use_stemmer=False)
    agg = scoring.BootstrapAggregator()
    per_example = []
    for t, p in zip(targets, preds):
        s = scorer.score(t.replace(" . ", " .\n"), p.replace(" . ", " .\n"))
        agg.add_scores(s)
        per_example.append(s["rouge1"].fmeasure)
    np.random.seed(metrics.ROUGE_BOOTSTRAP_SEED)
    ref = agg.aggregate()
    np.random.set_state(state)
    for k in ("rouge1", "rouge2", "rougeLsum"):
        assert ours[k] == pytest.approx(ref[k].mid.fmeasure * 100)
    # bootstrap mid is the median of resampled means: close to the plain mean
    assert ours["rouge1"] == pytest.approx(100 * np.mean(per_example), abs=1.5)


# ----------------------------------------------------------------------------- SQuAD

def test_squad_normalisation_and_max_over_answers():
    assert metrics.normalize_squad("  The Cat,  sat!  ") == "cat sat"
    assert metrics.normalize_squad("An apple a day") == "apple day"
    out = metrics.squad([["a cat", "dog"], ["the cat"], ["x"]], ["The Cat!", "big cat", ""])
    # ex1: EM 1 (matches "a cat"); ex2: F1 = 2*(1/2*1)/(1/2+1) = 2/3; ex3: empty prediction -> 0
    assert out["em"] == pytest.approx(100 / 3)
    assert out["f1"] == pytest.approx(100 * (1 + 2 / 3 + 0) / 3)


def test_squad_unicode_and_multiple_references():
    out = metrics.squad([["Café au lait", "coffee"]], ["café AU lait"])
    assert out == {"em": 100.0, "f1": 100.0}
    # non-ASCII punctuation is not in string.punctuation: kept, as in the official script
    out = metrics.squad([["naïve—test"]], ["naïve test"])
    assert out["em"] == 0.0 and out["f1"] == 0.0
    # the best reference wins for F1 independently of EM
    out = metrics.squad([["red big ball", "ball"]], ["big ball"])
    assert out["em"] == 0.0 and out["f1"] == pytest.approx(100 * 2 * (1.0 * 2 / 3) / (1 + 2 / 3))


# ----------------------------------------------------------------------------- raw EM / F1

def test_semantic_parsing_metrics_are_raw():
    out = metrics.semantic_parsing_metrics(["[IN:GET_WEATHER ]", "a b c", "x y"],
                                           ["[in:get_weather ]", "a b c ", "y x z"])
    # no normalisation: case and trailing space count; F1 is whitespace-token overlap
    assert out["em"] == 0.0
    f1_3 = 2 * (2 / 3) * 1 / (2 / 3 + 1)
    assert out["f1"] == pytest.approx(100 * (0.5 + 1.0 + f1_3) / 3)
    assert metrics.semantic_parsing_metrics(["ünï 𝔘"], ["ünï 𝔘"]) == {"em": 100.0, "f1": 100.0}
    assert metrics.semantic_parsing_metrics([""], [""]) == {"em": 100.0, "f1": 0.0}  # release's F1


def test_exact_match_and_length_mismatch():
    assert metrics.exact_match(["I_JUMP I_JUMP", "I_WALK"], ["I_JUMP I_JUMP", "I_RUN"]) == {"em": 50.0}
    with pytest.raises(ValueError):
        metrics.exact_match(["a"], ["a", "b"])


# ----------------------------------------------------------------------------- BLEU

def test_bleu_against_sacrebleu_and_hand_values():
    import sacrebleu
    assert metrics.bleu(["public int f(){return 1;}"], ["public int f(){return 1;}"])["bleu"] == pytest.approx(100.0)
    assert metrics.bleu(["a b c d"], [""])["bleu"] == 0.0
    targets = ["public void Run(){x = 1;}", "return new Foo(a, b);", "int x = y + 2;"]
    preds = ["public void Run(){x = 2;}", "return new Foo(a);", "int x = y + 2;"]
    ref = sacrebleu.corpus_bleu(preds, [targets], smooth_method="exp", smooth_value=0.0, tokenize="intl")
    assert metrics.bleu(targets, preds)["bleu"] == pytest.approx(ref.score)
    # multiple references: the second one matches exactly
    assert metrics.bleu([["zzz yyy xxx www", "the cat sat on the mat"]],
                        ["the cat sat on the mat"])["bleu"] == pytest.approx(100.0)


# ----------------------------------------------------------------------------- retrosynthesis

def test_retrosynthesis_canonical_smiles():
    pytest.importorskip("rdkit")
    cases = [
        ("CCO", "OCC", 1),                              # same molecule, different atom order
        ("C C ( = O ) O", "CC(O)=O", 1),                # tokenised SMILES
        ("CCO.c1ccccc1", "c1ccccc1.CCO", 1),            # reactant order does not matter
        ("c1ccccc1", "C1=CC=CC=C1", 1),                 # aromatic vs Kekulé form
        ("C[C@H](N)C(=O)O", "C[C@@H](N)C(=O)O", 0),     # stereo differs
        ("CCO", "CCN", 0),
        ("CCO", "C1CC", 0),                             # invalid prediction (unclosed ring)
        ("CCO", "", 0),                                 # empty prediction
        ("not smiles", "not smiles", 0),                # invalid target never counts as right
    ]
    for t, p, hit in cases:
        assert metrics.retrosynthesis_top1([t], [p])["top1_accuracy"] == 100.0 * hit, (t, p)
    out = metrics.retrosynthesis_top1([c[0] for c in cases], [c[1] for c in cases])
    assert out["top1_accuracy"] == pytest.approx(100 * 4 / len(cases))
    assert metrics.canonical_smiles("OCC") == "CCO"


def test_retrosynthesis_without_rdkit_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "rdkit", None)  # makes `import rdkit` raise ImportError
    with pytest.raises(UserError, match="pip install rdkit"):
        metrics.retrosynthesis_top1(["CCO"], ["CCO"])


def test_metric_signatures_are_seqio_predict_metrics():
    import inspect
    for fn in metrics.METRICS_BY_NAME.values():
        required = [n for n, p in inspect.signature(fn).parameters.items() if p.default is inspect.Parameter.empty]
        assert required == ["targets", "predictions"], fn
