"""Downstream metrics in seqio's signature: `fn(targets, predictions) -> {name: float}`.

Each function reproduces what the paper's release computes (paper_release_spec.md §2), calling
the library that owns the metric wherever one exists:

- `rouge`: `rouge-score` (no stemming), bootstrap mid F-measure x 100 for rouge1/rouge2/rougeLsum,
  after `" . "` -> `" .\\n"` so that rougeLsum sees sentences (T5's `metrics.rouge`). The
  bootstrap resamples with NumPy's global generator; we seed it for the call and restore it
  afterwards, so the same predictions always give the same numbers (the release did not seed).
- `squad`: SQuAD v1.1 exact match / F1 with the official answer normalisation, max over all
  reference answers, x 100.
- `semantic_parsing_metrics`: the authors' metric for MTOP, WebQSP, retrosynthesis and code
  translation: raw string equality and whitespace-token F1, x 100, no normalisation.
- `exact_match`: raw string equality x 100 (SCAN's sequence accuracy).
- `bleu`: corpus BLEU from `sacrebleu` with T5's settings (tokenize='intl', exp smoothing).
- `retrosynthesis_top1`: top-1 accuracy after RDKit canonicalisation of both sides.

The SQuAD normalisation and token F1 are written here (a dozen lines) because the official
SQuAD script is not a package: the maintained options either pull all of T5 and
mesh-tensorflow (`t5`) or download the metric script from a hub at run time (`evaluate`),
which does not work offline.
"""
from __future__ import annotations

import collections
import contextlib
import re
import string
import threading
from typing import Iterator, Mapping, Sequence

import numpy as np

from synthpre_jax.errors import UserError

ROUGE_KEYS = ("rouge1", "rouge2", "rougeLsum")
# The bootstrap's seed: fixed so that a metric is a function of its inputs.
ROUGE_BOOTSTRAP_SEED = 0


def _check_lengths(targets: Sequence, predictions: Sequence) -> None:
    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")


_GLOBAL_RNG_LOCK = threading.Lock()


@contextlib.contextmanager
def _seeded_global_numpy(seed: int) -> Iterator[None]:
    """rouge-score's BootstrapAggregator draws from np.random's global state (it takes no
    generator); seed it for the call and restore it after. The lock serialises concurrent ROUGE
    computations (seqio's Evaluator computes metrics in a worker thread)."""
    with _GLOBAL_RNG_LOCK:
        state = np.random.get_state()
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(state)


def _prepare_summary(summary: str) -> str:
    # One sentence per line, so that rougeLsum (summary-level LCS) splits sentences.
    return summary.replace(" . ", " .\n")


def rouge(targets: Sequence[str], predictions: Sequence[str],
          score_keys: Sequence[str] = ROUGE_KEYS) -> dict[str, float]:
    """ROUGE F-measure x 100 (bootstrap mid), as the paper computes it for CNN/DM."""
    from rouge_score import rouge_scorer, scoring
    _check_lengths(targets, predictions)
    scorer = rouge_scorer.RougeScorer(list(score_keys), use_stemmer=False)
    aggregator = scoring.BootstrapAggregator()
    for target, prediction in zip(targets, predictions):
        aggregator.add_scores(scorer.score(target=_prepare_summary(target),
                                           prediction=_prepare_summary(prediction)))
    if not targets:
        return {k: 0.0 for k in score_keys}
    with _seeded_global_numpy(ROUGE_BOOTSTRAP_SEED):
        result = aggregator.aggregate()
    return {k: float(result[k].mid.fmeasure * 100) for k in score_keys}


# ----------------------------------------------------------------------------- SQuAD / EM / F1

