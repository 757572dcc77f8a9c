"""Inference evaluation: decode a task split, run the task's postprocess_fn and metric_fns.

This is T5X's "infer_eval": every EVAL_PERIOD steps of fine-tuning (and in `synthpre eval`),
`seqio.Evaluator` supplies the cached, deterministic eval examples (the first
EVALUATOR_NUM_EXAMPLES of the split, in file order), decodes our predictions through the
task's vocabulary, applies `postprocess_fn` and the `metric_fns`, and its loggers write the
outputs. Nothing of that is re-done here; this module only supplies the model side (a sharded,
jitted `predict_fn`/`score_fn`) and the per-task choices the paper makes (split, decode length).

Outputs under `<model_dir>/inference_eval/` (seqio's loggers, as T5X configures them):

    <task>/events.out.tfevents.*   TensorBoard scalars 'eval/<metric>' (seqio.TensorBoardLogger)
    <task>-metrics.jsonl           one line per evaluation: {"step": s, "<metric>": v, ...}
    <task>-<step:06d>.jsonl        the first `json_write_n_results` examples of that step:
                                   {"input": {...features, "inputs_text"}, "target", "output"
                                   (decoded), "prediction" (postprocessed)}

`evaluate()` returns the flat dict {'<task>/<metric>': value}. Only process 0 writes files;
every process decodes its own rows of each global batch, and the decodes come back replicated,
so all processes compute the same metrics.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import logging
import os
import sys
import time
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import gin
import jax
import numpy as np

from synthpre_jax.errors import UserError

log = logging.getLogger(__name__)

# Where the per-task tables of the paper's tasks live (a task module may be absent).
_TASK_TABLE_MODULE = "tasks.downstream"


def _task_table(name: str) -> Mapping[str, Any]:
    try:
        module = importlib.import_module(_TASK_TABLE_MODULE)
    except ModuleNotFoundError:
        return {}
    return dict(getattr(module, name, {}) or {})


def infer_split(task: Any, requested: Optional[str] = None) -> Optional[str]:
    """The split inference eval scores for `task`: `requested` when given, else the task's entry
    in tasks.downstream.INFER_EVAL_SPLITS (the paper: 'test', SQuAD 'validation'), else 'test'
    when the task has it, else 'validation'. None when the task has none of these."""
    if requested:
        return requested if requested in task.splits else None
    table = _task_table("INFER_EVAL_SPLITS").get(task.name)
    for cand in (table, "test", "validation"):
        if cand and cand in task.splits:
            return cand
    return None


def max_decode_length_for(task_name: str, target_length: Optional[int], decode_config: Any,
                          overrides: Optional[Mapping[str, int]] = None) -> int:
    """Number of tokens to decode for a task: DecodeConfig.max_decode_length (MAX_DECODE_LENGTH)
    when set, else `overrides[task]`, else tasks.downstream.MAX_DECODE_LENGTHS[task] (the
    paper's table), else the target feature length."""
    length = getattr(decode_config, "max_decode_length", None)
    source = "MAX_DECODE_LENGTH"
    if length is None and overrides and task_name in overrides:
        length, source = overrides[task_name], "InferenceEvaluator.max_decode_lengths"
    if length is None:
        length, source = _task_table("MAX_DECODE_LENGTHS").get(task_name), "MAX_DECODE_LENGTHS"
    if length is None:
        length, source = target_length, "the target feature length"
    if length is None or not isinstance(length, (int, np.integer)) or int(length) < 1:
        raise UserError(f"max decode length of task {task_name!r} is {length!r} (from {source}); "
                        "it must be an integer >= 1: set --gin.MAX_DECODE_LENGTH=N or "
                        "TASK_FEATURE_LENGTHS['targets']")
    return int(length)


def _default_decode_config(model: Any, decode_config: Any) -> Any:
    from synthpre_jax.models import inference
    cfg = decode_config or getattr(model, "decode_config", None) or inference.DecodeConfig()
    if not isinstance(cfg, inference.DecodeConfig):
        raise UserError(f"decode_config must be an inference.DecodeConfig, got {type(cfg).__name__}")
    return cfg


def _user_error_cause(e: BaseException) -> Optional[UserError]:
    """seqio wraps metric-function errors in ValueError; recover a UserError underneath."""
    while e is not None:
        if isinstance(e, UserError):
            return e
        e = e.__cause__ or e.__context__
    return None


# ----------------------------------------------------------------------------- decoding

class BatchDecoder:
    """Decodes / scores an (index, features) stream in global batches on the partitioner's mesh.

    Each global batch is padded to `batch_size` rows (padding rows are dropped from the result),
    each process feeds its rows with `partitioner.make_global_batch`, and one jitted function per
    (kind, DecodeConfig, parameter shardings) runs the model; jax caches its compilation per
    input shape, so an eval set of one shape compiles once for the whole run.
    """

    def __init__(self, model: Any, partitioner: Any, batch_size: int, seed: int = 0):
        self.model = model
        self.partitioner = partitioner
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise UserError(f"inference batch size must be >= 1, got {batch_size!r}")
        self.layout = partitioner.data_layout(self.batch_size)
        self.seed = int(seed or 0)
        self._fns: dict = {}

    # -- compiled functions -------------------------------------------------------------------
    def _compiled(self, kind: str, cfg: Any, eos_id: int, param_shardings: Any) -> Callable:
        leaves = tuple(jax.tree_util.tree_leaves(param_shardings))
        key = (kind, cfg, eos_id, jax.tree_util.tree_structure(param_shardings))
        hit = self._fns.get(key)
        if hit is not None and hit[0] == leaves:
            return hit[1]
        model, rep = self.model, self.partitioner.replicated()
        data = self.partitioner.batch_sharding()
        if kind == "predict":
            def fn(params, batch, rng):
                decodes, aux = _predict(model, params, batch, cfg, rng, eos_id)
                return decodes, aux["scores"]
            jitted = jax.jit(fn, in_shardings=(param_shardings, data, rep), out_shardings=(rep, rep))
        else:
            def fn(params, batch):
                return model.score_batch(params, batch)
            jitted = jax.jit(fn, in_shardings=(param_shardings, data), out_shardings=rep)
        self._fns[key] = (leaves, jitted)
        return jitted

    # -- batching -------------------------------------------------------------------------------
    def _global_batches(self, examples: Iterable[tuple[int, Mapping[str, np.ndarray]]],
                        features: Sequence[str]):
        """(indices of real rows, global jax batch) per batch of `batch_size` examples."""
        b = self.batch_size
        lo = self.layout.shard_id * self.layout.per_host_batch_size
        hi = lo + self.layout.per_host_batch_size
        buf: list = []

        def emit(rows):
            idx = [int(i) for i, _ in rows]
            stacked = {k: np.stack([np.asarray(ex[k]) for _, ex in rows]) for k in features}
            if len(rows) < b:  # pad the last batch with all-zero rows (dropped below)
                stacked = {k: np.concatenate([v, np.zeros((b - len(rows),) + v.shape[1:], v.dtype)])
                           for k, v in stacked.items()}
            host = {k: v[lo:hi] for k, v in stacked.items()}
            return idx, self.partitioner.make_global_batch(host, b)

        for item in examples:
            buf.append(item)
            if len(buf) == b:
                yield emit(buf)
                buf = []
        if buf:
            yield emit(buf)

    def predict(self, examples: Iterable, params: Any, param_shardings: Any, decode_config: Any,
                eos_id: int = 1, progress: Optional[Callable[[int], None]] = None
                ) -> list[tuple[int, list[int], float]]:
        """[(index, decoded ids (EOS then 0s, fixed length), score)] for each example."""
        fn = self._compiled("predict", decode_config, int(eos_id), param_shardings)
        out: list = []
        base = jax.random.PRNGKey(self.seed)

        def collect(idx, result):
            decodes, scores = (np.asarray(x) for x in result)
            out.extend((i, decodes[r].tolist(), float(scores[r])) for r, i in enumerate(idx))
            if progress is not None:
                progress(len(out))

        pending = None   # one batch in flight: the next is dispatched before this one is fetched
        with self.partitioner.context():
            for n, (idx, batch) in enumerate(self._global_batches(examples, ("encoder_input_tokens",))):
                result = fn(params, batch, jax.random.fold_in(base, n))
                if pending is not None:
                    collect(*pending)
                pending = (idx, result)
            if pending is not None:
                collect(*pending)
        return out

    def score(self, examples: Iterable, params: Any, param_shardings: Any) -> list[tuple[int, float]]:
        """[(index, log-likelihood of the example's targets)]."""
        fn = self._compiled("score", None, 0, param_shardings)
        feats = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
                 "decoder_loss_weights")
        out = []
        with self.partitioner.context():
            for idx, batch in self._global_batches(examples, feats):
                scores = np.asarray(fn(params, batch))
                out += [(i, float(scores[r])) for r, i in enumerate(idx)]
        return out


