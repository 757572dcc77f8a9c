"""How a fine-tuning run initialises its parameters (gin: `InitConfig`, files in gin_configs/init/).

Modes (spec §3, §4.4):
  from_scratch         the model's own random init;
  load                 every parameter from the checkpoint ("load all": the release scripts);
  load_all_but_embed   every parameter except `token_embedder/embedding` and an untied
                       `decoder/logits_dense/kernel`, which keep the fresh init (the internal
                       main-table runs); the checkpoint may have another vocabulary size;
  weight_stats         the fresh init re-sampled from the checkpoint's per-group statistics
                       (`weight_stats.transform`; Table 2);
  constant_preattn_ln  the fresh init with every pre-attention layer-norm scale set to `value`
                       (Table 3; no checkpoint).

`initialize_params` returns the params and a JSON-able record of what was done; the trainer
writes it to MODEL_DIR/init.json so a run directory always says how it started.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Optional

import gin
import jax
import numpy as np

from synthpre_jax.errors import UserError, did_you_mean
from synthpre_jax import weight_stats
from synthpre_jax.weight_stats_groups import KEEP_FRESH, Scheme, natural_sorted, resolve_scheme

log = logging.getLogger(__name__)

MODES = ("from_scratch", "load", "load_all_but_embed", "weight_stats", "constant_preattn_ln")
_NEEDS_CHECKPOINT = ("load", "load_all_but_embed", "weight_stats")


@gin.configurable
@dataclasses.dataclass
class InitConfig:
    """The initialisation choice of a run (see the module docstring for the modes).

    mode: 'from_scratch' | 'load' | 'load_all_but_embed' | 'weight_stats' | 'constant_preattn_ln'
    checkpoint_path: the source checkpoint of load / load_all_but_embed / weight_stats
        (Orbax, legacy T5X or Hugging Face; see `checkpoints.load_params`);
    scheme: weight_stats scheme, a readable name or the paper's init_id (or 'custom' for the
        gin-bound `RegexScheme`; a RegexScheme object also works);
    value: the constant_preattn_ln value (any finite float: 0.4, -0.5, 1e-3, ...);
    seed: seeds the weight_stats draws (None means 0).
    """

    mode: str = "from_scratch"
    checkpoint_path: Optional[str] = None
    scheme: Optional[Any] = None
    value: Optional[float] = None
    seed: Optional[int] = 0


def _validate(config: InitConfig) -> None:
    if config.mode not in MODES:
        raise UserError(f"unknown InitConfig.mode {config.mode!r}"
                        f"{did_you_mean(str(config.mode), MODES)}; valid: {', '.join(MODES)}")
    if config.mode in _NEEDS_CHECKPOINT and not config.checkpoint_path:
        raise UserError(f"InitConfig.mode={config.mode!r} needs a source checkpoint: set "
                        "INITIAL_CHECKPOINT_PATH (or INIT_SOURCE_CHECKPOINT / "
                        "InitConfig.checkpoint_path), or use gin_configs/init/from_scratch.gin")
    if config.mode == "weight_stats" and config.scheme is None:
        raise UserError("InitConfig.mode='weight_stats' needs InitConfig.scheme; use one of the "
                        "files in gin_configs/init/ (e.g. init/per_param_scale.gin)")
    if config.mode == "constant_preattn_ln" and config.value is None:
        raise UserError("InitConfig.mode='constant_preattn_ln' needs InitConfig.value "
                        "(e.g. --gin.PRE_ATTN_LN_VALUE=0.4)")
    unused = [f for f, used in (("scheme", config.mode == "weight_stats"),
                                ("value", config.mode == "constant_preattn_ln"))
              if getattr(config, f) is not None and not used]
    for f in unused:
        log.warning("InitConfig.%s is ignored in mode %r", f, config.mode)


def _seed(seed: Any) -> int:
    if seed is None:
        return 0
    try:
        return int(seed)
    except (TypeError, ValueError):
        raise UserError(f"InitConfig.seed must be an integer, got {seed!r}") from None


def _placed(value: np.ndarray, like: Any, sharding: Any) -> Any:
    """`value` cast to `like`'s dtype and laid out with `sharding` (or `like`'s sharding);
    each process builds only its addressable shards from its host copy."""
    value = np.asarray(value).astype(np.dtype(like.dtype))
    sharding = sharding or getattr(like, "sharding", None)
    if sharding is None:
        return jax.numpy.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda idx: value[idx])


def _load(fresh_params: dict, path: str, keep_fresh: tuple[str, ...],
          shardings: Any) -> tuple[dict, list[str]]:
    from synthpre_jax.checkpoints import load_params

    source, _ = weight_stats.flatten(load_params(path))
    fresh, wrapped = weight_stats.flatten(fresh_params)
    weight_stats.check_trees_match(source, fresh, ignore=keep_fresh,
                                   what=f"checkpoint {path}")
    flat_shardings = weight_stats.flatten(shardings)[0] if shardings is not None else {}
    out, kept = dict(fresh), []
    for p in fresh:
        if p in keep_fresh:
            kept.append(p)
            continue
        out[p] = _placed(source[p], fresh[p], flat_shardings.get(p))
    return weight_stats.unflatten(out, wrapped), natural_sorted(kept)


def _with_shardings(fresh_params: dict, shardings: Any) -> dict:
    """Fresh params laid out as `shardings` says (a no-op when they already are)."""
    if shardings is None:
        return fresh_params
    return jax.tree_util.tree_map(
        lambda x, s: x if isinstance(x, jax.Array) and x.sharding == s else jax.device_put(x, s),
        fresh_params, shardings)


def _scheme_record(scheme: Scheme) -> dict:
    return {"scheme": scheme.name, "paper_init_id": scheme.paper_name,
            "statistic": scheme.statistic, "include_embeddings": scheme.include_embeddings}


def initialize_params(fresh_params: dict, config: InitConfig, shardings: Any = None, *,
                      donate_fresh: bool = False) -> tuple[dict, dict]:
    """Apply `config` to the freshly initialised `fresh_params`.

    shardings: optional pytree of `jax.sharding.Sharding` matching `fresh_params` (the trainer's
        param shardings); loaded and re-sampled tensors are created directly in them. Without it
        they follow each fresh tensor's own sharding.
    Returns (params, record); `record` is JSON-able (mode, source, scheme, seed, per-group
    statistics, which tensors kept the fresh init) for MODEL_DIR/init.json.
    donate_fresh: the caller discards `fresh_params`, so in `weight_stats` mode the re-sampled
        tensors may reuse their buffers (less memory, faster; those fresh arrays are deleted).
    """
    _validate(config)
    mode = config.mode
    record: dict[str, Any] = {"mode": mode}
    if mode == "from_scratch":
        return fresh_params, record
    if mode in ("load", "load_all_but_embed"):
        keep = KEEP_FRESH if mode == "load_all_but_embed" else ()
        params, kept = _load(fresh_params, str(config.checkpoint_path), keep, shardings)
        n_total = len(weight_stats.flatten(fresh_params)[0])
        record.update(checkpoint_path=str(config.checkpoint_path), kept_fresh=kept,
                      n_loaded=n_total - len(kept), n_params=n_total)
        return params, record
    if mode == "weight_stats":
        from synthpre_jax.checkpoints import load_params

        scheme = resolve_scheme(config.scheme)  # fail on a bad name before loading
        seed = _seed(config.seed)
        source = load_params(str(config.checkpoint_path))
        params, report = weight_stats.transform_with_report(
            source, _with_shardings(fresh_params, shardings), scheme, seed,
            donate_fresh=donate_fresh)
        covered = {p for g in report for p in g.paths}
        fresh_names = weight_stats.flatten(fresh_params)[0]
        record.update(checkpoint_path=str(config.checkpoint_path), seed=seed,
                      **_scheme_record(scheme),
                      n_resampled=len(covered),
                      kept_fresh=natural_sorted(p for p in fresh_names if p not in covered),
                      groups=[g.to_json() for g in report])
        return params, record
    # constant_preattn_ln: no checkpoint is read (as in the release's Table 3 runs)
    params, paths = weight_stats.constant_preattn_ln(_with_shardings(fresh_params, shardings),
                                                     config.value)
    record.update(value=float(config.value), n_set=len(paths), paths=paths)
    return params, record
