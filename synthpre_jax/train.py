"""`python -m synthpre_jax.train` / `synthpre train`: T5X's train.py flags and behaviour.

    synthpre train --gin_file=models/t5_small.gin --gin_file=runs/pretrain.gin \
      --gin.MIXTURE_OR_TASK_NAME="'synthpre_set'" --gin.MODEL_DIR="'runs/set'" --gin.TRAIN_STEPS=80000

Rerunning the same command resumes from the latest checkpoint in MODEL_DIR, data included:
the data stream is deterministic, so step s continues at batch s.
"""
from __future__ import annotations

if __name__ == "__main__":  # run as the package module, so gin registers each name once
    import sys as _sys
    from synthpre_jax.cli import main as _cli_main
    _sys.exit(_cli_main(["train"] + _sys.argv[1:]))

import argparse
import dataclasses
import itertools
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

from synthpre_jax import errors, gin_utils
from synthpre_jax.errors import UserError
from synthpre_jax.paths import make_writable_dir


# Exit code after a SIGTERM-triggered checkpoint (128 + SIGTERM), so wrappers such as the
# experiment grid stop instead of starting the next run.
PREEMPTED_EXIT_CODE = 143


@gin.configurable(module="utils")
@dataclasses.dataclass
class CheckpointConfig:
    """T5X's CheckpointConfig: what to save and what to restore at the start."""
    save: Any = None      # checkpoints.SaveCheckpointConfig
    restore: Any = None   # checkpoints.RestoreCheckpointConfig (INITIAL_CHECKPOINT_PATH)


NONFINITE_POLICIES = ("stop", "skip")


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
    """Fail before any work when MODEL_DIR cannot be written. Directories created for the probe
    are removed again (single process): MODEL_DIR is only created once set-up has succeeded, so
    a run that stops on bad input leaves it as it was."""
    if not model_dir or not isinstance(model_dir, (str, os.PathLike)):
        raise UserError("MODEL_DIR is not set: add --gin.MODEL_DIR=\"'/path/to/run'\"")
    model_dir = os.fspath(model_dir)
    if "://" in model_dir:
        return  # a bucket (gs://...): Orbax/TensorStore report access problems themselves
    if os.path.exists(model_dir) and not os.path.isdir(model_dir):
        raise UserError(f"MODEL_DIR {model_dir!r} is a file, not a directory; choose a directory")
    missing, d = [], os.path.abspath(model_dir)
    while not os.path.exists(d) and os.path.dirname(d) != d:
        missing.append(d)
        d = os.path.dirname(d)
    try:
        make_writable_dir(model_dir)
    except OSError as e:
        raise UserError(f"MODEL_DIR {model_dir!r} is not writable ({e.strerror}); choose another directory") from None
    finally:
        if missing and jax.process_count() == 1:  # other hosts may probe the same shared directory
            for created in missing:   # deepest first
                try:
                    os.rmdir(created)
                except OSError:
                    break


