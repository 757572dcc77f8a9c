"""Natural-text pre-training data: the offline vocabulary, the pydoc corpus, text-file and TFDS
span-corruption tasks.

References are independent of the code under test: SCAN words counted by hand, documents
re-tokenized one by one and compared with the token stream rebuilt from (inputs, targets),
hand-worked segment lengths (70 tokens -> 10 noise tokens in 3 spans -> 64 inputs, 14 targets),
and a rebuild of the vocabulary in a separate process.
"""
import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import seqio
import sentencepiece as spm
import tensorflow as tf
import tensorflow_datasets as tfds

from conftest import REPO, subprocess_env
from synthpre_jax.data import natural, offline_vocab
from synthpre_jax.data.span_corruption import uncorrupt_np
from synthpre_jax.errors import UserError
import tasks.natural as tn

LENGTHS = {"inputs": 64, "targets": 16}
SCAN_COMMAND = "jump opposite left twice after walk around right thrice and look and run and turn left"
SCAN_ACTIONS = "I_TURN_LEFT I_TURN_LEFT I_JUMP I_TURN_RIGHT I_WALK I_RUN I_LOOK I_TURN_RIGHT"


@pytest.fixture(scope="module")
def vocab():
    return offline_vocab.get_offline_vocabulary()


# ----------------------------------------------------------------------------- vocabulary

def test_offline_vocab_layout_is_t5s(vocab):
    assert vocab.vocab_size == 4000 + 100
    assert (vocab.pad_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2)
    assert vocab.tokenizer.bos_id() == -1  # no BOS, as T5
    assert [vocab.tokenizer.id_to_piece(i) for i in range(3)] == ["<pad>", "</s>", "<unk>"]
    assert vocab.decode([4099]) == "<extra_id_0>" and vocab.decode([4000]) == "<extra_id_99>"
    assert offline_vocab.OFFLINE_SPM_MODEL.stat().st_size < 500_000


def test_scan_words_are_single_pieces(vocab):
    for word in offline_vocab.SCAN_WORDS:
        assert len(vocab.encode(word)) == 1, (word, vocab.tokenizer.encode(word, out_type=str))
    for text in (SCAN_COMMAND, SCAN_ACTIONS):
        ids = vocab.encode(text)
        assert len(ids) == len(text.split())  # one token per word, counted by hand
        assert vocab.decode(ids) == text
        tf_ids = vocab.encode_tf(tf.constant(text)).numpy().tolist()
        assert tf_ids == ids  # the tf.data path tokenizes identically


@pytest.mark.parametrize("text", [
    "The quick brown fox jumps over the lazy dog.",
    "A class can implement certain operations that are invoked by special syntax (such as "
    "arithmetic operations or subscripting and slicing) by defining methods with special names.",
    "Return a new sorted list from the items in iterable; 3 + 4 == 7, isn't it?",
])
def test_english_round_trips(vocab, text):
    ids = vocab.encode(text)
    assert vocab.unk_id not in ids
    assert vocab.decode(ids) == text


def test_build_script_reproduces_committed_model(tmp_path):
    meta = json.loads(offline_vocab.OFFLINE_SPM_META.read_text())
    if meta["training_text_sha256"] != offline_vocab.training_text_sha256():
        pytest.skip(f"pydoc_data.topics of this Python differs from {meta['python_version']}'s, "
                    "on which the committed vocabulary was built; a rebuild cannot match")
    out = tmp_path / "rebuilt.model"
    subprocess.run([sys.executable, str(REPO / "scripts" / "build_offline_vocab.py"), "--output", str(out)],
                   check=True, env=subprocess_env(), capture_output=True, timeout=120)
    a = spm.SentencePieceProcessor(model_file=str(offline_vocab.OFFLINE_SPM_MODEL))
    b = spm.SentencePieceProcessor(model_file=str(out))
    assert a.get_piece_size() == b.get_piece_size() == 4000
    assert [a.id_to_piece(i) for i in range(4000)] == [b.id_to_piece(i) for i in range(4000)]
    np.testing.assert_array_equal([a.get_score(i) for i in range(4000)],
                                  [b.get_score(i) for i in range(4000)])


# ----------------------------------------------------------------------------- pydoc corpus

