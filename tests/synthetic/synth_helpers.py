"""Helpers shared by the synthetic-task tests: sample files, codecs, plain-Python references.

The reference functions below are written independently of `synthpre_jax.synthetic`
(plain Python on lists, following the release spec's wording) so that the tests
compare two implementations rather than one with itself.
"""
from __future__ import annotations

import ast
import itertools
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SHARED_DATA = REPO.parent / "shared" / "data"
SEED_SAMPLES = SHARED_DATA / "seed_samples"

# internal folder name -> public task id
FOLDER_TO_TASK = {
    "copy": "identity", "reverse": "reverse", "duplicate": "duplicate",
    "first_char": "first_token", "last_char": "last_token", "length": "length", "set": "set",
    "deduplicate": "deduplicate", "longest_word": "longest_word", "count": "count",
    "search": "search", "delete": "delete", "sort": "sort", "replace": "replace",
    "union": "union", "intersect": "intersect", "set_1_minus_2": "set1_minus_set2",
    "set_2_minus_1": "set2_minus_set1",
}
# Prefix ids as listed in the release spec §1.2 (observed in the authors' samples).
SPEC_PREFIX = {
    "identity": [2405], "reverse": [7211], "duplicate": [19197], "first_token": [166, 834, 4059],
    "last_token": [336, 834, 4059], "length": [2475], "set": [356],
    "deduplicate": [20, 26, 413, 26221], "longest_word": [14783, 834, 6051], "count": [3476],
    "search": [960], "delete": [9268], "sort": [1843], "replace": [3601], "union": [7021],
    "intersect": [27806], "set1_minus_set2": [356, 834, 536, 834, 14078, 834, 357],
    "set2_minus_set1": [356, 834, 357, 834, 14078, 834, 536],
}
ARG, WORD, TASKDIV, EMPTY = 32097, 32098, 32099, 32096


def load_samples() -> list[tuple[str, list[int], list[int]]]:
    """(task_id, input ids, target ids) of every authors' sample line ([] if absent)."""
    if not SEED_SAMPLES.is_dir():
        return []
    out = []
    for folder in sorted(os.listdir(SEED_SAMPLES)):
        for f in sorted((SEED_SAMPLES / folder).glob("*.txt")):
            for line in f.read_text().splitlines():
                a, b = line.split("\t")
                out.append((FOLDER_TO_TASK[folder], ast.literal_eval(a), ast.literal_eval(b)))
    return out


def require_samples(samples: list) -> None:
    if not samples:
        pytest.skip(f"authors' samples not found at {SEED_SAMPLES} (../shared/data is absent)")


def spm_codec():
    """The real T5 codec when $SYNTHPRE_SPM_PATH names a local model, else None."""
    path = os.environ.get("SYNTHPRE_SPM_PATH")
    if not path or not os.path.isfile(path):
        return None
    from synthpre_jax.synthetic.codec import SentencePieceCodec

    return SentencePieceCodec.from_bytes(Path(path).read_bytes())


# -- plain-Python references (spec §1.2 wording) --------------------------------
def split_arg(raw: list[int]) -> tuple[list[int], list[int]]:
    i = raw.index(ARG)
    return raw[:i], raw[i + 1:]


def contains(seq: list[int], q: list[int]) -> bool:
    """Is q a contiguous sublist of seq? (delimited decimal strings: exact token match)"""
    return ("," + ",".join(map(str, q)) + ",") in ("," + ",".join(map(str, seq)) + ",") if q else True


def contains_at(seq: list[int], q: list[int]) -> int:
    for i in range(len(seq) - len(q) + 1):
        if seq[i:i + len(q)] == q:
            return i
    return -1


def reference_target(task: str, raw: list[int], number, yes_no) -> list[int]:
    """The target of `raw` computed from the spec's definitions."""
    if task in ("union", "intersect", "set1_minus_set2", "set2_minus_set1"):
        a, b = split_arg(raw)
        out = {"union": lambda: list(set(a).union(set(b))),
               "intersect": lambda: list(set(a).intersection(set(b))),
               "set1_minus_set2": lambda: list(set(a) - set(b)),
               "set2_minus_set1": lambda: list(set(b) - set(a))}[task]()
    elif task == "identity":
        out = list(raw)
    elif task == "reverse":
        out = raw[::-1]
    elif task == "duplicate":
        out = [t for t in raw for _ in range(2)]
    elif task == "first_token":
        out = raw[:1]
    elif task == "last_token":
        out = raw[-1:]
    elif task == "length":
        out = number(len(raw))
    elif task == "set":
        out = [t for i, t in enumerate(raw) if t not in raw[:i]]
    elif task == "deduplicate":
        out = [k for k, _ in itertools.groupby(raw)]
    elif task == "longest_word":
        words, cur = [], []
        for t in raw + [WORD]:
            if t == WORD:
                words.append(cur)
                cur = []
            else:
                cur.append(t)
        best = max(len(w) for w in words)
        out = next(w for w in words if len(w) == best)
    elif task == "count":
        seq, q = split_arg(raw)
        out = number(seq.count(q[0]))
    elif task == "search":
        seq, q = split_arg(raw)
        out = yes_no(contains_at(seq, q) >= 0)
    elif task == "delete":
        seq, q = split_arg(raw)
        i = contains_at(seq, q)
        out = seq if i < 0 else seq[:i] + seq[i + len(q):]
    elif task == "sort":
        seq, order = split_arg(raw)
        rank = {}
        for i, t in enumerate(order):
            rank[t] = i
        out = sorted(seq, key=lambda t: rank[t])
    elif task == "replace":
        seq, kv = split_arg(raw)
        out = [kv[1] if t == kv[0] else t for t in seq]
    else:
        raise KeyError(task)
    return out if out else [EMPTY]