def _check_steps(total_steps, eval_period, eval_steps, stats_period=None, on_nonfinite_loss="stop") -> None:
    for name, v in (("TRAIN_STEPS", total_steps), ("EVAL_PERIOD", eval_period), ("EVAL_STEPS", eval_steps),
                    ("train.stats_period", 1 if stats_period is None else stats_period)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise UserError(f"{name} must be a positive integer, got {v!r}")
    if on_nonfinite_loss not in NONFINITE_POLICIES:
        raise UserError(f"train.on_nonfinite_loss must be one of {', '.join(map(repr, NONFINITE_POLICIES))}, "
                        f"got {on_nonfinite_loss!r}")


def _check_model(model: Any) -> None:
    """Model settings read only inside the first jitted step, checked before MODEL_DIR is written."""
    from synthpre_jax.models.model import loss_weights_and_normalizer
    if hasattr(model, "loss_normalizing_factor"):
        loss_weights_and_normalizer({"decoder_target_tokens": np.ones((1, 1), np.int32)},
                                    model.loss_normalizing_factor)


def _check_vocabulary(task: Any, model: Any) -> None:
    """Token ids beyond the embedding are silently clamped by XLA, so a task vocabulary larger
    than T5Config.vocab_size would train on garbage without an error."""
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    if not isinstance(size, (int, np.integer)):
        return
    for feature_name, feature in getattr(task, "output_features", {}).items():
        n = getattr(getattr(feature, "vocabulary", None), "vocab_size", None)
        if isinstance(n, (int, np.integer)) and n > size:
            raise UserError(f"the vocabulary of {task.name!r} ({feature_name!r}) has {n} ids but the model's "
                            f"embedding has {size} rows; set --gin.network.T5Config.vocab_size={n} (or more) "
                            "or use the model config made for this vocabulary")


def _to_host(tree) -> dict:
    return {k: float(v) for k, v in jax.device_get(tree).items()}


@gin.configurable(denylist=["stream"])
def train(*, model: Any, train_dataset_cfg: Any, partitioner: Any, model_dir: str, total_steps: int,
          trainer_cls: Any = None, train_eval_dataset_cfg: Any = None, infer_eval_dataset_cfg: Any = None,
          checkpoint_cfg: Optional[CheckpointConfig] = None, init_cfg: Any = None,
          evaluator_cls: Any = None,
          eval_steps: int = 20, eval_period: int = 1000, stats_period: Optional[int] = None,
          random_seed: Optional[int] = 0, on_nonfinite_loss: str = "stop", stream=None) -> dict:
    """Train (or resume) and return a summary {'step', 'train_metrics', 'eval_metrics', ...}.

    on_nonfinite_loss: 'stop' raises UserError at the first step whose loss or update is NaN/inf
      (naming the step; no checkpoint of a later state is written, so the last one is good);
      'skip' keeps the old params/optimizer state for such steps, counts them in the
      'skipped_steps' metric and lists them in the result.
    """
    from synthpre_jax import checkpoints
    from synthpre_jax.data import dataset as data
    from synthpre_jax.models.model import MetricSums, metrics_from_sums
    from synthpre_jax.partitioning import sync_hosts
    from synthpre_jax.summaries import MetricWriter, Progress
    from synthpre_jax.trainer import Trainer, model_info

    _require(model_dir=(model_dir, "MODEL_DIR"), total_steps=(total_steps, "TRAIN_STEPS"),
             task=(getattr(train_dataset_cfg, "mixture_or_task_name", None), "MIXTURE_OR_TASK_NAME"),
             lengths=(getattr(train_dataset_cfg, "task_feature_lengths", None), "TASK_FEATURE_LENGTHS"))
    _check_steps(total_steps, eval_period, eval_steps, stats_period, on_nonfinite_loss)
    _check_model_dir(model_dir)
    stats_period = int(stats_period or min(eval_period, 100))
    checkpoint_cfg = checkpoint_cfg or CheckpointConfig()
    save_cfg = checkpoint_cfg.save or checkpoints.SaveCheckpointConfig(period=eval_period)
    cfg = train_dataset_cfg
    data.import_task_modules(cfg.module)
    data._check(cfg)
    task_obj = data.get_task_or_mixture(cfg.mixture_or_task_name)  # also: unknown name
    _check_vocabulary(task_obj, model)
    from synthpre_jax.data import vocab_check
    vocabs = vocab_check.task_vocabularies(task_obj)
    _check_model(model)
    layout = partitioner.data_layout(cfg.batch_size)
    data.check_examples(cfg, layout.shard_id, layout.num_shards)
    shapes = _input_shapes(cfg.task_feature_lengths, cfg.batch_size, cfg.pack)

    skip = {"skip_nonfinite": True} if on_nonfinite_loss == "skip" else {}
    trainer = (trainer_cls or Trainer)(model=model, partitioner=partitioner,
                                       random_seed=0 if random_seed is None else int(random_seed), **skip)
    micro = int(getattr(trainer, "num_microbatches", 1) or 1)
    rows = cfg.batch_size // partitioner.data_size
    if rows % micro:
        raise UserError(f"BATCH_SIZE {cfg.batch_size} gives {rows} rows per data-parallel device, which "
                        f"NUM_MICROBATCHES={micro} does not divide; change BATCH_SIZE or NUM_MICROBATCHES")
    abstract, shardings = trainer.abstract_state(shapes)
    progress = Progress(total_steps, 0, stream=stream)
    # MODEL_DIR is opened (and created) only once set-up has succeeded, except to resume.
    latest = checkpoints.latest_step_in(model_dir)
    manager, record = None, None
    if latest is not None:
        sync_hosts("open_model_dir")
        manager = checkpoints.CheckpointManager(model_dir, save_cfg)
        state = manager.restore(latest, abstract)
        start = int(latest)
        progress.message(f"resuming from {model_dir} at step {start}")
        if start >= total_steps:
            progress.message(f"warning: MODEL_DIR is already at step {start}, at or past "
                             f"TRAIN_STEPS={total_steps}: nothing to train (raise TRAIN_STEPS to "
                             "continue, or give a new MODEL_DIR)")
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
            vocab_check.check_checkpoint_matches(getattr(init_cfg, "checkpoint_path", None), vocabs,
                                                 keeps_embedding=getattr(init_cfg, "mode", None) == "load")
            params, record = initialize_params(params, init_cfg, shardings["params"],
                                               donate_fresh=True)
        state = trainer.state_from_params(params, shardings)
        start = 0
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

    ds = data.get_dataset(cfg, layout.shard_id, layout.num_shards, layout.per_host_batch_size,
                          num_epochs=None, start_batch=start)
    it = ds.as_numpy_iterator()
    first = next(it, None)
    if first is None:
        raise UserError(f"the {cfg.split!r} split of {cfg.mixture_or_task_name!r} gives no batch of "
                        f"{layout.per_host_batch_size} examples from step {start} on; check the data or BATCH_SIZE")
    it = itertools.chain([first], it)

    # Set-up succeeded: from here on MODEL_DIR is written.
    if manager is None:
        sync_hosts("open_model_dir")
        manager = checkpoints.CheckpointManager(model_dir, save_cfg)
    if jax.process_index() == 0:
        if record is not None:
            with open(os.path.join(model_dir, "init.json"), "w") as f:
                json.dump(record, f, indent=1, default=str)
            vocab_check.write(model_dir, vocabs)
            with open(os.path.join(model_dir, "model-info.txt"), "w") as f:
                f.write(model_info(abstract["params"], shardings["params"]))
        with open(os.path.join(model_dir, "config.gin"), "w") as f:
            f.write(gin.config_str())
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

    pending, acc = [], MetricSums()   # pending: (step, device sums) not yet read back
    skip_nonfinite, skipped, period_skipped = on_nonfinite_loss == "skip", [], 0
    t_last, seqs, period_steps = time.time(), 0, 0
    step = start

    def drain() -> None:
        """Read the pending per-step sums back and act on non-finite steps. Runs at stats periods
        and before anything that persists or evaluates the state, so no checkpoint of a state
        after a non-finite step is written and the latest checkpoint stays a good one."""
        nonlocal pending, period_skipped
        for s_step, s in pending:
            host = _to_host(s)
            if host.pop("nonfinite", 0.0) == 0.0 and np.isfinite(host.get("loss", 0.0)):
                acc.add(host)
                continue
            if not skip_nonfinite:
                manager.wait_until_finished()
                last = manager.latest_step()
                raise UserError(f"non-finite loss or update at step {s_step}; the last good checkpoint is "
                                f"{'step ' + str(last) if last is not None else 'none'} in {model_dir}: lower "
                                "the learning rate or check the data (or set train.on_nonfinite_loss='skip')")
            skipped.append(s_step)
            period_skipped += 1
            logging.warning("step %d: non-finite loss or update; the update was skipped", s_step)
        pending = []

    if jax.process_count() > 1 and hasattr(trainer, "compile_train_step"):
        # Compile the step first, then start it together on every host (see sync_hosts).
        batch_abs = {k: jax.ShapeDtypeStruct((cfg.batch_size,) + v.shape[1:], v.dtype,
                                             sharding=partitioner.batch_sharding()) for k, v in first.items()}
        with partitioner.context():
            trainer.compile_train_step(shardings).lower(state, batch_abs).compile()
        sync_hosts("first_step")
    with _Preemption() as preempt:
        while step < total_steps:
            try:
                host_batch = next(it)
            except StopIteration:
                raise UserError(f"the training data of {cfg.mixture_or_task_name!r} ran out at step {step}") from None
            state, sums = trainer.train_step(state, partitioner.make_global_batch(host_batch, cfg.batch_size), shardings)
            step += 1
            seqs += cfg.batch_size
            period_steps += 1
            pending.append((step, sums))
            # read once: SIGTERM can arrive between two reads, and a stop without the save
            # decided on an earlier read would claim a checkpoint it never wrote
            preempted = preempt.requested
            stats_due = step % stats_period == 0 or step == total_steps or preempted
            eval_due = step % eval_period == 0 or step == total_steps
            save_due = manager.should_save(step, force=step == total_steps or preempted)
            if stats_due or eval_due or save_due:
                drain()
            if stats_due:
                dt = max(time.time() - t_last, 1e-9)
                m = {}
                if acc.steps:
                    m = metrics_from_sums(acc.sums, acc.steps)
                    m["learning_rate"] = acc.sums.get("learning_rate", 0.0) / acc.steps
                m.update({"timing/seqs_per_second": seqs / dt, "timing/steps_per_second": period_steps / dt})
                if skip_nonfinite:
                    m["skipped_steps"] = float(period_skipped)
                train_writer.write(step, m)
                result["train_metrics"].append({"step": step, **m})
                progress.update(step, m.get("loss"))
                acc.reset()
                t_last, seqs, period_steps, period_skipped = time.time(), 0, 0, 0
            if eval_due:
                if eval_sets:
                    run_eval(step)
                if evaluator is not None:
                    result.setdefault("infer_metrics", []).append(
                        {"step": step, **evaluator.evaluate(step, state["params"], shardings["params"])})
            if save_due:
                manager.save(step, state, force=True)
            if preempted:
                manager.wait_until_finished()
                progress.message(f"SIGTERM received: saved checkpoint at step {step} in {model_dir}; "
                                 "rerun the same command to continue")
                result["preempted"] = True
                break
    if skipped:
        progress.message(f"skipped {len(skipped)} steps with a non-finite loss or update "
                         f"(first: step {skipped[0]}); see 'skipped_steps' in {model_dir}/train")
    result["skipped_steps"] = skipped
    manager.wait_until_finished()
    manager.close()
    train_writer.close()
    for w in eval_writers.values():
        w.close()
    result["step"] = step
    result["state"] = state
    return result


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = errors.ArgumentParser(prog="synthpre train", description=__doc__.split("\n\n")[0])
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
    from synthpre_jax.cli import quiet_library_noise
    quiet_library_noise()
    from synthpre_jax.partitioning import initialize_distributed
    initialize_distributed(args.multiprocess_gpu, args.coordinator_address, args.process_count,
                           args.process_index, cpu_collectives=args.cpu_collectives)
    if args.tfds_data_dir:
        if "://" not in args.tfds_data_dir and not os.path.isdir(args.tfds_data_dir):
            raise UserError(f"--tfds_data_dir {args.tfds_data_dir!r} does not exist; give the directory the "
                            "TFDS data was prepared in (e.g. by 'synthpre prepare-data TASK --out DIR')")
        import seqio
        seqio.set_tfds_data_dir_override(args.tfds_data_dir)
    _register_configurables()
    if not args.gin_file:
        raise UserError("no --gin_file given: pass a model and a run file, e.g. "
                        "--gin_file=models/t5_tiny.gin --gin_file=runs/pretrain.gin")
    gin_utils.parse_gin(args.gin_file, args.gin_bindings, args.gin_search_paths)
    result = gin_utils.call_configurable(train)
    last = result["train_metrics"][-1] if result["train_metrics"] else {}
    if result.get("preempted"):
        return PREEMPTED_EXIT_CODE
    print(f"done: step {result['step']}" + (f", loss {last['loss']:.4g}" if "loss" in last else ""))
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
