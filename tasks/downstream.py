"""SeqIO registrations of the paper's six fine-tuning tasks and of SCAN (the offline task).

Importing this module registers (idempotently) these tasks:

| task | data | in/tgt len | max decode | metrics |
|---|---|---|---|---|
| cnndm_10k | TFDS cnn_dailymail:3.4.0, lower-cased; train = 10k subset | 512/256 | 148 | rouge1/2/Lsum |
| squad_v010_allanswers | TFDS squad/v1.1:3.0.0, T5's format | 512/128 | 128 | SQuAD em/f1 |
| mtop | release TSV files | 1024/128 | 128 | em, f1 |
| webqsp | release TSV files | 2048/256 | 256 | em, f1 |
| retrosynthesis | release TSV files (USPTO-50K) | 256/256 | 256 | em, f1, top1_accuracy |
| code_translation | CodeXGLUE java-cs files (or release TSV) | 1024/1024 | 1024 | em, f1, bleu |
| scan_simple, scan_length | generated (data/scan.py) | 16/64 | 64 | em |
| scan_simple_words, scan_length_words | the same, word vocabulary (22 ids) | 16/64 | 64 | em |

Nothing here touches the filesystem or the network at import: the data directory is resolved
when a dataset is built, from the gin macro `DOWNSTREAM_DATA_DIR`
(`--gin.DOWNSTREAM_DATA_DIR="'downstream_data'"`), else the environment variable of the same
name. Each file-backed task reads `<DOWNSTREAM_DATA_DIR>/<task>/` (as written by
`synthpre prepare-data TASK --out DIR`) or, for a copy of the authors' bucket,
`<DOWNSTREAM_DATA_DIR>/finetuning_data/<task>/`. The CNN/DM subset is chosen by the file named
by `CNNDM_10K_INDICES_FILE` (macro or env; one TFDS train index a line), else
`<DOWNSTREAM_DATA_DIR>/cnndm_10k/train_indices.txt` when present, else a seeded sample of
10,000 (seed `CNNDM_10K_SEED`, default 0).

TFDS tasks read prepared data only (`--tfds_data_dir`, or TFDS's default directory): a training
run never starts a download, which offline would retry for minutes; `synthpre prepare-data`
downloads once, and unprepared data is one clear error.

Evaluation targets: like the release, the file-backed tasks and CNN/DM keep no pretokenized
text, so seqio's Evaluator compares predictions with the target ids decoded back through the
vocabulary (the paper's behaviour; otherwise text the vocabulary cannot represent, such as
braces in C#, could never be matched). SQuAD scores against all raw answers, as T5 does.

Splits: train / validation / test; the paper runs inference eval on `test` and teacher-forced
eval on `validation`, except SQuAD (no test split), which uses `validation` for both
(`INFER_EVAL_SPLITS`). SCAN's validation split is 5% held out of the published training set.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import seqio

from synthpre_jax.data import metrics
from synthpre_jax.errors import UserError

FEATURE_LENGTHS: Mapping[str, Mapping[str, int]] = {
    "cnndm_10k": {"inputs": 512, "targets": 256},
    "squad_v010_allanswers": {"inputs": 512, "targets": 128},
    "mtop": {"inputs": 1024, "targets": 128},
    "webqsp": {"inputs": 2048, "targets": 256},
    "retrosynthesis": {"inputs": 256, "targets": 256},
    "code_translation": {"inputs": 1024, "targets": 1024},
    "scan_simple": {"inputs": 16, "targets": 64},
    "scan_length": {"inputs": 16, "targets": 64},
}
FEATURE_LENGTHS = {**FEATURE_LENGTHS, **{f"{t}_words": FEATURE_LENGTHS[t]  # same examples
                                         for t in ("scan_simple", "scan_length")}}
MAX_DECODE_LENGTHS: Mapping[str, int] = {
    "cnndm_10k": 148, "squad_v010_allanswers": 128, "mtop": 128, "webqsp": 256,
    "retrosynthesis": 256, "code_translation": 1024, "scan_simple": 64, "scan_length": 64,
}
MAX_DECODE_LENGTHS = {**MAX_DECODE_LENGTHS, **{f"{t}_words": MAX_DECODE_LENGTHS[t]
                                               for t in ("scan_simple", "scan_length")}}
# The split scored by inference eval (decode + metrics); teacher-forced eval uses 'validation'.
INFER_EVAL_SPLITS: Mapping[str, str] = {
    **{name: "test" for name in FEATURE_LENGTHS}, "squad_v010_allanswers": "validation"}
# The release's number of inference-eval examples (EVALUATOR_NUM_EXAMPLES, first N of the split).
INFER_EVAL_NUM_EXAMPLES: Mapping[str, int] = {
    "cnndm_10k": 20000, "squad_v010_allanswers": 20000, "mtop": 5000, "webqsp": 20000,
    "retrosynthesis": 5000, "code_translation": 5000,
}
PAPER_TASKS = ("cnndm_10k", "squad_v010_allanswers", "mtop", "webqsp", "retrosynthesis", "code_translation")
FILE_TASKS = ("mtop", "webqsp", "retrosynthesis", "code_translation")
SCAN_TASKS = ("scan_simple", "scan_length", "scan_simple_words", "scan_length_words")

CNNDM_TFDS = "cnn_dailymail:3.4.0"
SQUAD_TFDS = "squad/v1.1:3.0.0"
# Krishna et al.'s CNN/DM files, which the paper fine-tunes on, are lower-cased.
CNNDM_LOWERCASE = True
SCAN_SPLIT_SEED = 0
SPLITS3 = ("train", "validation", "test")


# ----------------------------------------------------------------------------- settings

def setting(name: str, default: Optional[str] = None) -> Optional[str]:
    """A gin macro `name` when bound, else the environment variable `name`, else `default`."""
    import gin
    try:
        value = gin.query_parameter(f"%{name}")
    except (ValueError, KeyError):
        value = None
    if value in (None, ""):
        value = os.environ.get(name) or None
    return default if value is None else str(value)


def data_dir() -> Path:
    value = setting("DOWNSTREAM_DATA_DIR")
    if not value:
        raise UserError("DOWNSTREAM_DATA_DIR is not set: prepare the data with 'synthpre prepare-data "
                        "TASK --out DIR' and pass --gin.DOWNSTREAM_DATA_DIR=\"'DIR'\" (or export "
                        "DOWNSTREAM_DATA_DIR=DIR)")
    return Path(os.path.expanduser(value))


def task_dir(task: str) -> Path:
    """`<DOWNSTREAM_DATA_DIR>/<task>`, or the authors' `<...>/finetuning_data/<task>` layout."""
    base = data_dir()
    direct, release = base / task, base / "finetuning_data" / task
    return release if not direct.is_dir() and release.is_dir() else direct


