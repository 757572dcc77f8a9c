"""Readers for the file formats the downstream tasks are released in.

- The authors' release (`finetuning_data/<task>/{train,valid,test}.txt`): one example a line,
  `input<TAB>target`. A line without exactly one tab is dropped, as the release's loader does
  (`tf.strings.split` on tab, keep rows with two fields). seqio's `parse_tsv` is not used on
  purpose: it goes through `tf.io.decode_csv`, which treats double quotes as CSV quoting
  (code and SMILES contain quotes) and fails instead of dropping a malformed line.
- CodeXGLUE code-to-code translation: line-aligned `<split>.java-cs.txt.java` and
  `<split>.java-cs.txt.cs` files (the Java line i translates to the C# line i).
- The CNN/DailyMail 10k training subset: a file of example indices into the TFDS
  `cnn_dailymail` train split (the subset of Krishna et al. 2021 is defined by such a file),
  or a seeded sample of 10,000 indices when no file is given.

The TensorFlow parts import TensorFlow lazily so that `prepare-data` and the Python readers
work without it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from synthpre_jax.errors import UserError

# seqio split name -> file name in the authors' release.
TSV_SPLIT_FILES = {"train": "train.txt", "validation": "valid.txt", "test": "test.txt"}
# seqio split name -> CodeXGLUE file stem; the Java side ends in ".java", the C# side in ".cs".
CODEXGLUE_SPLIT_STEMS = {"train": "train.java-cs.txt", "validation": "valid.java-cs.txt",
                         "test": "test.java-cs.txt"}
CNNDM_SUBSET_SIZE = 10_000


def _lines(path: str | os.PathLike) -> Iterator[str]:
    """Lines without their terminator, split on '\\n' only (as tf.data.TextLineDataset does)."""
    with open(path, encoding="utf-8", newline="\n") as f:
        for line in f:
            line = line[:-1] if line.endswith("\n") else line
            yield line[:-1] if line.endswith("\r") else line


def parse_tsv_line(line: str) -> Optional[tuple[str, str]]:
    """(input, target) of one release line, or None when it has not exactly one tab."""
    parts = line.split("\t")
    return (parts[0], parts[1]) if len(parts) == 2 else None


def read_tsv_pairs(path: str | os.PathLike) -> Iterator[tuple[str, str]]:
    """The (input, target) pairs of a release file, malformed lines dropped."""
    for line in _lines(path):
        pair = parse_tsv_line(line)
        if pair is not None:
            yield pair


def count_tsv(path: str | os.PathLike) -> tuple[int, int]:
    """(kept, dropped) line counts of a release file."""
    kept = dropped = 0
    for line in _lines(path):
        if parse_tsv_line(line) is None:
            dropped += 1
        else:
            kept += 1
    return kept, dropped


def split_tsv(dataset):
    """seqio preprocessor: text lines -> {'inputs', 'targets'}, lines without exactly one tab dropped.

    Use it after `seqio.TextLineDataSource` in your own TSV tasks (seqio has no TSV parser).
    """
    import tensorflow as tf
    ds = dataset.map(lambda line: tf.strings.split(line, sep="\t"), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.filter(lambda fields: tf.shape(fields)[0] == 2)
    return ds.map(lambda fields: {"inputs": fields[0], "targets": fields[1]},
                  num_parallel_calls=tf.data.AUTOTUNE)


def tsv_dataset(path: str | os.PathLike):
    """tf.data of {'inputs', 'targets'} strings from a release file (malformed lines dropped)."""
    import tensorflow as tf
    return split_tsv(tf.data.TextLineDataset(str(path)))


# ----------------------------------------------------------------------------- CodeXGLUE

def codexglue_paths(directory: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """(java, cs) paths of one CodeXGLUE split inside `directory`."""
    stem = Path(directory) / CODEXGLUE_SPLIT_STEMS[split]
    return stem.with_name(stem.name + ".java"), stem.with_name(stem.name + ".cs")


def count_lines(path: str | os.PathLike) -> int:
    return sum(1 for _ in _lines(path))


def check_aligned(java: str | os.PathLike, cs: str | os.PathLike) -> int:
    """Number of aligned examples; a UserError if the two sides differ in length."""
    n_java, n_cs = count_lines(java), count_lines(cs)
    if n_java != n_cs:
        raise UserError(f"CodeXGLUE files are not aligned: {java} has {n_java} lines but {cs} has "
                        f"{n_cs}; re-run 'synthpre prepare-data code_translation'")
    return n_java


def read_codexglue_pairs(java: str | os.PathLike, cs: str | os.PathLike) -> list[tuple[str, str]]:
    """(java, c#) pairs of one CodeXGLUE split."""
    check_aligned(java, cs)
    return list(zip(_lines(java), _lines(cs)))


def codexglue_dataset(java: str | os.PathLike, cs: str | os.PathLike):
    """tf.data of {'inputs': java, 'targets': c#} from the aligned files."""
    import tensorflow as tf
    check_aligned(java, cs)
    ds = tf.data.Dataset.zip((tf.data.TextLineDataset(str(java)), tf.data.TextLineDataset(str(cs))))
    return ds.map(lambda j, c: {"inputs": j, "targets": c})


# ----------------------------------------------------------------------------- CNN/DM subset

def read_indices_file(path: str | os.PathLike) -> np.ndarray:
    """Example indices, one integer a line (blank lines and '#' comments ignored), sorted."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"indices file {path} is a directory; give a text file (one example "
                        "index a line)")
    if not path.is_file():
        raise UserError(f"indices file {path} does not exist; give an existing file (one example "
                        "index a line) or leave it unset to use a seeded sample")
    values = []
    try:
        for n, line in enumerate(_lines(path), 1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            try:
                values.append(int(text))
            except ValueError:
                raise UserError(f"{path}:{n}: {line[:60]!r} is not an integer example index") from None
    except UnicodeDecodeError as e:
        raise UserError(f"indices file {path} is not UTF-8 text ({e.reason} at byte {e.start}); "
                        "give one example index a line") from None
    out = np.asarray(sorted(set(values)), dtype=np.int64)
    if len(out) != len(values):
        raise UserError(f"indices file {path} repeats {len(values) - len(out)} indices; each "
                        "example index must appear once")
    return out


def subset_indices(num_examples: int, size: int = CNNDM_SUBSET_SIZE, seed: int = 0,
                   indices_file: Optional[str | os.PathLike] = None) -> np.ndarray:
    """Sorted indices of the training subset: from `indices_file`, else a seeded sample.

    The seeded sample is `size` distinct indices drawn with a NumPy Generator seeded by `seed`,
    so the subset depends only on (num_examples, size, seed).
    """
    if indices_file:
        idx = read_indices_file(indices_file)
        if len(idx) and (idx[0] < 0 or idx[-1] >= num_examples):
            raise UserError(f"indices file {indices_file} has indices outside [0, {num_examples}) "
                            "(the size of the training split)")
        return idx
    if size > num_examples:
        raise UserError(f"cannot sample {size} training examples from a split of {num_examples}; "
                        "lower the subset size or prepare the full dataset")
    rng = np.random.default_rng(np.random.SeedSequence([seed, num_examples, size]))
    return np.sort(rng.choice(num_examples, size=size, replace=False)).astype(np.int64)


def write_indices_file(path: str | os.PathLike, indices: np.ndarray, comment: str = "") -> None:
    """Write indices one a line (with an optional '#' header) atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        if comment:
            f.writelines(f"# {c}\n" for c in comment.splitlines())
        f.writelines(f"{int(i)}\n" for i in indices)
    os.replace(tmp, path)


def take_indices(ds, indices: np.ndarray):
    """Keep the examples of `ds` whose position is in `indices` (a sorted int array)."""
    import tensorflow as tf
    indices = np.asarray(indices, dtype=np.int64)
    if not len(indices):
        return ds.take(0)
    wanted = tf.constant(indices)
    ds = ds.enumerate().take(int(indices[-1]) + 1)  # stop reading after the last wanted example

    def keep(i, _):
        pos = tf.minimum(tf.searchsorted(wanted, tf.reshape(i, [1]))[0], len(indices) - 1)
        return tf.equal(tf.gather(wanted, pos), i)

    return ds.filter(keep).map(lambda _, ex: ex)
