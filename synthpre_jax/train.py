"""`python -m synthpre_jax.train` / `synthpre train`: T5X's train.py flags and behaviour.

    synthpre train --gin_file=models/t5_small.gin --gin_file=runs/pretrain.gin \
      --gin.MIXTURE_OR_TASK_NAME="'synthpre_set'" --gin.MODEL_DIR="'/tmp/set'" --gin.TRAIN_STEPS=80000

Rerunning the same command resumes from the latest checkpoint in MODEL_DIR, data included:
the data stream is deterministic, so step s continues at batch s.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from typing import Any, Optional

import gin
import jax
import numpy as np

from synthpre_jax import gin_utils
from synthpre_jax.errors import UserError


@gin.configurable(module="utils")
@dataclasses.dataclass
class CheckpointConfig:
    """T5X's CheckpointConfig: what to save and what to restore at the start."""
    save: Any = None      # checkpoints.SaveCheckpointConfig
    restore: Any = None   # checkpoints.RestoreCheckpointConfig (INITIAL_CHECKPOINT_PATH)


class _Preemption:
    """SIGTERM (TPU preemption) asks for a checkpoint at the next step boundary, then exit."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not in the main thread
            self._old = None
        return self

    def _handle(self, *_):
        self.requested = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def _input_shapes(feature_lengths: dict, batch: int, pack: bool) -> dict:
    enc, dec = int(feature_lengths["inputs"]), int(feature_lengths["targets"])
    shapes = {"encoder_input_tokens": (batch, enc), "decoder_input_tokens": (batch, dec),
              "decoder_target_tokens": (batch, dec), "decoder_loss_weights": (batch, dec)}
    if pack:
        shapes.update({"encoder_segment_ids": (batch, enc), "encoder_positions": (batch, enc),
                       "decoder_segment_ids": (batch, dec), "decoder_positions": (batch, dec)})
    return shapes


def _require(**values) -> None:
    """gin's %gin.REQUIRED macros arrive as a sentinel; name the macro the user must set."""
    for value, macro in values.values():
        if value is gin.REQUIRED:
            raise UserError(f"missing required macro {macro}: add --gin.{macro}=...")


