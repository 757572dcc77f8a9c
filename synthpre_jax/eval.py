"""`synthpre eval` / `python -m synthpre_jax.eval`: inference evaluation of saved checkpoints.

    synthpre eval --gin_file=models/t5_small.gin --gin_file=runs/eval.gin \
      --gin.MIXTURE_OR_TASK_NAME="'mtop'" --gin.TASK_FEATURE_LENGTHS="{'inputs': 1024, 'targets': 128}" \
      --gin.CHECKPOINT_PATH="'runs/mtop'" --gin.EVAL_OUTPUT_DIR="'runs/mtop/eval_test'"

CHECKPOINT_PATH is one checkpoint (an Orbax `checkpoint_<step>` dir, a legacy T5X checkpoint,
a Hugging Face T5 dir) or a directory of `checkpoint_<step>` dirs: every complete one is
evaluated in step order (CHECKPOINT_MODE='all', T5X's mode 'all') or only the newest
(CHECKPOINT_MODE='latest'). The outputs are those of training's inference eval
(synthpre_jax/evaluation.py), under EVAL_OUTPUT_DIR/inference_eval/, one metrics line per
checkpoint step. A checkpoint whose parameters do not match the model is one UserError line,
before anything is written.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from typing import Any, Optional

import gin
import jax
import numpy as np

from synthpre_jax import errors, gin_utils, paths
from synthpre_jax.errors import UserError
from synthpre_jax.paths import make_writable_dir

if __name__ == "__main__":  # `python -m synthpre_jax.eval`: run the package module so that
    # gin registers its configurables once (not also under '__main__')
    from synthpre_jax import eval as _module
    from synthpre_jax.cli import run_guarded
    sys.exit(run_guarded(_module.main, sys.argv[1:]))

log = logging.getLogger(__name__)
_STEP_RE = re.compile(r"checkpoint_(\d+)$")
CHECKPOINT_MODES = ("all", "latest")


# ----------------------------------------------------------------------------- checkpoints

def list_checkpoints(path: str, mode: str = "all") -> list[tuple[int, str]]:
    """[(step, path)] to evaluate: `path` itself when it is one checkpoint, else the complete
    `checkpoint_<step>` dirs under it (all, or the newest with mode='latest'). Damaged
    checkpoints are skipped with a warning."""
    from synthpre_jax import checkpoint_utils as cu

    if mode not in CHECKPOINT_MODES:
        raise UserError(f"CHECKPOINT_MODE must be one of {CHECKPOINT_MODES}, got {mode!r}")
    if not path or path is gin.REQUIRED:
        raise UserError("CHECKPOINT_PATH is not set: add --gin.CHECKPOINT_PATH=\"'/path/to/checkpoint_or_run'\"")
    path = os.path.expanduser(str(path))
    if not os.path.exists(path):
        raise UserError(f"checkpoint path {path} does not exist; check CHECKPOINT_PATH")
    steps = cu.step_dirs(path)
    if not steps:
        m = _STEP_RE.search(os.path.basename(os.path.normpath(path)))
        return [(int(m.group(1)) if m else 0, path)]
    good = []
    for step in sorted(steps):
        problem = cu.checkpoint_problem(steps[step])
        if problem is not None:
            log.warning("skipping damaged checkpoint %s: %s", steps[step], problem)
            continue
        good.append((step, str(steps[step])))
    if not good:
        raise UserError(f"no complete checkpoint in {path} (found {sorted(steps)}, all damaged)")
    return good[-1:] if mode == "latest" else good


def abstract_params(model: Any, partitioner: Any) -> tuple[Any, Any]:
    """(ShapeDtypeStruct tree, NamedSharding tree) of the model's parameters, without allocating."""
    import flax.linen as nn

    n = partitioner.data_size
    shapes = {k: (n, 4) for k in ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")}
    with partitioner.context():
        boxed = jax.eval_shape(lambda k: model.get_initial_variables(k, shapes), jax.random.PRNGKey(0))
    if "params" not in boxed:
        raise UserError("the model produced no parameters")
    return nn.unbox(boxed["params"]), partitioner.param_shardings(boxed["params"])


def restore_params(path: str, abstract: Any, shardings: Any) -> Any:
    """The params of the checkpoint at `path`, checked against the model's and placed with
    `shardings`. A missing, unexpected or mis-shaped parameter is a UserError naming it."""
    from synthpre_jax import checkpoints
    from synthpre_jax.checkpoint_utils import flatten_params, unflatten_params

    stored = flatten_params(checkpoints.load_params(path))
    wanted = flatten_params(abstract)
    flat_sh = flatten_params(shardings)
    missing = sorted(set(wanted) - set(stored))
    extra = sorted(set(stored) - set(wanted))
    bad = [(p, tuple(np.shape(stored[p])), tuple(wanted[p].shape)) for p in sorted(wanted)
           if p in stored and tuple(np.shape(stored[p])) != tuple(wanted[p].shape)]
    if missing or extra or bad:
        parts = []
        if missing:
            parts.append(f"{len(missing)} model params missing from it, e.g. {', '.join(missing[:2])}")
        if extra:
            parts.append(f"{len(extra)} params the model does not have, e.g. {', '.join(extra[:2])}")
        if bad:
            p, got, want = bad[0]
            parts.append(f"{p} has shape {got} but the model expects {want}"
                         + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
        raise UserError(f"checkpoint {path} does not match the model: {'; '.join(parts)}; "
                        "use the model gin file (and overrides) the checkpoint was trained with")
    out = {}
    for p, like in wanted.items():
        value = np.asarray(stored[p]).astype(like.dtype)
        out[p] = jax.make_array_from_callback(value.shape, flat_sh[p], lambda idx, v=value: v[idx])
    return unflatten_params(out)


def _check_output_dir(output_dir: Optional[str]) -> str:
    if not output_dir or output_dir is gin.REQUIRED:
        raise UserError("EVAL_OUTPUT_DIR is not set: add --gin.EVAL_OUTPUT_DIR=\"'/path/to/output'\"")
    return os.path.expanduser(str(output_dir))


def _make_output_dir(output_dir: str, what: str) -> None:
    try:
        make_writable_dir(output_dir)
    except OSError as e:
        raise UserError(f"{what} {output_dir!r} is not writable ({e.strerror}); choose another directory") from None


# ----------------------------------------------------------------------------- entry point

@gin.configurable
def evaluate(*, model: Any, dataset_cfg: Any, partitioner: Any, checkpoint_path: str,
             output_dir: str, checkpoint_mode: str = "all", evaluator_cls: Any = None,
             stream: Any = None) -> dict:
    """Run inference eval of each checkpoint; returns {'steps': [...], 'metrics': {step: {...}}}."""
    from synthpre_jax.evaluation import InferenceEvaluator

    output_dir = _check_output_dir(output_dir)
    paths.check_dir_target(output_dir, "EVAL_OUTPUT_DIR")  # before the datasets' log lines
    todo = list_checkpoints(checkpoint_path, checkpoint_mode)
    abstract, shardings = abstract_params(model, partitioner)
    first = restore_params(todo[0][1], abstract, shardings)   # fail on a mismatch before any output
    evaluator = (evaluator_cls or InferenceEvaluator)(model=model, partitioner=partitioner,
                                                      dataset_cfg=dataset_cfg, model_dir=output_dir)
    _make_output_dir(output_dir, "EVAL_OUTPUT_DIR")
    if jax.process_index() == 0:
        with open(os.path.join(output_dir, "eval-config.gin"), "w") as f:
            f.write(gin.config_str())
    out = sys.stdout if stream is None else stream
    result: dict = {"steps": [], "metrics": {}}
    for n, (step, path) in enumerate(todo):
        if jax.process_index() == 0:
            out.write(f"[{n + 1}/{len(todo)}] evaluating {path} (step {step})\n")
            out.flush()
        params = first if n == 0 else restore_params(path, abstract, shardings)
        result["metrics"][step] = evaluator.evaluate(step, params, shardings)
        result["steps"].append(step)
        del params
        first = None
    return result


def parse_args(argv: list[str], prog: str, description: str) -> argparse.Namespace:
    """T5X's flags for the eval and infer entry points (gin, TFDS dir, multi-host)."""
    p = errors.ArgumentParser(prog=prog, description=description)
    gin_utils.add_gin_flags(p)
    p.add_argument("--tfds_data_dir", default=None, help="TFDS data directory")
    p.add_argument("--multiprocess_gpu", action="store_true", help="initialise jax.distributed for multi-host GPU")
    p.add_argument("--coordinator_address", default=None)
    p.add_argument("--process_count", type=int, default=None)
    p.add_argument("--process_index", type=int, default=None)
    p.add_argument("--cpu_collectives", action="store_true", help="multi-process CPU (tests, debugging)")
    args, unknown = p.parse_known_args(gin_utils.rewrite_gin_args(argv))
    if unknown:
        raise UserError(f"unknown argument {unknown[0]!r}; see '{prog} --help'")
    return args


def setup(args: argparse.Namespace, example_run_file: str) -> None:
    """Distributed init, TFDS dir, configurables and gin parsing shared by eval and infer."""
    from synthpre_jax import train
    from synthpre_jax.partitioning import initialize_distributed

    logging.getLogger("absl").setLevel(logging.WARNING)
    initialize_distributed(args.multiprocess_gpu, args.coordinator_address, args.process_count,
                           args.process_index, cpu_collectives=args.cpu_collectives)
    if args.tfds_data_dir:
        import seqio
        seqio.set_tfds_data_dir_override(args.tfds_data_dir)
    train._register_configurables()
    import synthpre_jax.evaluation  # noqa: F401
    import synthpre_jax.infer  # noqa: F401
    if not args.gin_file:
        raise UserError("no --gin_file given: pass a model and a run file, e.g. "
                        f"--gin_file=models/t5_small.gin --gin_file={example_run_file}")
    gin_utils.parse_gin(args.gin_file, args.gin_bindings, args.gin_search_paths)


def call_one_line(fn: Any) -> Any:
    """Call a gin configurable; a UserError keeps only its first line (gin appends 'In call to
    configurable ...' lines to exceptions raised inside configurables)."""
    try:
        return gin_utils.call_configurable(fn)
    except UserError as e:
        raise UserError(str(e).splitlines()[0] if str(e) else "error") from None


def main(argv: list[str]) -> int:
    args = parse_args(argv, "synthpre eval", __doc__.split("\n\n")[0])
    setup(args, "runs/eval.gin")
    result = call_one_line(evaluate)
    print(f"done: evaluated {len(result['steps'])} checkpoint(s)")
    return 0