def _sha(docs):
    return hashlib.sha256("\n".join(docs).encode()).hexdigest()


def test_pydoc_corpus_is_nonempty_and_deterministic_across_processes():
    """In a fresh process (pydoc_corpus imports no TensorFlow) the documents are the same."""
    docs = natural.pydoc_documents()
    words = sum(len(d.split()) for d in docs)
    assert len(docs) > 1500 and 40_000 < words < 120_000  # "about 65k words", deduplicated
    assert len(set(docs)) == len(docs)
    code = ("import hashlib; from synthpre_jax.data import pydoc_corpus as natural; "
            "print(hashlib.sha256('\\n'.join(natural.pydoc_documents()).encode()).hexdigest())")
    env = subprocess_env()
    env["PYTHONHASHSEED"] = "12345"  # set iteration order must not matter
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True,
                         text=True, timeout=120).stdout.split()[-1]
    assert out == _sha(docs)


def test_pydoc_split_is_disjoint_and_stable():
    docs = natural.pydoc_documents()
    train = natural.pydoc_split_documents("train")
    val = natural.pydoc_split_documents("validation")
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(docs)
    assert 0.02 < len(val) / len(docs) < 0.09
    # the tf.data filter used for text files assigns the very same documents
    ds = natural.filter_split(tf.data.Dataset.from_tensor_slices({"text": list(docs)}), "validation")
    assert [x["text"].decode() for x in ds.as_numpy_iterator()] == val
    with pytest.raises(UserError):
        natural.pydoc_split_documents("test")


def test_pydoc_source_shards_and_reorders_documents():
    source = natural.pydoc_source()
    docs = natural.pydoc_split_documents("train")
    shards = [[x["text"].decode() for x in source.get_dataset(
        "train", shuffle=False, shard_info=seqio.ShardInfo(i, 2)).as_numpy_iterator()] for i in range(2)]
    assert shards[0] == docs[0::2] and shards[1] == docs[1::2]  # disjoint, complete, in order
    two_epochs = [x["text"].decode() for x in
                  source.get_dataset("train", shuffle=True, seed=3).repeat(2).as_numpy_iterator()]
    first, second = two_epochs[:len(docs)], two_epochs[len(docs):]
    assert sorted(first) == sorted(second) == sorted(docs)
    assert first != second and first != docs  # a new order each epoch, hence new segments
    # ... and a pure function of the seed, so a resumed run sees the same stream
    again = [x["text"].decode() for x in
             source.get_dataset("train", shuffle=True, seed=3).repeat(2).as_numpy_iterator()]
    other = [x["text"].decode() for x in source.get_dataset("train", shuffle=True, seed=4).as_numpy_iterator()]
    assert again == two_epochs and other != first


def _stream_from_examples(examples, vocab):
    """Original token stream rebuilt from span-corruption examples (EOS stripped)."""
    out = []
    for ex in examples:
        inputs, targets = ex["inputs"], ex["targets"]
        assert inputs[-1] == vocab.eos_id and targets[-1] == vocab.eos_id
        out.extend(uncorrupt_np(inputs[:-1], targets[:-1], sentinel_start=vocab.vocab_size - 1).tolist())
    return out


def test_pydoc_task_is_span_corruption_of_the_validation_documents(vocab):
    task = seqio.get_mixture_or_task("natural_pydoc_span_corruption")
    assert task.output_features["targets"].vocabulary == vocab
    examples = list(task.get_dataset(LENGTHS, split="validation", shuffle=False).as_numpy_iterator())
    expected = [t for d in natural.pydoc_split_documents("validation") for t in vocab.encode(d)]
    assert _stream_from_examples(examples, vocab) == expected
    full = [ex for ex in examples if len(ex["inputs"]) == 64]
    assert len(full) >= len(examples) - 2  # only the tail of each 128-document block is short
    for ex in full:  # 70-token segments: round(10.5)=10 noise tokens in round(10/3)=3 spans
        sentinels = [t for t in ex["targets"] if t >= 4000]
        assert len(ex["targets"]) == 10 + 3 + 1 and sentinels == [4099, 4098, 4097]


# ----------------------------------------------------------------------------- text files