def _check_model_dir(model_dir: str) -> None:
    if not model_dir:
        raise UserError("MODEL_DIR is not set: add --gin.MODEL_DIR=\"'/path/to/run'\"")
    try:
        os.makedirs(model_dir, exist_ok=True)
        probe = os.path.join(model_dir, f".write_probe_{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise UserError(f"MODEL_DIR {model_dir!r} is not writable ({e.strerror}); choose another directory") from None


def _check_steps(total_steps, eval_period, eval_steps) -> None:
    for name, v in (("TRAIN_STEPS", total_steps), ("EVAL_PERIOD", eval_period), ("EVAL_STEPS", eval_steps)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise UserError(f"{name} must be a positive integer, got {v!r}")


def _to_host(tree) -> dict:
    return {k: float(v) for k, v in jax.device_get(tree).items()}


@gin.configurable(denylist=["stream"])
def train(*, model: Any, train_dataset_cfg: Any, partitioner: Any, model_dir: str, total_steps: int,
          trainer_cls: Any = None, train_eval_dataset_cfg: Any = None, infer_eval_dataset_cfg: Any = None,
          checkpoint_cfg: Optional[CheckpointConfig] = None, init_cfg: Any = None,
          evaluator_cls: Any = None,
          eval_steps: int = 20, eval_period: int = 1000, stats_period: Optional[int] = None,
          random_seed: Optional[int] = 0, stream=None) -> dict:
    """Train (or resume) and return a summary {'step', 'train_metrics', 'eval_metrics', ...}."""
    from synthpre_jax import checkpoints
    from synthpre_jax.data import dataset as data
    from synthpre_jax.models.model import MetricSums, metrics_from_sums
    from synthpre_jax.summaries import MetricWriter, Progress
    from synthpre_jax.trainer import Trainer, model_info

    _require(model_dir=(model_dir, "MODEL_DIR"), total_steps=(total_steps, "TRAIN_STEPS"),
             task=(getattr(train_dataset_cfg, "mixture_or_task_name", None), "MIXTURE_OR_TASK_NAME"),
             lengths=(getattr(train_dataset_cfg, "task_feature_lengths", None), "TASK_FEATURE_LENGTHS"))
    _check_model_dir(model_dir)
    _check_steps(total_steps, eval_period, eval_steps)
    stats_period = int(stats_period or min(eval_period, 100))
    checkpoint_cfg = checkpoint_cfg or CheckpointConfig()
    save_cfg = checkpoint_cfg.save or checkpoints.SaveCheckpointConfig(period=eval_period)
    cfg = train_dataset_cfg
    data.import_task_modules(cfg.module)
    data._check(cfg)
    data.get_task_or_mixture(cfg.mixture_or_task_name)  # fail early on an unknown name
    layout = partitioner.data_layout(cfg.batch_size)
    shapes = _input_shapes(cfg.task_feature_lengths, cfg.batch_size, cfg.pack)

    trainer = (trainer_cls or Trainer)(model=model, partitioner=partitioner,
                                       random_seed=0 if random_seed is None else int(random_seed))
    abstract, shardings = trainer.abstract_state(shapes)
    manager = checkpoints.CheckpointManager(model_dir, save_cfg)
    progress = Progress(total_steps, 0, stream=stream)
    latest = manager.latest_step()
    if latest is not None:
        state = manager.restore(latest, abstract)
        start = int(latest)
        progress.message(f"resuming from {model_dir} at step {start}")
    else:
        params = trainer.init_params(shapes, shardings)
        record = {"mode": "from_scratch"}
        restore = checkpoint_cfg.restore
        if restore is not None and restore.path:
            params = checkpoints.restore_initial_params(restore, params, shardings["params"])
            record = {"mode": "restore", "path": str(restore.path),
                      "assignment_map": [list(a) for a in (restore.assignment_map or [])]}
        if init_cfg is not None:
            from synthpre_jax.init_modes import initialize_params
            params, record = initialize_params(params, init_cfg, shardings["params"])
        state = trainer.state_from_params(params, shardings)
        start = 0
        if jax.process_index() == 0:
            with open(os.path.join(model_dir, "init.json"), "w") as f:
                json.dump(record, f, indent=1, default=str)
            with open(os.path.join(model_dir, "model-info.txt"), "w") as f:
                f.write(model_info(abstract["params"], shardings["params"]))
    if jax.process_index() == 0:
        with open(os.path.join(model_dir, "config.gin"), "w") as f:
            f.write(gin.config_str())
    progress.start = start

    eval_sets: dict[str, list] = {}
    if train_eval_dataset_cfg is not None:
        ecfg = train_eval_dataset_cfg
        for task in data.subtask_names(ecfg.mixture_or_task_name):
            eval_sets[task] = data.take_batches(ecfg, eval_steps, layout.shard_id, layout.num_shards,
                                                ecfg.batch_size // layout.num_shards, task_name=task)

    evaluator = None
    if infer_eval_dataset_cfg is not None:
        # Decoding + the task's metric_fns on the infer_eval split (synthpre_jax/evaluation.py).
        from synthpre_jax.evaluation import InferenceEvaluator
        evaluator = (evaluator_cls or InferenceEvaluator)(
            model=model, partitioner=partitioner, dataset_cfg=infer_eval_dataset_cfg, model_dir=model_dir)

    train_writer = MetricWriter(os.path.join(model_dir, "train"))
    eval_writers = {t: MetricWriter(os.path.join(model_dir, "training_eval", t)) for t in eval_sets}
    result = {"step": start, "train_metrics": [], "eval_metrics": {t: [] for t in eval_sets}}

    def run_eval(step: int) -> None:
        for task, batches in eval_sets.items():
            acc = MetricSums()
            for b in batches:
                acc.add(_to_host(trainer.eval_step(state["params"], partitioner.make_global_batch(b, ecfg.batch_size),
                                                   shardings["params"])))
            m = metrics_from_sums(acc.sums, acc.steps)
            eval_writers[task].write(step, m)
            result["eval_metrics"][task].append({"step": step, **m})
            progress.message(f"  eval {task} @ {step}: loss {m['loss']:.4g}, accuracy {m['accuracy']:.4f}")

    ds = data.get_dataset(cfg, layout.shard_id, layout.num_shards, layout.per_host_batch_size,
                          num_epochs=None, start_batch=start)
    it = ds.as_numpy_iterator()
    pending, acc = [], MetricSums()
    t_last, seqs = time.time(), 0
    step = start
    with _Preemption() as preempt:
        while step < total_steps:
            try:
                host_batch = next(it)
            except StopIteration:
                raise UserError(f"the training data of {cfg.mixture_or_task_name!r} ran out at step {step}") from None
            state, sums = trainer.train_step(state, partitioner.make_global_batch(host_batch, cfg.batch_size), shardings)
            step += 1
            seqs += cfg.batch_size
            pending.append(sums)
            if step % stats_period == 0 or step == total_steps or preempt.requested:
                for s in pending:
                    acc.add(_to_host(s))
                pending = []
                lr = acc.sums.get("learning_rate", 0.0) / max(acc.steps, 1)
                m = metrics_from_sums(acc.sums, acc.steps)
                if not np.isfinite(m["loss"]):
                    manager.wait_until_finished()
                    last = manager.latest_step()
                    raise UserError(f"non-finite loss at step {step} (last good checkpoint: "
                                    f"{'step ' + str(last) if last is not None else 'none'}); "
                                    "lower the learning rate or check the data")
                dt = max(time.time() - t_last, 1e-9)
                m.update({"learning_rate": lr, "timing/seqs_per_second": seqs / dt,
                          "timing/steps_per_second": acc.steps / dt})
                train_writer.write(step, m)
                result["train_metrics"].append({"step": step, **m})
                progress.update(step, m["loss"])
                acc.reset()
                t_last, seqs = time.time(), 0
            if step % eval_period == 0 or step == total_steps:
                if eval_sets:
                    run_eval(step)
                if evaluator is not None:
                    result.setdefault("infer_metrics", []).append(
                        {"step": step, **evaluator.evaluate(step, state["params"], shardings["params"])})
            manager.save(step, state, force=step == total_steps or preempt.requested)
            if preempt.requested:
                manager.wait_until_finished()
                progress.message(f"SIGTERM received: saved checkpoint at step {step} in {model_dir}; "
                                 "rerun the same command to continue")
                break
    manager.wait_until_finished()
    manager.close()
    train_writer.close()
    for w in eval_writers.values():
        w.close()
    result["step"] = step
    result["state"] = state
    return result


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="synthpre train", description=__doc__.split("\n\n")[0])
    gin_utils.add_gin_flags(p)
    p.add_argument("--tfds_data_dir", default=None, help="TFDS data directory")
    p.add_argument("--multiprocess_gpu", action="store_true", help="initialise jax.distributed for multi-host GPU")
    p.add_argument("--coordinator_address", default=None)
    p.add_argument("--process_count", type=int, default=None)
    p.add_argument("--process_index", type=int, default=None)
    p.add_argument("--cpu_collectives", action="store_true", help="multi-process CPU (tests, debugging)")
    args, unknown = p.parse_known_args(gin_utils.rewrite_gin_args(argv))
    if unknown:
        raise UserError(f"unknown argument {unknown[0]!r}; see 'synthpre train --help'")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.getLogger("absl").setLevel(logging.WARNING)
    from synthpre_jax.partitioning import initialize_distributed
    initialize_distributed(args.multiprocess_gpu, args.coordinator_address, args.process_count,
                           args.process_index, cpu_collectives=args.cpu_collectives)
    if args.tfds_data_dir:
        import seqio
        seqio.set_tfds_data_dir_override(args.tfds_data_dir)
    _register_configurables()
    if not args.gin_file:
        raise UserError("no --gin_file given: pass a model and a run file, e.g. "
                        "--gin_file=models/t5_tiny.gin --gin_file=runs/pretrain.gin")
    gin_utils.parse_gin(args.gin_file, args.gin_bindings, args.gin_search_paths)
    result = gin_utils.call_configurable(train)
    last = result["train_metrics"][-1] if result["train_metrics"] else {}
    print(f"done: step {result['step']}" + (f", loss {last['loss']:.4g}" if last else ""))
    return 0


def _register_configurables() -> None:
    """Import every module whose configurables gin files may name."""
    import synthpre_jax.checkpoints  # noqa: F401
    import synthpre_jax.data.dataset  # noqa: F401
    import synthpre_jax.models.model  # noqa: F401
    import synthpre_jax.models.network  # noqa: F401
    import synthpre_jax.optimizers  # noqa: F401
    import synthpre_jax.partitioning  # noqa: F401
    import synthpre_jax.trainer  # noqa: F401
    for optional in ("synthpre_jax.init_modes", "synthpre_jax.models.inference", "synthpre_jax.data.vocabularies"):
        try:
            __import__(optional)
        except ModuleNotFoundError as e:
            if e.name != optional:
                raise


if __name__ == "__main__":
    from synthpre_jax.cli import run_guarded
    sys.exit(run_guarded(main, sys.argv[1:]))
