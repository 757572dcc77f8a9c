"""SCAN generator against the published facts of Lake & Baroni (2018) and their data release.

The hashes below were computed from the published files of github.com/brendenlake/SCAN
(`tasks.txt`, `length_split/tasks_{train,test}_length.txt`): each line `IN: <command> OUT:
<actions>`, trailing whitespace stripped, lines sorted by code point, joined with '\\n' plus a
final '\\n', SHA-256. Matching them means the generator produces exactly the published pairs.
"""
import collections
import hashlib

import pytest

from synthpre_jax.data import scan

PUBLISHED_SHA256 = {
    "tasks.txt": "6be4b39bc8bf3a20be810b6991250d0493e608560609db6765dd679e1ed1c98e",
    "tasks_train_length.txt": "7ffb97f45029871c94bede7e723f7a4aa179eb99fe2b977a18283310422c719d",
    "tasks_test_length.txt": "3297fd0b676c391f7bc3a7385aa66a7fdf64f6f8e81ad584810c1d4ebd0eaa2c",
}

L, R = "I_TURN_LEFT", "I_TURN_RIGHT"


def _published_hash(pairs):
    lines = sorted(f"IN: {c} OUT: {a}" for c, a in pairs)
    return hashlib.sha256(("\n".join(lines) + "\n").encode()).hexdigest()


def test_all_commands_match_the_published_release():
    pairs = scan.all_pairs()
    assert len(pairs) == 20910
    assert len({c for c, _ in pairs}) == 20910  # every command once
    assert _published_hash(pairs) == PUBLISHED_SHA256["tasks.txt"]


def test_longest_action_sequence_is_48_and_lengths_histogram():
    lengths = collections.Counter(scan.num_actions(p) for p in scan.all_pairs())
    assert max(lengths) == 48 and min(lengths) == 1
    assert 23 not in lengths  # why the length split's test starts at 24
    # the 48-action commands: "<x> around <d> thrice and/after <y> around <d'> thrice", x,y not turn
    assert lengths[48] == 2 * (4 * 2) ** 2
    assert lengths[1] == 6  # walk, look, run, jump, turn left, turn right


@pytest.mark.parametrize("command, actions", [
    # the examples of Lake & Baroni's Figure 1 and Section 2
    ("jump", "I_JUMP"),
    ("jump left", f"{L} I_JUMP"),
    ("jump around right", f"{R} I_JUMP " * 3 + f"{R} I_JUMP"),
    ("turn left twice", f"{L} {L}"),
    ("jump thrice", "I_JUMP I_JUMP I_JUMP"),
    ("jump opposite left and walk thrice", f"{L} {L} I_JUMP I_WALK I_WALK I_WALK"),
    ("jump opposite left after walk around left", f"{L} I_WALK " * 4 + f"{L} {L} I_JUMP"),
    # hand-checked from the interpretation rules
    ("jump twice after walk left", f"{L} I_WALK I_JUMP I_JUMP"),
    ("turn around right", " ".join([R] * 4)),
    ("turn opposite right", f"{R} {R}"),
    ("look opposite left thrice", " ".join([L, L, "I_LOOK"] * 3)),
    ("run right and turn around left twice", f"{R} I_RUN " + " ".join([L] * 8)),
    ("walk after run", "I_RUN I_WALK"),
])
def test_hand_checked_pairs(command, actions):
    assert scan.interpret(command) == actions.strip()


def test_outside_the_grammar_is_not_a_command():
    for bad in ("jump twice twice", "turn", "walk and", "look around", "jump left right"):
        with pytest.raises(KeyError):
            scan.interpret(bad)


def test_length_split_is_the_published_one():
    s = scan.split("length")
    assert (len(s["train"]), len(s["test"])) == (16990, 3920)
    assert max(scan.num_actions(p) for p in s["train"]) == 22
    assert min(scan.num_actions(p) for p in s["test"]) == 24
    assert _published_hash(s["train"]) == PUBLISHED_SHA256["tasks_train_length.txt"]
    assert _published_hash(s["test"]) == PUBLISHED_SHA256["tasks_test_length.txt"]


def test_simple_split_is_80_20_seeded_and_deterministic():
    a, b, c = scan.split("simple", seed=0), scan.split("simple", seed=0), scan.split("simple", seed=1)
    assert (len(a["train"]), len(a["test"])) == (16728, 4182)  # the published split's sizes
    assert a == b and a["test"] != c["test"]
    assert set(a["train"]).isdisjoint(a["test"])
    assert set(a["train"]) | set(a["test"]) == set(scan.all_pairs())


def test_validation_is_carved_from_train():
    parts = scan.with_validation(scan.split("length"))
    assert len(parts["validation"]) == round(0.05 * 16990)
    assert set(parts["validation"]).isdisjoint(parts["train"])
    assert set(parts["validation"]) | set(parts["train"]) == set(scan.split("length")["train"])
    assert parts["test"] == scan.split("length")["test"]
    assert parts == scan.with_validation(scan.split("length"))
    with pytest.raises(ValueError):
        scan.split("addprim_jump")


def test_offline_vocabulary_gives_one_token_per_scan_word():
    from synthpre_jax.data.offline_vocab import get_offline_vocabulary
    vocab = get_offline_vocabulary()
    cmd_words, act_words = scan.vocabulary_words(scan.all_pairs())
    for word in sorted(cmd_words | act_words):
        assert len(vocab.encode(word)) == 1, word
    pairs = scan.all_pairs()[::97]
    for c, a in pairs:
        assert len(vocab.encode(a)) == len(a.split()) and vocab.decode(vocab.encode(a)) == a
        assert len(vocab.encode(c)) == len(c.split()) and vocab.decode(vocab.encode(c)) == c


def test_grammar_word_constants_are_the_words_the_pairs_use():
    assert scan.vocabulary_words(scan.all_pairs()) == (set(scan.COMMAND_WORDS),
                                                       set(scan.ACTION_WORDS))