def _predict(model: Any, params: Any, batch: Mapping[str, Any], cfg: Any, rng: Any, eos_id: int):
    """model.predict_batch (so a user's model subclass is honoured); its EOS is id 1, as in T5's
    vocabularies, so another EOS goes to inference.predict_batch directly."""
    if eos_id == 1:
        return model.predict_batch(params, batch, rng=rng, decode_config=cfg)
    from synthpre_jax.models import inference
    return inference.predict_batch(model.module, params, batch, cfg, rng=rng, eos_id=eos_id)


def _examples(ds) -> Iterable[tuple[int, Mapping[str, np.ndarray]]]:
    """seqio's enumerated model dataset as (index, numpy features)."""
    for index, ex in ds.as_numpy_iterator():
        yield int(index), ex


# ----------------------------------------------------------------------------- loggers

def _json_logger_cls(write_n_results: Optional[int]) -> Callable[..., Any]:
    """seqio.JSONLogger writing whole token arrays (not seqio's 32-element summaries) and, for
    tasks without pretokenized inputs, the inputs decoded through the vocabulary."""
    import seqio

    class _Logger(seqio.JSONLogger):
        def __init__(self, output_dir: str):
            encoder = functools.partial(seqio.loggers.TensorAndNumpyEncoder, max_ndarray_size=1 << 16)
            super().__init__(output_dir, write_n_results=write_n_results, json_encoder_cls=encoder)
            self.vocabularies: dict = {}

        def __call__(self, task_name, step, metrics, dataset, inferences, targets):
            vocab = self.vocabularies.get(task_name)
            if dataset is not None and vocab is not None and write_n_results != 0:
                n = write_n_results if write_n_results else None
                dataset = _with_input_text(dataset, vocab, n)
            super().__call__(task_name=task_name, step=step, metrics=metrics, dataset=dataset,
                             inferences=inferences, targets=targets)

    return _Logger


