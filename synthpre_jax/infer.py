"""`synthpre infer` / `python -m synthpre_jax.infer`: predictions of a checkpoint, to JSONL.

    # a task split (INFER_SPLIT, default: the task's inference split)
    synthpre infer --gin_file=models/t5_small.gin --gin_file=runs/infer.gin \
      --gin.MIXTURE_OR_TASK_NAME="'mtop'" --gin.TASK_FEATURE_LENGTHS="{'inputs': 1024, 'targets': 128}" \
      --gin.CHECKPOINT_PATH="'runs/mtop/checkpoint_30000'" --gin.INFER_OUTPUT_DIR="'preds'"
    # a text file, one input a line, tokenized with the task's input vocabulary
    ... --gin.INPUT_FILE="'questions.txt'"

Output: INFER_OUTPUT_DIR/<task>-<step:06d>.jsonl (a split) or <file stem>-<step:06d>.jsonl (a
file), one JSON object per example in input order: {"index", "inputs", "prediction",
"prediction_ids", "score"} (+ "targets" for a split). INFER_MODE='score' writes the
log-likelihood of each example's targets instead of decoding (splits only), to
<task>-<step:06d>-scores.jsonl. Files are written whole or not at all.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any, Iterable, Mapping, Optional

import gin
import jax
import numpy as np

from synthpre_jax import paths
from synthpre_jax.errors import UserError

if __name__ == "__main__":  # `python -m synthpre_jax.infer`: run the package module so that
    # gin registers its configurables once (not also under '__main__')
    from synthpre_jax import infer as _module
    from synthpre_jax.cli import run_guarded
    sys.exit(run_guarded(_module.main, sys.argv[1:]))

MODES = ("predict", "score")


def _text(value: Any) -> Any:
    """JSON-ready text of a decoded value (bytes -> str, arrays of ids -> lists)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_text(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _trim(ids: list[int], eos_id: Optional[int]) -> list[int]:
    """Decoded ids up to and including the first EOS (the rest is padding)."""
    if eos_id is not None and eos_id in ids:
        return ids[: ids.index(eos_id) + 1]
    return [i for i in ids if i != 0]


def _write_jsonl(path: str, records: Iterable[Mapping[str, Any]]) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def _encode_lines(lines: list[str], feature: Any, length: int) -> np.ndarray:
    """[n, length] encoder inputs: each line through the feature's vocabulary, truncated to
    leave room for EOS when the feature adds it (seqio's append_eos_after_trim), zero-padded."""
    vocab = feature.vocabulary
    rows = np.zeros((len(lines), length), np.int32)
    for r, line in enumerate(lines):
        ids = vocab.encode(line)
        if not all(isinstance(t, (int, np.integer)) for t in ids):
            raise UserError(f"the task's input vocabulary ({type(vocab).__name__}) does not turn text "
                            "into token ids, so a file of text inputs cannot be used with it; infer on a split")
        ids = [int(t) for t in ids]
        if feature.add_eos and vocab.eos_id is not None:
            ids = ids[: length - 1] + [int(vocab.eos_id)]
        rows[r, : min(len(ids), length)] = ids[:length]
    return rows


def _read_lines(input_file: str) -> list[str]:
    path = os.path.expanduser(str(input_file))
    if os.path.isdir(path):
        raise UserError(f"input file {input_file} is a directory; give a text file with one input "
                        "per line (INPUT_FILE)")
    if not os.path.isfile(path):
        raise UserError(f"input file {input_file} does not exist; check INPUT_FILE")
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.rstrip("\n").rstrip("\r") for line in f]
    except UnicodeDecodeError as e:
        raise UserError(f"input file {input_file} is not UTF-8 text ({e.reason} at byte "
                        f"{e.start}); give one UTF-8 input per line") from None
    if not lines or all(not line.strip() for line in lines):
        raise UserError(f"input file {input_file} is empty; put one input per line")
    return lines


def _split_examples(task: Any, split: str, lengths: Mapping[str, int], cfg: Any,
                    num_examples: Optional[int]) -> tuple[list[dict], list[dict]]:
    """(task features, model features) of the first `num_examples` examples of a split."""
    import seqio
    ds = task.get_dataset(sequence_length=dict(lengths), split=split, shuffle=False, num_epochs=1,
                          seed=getattr(cfg, "seed", None), use_cached=bool(getattr(cfg, "use_cached", False)))
    if num_examples:
        ds = ds.take(int(num_examples))
    model_ds = seqio.EncDecFeatureConverter(pack=False)(ds, dict(lengths))
    task_rows = list(ds.as_numpy_iterator())
    model_rows = list(model_ds.as_numpy_iterator())
    if not task_rows:
        raise UserError(f"the {split!r} split of task {task.name!r} is empty: nothing to predict")
    return task_rows, model_rows