def _require_file(path: Path, task: str) -> Path:
    if not path.is_file():
        raise UserError(f"missing data file {path} for task {task!r}; run 'synthpre prepare-data {task} "
                        f"--out {data_dir()}' or point DOWNSTREAM_DATA_DIR at the prepared data")
    return path


# ----------------------------------------------------------------------------- vocabulary

def t5_vocabulary() -> seqio.Vocabulary:
    """The T5 SentencePiece vocabulary (cc_all.32000 + 100 extra ids) of the paper's tasks."""
    from synthpre_jax.data import vocabularies
    return vocabularies.get_t5_vocabulary()


def offline_vocabulary() -> seqio.Vocabulary:
    from synthpre_jax.data.offline_vocab import get_offline_vocabulary
    return get_offline_vocabulary()


@functools.lru_cache(maxsize=None)
def scan_word_vocabulary() -> seqio.Vocabulary:
    """SCAN's 13 command words and 6 action words, one id each (pad/eos/unk first: 22 ids).

    The `*_words` SCAN tasks use it so a model needs only a 128-row embedding (see
    data/word_vocab.py for why that matters on a CPU)."""
    from synthpre_jax.data import scan
    from synthpre_jax.data.word_vocab import WordVocabulary
    return WordVocabulary(sorted(scan.COMMAND_WORDS) + sorted(scan.ACTION_WORDS))


