"""Checkpoints: Orbax save/restore/resume of the train state, and params-only loads for init.

On-disk layout of a MODEL_DIR (Orbax `CheckpointManager`, one PyTree item named 'state'):

    MODEL_DIR/checkpoint_<step>/          step directory, named as T5X names them
      _CHECKPOINT_METADATA                Orbax step metadata (JSON)
      state/                              the train state {'step', 'params', 'opt_state'}
        _METADATA                         tree structure, shapes, dtypes (JSON)
        manifest.ocdbt, d/, ocdbt.process_<i>/   array data (TensorStore OCDBT + zarr)

Orbax writes a step into a temporary directory and renames it when complete, so a crash never
leaves a half-written `checkpoint_<step>`; leftovers are cleaned when a manager opens. A
checkpoint damaged *after* it was written is found by `checkpoint_utils.checkpoint_problem`,
and `latest_step` skips it with a warning. Every process calls save/restore; Orbax
coordinates the hosts and each writes and reads only its own shards.

The data position is not stored: example i of a task is a pure function of (seed, split, i),
so resuming at step s restarts the stream at s * batch_size (see DESIGN.md).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Any, Optional, Sequence

import gin
import jax
import numpy as np
from etils import epath

from synthpre_jax import checkpoint_utils as cu
from synthpre_jax.checkpoint_utils import (apply_assignment_map, flatten_params,  # noqa: F401
                                           unflatten_params)
from synthpre_jax.errors import UserError

__all__ = ["SaveCheckpointConfig", "RestoreCheckpointConfig", "CheckpointManager", "latest_step_in", "load_params",
           "save_params_checkpoint", "apply_assignment_map", "restore_initial_params",
           "flatten_params", "unflatten_params"]

log = logging.getLogger(__name__)

_DTYPES = ("float32", "bfloat16", "float16")
_HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                    "pytorch_model.bin.index.json", "flax_model.msgpack", "tf_model.h5")


@gin.configurable
@dataclasses.dataclass
class SaveCheckpointConfig:
    """When and how to save (T5X field names)."""

    period: int = 1000
    keep: Optional[int] = None        # keep the newest N checkpoints (None: all)
    dtype: str = "float32"            # params are cast to this before writing
    async_save: bool = True           # write in the background while training goes on
    save_dataset: bool = False        # accepted for T5X; the data position follows from the step

    def __post_init__(self) -> None:
        if not isinstance(self.period, int) or self.period < 1:
            raise UserError(f"SaveCheckpointConfig.period must be a positive integer, got {self.period!r}")
        if self.keep is not None and (not isinstance(self.keep, int) or self.keep < 1):
            raise UserError(f"SaveCheckpointConfig.keep must be None or >= 1, got {self.keep!r}")
        if self.dtype not in _DTYPES:
            raise UserError(f"SaveCheckpointConfig.dtype must be one of {_DTYPES}, got {self.dtype!r}")


@gin.configurable
@dataclasses.dataclass
class RestoreCheckpointConfig:
    """Where initial params come from (T5X field names; used for INITIAL_CHECKPOINT_PATH).

    path: a checkpoint (Orbax step dir, legacy T5X dir or msgpack file, HF dir) or a model dir
      (its latest complete step); a sequence is tried in order and the first that exists is used.
    mode: 'specific' or 'latest' (a model dir always resolves to its latest step).
    assignment_map: (regex over the fresh param path, replacement or None) pairs; the first
      rule that fully matches decides; None keeps the fresh init; see `apply_assignment_map`.
    strict: every fresh param must come from the checkpoint with the same shape (else
      UserError naming the paths); if False, missing or mis-shaped params keep the fresh init.
    fallback_to_scratch: no checkpoint at `path` gives the fresh init (with a warning); as in
      T5X it also lets params missing from the checkpoint keep their fresh init.
    dtype: accepted for T5X; restored params take the dtype of the fresh params.
    """

    path: Optional[str | Sequence[str]] = None
    mode: str = "specific"
    assignment_map: Optional[Sequence[tuple[str, Optional[str]]]] = None
    strict: bool = True
    fallback_to_scratch: bool = False
    dtype: str = "float32"
    restore_dataset: bool = False

    def __post_init__(self) -> None:
        if self.mode not in ("specific", "latest"):
            raise UserError(f"RestoreCheckpointConfig.mode must be 'specific' or 'latest', got {self.mode!r}")
        if self.dtype is not None and self.dtype not in _DTYPES:
            raise UserError(f"RestoreCheckpointConfig.dtype must be one of {_DTYPES}, got {self.dtype!r}")
        for rule in self.assignment_map or ():
            if not (isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)
                    and (rule[1] is None or isinstance(rule[1], str))):
                raise UserError(f"assignment_map entries must be (regex, replacement or None), got {rule!r}")


def _ocp():
    import orbax.checkpoint as ocp  # imported lazily: it is slow and not needed by every entry point
    return ocp


class CheckpointManager:
    """Wraps orbax.checkpoint.CheckpointManager for one MODEL_DIR (MODEL_DIR/checkpoint_<step>)."""

    def __init__(self, model_dir: str, save_config: Optional[SaveCheckpointConfig] = None):
        ocp = _ocp()
        self.model_dir = epath.Path(model_dir)
        self.config = save_config or SaveCheckpointConfig()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=self.config.keep,
            step_prefix=cu.STEP_PREFIX,
            enable_async_checkpointing=self.config.async_save,
            cleanup_tmp_directories=True,   # drop half-written steps of a crashed run
            create=True,
        )
        self._in_flight: Optional[int] = None   # step of a background write not yet waited for
        try:
            self._mgr = ocp.CheckpointManager(self.model_dir, options=options)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot use {model_dir} as a checkpoint directory ({e}); "
                            "check the path and its permissions") from e

    # -- saving ------------------------------------------------------------------------------
    def save(self, step: int, state: dict, force: bool = False) -> bool:
        """Save `state` at `step` if `step` is a multiple of the period (or `force`).

        Returns whether a save was started. A step that already has a checkpoint is not
        overwritten. With async_save the write continues in the background; the arrays are
        copied off the devices before this returns, so the caller may donate them.
        """
        ocp = _ocp()
        step = int(step)
        if not self.should_save(step, force):
            return False
        self.wait_until_finished()  # surfaces a failed background write before starting another
        if step in self._mgr.all_steps():
            problem = cu.checkpoint_problem(self.step_dir(step))
            (log.warning if problem else log.info)(
                "checkpoint %s already exists%s; not overwritten", self.step_dir(step),
                f" but is damaged ({problem}): move it away to save this step again" if problem else "")
            return False
        state = _cast_params(state, self.config.dtype)
        try:
            started = bool(self._mgr.save(step, args=ocp.args.Composite(
                **{cu.ITEM_NAME: ocp.args.StandardSave(state)}), force=True))
        except ocp.checkpoint_manager.StepAlreadyExistsError:
            return False
        except Exception as e:  # noqa: BLE001 - disk full, permissions, I/O: all end the run the same way
            self._write_failed(step, e)
        if started:
            self._in_flight = step
        return started

    def should_save(self, step: int, force: bool = False) -> bool:
        """Whether `save(step, ..., force)` would write: forced, a period step, or a preemption point.

        Callers that must check the state first (e.g. for non-finite values) ask this once per
        step and then call `save(..., force=True)`; Orbax's preemption query is made only here.
        """
        step = int(step)
        return bool(force or step % self.config.period == 0 or self._mgr.reached_preemption(step))

    def wait_until_finished(self) -> None:
        """Block until a background save has been committed; a failed write raises UserError."""
        try:
            self._mgr.wait_until_finished()
        except Exception as e:  # noqa: BLE001 - see save()
            self._write_failed(self._in_flight, e)
        self._in_flight = None

    def _write_failed(self, step: Optional[int], error: BaseException) -> None:
        """Report a failed write as one line. Orbax wrote into a temporary directory that is never
        renamed to checkpoint_<step>, so earlier checkpoints are untouched and the debris is
        removed when a manager next opens this directory."""
        self._in_flight = None
        try:
            earlier = self.latest_step()
        except Exception:  # noqa: BLE001 - the listing itself may fail on a broken disk
            earlier = None
        what = f"checkpoint {self.step_dir(step)}" if step is not None else f"a checkpoint in {self.model_dir}"
        reason = _os_reason(error)
        raise UserError(f"writing {what} failed ({reason}); earlier checkpoints are intact (latest complete: "
                        f"{'step ' + str(earlier) if earlier is not None else 'none'}): free disk space or fix "
                        "MODEL_DIR's permissions, then rerun the same command to resume") from None

    def close(self) -> None:
        self.wait_until_finished()
        # Orbax removes a crashed run's temporary step directories in a background thread and
        # waits for it only before its next save: a manager that only lists or restores would
        # otherwise close (and its process exit) with them half-deleted.
        await_cleanup = getattr(self._mgr, "_maybe_await_cleanup_tmp_directory", None)
        if await_cleanup is not None:
            await_cleanup()
        self._mgr.close()

    def __enter__(self) -> "CheckpointManager":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- listing -----------------------------------------------------------------------------
    def all_steps(self) -> list[int]:
        """Steps of all committed checkpoints (damaged ones included), ascending."""
        return sorted(int(s) for s in self._mgr.all_steps())

    def step_dir(self, step: int) -> epath.Path:
        return self.model_dir / f"{cu.STEP_PREFIX}_{int(step)}"

    def latest_step(self) -> Optional[int]:
        """The newest checkpoint that is complete; damaged newer ones are skipped with a warning."""
        return _latest_complete(self.all_steps(), self.step_dir)

    # -- restoring ---------------------------------------------------------------------------
    def restore(self, step: int, abstract_state: dict) -> dict:
        """Restore step `step` into the structure, dtypes and shardings of `abstract_state`.

        `abstract_state` is a pytree of jax.ShapeDtypeStruct with `.sharding` (arrays are
        accepted too); each process reads only its shards. Leaves without a sharding come back
        as numpy. A structure or shape mismatch raises UserError naming the paths.
        """
        ocp = _ocp()
        step_dir = self.step_dir(step)
        if int(step) not in self.all_steps():
            raise UserError(f"no checkpoint for step {step} in {self.model_dir} "
                            f"(steps there: {self.all_steps() or 'none'})")
        problem = cu.checkpoint_problem(step_dir)
        if problem is not None:
            raise UserError(f"checkpoint {step_dir} is damaged ({problem}); move it away to resume "
                            "from the previous one")
        abstract = jax.tree_util.tree_map(_abstract_leaf, abstract_state)
        _check_against_stored(step_dir, abstract)
        try:
            restored = self._mgr.restore(int(step), args=ocp.args.Composite(
                **{cu.ITEM_NAME: ocp.args.StandardRestore(abstract)}))
        except Exception as e:  # noqa: BLE001 - structure was checked; what is left is bad data
            raise UserError(f"cannot read checkpoint {step_dir} ({str(e).splitlines()[0][:200]}); "
                            "it is damaged: move it away to resume from the previous one") from e
        return restored[cu.ITEM_NAME]


def _latest_complete(steps: Sequence[int], step_dir: Any) -> Optional[int]:
    for step in sorted(steps, reverse=True):
        problem = cu.checkpoint_problem(step_dir(step))
        if problem is None:
            return step
        log.warning("skipping damaged checkpoint %s: %s", step_dir(step), problem)
    return None


def latest_step_in(model_dir: str) -> Optional[int]:
    """`CheckpointManager.latest_step()` of `model_dir` without opening it: nothing is created
    (a missing directory has no checkpoints), so a run can decide to resume before it commits
    to writing MODEL_DIR."""
    dirs = cu.step_dirs(model_dir)
    return _latest_complete(list(dirs), lambda step: dirs[step])


def _os_reason(error: BaseException) -> str:
    """The operating-system cause inside a TensorStore/Orbax error ('File too large', 'No space
    left on device'), else the error's first 200 characters."""
    text = " ".join(str(error).split())
    m = re.search(r"([A-Za-z][A-Za-z ,'-]*?) \[os_error_code='?(\d+)", text)
    if m:
        return f"{m.group(1).strip()}, errno {m.group(2)}"
    return text[:200] or type(error).__name__


def _abstract_leaf(x: Any) -> Any:
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    if isinstance(x, (np.ndarray, np.generic, int, float)):
        a = np.asarray(x)
        return jax.ShapeDtypeStruct(a.shape, a.dtype)
    return x


def _cast_params(state: dict, dtype: str) -> dict:
    """`state` with its floating params cast to `dtype` (T5X casts only the params)."""
    if not isinstance(state, dict) or "params" not in state:
        return state
    target = jax.numpy.dtype(dtype)

    def cast(x: Any) -> Any:
        if hasattr(x, "dtype") and jax.numpy.issubdtype(x.dtype, jax.numpy.floating) and x.dtype != target:
            return x.astype(target)
        return x

    return {**state, "params": jax.tree_util.tree_map(cast, state["params"])}


def _stored_tree(item_dir: epath.Path) -> Any:
    """Orbax's metadata tree (shapes/dtypes per leaf) of one stored item."""
    handler = _ocp().PyTreeCheckpointHandler()
    try:
        meta = handler.metadata(item_dir)
    except Exception as e:  # noqa: BLE001 - unreadable metadata is a damaged checkpoint
        raise UserError(f"cannot read the structure of checkpoint {item_dir} "
                        f"({str(e).splitlines()[0][:200]}); the checkpoint is damaged") from e
    finally:
        handler.close()
    return getattr(meta, "tree", meta)


def _check_against_stored(step_dir: epath.Path, abstract: dict) -> None:
    item = cu.orbax_item_dir(step_dir)
    if item is None:
        raise UserError(f"{step_dir} is not a complete checkpoint (no '{cu.ITEM_NAME}/_METADATA'); "
                        "move it away to resume from the previous one")
    stored = {p: m for p, m in cu.tree_paths(_stored_tree(item)).items() if hasattr(m, "shape")}
    wanted = cu.tree_paths(abstract)
    missing = sorted(set(wanted) - set(stored))
    extra = sorted(set(stored) - set(wanted))
    if missing or extra:
        hint = (" (it holds params only: use it as INITIAL_CHECKPOINT_PATH, not as MODEL_DIR)"
                if missing and all(p.startswith("params/") for p in stored) else "")
        parts = []
        if missing:
            parts.append(f"{len(missing)} paths missing from it, e.g. {', '.join(missing[:3])}")
        if extra:
            parts.append(f"{len(extra)} unexpected paths in it, e.g. {', '.join(extra[:3])}")
        raise UserError(f"checkpoint {step_dir} does not match this model/optimizer: "
                        f"{'; '.join(parts)}{hint}; use a matching MODEL_DIR or a fresh one")
    bad = [(p, tuple(stored[p].shape), tuple(wanted[p].shape))
           for p in sorted(wanted, key=lambda p: (not p.startswith("params/"), p))  # params first
           if tuple(stored[p].shape) != tuple(wanted[p].shape)]
    if bad:
        p, got, want = bad[0]
        raise UserError(f"checkpoint {step_dir}: {p} has shape {got} but the model expects {want}"
                        f"{f' (and {len(bad) - 1} more mismatches)' if len(bad) > 1 else ''}; "
                        "use the model config the checkpoint was trained with")


# --------------------------------------------------------------------------- params-only loads
def save_params_checkpoint(directory: str, params: dict, step: int = 0) -> str:
    """Write `params` as an Orbax checkpoint (CheckpointManager layout) and return its step dir.

    The result can be given as INITIAL_CHECKPOINT_PATH (or the `directory` itself).
    """
    mgr = CheckpointManager(directory, SaveCheckpointConfig(async_save=False))
    try:
        if int(step) in mgr.all_steps():
            raise UserError(f"{mgr.step_dir(step)} already exists; choose another directory or step")
        mgr.save(int(step), {"params": params}, force=True)
    finally:
        mgr.close()
    return str(mgr.step_dir(step))


def _find_checkpoint(path: epath.Path) -> Optional[tuple[str, epath.Path]]:
    """(format, location) of the checkpoint at `path`: 'legacy', 'orbax' or 'hf'; None if none."""
    from synthpre_jax import legacy_t5x

    if not path.exists():
        return None
    msgpack = legacy_t5x.find_legacy_msgpack(path)
    if msgpack is not None:
        return "legacy", msgpack
    if path.is_file():
        if path.name in _HF_WEIGHT_FILES or path.suffix == ".safetensors":
            return _find_checkpoint(path.parent)
        return None
    item = cu.orbax_item_dir(path)
    if item is not None:
        return "orbax", item
    if (path / "config.json").is_file() and any((path / f).exists() for f in _HF_WEIGHT_FILES):
        return "hf", path
    for step, step_dir in sorted(cu.step_dirs(path).items(), reverse=True):
        found = _find_checkpoint(step_dir)
        problem = cu.checkpoint_problem(step_dir) if found and found[0] == "orbax" else None
        if found and problem is None:
            return found
        log.warning("skipping checkpoint %s: %s", step_dir, problem or "nothing readable in it")
    return None


def _load_orbax_params(item_dir: epath.Path) -> dict:
    ocp = _ocp()
    tree = _stored_tree(item_dir)
    key = "params" if "params" in tree else "target" if "target" in tree else None
    if key is None:
        raise UserError(f"the Orbax checkpoint {item_dir} has no 'params' (or T5X 'target') tree; "
                        f"its top-level keys are {sorted(tree)}")
    # Read only the params subtree, as host numpy arrays (no devices, no optimizer state).
    restore_args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree[key])
    handler = ocp.PyTreeCheckpointHandler()
    try:
        out = handler.restore(item_dir, args=ocp.args.PyTreeRestore(
            item={key: tree[key]}, restore_args={key: restore_args}, partial_restore=True))
    except Exception as e:  # noqa: BLE001
        raise UserError(f"cannot read params from {item_dir} ({str(e).splitlines()[0][:200]}); "
                        "the checkpoint is damaged") from e
    finally:
        handler.close()
    return out[key]


