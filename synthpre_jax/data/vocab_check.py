"""Catch vocabulary mismatches before they silently ruin a run.

A checkpoint's embedding rows only mean something under the vocabulary it was trained with.
Each run records its vocabulary in MODEL_DIR/vocabulary.json; fine-tuning with an init mode
that keeps the embedding ('load') from a run whose vocabulary differs is refused with an
explanation (train.py separately refuses a task whose ids do not fit the embedding).
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Optional

from synthpre_jax.errors import UserError

VOCAB_FILE = "vocabulary.json"


def describe(vocab: Any) -> dict:
    """A comparable description: class, size, and the SentencePiece model's hash if any."""
    d = {"class": type(vocab).__name__, "vocab_size": int(getattr(vocab, "vocab_size", 0) or 0)}
    for attr in ("sentencepiece_model_file", "_sentencepiece_model_file", "path", "_path"):
        path = getattr(vocab, attr, None)
        if isinstance(path, str) and os.path.isfile(path):
            with open(path, "rb") as f:
                d["model_sha256"] = hashlib.sha256(f.read()).hexdigest()
            break
    return d


def task_vocabularies(task_or_mixture: Any) -> dict:
    feats = task_or_mixture.output_features
    return {k: describe(feats[k].vocabulary) for k in ("inputs", "targets") if k in feats}


def write(model_dir: str, vocabs: dict) -> None:
    with open(os.path.join(model_dir, VOCAB_FILE), "w", encoding="utf-8") as f:
        json.dump(vocabs, f, indent=1)


def _recorded_for_checkpoint(path: str) -> Optional[dict]:
    """vocabulary.json of the run a checkpoint belongs to (checkpoint dir or its MODEL_DIR)."""
    p = os.path.abspath(path)
    for d in (p, os.path.dirname(p)):
        f = os.path.join(d, VOCAB_FILE)
        if os.path.isfile(f):
            with open(f, encoding="utf-8") as fh:
                return json.load(fh)
    return None


def check_checkpoint_matches(checkpoint_path: Optional[str], vocabs: dict, keeps_embedding: bool) -> None:
    """Refuse to reuse an embedding trained under another vocabulary."""
    if not checkpoint_path or not keeps_embedding:
        return
    recorded = _recorded_for_checkpoint(checkpoint_path)
    if recorded is None:
        return  # foreign checkpoint (T5X, HF): nothing recorded to compare
    for feature in ("inputs", "targets"):
        a, b = recorded.get(feature), vocabs.get(feature)
        if a and b and a != b:
            raise UserError(f"vocabulary mismatch: {checkpoint_path} was trained with {a['class']} "
                            f"({a['vocab_size']} ids) for {feature}, this task uses {b['class']} "
                            f"({b['vocab_size']} ids), so its embedding rows mean other tokens; fine-tune "
                            "with --gin_file=init/load_all_but_embed.gin (fresh embedding) instead")
