"""SeqIO registrations of the natural-text pre-training tasks (T5's span corruption).

Importing this module registers (idempotently):

| task | text | vocabulary |
|---|---|---|
| natural_wiki40b_span_corruption | TFDS wiki40b/en:1.3.0, markers stripped | T5 (cc_all.32000 + 100 extra ids) |
| natural_c4_span_corruption | TFDS c4/en:3.1.0 'text' | T5 |
| natural_pydoc_span_corruption | CPython's pydoc topics (~52k words; small!) | offline (4000 + 100) |
| natural_pydoc_docstrings_span_corruption | pydoc topics + stdlib docstrings (~270k words) | offline |

and offers `register_text_files_task(name, path)` for local text (`natural_<name>_span_corruption`).
From gin, the task name macro is the registration call itself (it returns the name), so the
task exists by the time the trainer looks it up:

    import tasks.natural
    MIXTURE_OR_TASK_NAME = @natural.register_text_files_task()
    natural.register_text_files_task.name = 'mybooks'
    natural.register_text_files_task.path = '/data/books/'    # dir of .txt, or one doc per line
    # optional, for the offline vocabulary instead of T5's:
    # natural.register_text_files_task.vocabulary = @vocabularies.get_offline_vocabulary()

Nothing here reads data, vocabularies or the network at import: TfdsDataSource and the
vocabularies are lazy, and the pydoc text is read when a dataset is built.

The T5-vocabulary tasks do NOT fall back to `vocabularies.FallbackVocabulary` when T5's
SentencePiece model is unreachable (the synthetic tasks do): natural text through the fallback
codec would pre-train on ids that mean nothing to any T5 checkpoint, so they stop with a one-line
error instead. Set `$SYNTHPRE_SPM_PATH` (or `synthpre.spm_path.path`) to a local copy offline.

Every task yields {'inputs', 'targets'} as T5's span corruption does: for inputs length 512 the
targets are 114 tokens (EOS included); for the CPU demo's 64 inputs, 14.
"""
from __future__ import annotations

import re
from typing import Optional, Sequence

import gin
import seqio

from synthpre_jax.data import natural, offline_vocab, span_corruption, vocabularies
from synthpre_jax.errors import UserError

TASK_TEMPLATE = "natural_{}_span_corruption"
_NAME_RE = re.compile(r"^[A-Za-z0-9_.]+$")


class StrictT5Vocabulary(vocabularies.T5Vocabulary):
    """T5's SentencePiece vocabulary, lazily loaded, with no fallback (see module docstring)."""

    def resolve(self) -> seqio.Vocabulary:
        if self._resolved is None:
            with self._lock:
                if self._resolved is None:
                    vocab = seqio.SentencePieceVocabulary(self.path, extra_ids=self._extra_ids)
                    try:
                        vocab.tokenizer  # noqa: B018  (forces the read)
                    except Exception as e:  # unreadable path, no network, corrupt model
                        raise UserError(
                            f"cannot read T5's SentencePiece model {self.path} "
                            f"({type(e).__name__}); natural-text tasks need it: set "
                            "$SYNTHPRE_SPM_PATH or --gin.synthpre.spm_path.path to a local copy "
                            "of gs://t5-data/vocabs/cc_all.32000/sentencepiece.model") from None
                    self._resolved = vocab
        return self._resolved


def t5_vocabulary() -> seqio.Vocabulary:
    return StrictT5Vocabulary(None, vocabularies.DEFAULT_EXTRA_IDS)


def _output_features(vocab: seqio.Vocabulary) -> dict:
    return {"inputs": seqio.Feature(vocab, add_eos=True, required=False),
            "targets": seqio.Feature(vocab, add_eos=True)}


def _preprocessors(text_preprocessors: Sequence = ()) -> list:
    """text -> targets tokens -> T5 span corruption -> EOS."""
    return [*text_preprocessors,
            _text_to_targets,
            seqio.preprocessors.tokenize,
            *span_corruption.span_corruption_preprocessors()]


@seqio.map_over_dataset
def _text_to_targets(ex: dict) -> dict:
    """The document becomes the (untokenized) targets that span corruption noises."""
    return {"targets": ex["text"]}


def _add(name: str, source: seqio.DataSource, vocab: seqio.Vocabulary,
         text_preprocessors: Sequence = ()) -> str:
    if name not in seqio.TaskRegistry.names():
        seqio.TaskRegistry.add(name, source=source,
                               preprocessors=_preprocessors(text_preprocessors),
                               output_features=_output_features(vocab), metric_fns=[])
    return name


def register_tfds_task(corpus: str, *, name: Optional[str] = None,
                       vocabulary: Optional[seqio.Vocabulary] = None,
                       tfds_data_dir: Optional[str] = None) -> str:
    """Register span corruption on a TFDS corpus ('wiki40b', 'c4', or 'name/config:version').

    The default name is natural_<corpus>_span_corruption, with a full TFDS name's punctuation
    replaced by '_' ('c4/en:3.0.1' -> natural_c4_en_3_0_1_span_corruption). A wiki40b corpus
    gets its markers stripped; any other must have a 'text' feature.
    """
    text_pp = [natural.clean_wiki40b] if corpus.startswith("wiki40b") else [natural.select_text]
    key = corpus if corpus in natural.TFDS_CORPORA else re.sub(r"[^A-Za-z0-9]+", "_", corpus).strip("_")
    return _add(name or TASK_TEMPLATE.format(key),
                natural.tfds_source(corpus, tfds_data_dir), vocabulary or t5_vocabulary(), text_pp)


@gin.configurable(module="natural")
def register_text_files_task(name: str = gin.REQUIRED, path: str = gin.REQUIRED,
                             vocabulary: Optional[seqio.Vocabulary] = None) -> str:
    """Register `natural_<name>_span_corruption` over local text; returns the task name.

    `path`: a file (or glob) with one document per line, or a directory of .txt files (one
    document each). Splits: 5% of documents by a stable hash go to 'validation'. Default
    vocabulary: T5's. Registering the same name again with the same path is a no-op; with
    another path it is an error (a silently stale task would train on the wrong data).
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise UserError(f"text-files task name {name!r} must be letters, digits, '_' or '.'")
    task = TASK_TEMPLATE.format(name)
    if task in seqio.TaskRegistry.names():
        old = getattr(seqio.get_mixture_or_task(task).source, "text_path", None)
        if old != str(path):
            raise UserError(f"task {task!r} is already registered for {old!r}; "
                            f"pick another name for {str(path)!r}")
        return task
    source = natural.text_files_source(str(path))
    return _add(task, source, vocabulary or t5_vocabulary())


def register() -> None:
    """Register the built-in natural tasks (idempotent, no I/O)."""
    register_tfds_task("wiki40b")
    register_tfds_task("c4")
    offline = offline_vocab.get_offline_vocabulary()
    _add(TASK_TEMPLATE.format("pydoc"), natural.pydoc_source(False), offline)
    _add(TASK_TEMPLATE.format("pydoc_docstrings"), natural.pydoc_source(True), offline)


register()