def _with_input_text(dataset, vocab: Any, n: Optional[int]):
    """The first n examples with 'inputs_text' (the inputs decoded to text) when the task keeps
    no 'inputs_pretokenized' (the paper's file tasks); else `dataset` unchanged."""
    import tensorflow as tf
    if "inputs_pretokenized" in dataset.element_spec or "inputs" not in dataset.element_spec:
        return dataset
    rows = []
    for ex in (dataset.take(n) if n else dataset).as_numpy_iterator():
        text = vocab.decode([int(t) for t in ex["inputs"]])
        if not isinstance(text, str):   # a vocabulary without text (ids pass through)
            return dataset
        rows.append({**ex, "inputs_text": text})
    if not rows:
        return dataset
    return tf.data.Dataset.from_generator(lambda: iter(rows), output_signature={
        **dataset.element_spec, "inputs_text": tf.TensorSpec([], tf.string)})


# ----------------------------------------------------------------------------- the evaluator

@dataclasses.dataclass
class _TaskEval:
    name: str
    split: str
    evaluator: Any          # seqio.Evaluator for this one task
    num_examples: int
    decode_config: Any      # DecodeConfig with this task's max_decode_length
    eos_id: int


@gin.configurable
class InferenceEvaluator:
    """Decode + metrics on the infer_eval split of every task of a task or mixture.

    model, partitioner: the run's EncoderDecoderModel and PjitPartitioner.
    dataset_cfg: the infer_eval DatasetConfig (task, feature lengths, batch size, use_cached,
      module). `split=None` picks each task's inference split (see `infer_split`);
      `task_feature_lengths=None` uses the longest example of the split (seqio's default).
    model_dir: outputs go to <model_dir>/inference_eval/.
    num_examples: EVALUATOR_NUM_EXAMPLES, the first N examples of each split (None: all).
    json_write_n_results: JSON_WRITE_N_RESULTS predictions written per step (None: all).
    decode_config: inference.DecodeConfig (default: the model's, else beam 4, alpha 0.6).
    max_decode_lengths: optional {task: length} for tasks outside tasks.downstream's table.
    stream: where progress lines go (default stdout; None-like `False` silences them).

    Raises UserError (one line) for a task without metric_fns, an empty split, a task without
    the split, or a max decode length < 1.
    """

    def __init__(self, model: Any, partitioner: Any, dataset_cfg: Any, model_dir: str,
                 num_examples: Optional[int] = None, json_write_n_results: Optional[int] = 3,
                 decode_config: Any = None, max_decode_lengths: Optional[Mapping[str, int]] = None,
                 stream: Any = None):
        import seqio
        from synthpre_jax.data import dataset as data

        self.model = model
        self.partitioner = partitioner
        self.dataset_cfg = dataset_cfg
        self.model_dir = str(model_dir)
        self.log_dir = os.path.join(self.model_dir, "inference_eval")
        self.stream = sys.stdout if stream is None else stream
        if num_examples is not None and (not isinstance(num_examples, (int, np.integer)) or num_examples < 1):
            raise UserError(f"EVALUATOR_NUM_EXAMPLES must be None or a positive integer, got {num_examples!r}")
        if json_write_n_results is not None and (not isinstance(json_write_n_results, (int, np.integer))
                                                 or json_write_n_results < 0):
            raise UserError(f"JSON_WRITE_N_RESULTS must be None or an integer >= 0, got {json_write_n_results!r}")
        if getattr(dataset_cfg, "pack", False):
            raise UserError("inference eval cannot use packed examples: set pack=False on the infer_eval DatasetConfig")
        name = getattr(dataset_cfg, "mixture_or_task_name", None)
        if not name or name is gin.REQUIRED:
            raise UserError("no task for inference eval: set MIXTURE_OR_TASK_NAME")
        data.import_task_modules(getattr(dataset_cfg, "module", None))
        root = data.get_task_or_mixture(name)
        base_cfg = _default_decode_config(model, decode_config)
        lengths = getattr(dataset_cfg, "task_feature_lengths", None)
        lengths = dict(lengths) if lengths else None
        requested = getattr(dataset_cfg, "split", None) or None

        subtasks = seqio.get_subtasks(root)
        with_split = [(t, infer_split(t, requested)) for t in subtasks]
        with_split = [(t, s) for t, s in with_split if s is not None]
        if not with_split:
            want = repr(requested) if requested else "'test' or 'validation'"
            raise UserError(f"no task of {name!r} has the split {want} (splits: "
                            f"{sorted({s for t in subtasks for s in t.splits})}); set INFER_EVAL_SPLIT")
        scored = [(t, s) for t, s in with_split if t.metric_fns or getattr(t, "metric_objs", None)]
        if not scored:
            raise UserError(f"task {name!r} has no metric_fns, so inference eval has nothing to compute; "
                            "register the task with metric_fns or choose a task that has them "
                            "(while training, --gin.train.infer_eval_dataset_cfg=None turns "
                            "inference eval off)")
        for t, _ in with_split:
            if not any(t is u for u, _ in scored):
                log.info("inference eval skips task %s: it has no metric_fns", t.name)

        loggers: tuple = ()
        if jax.process_index() == 0:
            loggers = (seqio.TensorBoardLogger, _json_logger_cls(json_write_n_results))
        self.tasks: list[_TaskEval] = []
        for task, split in scored:
            try:
                ev = seqio.Evaluator(
                    mixture_or_task_name=task.name,
                    feature_converter=seqio.EncDecFeatureConverter(pack=False),
                    eval_split=split, use_cached=bool(getattr(dataset_cfg, "use_cached", False)),
                    seed=getattr(dataset_cfg, "seed", 42), sequence_length=lengths,
                    num_examples=num_examples, shuffle=False, logger_cls=loggers,
                    log_dir=self.log_dir, use_memory_cache=True, async_compute_metrics=False)
            except UserError:
                raise
            except (ValueError, KeyError) as e:
                raise UserError(f"cannot build the {split!r} eval set of task {task.name!r}: "
                                f"{str(e).splitlines()[0][:300]}") from None
            count = int(ev.cached_task_datasets[task.name].cardinality().numpy())
            if count < 1:
                raise UserError(f"the {split!r} split of task {task.name!r} is empty: nothing to evaluate; "
                                "check the data files or choose another INFER_EVAL_SPLIT")
            target_len = ev.model_feature_shapes.get("decoder_target_tokens", (None,))[0]
            length = max_decode_length_for(task.name, target_len, base_cfg, max_decode_lengths)
            for logger in ev.loggers:
                if hasattr(logger, "vocabularies"):
                    logger.vocabularies[task.name] = task.output_features["inputs"].vocabulary
            vocab = task.output_features["targets"].vocabulary
            eos = vocab.eos_id if vocab.eos_id is not None else 1
            self.tasks.append(_TaskEval(task.name, split, ev, count,
                                        dataclasses.replace(base_cfg, max_decode_length=length), int(eos)))
        self.decoder = BatchDecoder(model, partitioner, int(getattr(dataset_cfg, "batch_size", 8)),
                                    seed=getattr(dataset_cfg, "seed", 0) or 0)

    # -------------------------------------------------------------------------------------------
    def _say(self, text: str) -> None:
        if self.stream and jax.process_index() == 0:
            self.stream.write(text + "\n")
            self.stream.flush()

    def evaluate(self, step: int, params: Any, param_shardings: Any) -> dict[str, float]:
        """Decode every task's eval set with `params`, compute and log its metrics at `step`;
        returns {'<task>/<metric>': value}."""
        results: dict[str, float] = {}
        for te in self.tasks:
            t0 = time.time()
            last = [t0]

            def progress(done, te=te, last=last):
                if time.time() - last[0] > 30:
                    last[0] = time.time()
                    self._say(f"  infer_eval {te.name}: decoded {done}/{te.num_examples} examples")

            def predict_fn(ds, model_feature_shapes=None, te=te, progress=progress):
                out = self.decoder.predict(_examples(ds), params, param_shardings, te.decode_config,
                                           eos_id=te.eos_id, progress=progress)
                return [(i, ids) for i, ids, _ in out]

            def score_fn(ds, model_feature_shapes=None):
                return self.decoder.score(_examples(ds), params, param_shardings)

            try:
                future, _ = te.evaluator.evaluate(compute_metrics=True, step=int(step),
                                                  predict_fn=predict_fn, score_fn=score_fn)
                task_metrics = future.result()[te.name]
            except UserError:
                raise
            except (ValueError, TypeError) as e:
                cause = _user_error_cause(e)
                if cause is not None:
                    raise cause from None
                raise UserError(f"computing the metrics of task {te.name!r} failed: "
                                f"{str(e).splitlines()[0][:300]}") from e
            flat = {}
            for k, v in task_metrics.items():
                value = getattr(v, "value", v)
                try:
                    flat[f"{te.name}/{k}"] = float(value)
                except (TypeError, ValueError):
                    continue
            results.update(flat)
            shown = ", ".join(f"{k.split('/', 1)[1]} {v:.4g}" for k, v in flat.items())
            self._say(f"  infer_eval {te.name} @ {int(step)}: {shown} "
                      f"({te.num_examples} examples of {te.split!r}, {time.time() - t0:.1f}s)")
        return results


def metrics_jsonl_path(model_dir: str, task: str) -> str:
    """Where `InferenceEvaluator` appends the metrics of `task` (read by `synthpre select`)."""
    return os.path.join(model_dir, "inference_eval", f"{task}-metrics.jsonl")


def predictions_jsonl_path(model_dir: str, task: str, step: int) -> str:
    """Where `InferenceEvaluator` writes the predictions of `task` at `step` (seqio's name)."""
    return os.path.join(model_dir, "inference_eval", f"{task}-{int(step):06}.jsonl")


__all__ = ["InferenceEvaluator", "BatchDecoder", "infer_split", "max_decode_length_for",
           "metrics_jsonl_path", "predictions_jsonl_path"]