def _load_hf_params(path: epath.Path) -> dict:
    try:
        from synthpre_jax.models import hf_convert
    except ImportError as e:
        raise UserError(f"{path} is a Hugging Face checkpoint, but HF import is not available "
                        f"in this install ({e})") from e
    params = hf_convert.load_hf_checkpoint(str(path))
    if isinstance(params, tuple):   # (params, T5Config)
        params = params[0]
    if isinstance(params, dict) and set(params) == {"params"}:
        params = params["params"]
    return params


def load_params(path: str) -> dict:
    """Params only, as a nested dict of numpy float32 arrays, from any supported checkpoint.

    Formats (autodetected): an Orbax checkpoint written by CheckpointManager (a step dir, or a
    model dir: its latest complete step), a legacy T5X checkpoint (a dir holding the
    `checkpoint` msgpack, or that file), a Hugging Face T5 dir (via models.hf_convert).
    """
    from synthpre_jax import legacy_t5x

    if not path:
        raise UserError("no checkpoint path given")
    p = epath.Path(os.path.expanduser(str(path)))
    if not p.exists():
        raise UserError(f"checkpoint path {path} does not exist; check INITIAL_CHECKPOINT_PATH")
    found = _find_checkpoint(p)
    if found is None:
        raise UserError(f"no checkpoint found at {path}: expected an Orbax checkpoint "
                        f"({cu.STEP_PREFIX}_<step>/{cu.ITEM_NAME}), a model dir holding them, a "
                        "legacy T5X 'checkpoint' msgpack, or a Hugging Face dir (config.json + weights)")
    kind, where = found
    log.info("loading params from %s checkpoint %s", kind, where)
    if kind == "legacy":
        params = legacy_t5x.read_legacy_checkpoint(where)["params"]
    elif kind == "orbax":
        params = _load_orbax_params(where)
    else:
        params = _load_hf_params(where)
    return jax.tree_util.tree_map(_to_float32, params)