DOCS = [f"Document number {i} talks about {w} and nothing else." for i, w in
        enumerate(["apples", "rivers", "clocks", "bridges", "letters", "gardens"] * 7)]


def _split_docs(docs, split):
    buckets = natural.split_buckets(docs)
    return [d for d, b in zip(docs, buckets) if (b < natural.VALIDATION_PERCENT) == (split == "validation")]


@pytest.mark.parametrize("layout", ["lines", "directory"])
def test_text_files_task(tmp_path, vocab, layout):
    if layout == "lines":
        path = tmp_path / "corpus.txt"
        path.write_text("\n".join(DOCS[:20]) + "\n\n" + "\n".join(DOCS[20:]) + "\n")
        ordered = DOCS
    else:
        path = tmp_path / "docs"
        path.mkdir()
        for i, d in enumerate(DOCS):
            (path / f"doc_{i:03d}.txt").write_text(d + "\n")
        (path / "notes.md").write_text("not a .txt file")
        ordered = DOCS  # file names sort in document order
    name = tn.register_text_files_task(f"unit_{layout}", str(path), vocabulary=vocab)
    assert name == f"natural_unit_{layout}_span_corruption"
    assert tn.register_text_files_task(f"unit_{layout}", str(path), vocabulary=vocab) == name  # idempotent
    task = seqio.get_mixture_or_task(name)
    for split in ("train", "validation"):
        examples = list(task.get_dataset(LENGTHS, split=split, shuffle=False).as_numpy_iterator())
        expected = [t for d in _split_docs(ordered, split) for t in vocab.encode(d)]
        assert _stream_from_examples(examples, vocab) == expected, split
    with pytest.raises(UserError, match="already registered"):
        tn.register_text_files_task(f"unit_{layout}", str(tmp_path / "other.txt"), vocabulary=vocab)


def test_text_files_bad_input(tmp_path):
    with pytest.raises(UserError, match="no text file matches"):
        tn.register_text_files_task("unit_missing", str(tmp_path / "missing.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no .txt files"):
        tn.register_text_files_task("unit_empty", str(tmp_path / "empty"))
    with pytest.raises(UserError, match="must be letters"):
        tn.register_text_files_task("bad name!", str(tmp_path))


def test_text_files_task_from_gin(tmp_path):
    import gin
    from synthpre_jax.data import dataset as data
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(DOCS) + "\n")
    gin.clear_config()
    try:
        gin.parse_config([
            "import tasks.natural",
            "import synthpre_jax.data.offline_vocab",
            "MIXTURE_OR_TASK_NAME = @natural.register_text_files_task()",
            "natural.register_text_files_task.name = 'unit_gin'",
            f"natural.register_text_files_task.path = '{path}'",
            "natural.register_text_files_task.vocabulary = @vocabularies.get_offline_vocabulary()",
            "utils.DatasetConfig.mixture_or_task_name = %MIXTURE_OR_TASK_NAME",
            "utils.DatasetConfig.task_feature_lengths = {'inputs': 64, 'targets': 16}",
            "utils.DatasetConfig.batch_size = 2",
            "utils.DatasetConfig.shuffle = False",
        ])
        cfg = data.DatasetConfig()
        assert cfg.mixture_or_task_name == "natural_unit_gin_span_corruption"
        batch = next(data.get_dataset(cfg).as_numpy_iterator())
        assert batch["encoder_input_tokens"].shape == (2, 64)
    finally:
        gin.clear_config()


# ----------------------------------------------------------------------------- TFDS corpora

WIKI = ["_START_ARTICLE_\nAda Lovelace\n_START_SECTION_\nEarly life\n_START_PARAGRAPH_\n"
        "She was born in London._NEWLINE_She studied mathematics with great care.",
        "_START_ARTICLE_\nRiver Thames\n_START_PARAGRAPH_\nThe river flows through London "
        "to the sea._NEWLINE_It is long."]
WIKI_CLEAN = ["Ada Lovelace\nEarly life\nShe was born in London.\nShe studied mathematics with great care.",
              "River Thames\nThe river flows through London to the sea.\nIt is long."]


