"""seqio registration, the on-the-fly DataSource, the vocabularies (smoke tests on a few examples)."""
from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from synth_helpers import REPO

seqio = pytest.importorskip("seqio")
tf = pytest.importorskip("tensorflow")

from synthpre_jax.data import vocabularies  # noqa: E402
from synthpre_jax.data.sources import SyntheticDataSource  # noqa: E402
from synthpre_jax.synthetic.base import generate_range  # noqa: E402
from synthpre_jax.synthetic.registry import BASE_TASK_IDS, VARIANTS, make_task  # noqa: E402

LENGTHS = {"inputs": 512, "targets": 512}


@pytest.fixture(scope="module")
def registered():
    import tasks.mixtures  # noqa: F401
    import tasks.synthetic

    importlib.reload(tasks.synthetic)   # importing again must not crash
    importlib.reload(tasks.mixtures)
    return tasks.synthetic


def test_every_task_and_variant_is_registered(registered):
    names = set(seqio.TaskRegistry.names())
    for n in (*BASE_TASK_IDS, *VARIANTS):
        assert "synthpre_" + n in names
        task = seqio.get_mixture_or_task("synthpre_" + n)
        assert set(task.splits) == {"train", "validation"}
        assert set(task.output_features) == {"inputs", "targets"}
        assert all(f.add_eos for f in task.output_features.values())
        assert task.metric_fns == []
    for m in ("synthpre_lime", "synthpre_simple", "synthpre_lime_and_simple", "synthpre_all"):
        assert m in seqio.MixtureRegistry.names()
    lime = seqio.get_mixture_or_task("synthpre_lime")
    assert sorted(t.name for t in lime.tasks) == ["synthpre_abduct", "synthpre_deduct", "synthpre_induct"]
    assert len({lime.get_rate(t) for t in lime.tasks}) == 1


