"""Natural-text sources for span-corruption pre-training: TFDS corpora, local text files, pydoc.

Every source yields examples `{"text": tf.string}`, one natural document each; the task modules
(tasks/natural.py) add tokenization and T5's span corruption.

Splits. TFDS corpora keep their own train/validation splits. Sources without splits (local
files, pydoc) assign each document to 'validation' when a stable hash of its text falls in the
first `VALIDATION_PERCENT` (5) of 100 buckets, else to 'train': the same document always lands
in the same split, on any machine and any number of hosts, and adding documents does not move
the others. The hash is TensorFlow's `tf.strings.to_hash_bucket_fast` (FarmHash Fingerprint64,
fixed across platforms and releases), used both in the tf.data pipeline and in Python.

The pydoc corpus (data/pydoc_corpus.py) is CPython's own documentation (`pydoc_data.topics`,
the text behind `help()`): English that ships with every Python, so the demo and tests need no
download. It is SMALL: about 65k words, 52k after de-duplication (~79k tokens with the offline
vocabulary; ~1,060 span-corruption examples of 64 input tokens), four orders of magnitude below
Wikipedia, so a model pre-trained on it is a small-corpus natural reference, not the paper's.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import seqio
import tensorflow as tf

from synthpre_jax.data.pydoc_corpus import pydoc_documents  # noqa: F401  (re-exported)
from synthpre_jax.errors import UserError

VALIDATION_PERCENT = 5
SPLITS = ("train", "validation")
_HASH_BUCKETS = 100
# Documents held in the re-ordering buffer of a text-file source (see _shuffle_documents).
TEXT_SHUFFLE_BUFFER = 10_000


# TFDS names with their versions. T5 read c4/en:3.0.1, which current tensorflow-datasets no
# longer generates; 3.1.0 differs only in deduplication details (newest URL kept, escaped
# bad-word regexes). With a prepared 3.0.1 copy: tasks.natural.register_tfds_task('c4/en:3.0.1').
TFDS_CORPORA = {
    "wiki40b": "wiki40b/en:1.3.0",
    "c4": "c4/en:3.1.0",
}


# ---------------------------------------------------------------------------------- splits

def split_buckets(texts: Sequence[str]) -> list[int]:
    """Hash bucket in [0, 100) of each text; < VALIDATION_PERCENT means 'validation'."""
    if not texts:
        return []
    return [int(b) for b in tf.strings.to_hash_bucket_fast(list(texts), _HASH_BUCKETS).numpy()]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r} for a natural-text source; use one of {SPLITS}")


def filter_split(ds: tf.data.Dataset, split: str) -> tf.data.Dataset:
    """Keep the documents of `split` (by the stable hash of their 'text')."""
    _check_split(split)

    def keep(ex):
        in_val = tf.strings.to_hash_bucket_fast(ex["text"], _HASH_BUCKETS) < VALIDATION_PERCENT
        return in_val if split == "validation" else tf.logical_not(in_val)

    return ds.filter(keep)


# ---------------------------------------------------------------------------------- pydoc

def pydoc_split_documents(split: str, include_docstrings: bool = False) -> list[str]:
    """The pydoc documents of one split, in corpus order."""
    _check_split(split)
    docs = pydoc_documents(include_docstrings)
    want_val = split == "validation"
    return [d for d, b in zip(docs, split_buckets(docs)) if (b < VALIDATION_PERCENT) == want_val]


# ---------------------------------------------------------------------------------- sources

class ShardedFunctionDataSource(seqio.FunctionDataSource):
    """A FunctionDataSource that takes a host's shard (documents i with i % num_shards == index).

    seqio's FunctionDataSource refuses shard_info; our data layer always passes one, and
    multi-host training needs disjoint per-host streams.
    """

    def get_dataset(self, split: str = "train", shuffle: bool = True, seed: Optional[int] = None,
                    shard_info: Optional[seqio.ShardInfo] = None, *, sequence_length=None,
                    use_cached: bool = False, num_epochs: Optional[int] = 1) -> tf.data.Dataset:
        ds = super().get_dataset(split=split, shuffle=shuffle, seed=seed, shard_info=None,
                                 sequence_length=sequence_length, use_cached=use_cached,
                                 num_epochs=num_epochs)
        if shard_info and shard_info.num_shards > 1:
            ds = ds.shard(shard_info.num_shards, shard_info.index)
        return ds


def _shuffle_documents(ds: tf.data.Dataset, shuffle: bool, seed: Optional[int],
                       buffer: int) -> tf.data.Dataset:
    """Re-order documents every epoch (seeded: the same seed gives the same epochs).

    Why here and not only in seqio's example shuffle: span corruption concatenates consecutive
    documents and its noise is a pure function of each segment's tokens, so with a fixed document
    order every epoch would repeat the very same examples. Re-ordering documents gives new
    segments, hence new noise, each epoch, as T5's pipeline does on its (huge) corpora.
    """
    if not shuffle:
        return ds
    return ds.shuffle(max(int(buffer), 1), seed=seed, reshuffle_each_iteration=True)


def pydoc_source(include_docstrings: bool = False) -> seqio.DataSource:
    """The pydoc corpus as a seqio source with 'train' and 'validation' (lazy: reads on use)."""

    def dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None) -> tf.data.Dataset:
        docs = pydoc_split_documents(split, include_docstrings)
        ds = tf.data.Dataset.from_tensor_slices({"text": tf.constant(docs, tf.string)})
        return _shuffle_documents(ds, shuffle_files, seed, buffer=len(docs))

    return ShardedFunctionDataSource(dataset_fn, splits=SPLITS)


def _resolve_text_path(path: str) -> tuple[str, list[str]]:
    """('dir', files) for a directory of .txt files, else ('lines', files) for a file or glob."""
    path = os.fspath(path)
    if tf.io.gfile.isdir(path):
        files = sorted(tf.io.gfile.glob(os.path.join(path, "*.txt")))
        if not files:
            raise UserError(f"text directory {path!r} has no .txt files; put one document per "
                            ".txt file there, or pass a file with one document per line")
        return "dir", files
    files = sorted(tf.io.gfile.glob(path))
    if not files:
        raise UserError(f"no text file matches {path!r}; give a file with one document per line, "
                        "a glob of such files, or a directory of .txt files")
    return "lines", files


def text_files_source(path: str) -> seqio.DataSource:
    """Local (or gs://) text: a file / glob with one document per line, or a directory of .txt.

    Empty lines and empty files are skipped. Splits are by the stable hash of each document.
    """
    _resolve_text_path(path)  # fail early, at registration, with a one-line error

    def dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None) -> tf.data.Dataset:
        kind, files = _resolve_text_path(path)
        if kind == "dir":
            texts = tf.data.Dataset.from_tensor_slices(files).map(tf.io.read_file)
        else:
            texts = tf.data.TextLineDataset(files)
        ds = texts.map(lambda t: {"text": tf.strings.strip(t)})
        ds = ds.filter(lambda ex: tf.strings.length(ex["text"]) > 0)
        return _shuffle_documents(filter_split(ds, split), shuffle_files, seed, TEXT_SHUFFLE_BUFFER)

    source = ShardedFunctionDataSource(dataset_fn, splits=SPLITS)
    source.text_path = os.fspath(path)  # lets re-registration detect a changed path
    return source


def tfds_source(corpus: str, tfds_data_dir: Optional[str] = None) -> seqio.DataSource:
    """A TFDS corpus ('wiki40b', 'c4', or a full 'name/config:version'); lazy, no I/O here."""
    name = TFDS_CORPORA.get(corpus, corpus)
    return seqio.TfdsDataSource(tfds_name=name, tfds_data_dir=tfds_data_dir,
                                splits={"train": "train", "validation": "validation"})


# ---------------------------------------------------------------------------------- cleaning

_WIKI40B_MARKERS = r"_START_ARTICLE_|_START_SECTION_|_START_PARAGRAPH_|_NEWLINE_"


def strip_wiki40b_markers(text: tf.Tensor) -> tf.Tensor:
    """Replace wiki40b's structure markers (_START_ARTICLE_, ..., _NEWLINE_) by line breaks."""
    text = tf.strings.regex_replace(text, _WIKI40B_MARKERS, "\n")
    text = tf.strings.regex_replace(text, r"[ \t]*\n[\s]*", "\n")
    return tf.strings.strip(text)


@seqio.map_over_dataset
def clean_wiki40b(ex: dict) -> dict:
    """Preprocessor: wiki40b's 'text' without its markers; other features dropped."""
    return {"text": strip_wiki40b_markers(ex["text"])}


@seqio.map_over_dataset
def select_text(ex: dict) -> dict:
    """Preprocessor: keep only 'text' (c4 also has url, timestamp, ...)."""
    return {"text": ex["text"]}