def normalize_squad(text: str) -> str:
    """The official SQuAD v1.1 normalisation: lower case, drop punctuation and articles, squeeze spaces."""
    text = text.lower()
    punctuation = set(string.punctuation)
    text = "".join(ch for ch in text if ch not in punctuation)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(target: str, prediction: str) -> float:
    """Whitespace-token F1 of the SQuAD v1.1 script (0 when nothing is shared, even if both are empty)."""
    pred_tokens, target_tokens = prediction.split(), target.split()
    common = collections.Counter(pred_tokens) & collections.Counter(target_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(target_tokens)
    return 2 * precision * recall / (precision + recall)


def _mean_x100(values: Sequence[float]) -> float:
    return float(np.mean(values) * 100) if len(values) else 0.0


def squad(targets: Sequence[Sequence[str]], predictions: Sequence[str]) -> dict[str, float]:
    """SQuAD EM and F1 (x 100): normalised text, the best over all reference answers."""
    _check_lengths(targets, predictions)
    ems, f1s = [], []
    for answers, prediction in zip(targets, predictions):
        if isinstance(answers, str):
            answers = [answers]
        if not answers:
            raise ValueError("a SQuAD example has no reference answer")
        p = normalize_squad(prediction)
        refs = [normalize_squad(a) for a in answers]
        ems.append(max(float(r == p) for r in refs))
        f1s.append(max(token_f1(r, p) for r in refs))
    return {"em": _mean_x100(ems), "f1": _mean_x100(f1s)}


def semantic_parsing_metrics(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """The authors' EM and token F1 (x 100) on raw strings: no normalisation, one reference."""
    _check_lengths(targets, predictions)
    em = [float(t == p) for t, p in zip(targets, predictions)]
    f1 = [token_f1(t, p) for t, p in zip(targets, predictions)]
    return {"em": _mean_x100(em), "f1": _mean_x100(f1)}


def exact_match(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Sequence-level exact match (x 100) on raw strings: SCAN's accuracy."""
    _check_lengths(targets, predictions)
    return {"em": _mean_x100([float(t == p) for t, p in zip(targets, predictions)])}


# ----------------------------------------------------------------------------- BLEU

def bleu(targets: Sequence, predictions: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU from sacrebleu with T5's settings; a target may be a list of references."""
    import sacrebleu
    _check_lengths(targets, predictions)
    if not predictions:
        return {"bleu": 0.0}
    if isinstance(targets[0], (list, tuple)):
        n_refs = max(len(t) for t in targets)
        # sacrebleu takes one stream per reference position; pad short lists with None.
        streams = [[t[i] if i < len(t) else None for t in targets] for i in range(n_refs)]
    else:
        streams = [list(targets)]
    score = sacrebleu.corpus_bleu(list(predictions), streams, smooth_method="exp", smooth_value=0.0,
                                  force=False, lowercase=False, tokenize="intl",
                                  use_effective_order=False)
    return {"bleu": float(score.score)}


# ----------------------------------------------------------------------------- retrosynthesis

def require_rdkit():
    """Import RDKit's Chem module or explain how to install it (retrosynthesis needs it)."""
    try:
        from rdkit import Chem
    except ImportError:
        raise UserError("the retrosynthesis metric needs RDKit to canonicalise SMILES, which is not "
                        "installed; run `pip install rdkit`") from None
    return Chem


def canonical_smiles(smiles: str) -> str | None:
    """RDKit canonical SMILES, or None when RDKit cannot parse it.

    Whitespace is removed first: SMILES never contain it, but tokenised releases and the
    SentencePiece round trip may put spaces between atoms. Multi-molecule SMILES ("A.B") are
    canonicalised as a whole, so the order of the reactants does not matter.
    """
    Chem = require_rdkit()
    from rdkit import rdBase
    compact = "".join(smiles.split())
    if not compact:
        return None
    with rdBase.BlockLogs():  # invalid SMILES are expected (an untrained model): no log spam
        mol = Chem.MolFromSmiles(compact)
    if mol is None:
        return None
    return Chem.MolToSmiles(mol)


def retrosynthesis_top1(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Top-1 accuracy (x 100): canonical prediction == canonical target; invalid SMILES are wrong."""
    _check_lengths(targets, predictions)
    hits = []
    for t, p in zip(targets, predictions):
        ct, cp = canonical_smiles(t), canonical_smiles(p)
        hits.append(float(ct is not None and cp is not None and ct == cp))
    return {"top1_accuracy": _mean_x100(hits)}


METRICS_BY_NAME: Mapping[str, object] = {
    "rouge": rouge, "squad": squad, "semantic_parsing_metrics": semantic_parsing_metrics,
    "exact_match": exact_match, "bleu": bleu, "retrosynthesis_top1": retrosynthesis_top1,
}