def test_import_touches_no_file_and_no_network():
    """Registration reads nothing: an audit hook records opens/connects during the import."""
    code = textwrap.dedent("""
        import sys, seqio, tensorflow, gin, numpy  # heavy deps first: their own imports are fine
        events = []
        def hook(event, args):
            if event == "open" and isinstance(args[0], str) and not args[0].endswith(
                    (".py", ".pyc", ".so")) and "__pycache__" not in args[0] and \\
                    not args[0].startswith(sys.prefix) and "/lib/python" not in args[0]:
                events.append(args[0])
            if event.startswith("socket.connect"):
                events.append(event)
        sys.addaudithook(hook)
        import tasks.synthetic, tasks.mixtures
        from synthpre_jax.data.vocabularies import get_default_vocabulary
        assert get_default_vocabulary()._resolved is None, "vocabulary resolved at import"
        print("EVENTS", [e for e in events if "/tasks" not in e and "synthpre_jax" not in e])
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "EVENTS []" in out.stdout, out.stdout


@pytest.mark.parametrize("name", ["identity", "length", "union", "search", "abduct",
                                  "nonsense_summary"])
def test_task_examples_equal_the_generator(registered, name):
    task = seqio.get_mixture_or_task("synthpre_" + name)
    got = list(task.get_dataset(LENGTHS, split="validation", shuffle=False).take(3).as_numpy_iterator())
    vocab = vocabularies.get_default_vocabulary()
    ref = generate_range(make_task(name, codec=vocab.codec), 0, "validation", 0, 3)
    for j, ex in enumerate(got):
        for f in ("inputs", "targets"):
            want = ref[f].row(j)[:511].tolist() + [1]   # EOS appended after trimming
            assert ex[f].tolist() == want


def test_nesting_language_is_span_corrupted(registered):
    task = seqio.get_mixture_or_task("synthpre_nesting_language")
    lengths = {"inputs": 512, "targets": 114}
    for ex in task.get_dataset(lengths, split="train", shuffle=False).take(3).as_numpy_iterator():
        assert len(ex["inputs"]) == 512 and len(ex["targets"]) == 114
        assert ex["inputs"][-1] == 1 and ex["targets"][-1] == 1 and ex["targets"][0] == 32099
        assert (ex["inputs"] != 0).all()


def test_host_shards_and_resume_via_seqio(registered):
    task = seqio.get_mixture_or_task("synthpre_count")
    ref = generate_range(make_task("count", codec=vocabularies.get_default_vocabulary().codec),
                         0, "train", 0, 12)["inputs"].tolists()
    for h in range(3):
        ds = task.get_dataset(LENGTHS, split="train", shuffle=True, seed=0,
                              shard_info=seqio.ShardInfo(index=h, num_shards=3))
        got = [ex["inputs"][:-1].tolist() for ex in ds.take(4).as_numpy_iterator()]
        assert got == ref[h::3]
    src = SyntheticDataSource("count", start_index=6, dedup_validation=False)
    got = [ex["inputs"].tolist() for ex in src.get_dataset("train").take(6).as_numpy_iterator()]
    assert got == ref[6:12]


def test_source_drops_training_inputs_seen_in_validation():
    src = SyntheticDataSource("identity", {"num_tokens": 2, "length_range": (10, 10)},
                              validation_size=300)
    val = {tuple(ex["inputs"]) for ex in src.get_dataset("validation").as_numpy_iterator()}
    assert len(val) > 200 and src.num_input_examples("validation") == 300
    train = [tuple(ex["inputs"]) for ex in src.get_dataset("train").take(300).as_numpy_iterator()]
    assert not set(train) & val


def test_mixture_and_packing(registered):
    mix = seqio.get_mixture_or_task("synthpre_lime")
    ds = mix.get_dataset(LENGTHS, split="train", shuffle=False, seed=0, log_mixing_proportions=False)
    firsts = {int(ex["inputs"][0]) for ex in ds.take(3).as_numpy_iterator()}
    assert firsts == {32002}
    task = seqio.get_mixture_or_task("synthpre_reverse")
    packed = seqio.EncDecFeatureConverter(pack=True)(
        task.get_dataset(LENGTHS, split="validation", shuffle=False), LENGTHS)
    row = next(packed.as_numpy_iterator())
    assert row["encoder_input_tokens"].shape == (512,)
    assert row["encoder_segment_ids"].max() >= 2
    ends = np.flatnonzero(row["decoder_target_tokens"] == 1)
    assert len(ends) == row["decoder_segment_ids"].max()


def test_fallback_vocabulary():
    v = vocabularies.FallbackVocabulary()
    assert v.vocab_size == 32100 and v.eos_id == 1 and v.unk_id == 2 and v.pad_id == 0
    assert v.encode("copy") == [2405] and v.encode("yes") == [4273] and v.encode("no") == [150]
    assert v.encode("first_char") == [166, 834, 4059]
    ids = v.encode("22 abc __x__ <extra_id_0>")
    assert ids[-1] == 32099 and v.decode(ids + [1, 5, 6]) == "22 abc __x__ <extra_id_0>"
    assert v.encode_tf(tf.constant("count 7")).numpy().tolist() == v.encode("count 7")
    assert v.decode_tf(tf.constant([2405, 1, 7])).numpy().decode() == "copy"
    assert v == vocabularies.FallbackVocabulary() and v != vocabularies.FallbackVocabulary(50)


def test_t5_vocabulary_is_lazy_and_falls_back_once(monkeypatch, caplog):
    missing = "/nonexistent/dir/sentencepiece.model"
    monkeypatch.setenv("SYNTHPRE_SPM_PATH", missing)
    v = vocabularies.T5Vocabulary()
    assert v._resolved is None and v.path == missing
    with caplog.at_level(logging.WARNING):
        assert v.is_fallback and v.vocab_size == 32100
        assert vocabularies.T5Vocabulary().encode("search") == [960]
    msgs = [r.getMessage() for r in caplog.records if "fallback" in r.getMessage()]
    assert len(msgs) <= 1          # warned once per path (zero if an earlier test already did)
    assert v == vocabularies.T5Vocabulary() and v != vocabularies.T5Vocabulary("other.model")
    assert vocabularies.get_default_vocabulary() is vocabularies.get_default_vocabulary()


def test_sentencepiece_codec_matches_seqio_on_a_real_model():
    """seqio ships a small SentencePiece model: our TF-free codec must agree with seqio's
    SentencePieceVocabulary (extra ids included), and tasks must take their ids from it."""
    import pathlib

    from synthpre_jax.data.sources import codec_for
    from synthpre_jax.synthetic.codec import SentencePieceCodec, resolve_codec, strip_lone_space
    from synthpre_jax.synthetic.simple import SimpleTask

    path = pathlib.Path(seqio.__file__).parent / "test_data" / "sentencepiece" / "sentencepiece.model"
    if not path.is_file():
        pytest.skip("seqio's test SentencePiece model is not installed")
    ref = seqio.SentencePieceVocabulary(str(path), extra_ids=100)
    ours = SentencePieceCodec.from_bytes(path.read_bytes(), extra_ids=100)
    assert resolve_codec(str(path)).encode("copy") == ours.encode("copy")
    for text in ["copy", "first_char", "22 yes no", "hello world <extra_id_0>"]:
        assert ours.encode(text) == list(ref.encode(text)), text
    ids = list(ref.encode("abc")) + [ref.vocab_size - 1, 5]
    assert ours.decode(ids) == ref.decode(ids)
    assert codec_for(ref).encode("first_char") == list(ref.encode("first_char"))
    t = SimpleTask("length", codec=ours)
    assert t.prefix == list(ref.encode("length")) + [32099]
    assert t.solve([5] * 22) == strip_lone_space(ref.encode("22"))   # (UNK in this tiny model)
    assert ours.decode(t.solve([5] * 7)) == ref.decode(strip_lone_space(ref.encode("7")))