def _features(vocab: seqio.Vocabulary) -> dict[str, seqio.Feature]:
    return {"inputs": seqio.Feature(vocab, add_eos=True, required=False),
            "targets": seqio.Feature(vocab, add_eos=True)}


# Tokenize without keeping '*_pretokenized' (see the module docstring), then EOS after trimming.
def _tokenize_decoded_targets() -> list:
    return [functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
            seqio.CacheDatasetPlaceholder(), seqio.preprocessors.append_eos_after_trim]


# ----------------------------------------------------------------------------- sources

def _file_task_source(task: str) -> Callable[..., Any]:
    def dataset_fn(split: str, shuffle_files: bool = False, seed: Optional[int] = None):
        from synthpre_jax.data import downstream_formats as fmt
        if task == "retrosynthesis":
            metrics.require_rdkit()  # fail before training, not at the first evaluation
        directory = task_dir(task)
        if task == "code_translation":
            java, cs = fmt.codexglue_paths(directory, split)
            if java.is_file() or cs.is_file() or not (directory / fmt.TSV_SPLIT_FILES[split]).is_file():
                return fmt.codexglue_dataset(_require_file(java, task), _require_file(cs, task))
        return fmt.tsv_dataset(_require_file(directory / fmt.TSV_SPLIT_FILES[split], task))
    return dataset_fn


def _tfds_loader(name: str) -> "seqio.utils.LazyTfdsLoader":
    # read_only: a training run never starts a TFDS download (minutes of retries offline);
    # `prepare-data` does that once. `--tfds_data_dir` reaches it through seqio's override.
    return seqio.utils.LazyTfdsLoader(name, read_only=True)


def _tfds_load(name: str, task: str, split: str, shuffle_files: bool = False, seed: Optional[int] = None):
    loader = _tfds_loader(name)
    try:
        return loader.load(split, shuffle_files=shuffle_files, seed=seed)
    except AssertionError:  # TFDS's "could not find data in <dir>"
        where = seqio.utils._get_data_dir_override(name) or "the TFDS data directory"
        raise UserError(f"TFDS dataset {name} is not prepared in {where}; run 'synthpre prepare-data "
                        f"{task} --out DIR' and pass --tfds_data_dir=DIR/tfds") from None


def _cnndm_subset(ds, loader) -> "Any":
    from synthpre_jax.data import downstream_formats as fmt
    indices_file = setting("CNNDM_10K_INDICES_FILE")
    if not indices_file and setting("DOWNSTREAM_DATA_DIR"):
        default = task_dir("cnndm_10k") / "train_indices.txt"
        indices_file = str(default) if default.is_file() else None
    size = int(setting("CNNDM_10K_SIZE", str(fmt.CNNDM_SUBSET_SIZE)))
    seed = int(setting("CNNDM_10K_SEED", "0"))
    try:
        num = int(loader.info.splits["train"].num_examples)
    except (KeyError, AttributeError):  # no split metadata (e.g. mocked TFDS): count them
        num = int(ds.reduce(0, lambda n, _: n + 1))
    return fmt.take_indices(ds, fmt.subset_indices(num, size=size, seed=seed, indices_file=indices_file))


def _cnndm_dataset_fn(split: str, shuffle_files: bool = False, seed: Optional[int] = None):
    import tensorflow as tf
    if split == "train":
        ds = _tfds_load(CNNDM_TFDS, "cnndm_10k", "train")
        ds = _cnndm_subset(ds, _tfds_loader(CNNDM_TFDS)).cache()  # read the 287k split once
    else:
        ds = _tfds_load(CNNDM_TFDS, "cnndm_10k", split, shuffle_files, seed)

    def to_text(ex):
        article, summary = ex["article"], ex["highlights"]
        if CNNDM_LOWERCASE:
            article = tf.strings.lower(article, encoding="utf-8")
            summary = tf.strings.lower(summary, encoding="utf-8")
        return {"inputs": article, "targets": summary}

    return ds.map(to_text, num_parallel_calls=tf.data.AUTOTUNE)


