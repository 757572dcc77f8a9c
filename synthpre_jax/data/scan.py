"""SCAN (Lake & Baroni, ICML 2018) generated from its published grammar and interpretation.

Why generate instead of download: SCAN is fully defined by a 6-rule phrase-structure grammar
and a compositional interpretation function (the paper's Figure 6 / Appendix), so all 20,910
command/action pairs can be enumerated exactly and offline. That makes SCAN the project's
offline downstream task (CPU demo, end-to-end tests) with no data to fetch.

Grammar (C is the start symbol):

    C -> S and S | S after S | S
    S -> V twice | V thrice | V
    V -> D[1] opposite D[2] | D[1] around D[2] | D | U
    D -> U left | U right | turn left | turn right
    U -> walk | look | run | jump

("D[1] opposite D[2]" means: the verb of D followed by "opposite" and the direction of D.)

Interpretation: [[walk]] = I_WALK (and likewise look/run/jump); [[u left]] = I_TURN_LEFT [[u]];
[[turn left]] = I_TURN_LEFT; [[u opposite left]] = I_TURN_LEFT I_TURN_LEFT [[u]];
[[turn opposite left]] = I_TURN_LEFT I_TURN_LEFT; [[u around left]] = (I_TURN_LEFT [[u]]) x 4;
[[turn around left]] = I_TURN_LEFT x 4; [[x twice]] = [[x]] x 2; [[x thrice]] = [[x]] x 3;
[[x1 and x2]] = [[x1]] [[x2]]; [[x1 after x2]] = [[x2]] [[x1]] (right works the same way).

Splits:
- `simple` (Experiment 1): a random 80/20 split of all commands (16,728 / 4,182). The published
  split is one particular random draw; ours is a seeded permutation, deterministic per seed.
- `length` (Experiment 2): train on every command whose action sequence has at most 22
  actions, test on the rest (24 to 48 actions; no command needs exactly 23), 16,990 / 3,920.

This module is pure Python (no TensorFlow/JAX) so the generator runs anywhere.
"""
from __future__ import annotations

import functools
from typing import Iterable

import numpy as np

VERBS = ("walk", "look", "run", "jump")
DIRECTIONS = ("left", "right")
ACTION = {"walk": "I_WALK", "look": "I_LOOK", "run": "I_RUN", "jump": "I_JUMP"}
TURN = {"left": "I_TURN_LEFT", "right": "I_TURN_RIGHT"}
REPEAT = {"twice": 2, "thrice": 3}
# every word of the grammar (13 command words, 6 action words)
COMMAND_WORDS = frozenset((*VERBS, *DIRECTIONS, "turn", "opposite", "around", *REPEAT,
                           "and", "after"))
ACTION_WORDS = frozenset((*ACTION.values(), *TURN.values()))

NUM_COMMANDS = 20910
SIMPLE_TRAIN_FRACTION = 0.8
LENGTH_SPLIT_MAX_TRAIN_ACTIONS = 22
SPLITS = ("simple", "length")

Pair = tuple[str, str]


def _primitive_phrases() -> list[tuple[str, list[str]]]:
    """Every V: (words, actions). 4 verbs + 10 directed + 10 opposite + 10 around = 34."""
    out: list[tuple[str, list[str]]] = []
    for u in VERBS:
        out.append((u, [ACTION[u]]))
    for d in DIRECTIONS:
        for u in VERBS:
            out.append((f"{u} {d}", [TURN[d], ACTION[u]]))
        out.append((f"turn {d}", [TURN[d]]))
    for d in DIRECTIONS:
        for u in VERBS:
            out.append((f"{u} opposite {d}", [TURN[d], TURN[d], ACTION[u]]))
        out.append((f"turn opposite {d}", [TURN[d], TURN[d]]))
    for d in DIRECTIONS:
        for u in VERBS:
            out.append((f"{u} around {d}", [TURN[d], ACTION[u]] * 4))
        out.append((f"turn around {d}", [TURN[d]] * 4))
    return out


def _sentences() -> list[tuple[str, list[str]]]:
    """Every S: V, V twice, V thrice (102 phrases)."""
    out = []
    for words, actions in _primitive_phrases():
        out.append((words, actions))
        for rep, k in REPEAT.items():
            out.append((f"{words} {rep}", actions * k))
    return out


@functools.lru_cache(maxsize=1)
def all_pairs() -> tuple[Pair, ...]:
    """All 20,910 SCAN (command, action sequence) pairs in a fixed enumeration order."""
    sentences = _sentences()
    pairs: list[Pair] = [(w, " ".join(a)) for w, a in sentences]
    for w1, a1 in sentences:
        for w2, a2 in sentences:
            pairs.append((f"{w1} and {w2}", " ".join(a1 + a2)))
            pairs.append((f"{w1} after {w2}", " ".join(a2 + a1)))
    assert len(pairs) == NUM_COMMANDS, len(pairs)
    return tuple(pairs)


def interpret(command: str) -> str:
    """The action sequence of one SCAN command (raises KeyError for a string outside SCAN)."""
    return _lookup()[command]


@functools.lru_cache(maxsize=1)
def _lookup() -> dict[str, str]:
    return dict(all_pairs())


def num_actions(pair: Pair) -> int:
    return len(pair[1].split())


def split(name: str, seed: int = 0) -> dict[str, list[Pair]]:
    """{'train': [...], 'test': [...]} of the `simple` or `length` split.

    `simple` permutes all commands with a NumPy Generator seeded by `seed` and takes the first
    80% (16,728) for training; `length` ignores the seed.
    """
    pairs = all_pairs()
    if name == "simple":
        order = np.random.default_rng(np.random.SeedSequence([seed, 20910])).permutation(len(pairs))
        n_train = int(round(SIMPLE_TRAIN_FRACTION * len(pairs)))
        return {"train": [pairs[i] for i in order[:n_train]], "test": [pairs[i] for i in order[n_train:]]}
    if name == "length":
        train = [p for p in pairs if num_actions(p) <= LENGTH_SPLIT_MAX_TRAIN_ACTIONS]
        test = [p for p in pairs if num_actions(p) > LENGTH_SPLIT_MAX_TRAIN_ACTIONS]
        return {"train": train, "test": test}
    raise ValueError(f"unknown SCAN split {name!r}; choose one of {SPLITS}")


def with_validation(parts: dict[str, list[Pair]], fraction: float = 0.05, seed: int = 0) -> dict[str, list[Pair]]:
    """Hold out a seeded `fraction` of the training commands as a disjoint validation split.

    SCAN publishes only train and test. The project selects checkpoints by validation accuracy
    and reports test, so validation must not be test; it is carved from train instead
    (train + validation = the published training set).
    """
    train = parts["train"]
    order = np.random.default_rng(np.random.SeedSequence([seed, 1])).permutation(len(train))
    n_val = max(1, int(round(fraction * len(train))))
    val_idx = set(order[:n_val].tolist())
    return {"train": [p for i, p in enumerate(train) if i not in val_idx],
            "validation": [p for i, p in enumerate(train) if i in val_idx],
            "test": list(parts["test"])}


def vocabulary_words(pairs: Iterable[Pair]) -> tuple[set[str], set[str]]:
    """The command words and action words used by `pairs`."""
    cmd, act = set(), set()
    for c, a in pairs:
        cmd.update(c.split())
        act.update(a.split())
    return cmd, act