def _to_float32(x: Any) -> np.ndarray:
    a = np.asarray(x)
    return a.astype(np.float32) if jax.numpy.issubdtype(a.dtype, jax.numpy.floating) else a


def _paths_of(config: RestoreCheckpointConfig) -> list[str]:
    if config.path is None:
        return []
    if isinstance(config.path, (str, os.PathLike)):
        return [str(config.path)]
    return [str(p) for p in config.path]


def restore_initial_params(config: RestoreCheckpointConfig, fresh_params: dict,
                           shardings: Any = None) -> dict:
    """Params for a new run from INITIAL_CHECKPOINT_PATH, shaped, typed and placed like `fresh_params`.

    Loads params (any supported format), applies the assignment map, checks strictness and
    shapes, casts each to the fresh param's dtype, and places it with `shardings` (a matching
    pytree of NamedSharding) when given. Params kept fresh are returned unchanged.
    """
    paths = _paths_of(config)
    found = [p for p in paths if _find_checkpoint(epath.Path(os.path.expanduser(p))) is not None]
    if not found:
        if config.fallback_to_scratch:
            log.warning("no checkpoint at %s; starting from scratch (fallback_to_scratch=True)", paths)
            return fresh_params
        raise UserError(f"no checkpoint at {paths or 'an empty path'}; check INITIAL_CHECKPOINT_PATH "
                        "or set RestoreCheckpointConfig.fallback_to_scratch = True")
    source = found[0]
    if len(paths) > 1:
        log.info("using checkpoint path %s (the first of %s holding a checkpoint)", source, paths)
    restored = flatten_params(load_params(source))
    fresh = flatten_params(fresh_params)
    mapping, unused = cu.resolve_assignment(fresh, config.assignment_map)
    for pattern in sorted(unused):
        log.warning("assignment_map pattern %r matched no parameter", pattern)
    missing = [(p, s) for p, s in mapping.items() if s is not None and s not in restored]
    mismatched = [(p, s) for p, s in mapping.items()
                  if s is not None and s in restored and tuple(restored[s].shape) != tuple(fresh[p].shape)]
    if missing and config.strict and not config.fallback_to_scratch:
        shown = ", ".join(p if p == s else f"{p} (from {s})" for p, s in missing[:3])
        raise UserError(f"{len(missing)} params not found in {source}, e.g. {shown}; map them with "
                        "RestoreCheckpointConfig.assignment_map (None keeps the fresh init) or set strict=False")
    if mismatched and config.strict:
        p, s = mismatched[0]
        raise UserError(f"checkpoint {source}: {s} has shape {tuple(restored[s].shape)} but the model's "
                        f"{p} has shape {tuple(fresh[p].shape)}"
                        f"{f' (and {len(mismatched) - 1} more)' if len(mismatched) > 1 else ''}; "
                        "use the matching model config, or map/keep it with assignment_map")
    kept = set(missing + mismatched)
    for p, s in sorted(kept):
        log.warning("param %s keeps its fresh init (%s)", p,
                    "not in the checkpoint" if s not in restored else "shape differs in the checkpoint")
    taken = {p: s for p, s in mapping.items() if s is not None and (p, s) not in kept}
    log.info("restored %d of %d params from %s", len(taken), len(fresh), source)
    flat_shardings = flatten_params(shardings) if shardings is not None else {}
    out = dict(fresh)
    for p, s in taken.items():
        out[p] = _place(restored[s], fresh[p], flat_shardings.get(p))
    return unflatten_params(out)


def _place(value: np.ndarray, like: Any, sharding: Any) -> jax.Array:
    """`value` cast to `like`'s dtype, as a jax.Array with `sharding` (or `like`'s own one)."""
    value = np.asarray(value).astype(like.dtype)
    if sharding is None:
        sharding = getattr(like, "sharding", None)
    if sharding is None:
        return jax.numpy.asarray(value)
    # Every process holds the full host copy; each builds only its addressable shards.
    return jax.make_array_from_callback(value.shape, sharding, lambda idx: value[idx])