def test_builtin_tfds_tasks_are_registered_lazily():
    for corpus, tfds_name in (("wiki40b", "wiki40b/en:1.3.0"), ("c4", "c4/en:3.1.0")):
        task = seqio.get_mixture_or_task(f"natural_{corpus}_span_corruption")
        assert isinstance(task.source, seqio.TfdsDataSource)
        assert task.source.tfds_dataset.name == tfds_name
        assert isinstance(task.output_features["targets"].vocabulary, tn.StrictT5Vocabulary)
        assert task.output_features["inputs"].vocabulary == task.output_features["targets"].vocabulary


def test_t5_vocabulary_for_natural_text_does_not_fall_back(tmp_path):
    vocab = tn.StrictT5Vocabulary(str(tmp_path / "no_such.model"), 100)
    with pytest.raises(UserError, match="SYNTHPRE_SPM_PATH"):
        vocab.encode("hello")


def test_strip_wiki40b_markers():
    got = [natural.strip_wiki40b_markers(tf.constant(t)).numpy().decode() for t in WIKI]
    assert got == WIKI_CLEAN


@pytest.mark.parametrize("corpus", ["wiki40b", "c4"])
def test_tfds_task_with_mock_data(vocab, corpus):
    # the same registration code as the built-in tasks, with the offline vocabulary (no network)
    name = tn.register_tfds_task(corpus, name=f"unit_{corpus}_sc", vocabulary=vocab)
    if corpus == "wiki40b":
        rows = {"text": WIKI, "version_id": ["1", "2"], "wikidata_id": ["Q7259", "Q19686"]}
        clean = WIKI_CLEAN
    else:
        rows = {"text": WIKI_CLEAN, "url": ["u1", "u2"], "timestamp": ["t", "t"],
                "content-type": ["text", "text"], "content-length": ["1", "2"]}
        clean = WIKI_CLEAN

    def as_dataset_fn(builder, split, **kwargs):
        assert f"{builder.name}/{builder.builder_config.name}" == f"{corpus}/en"
        return tf.data.Dataset.from_tensor_slices(rows)

    with tfds.testing.mock_data(as_dataset_fn=as_dataset_fn):
        task = seqio.get_mixture_or_task(name)
        examples = list(task.get_dataset(LENGTHS, split="validation", shuffle=False,
                                         try_in_mem_cache=False).as_numpy_iterator())
    assert _stream_from_examples(examples, vocab) == [t for d in clean for t in vocab.encode(d)]
    assert all(len(ex["inputs"]) <= 64 and len(ex["targets"]) <= 16 for ex in examples)


# ----------------------------------------------------------------------------- gin recipes

@pytest.mark.parametrize("gin_file,task,lengths,steps,batch", [
    ("experiments/natural_wiki_pretrain_10k.gin", "natural_wiki40b_span_corruption", (512, 114), 10000, 128),
    ("experiments/natural_wiki_pretrain_30k.gin", "natural_wiki40b_span_corruption", (512, 114), 30000, 128),
    ("experiments/natural_wiki_pretrain_80k.gin", "natural_wiki40b_span_corruption", (512, 114), 80000, 128),
    ("experiments/natural_pydoc_tiny.gin", "natural_pydoc_span_corruption", (64, 16), 1000, 32),
])
def test_gin_recipes(gin_file, task, lengths, steps, batch):
    import gin
    from synthpre_jax import gin_utils, train as train_mod
    from synthpre_jax.data.dataset import DatasetConfig
    from synthpre_jax.data.span_corruption import random_spans_helper
    gin.clear_config()
    try:
        train_mod._register_configurables()
        gin_utils.parse_gin([gin_file], ["MODEL_DIR='/unused'"], [])
        with gin.config_scope("train"):
            cfg = DatasetConfig()
        assert cfg.mixture_or_task_name == task and seqio.get_mixture_or_task(task)
        assert (cfg.task_feature_lengths["inputs"], cfg.task_feature_lengths["targets"]) == lengths
        # the targets length holds what span corruption makes of the inputs length
        assert random_spans_helper(lengths[0])[1] <= lengths[1]
        assert gin.query_parameter("%TRAIN_STEPS") == steps and cfg.batch_size == batch
        assert gin.query_parameter("network.T5Config.vocab_size") == 32128  # T5-shaped checkpoints
    finally:
        gin.clear_config()