def _squad_dataset_fn(split: str, shuffle_files: bool = False, seed: Optional[int] = None):
    return _tfds_load(SQUAD_TFDS, "squad_v010_allanswers", split, shuffle_files, seed)


def _scan_dataset_fn(split_name: str):
    def dataset_fn(split: str, shuffle_files: bool = False, seed: Optional[int] = None):
        import tensorflow as tf
        from synthpre_jax.data import scan
        parts = scan.with_validation(scan.split(split_name, seed=SCAN_SPLIT_SEED), seed=SCAN_SPLIT_SEED)
        pairs = parts[split]
        return tf.data.Dataset.from_tensor_slices({"inputs": [c for c, _ in pairs],
                                                   "targets": [a for _, a in pairs]})
    return dataset_fn


# ----------------------------------------------------------------------------- SQuAD format

def _pad_punctuation(text):
    """Spaces around every character that is not a letter, number, mark, '_' or space; squeeze spaces."""
    import tensorflow as tf
    text = tf.strings.regex_replace(text, r"([^_\s\p{N}\p{L}\p{M}])", r" \1 ")
    return tf.strings.regex_replace(text, r"\s+", " ")


def squad_format(dataset):
    """T5's SQuAD format: inputs 'question: <q> context: <c>', target the first answer, all answers kept."""
    import tensorflow as tf

    def fmt(ex):
        answers = _pad_punctuation(ex["answers"]["text"])
        question, context = _pad_punctuation(ex["question"]), _pad_punctuation(ex["context"])
        inputs = tf.strings.join(["question:", question, "context:", context], separator=" ")
        return {"inputs": tf.strings.regex_replace(inputs, r"\s+", " "), "targets": answers[0],
                "id": ex["id"], "answers": answers}

    return dataset.map(fmt, num_parallel_calls=tf.data.AUTOTUNE)


def squad_postprocess(output: str, example: Optional[Mapping[str, Any]] = None, is_target: bool = False):
    """Targets become the list of all reference answers (SQuAD takes the max over them)."""
    if is_target and example is not None and "answers" in example:
        return [a.decode("utf-8") if isinstance(a, bytes) else str(a) for a in example["answers"]]
    return output


# ----------------------------------------------------------------------------- registration

def _add(name: str, **kwargs) -> None:
    if name not in seqio.TaskRegistry.names():
        seqio.TaskRegistry.add(name, **kwargs)


def register() -> None:
    """Register every task of this module (a no-op for names already registered)."""
    t5 = _features(t5_vocabulary())
    _add("cnndm_10k", source=seqio.FunctionDataSource(_cnndm_dataset_fn, splits=SPLITS3),
         preprocessors=_tokenize_decoded_targets(), output_features=t5, metric_fns=[metrics.rouge])
    _add("squad_v010_allanswers",
         source=seqio.FunctionDataSource(_squad_dataset_fn, splits=("train", "validation")),
         preprocessors=[squad_format, seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
                        seqio.preprocessors.append_eos_after_trim],
         postprocess_fn=squad_postprocess, output_features=t5, metric_fns=[metrics.squad])
    file_metrics = {"mtop": [metrics.semantic_parsing_metrics],
                    "webqsp": [metrics.semantic_parsing_metrics],
                    "retrosynthesis": [metrics.semantic_parsing_metrics, metrics.retrosynthesis_top1],
                    "code_translation": [metrics.semantic_parsing_metrics, metrics.bleu]}
    for task, fns in file_metrics.items():
        _add(task, source=seqio.FunctionDataSource(_file_task_source(task), splits=SPLITS3),
             preprocessors=_tokenize_decoded_targets(), output_features=t5, metric_fns=fns)
    offline = _features(offline_vocabulary())
    words = _features(scan_word_vocabulary())
    for task, split_name in (("scan_simple", "simple"), ("scan_length", "length")):
        for name, features in ((task, offline), (f"{task}_words", words)):
            _add(name, source=seqio.FunctionDataSource(_scan_dataset_fn(split_name), splits=SPLITS3),
                 preprocessors=_tokenize_decoded_targets(), output_features=features,
                 metric_fns=[metrics.exact_match])


register()