@gin.configurable
def infer(*, model: Any, dataset_cfg: Any, partitioner: Any, checkpoint_path: str, output_dir: str,
          input_file: Optional[str] = None, mode: str = "predict", num_examples: Optional[int] = None,
          decode_config: Any = None, max_decode_lengths: Optional[Mapping[str, int]] = None,
          stream: Any = None) -> list[str]:
    """Write predictions (or scores) of one checkpoint; returns the paths written."""
    from synthpre_jax import eval as eval_lib
    from synthpre_jax.data import dataset as data
    from synthpre_jax.evaluation import (BatchDecoder, _default_decode_config, infer_split,
                                         max_decode_length_for)
    import seqio

    if mode not in MODES:
        raise UserError(f"INFER_MODE must be one of {MODES}, got {mode!r}")
    if not output_dir or output_dir is gin.REQUIRED:
        raise UserError("INFER_OUTPUT_DIR is not set: add --gin.INFER_OUTPUT_DIR=\"'/path/to/output'\"")
    output_dir = os.path.expanduser(str(output_dir))
    paths.check_dir_target(output_dir, "INFER_OUTPUT_DIR")  # before any slow step
    if num_examples is not None and (not isinstance(num_examples, (int, np.integer)) or num_examples < 1):
        raise UserError(f"INFER_NUM_EXAMPLES must be None or a positive integer, got {num_examples!r}")
    lengths = getattr(dataset_cfg, "task_feature_lengths", None)
    if not lengths or not all(isinstance(lengths.get(k), int) and lengths[k] >= 1 for k in ("inputs", "targets")):
        raise UserError("TASK_FEATURE_LENGTHS must give positive 'inputs' and 'targets' lengths, e.g. "
                        "--gin.TASK_FEATURE_LENGTHS=\"{'inputs': 512, 'targets': 128}\"")
    name = getattr(dataset_cfg, "mixture_or_task_name", None)
    if not name or name is gin.REQUIRED:
        raise UserError("no task given: set MIXTURE_OR_TASK_NAME")
    data.import_task_modules(getattr(dataset_cfg, "module", None))
    root = data.get_task_or_mixture(name)
    base_cfg = _default_decode_config(model, decode_config)
    lines = _read_lines(input_file) if input_file else None
    if lines is not None and mode == "score":
        raise UserError("INFER_MODE='score' needs targets: score a task split, not an INPUT_FILE")

    step, path = eval_lib.list_checkpoints(checkpoint_path, "latest")[0]
    abstract, shardings = eval_lib.abstract_params(model, partitioner)
    params = eval_lib.restore_params(path, abstract, shardings)
    decoder = BatchDecoder(model, partitioner, int(getattr(dataset_cfg, "batch_size", 8)),
                           seed=getattr(dataset_cfg, "seed", 0) or 0)
    out = sys.stdout if stream is None else stream

    jobs = []   # (output name, task for vocab/decode length, task rows or None, model rows)
    if lines is not None:
        features = root.output_features
        enc = _encode_lines(lines, features["inputs"], int(lengths["inputs"]))
        task_name = root.name if isinstance(root, seqio.Task) else seqio.get_subtasks(root)[0].name
        stem = os.path.splitext(os.path.basename(str(input_file)))[0] or "inputs"
        jobs.append((stem, task_name, features, [{"inputs_text": l} for l in lines],
                     [{"encoder_input_tokens": r} for r in enc]))
    else:
        requested = getattr(dataset_cfg, "split", None) or None
        for task in seqio.get_subtasks(root):
            split = infer_split(task, requested)
            if split is None:
                continue
            task_rows, model_rows = _split_examples(task, split, lengths, dataset_cfg, num_examples)
            jobs.append((task.name, task.name, task.output_features, task_rows, model_rows))
        if not jobs:
            raise UserError(f"no task of {name!r} has the split {requested or 'test/validation'!r}; set INFER_SPLIT")

    written = []
    for out_name, task_name, features, task_rows, model_rows in jobs:
        in_vocab, out_vocab = features["inputs"].vocabulary, features["targets"].vocabulary
        examples = list(enumerate(model_rows))
        records = []
        if mode == "score":
            scores = dict(decoder.score(examples, params, shardings))
        else:
            length = max_decode_length_for(task_name, int(lengths["targets"]), base_cfg, max_decode_lengths)
            cfg = dataclasses.replace(base_cfg, max_decode_length=length)
            eos = out_vocab.eos_id if out_vocab.eos_id is not None else 1
            last = [time.time()]

            def progress(done, n=len(examples), last=last, out_name=out_name):
                if jax.process_index() == 0 and time.time() - last[0] > 30:
                    last[0] = time.time()
                    out.write(f"  {out_name}: decoded {done}/{n} examples\n")
                    out.flush()

            preds = {i: (ids, s) for i, ids, s in decoder.predict(examples, params, shardings, cfg,
                                                                  eos_id=int(eos), progress=progress)}
        for i, row in enumerate(task_rows):
            rec: dict = {"index": i}
            if "inputs_text" in row:
                rec["inputs"] = row["inputs_text"]
            else:
                rec["inputs"] = _text(row["inputs_pretokenized"] if "inputs_pretokenized" in row
                                      else in_vocab.decode([int(t) for t in row["inputs"]]))
                rec["targets"] = _text(row["targets_pretokenized"] if "targets_pretokenized" in row
                                       else out_vocab.decode([int(t) for t in row["targets"]]))
            if mode == "score":
                rec["score"] = scores[i]
            else:
                ids, score = preds[i]
                ids = _trim(ids, out_vocab.eos_id)
                rec.update(prediction=_text(out_vocab.decode(ids)), prediction_ids=ids, score=score)
            records.append(rec)
        suffix = "-scores" if mode == "score" else ""
        target = os.path.join(output_dir, f"{out_name}-{int(step):06}{suffix}.jsonl")
        if jax.process_index() == 0:
            eval_lib._make_output_dir(output_dir, "INFER_OUTPUT_DIR")
            _write_jsonl(target, records)
            out.write(f"wrote {len(records)} {'scores' if mode == 'score' else 'predictions'} "
                      f"of checkpoint step {step} to {target}\n")
            out.flush()
        written.append(target)
    return written


def main(argv: list[str]) -> int:
    from synthpre_jax import eval as eval_lib
    args = eval_lib.parse_args(argv, "synthpre infer", __doc__.split("\n\n")[0])
    eval_lib.setup(args, "runs/infer.gin")
    eval_lib.call_one_line(infer)
    return 0

