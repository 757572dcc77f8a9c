"""`synthpre weight-stats`: write a checkpoint re-sampled from another one's weight statistics.

    synthpre weight-stats --source CKPT --scheme NAME --seed S --out DIR
        [--report] [--plot FILE.png] [--model-gin FILE] [--gin.NAME=VALUE ...]

The fresh model is the network the source was trained as: its T5Config is read off the source
tree's shapes (embedding -> vocab/d_model, relpos table -> heads/buckets, query kernel ->
head_dim, wi or wi_0/wi_1 -> d_ff and T5 1.0 vs 1.1, layers_<i> -> depth, logits_dense ->
untied), or taken from `--model-gin` (e.g. models/t5_small.gin) when given. The fresh init
uses the same seed. DIR receives an Orbax checkpoint usable as INITIAL_CHECKPOINT_PATH
(DIR/checkpoint_0) and `weight_stats.json` describing the groups. Every input is checked before
anything is written: a bad scheme, source or DIR leaves DIR untouched.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import re
import shutil
import sys
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from synthpre_jax import errors, paths
from synthpre_jax.errors import UserError
from synthpre_jax.paths import make_writable_dir
from synthpre_jax.weight_stats_groups import (KEEP_FRESH, SCHEMES, resolve_scheme,
                                              transformable_names)


def _parser() -> argparse.ArgumentParser:
    schemes = ", ".join(f"{s.name} ({s.paper_name})" for s in SCHEMES.values())
    p = errors.ArgumentParser(prog="synthpre weight-stats", description=__doc__.split("\n")[0],
                                epilog=f"schemes: {schemes}; custom (gin RegexScheme)")
    p.add_argument("--source", required=True, help="pre-trained checkpoint (Orbax, T5X or HF)")
    p.add_argument("--scheme", required=True,
                   help="scheme: readable name (per_param_scale, ...), paper init_id, or 'custom'")
    p.add_argument("--seed", type=int, default=0, help="seed of the fresh init and the draws")
    p.add_argument("--out", required=True, help="new, empty output directory")
    p.add_argument("--report", action="store_true", help="print the group statistics")
    p.add_argument("--plot", help="PNG file: per-tensor std of source vs result")
    p.add_argument("--model-gin", dest="model_gin",
                   help="gin file binding network.T5Config (default: inferred from the source)")
    p.add_argument("--gin_bindings", action="append", default=[],
                   help="extra gin binding, e.g. RegexScheme.patterns for --scheme custom")
    return p


# ----------------------------------------------------------------------------- model config
def infer_t5_config(flat: dict[str, Any]) -> dict[str, Any]:
    """T5Config fields implied by a T5X-named parameter tree's shapes.

    Activations cannot be read from shapes: T5 1.0 (`wi`) gets ('relu',), T5 1.1
    (`wi_0`/`wi_1`) gets ('gelu', 'linear'), their standard choices; they do not change
    parameter shapes, so the output checkpoint is the same either way.
    """
    def shape(name: str) -> tuple[int, ...]:
        if name not in flat:
            raise UserError(f"cannot infer the model from the source: it has no {name}; "
                            "pass --model-gin with the source's model config")
        return tuple(np.shape(flat[name]))

    vocab, emb = shape("token_embedder/embedding")
    heads, buckets = shape("encoder/relpos_bias/rel_embedding")
    qkv = shape("encoder/layers_0/attention/query/kernel")[1]
    if qkv % heads:
        raise UserError(f"cannot infer head_dim: query width {qkv} is not a multiple of the "
                        f"{heads} heads of the relpos table; pass --model-gin")
    gated = "encoder/layers_0/mlp/wi_0/kernel" in flat
    mlp = shape("encoder/layers_0/mlp/wi_0/kernel" if gated else "encoder/layers_0/mlp/wi/kernel")

    def depth(stack: str) -> int:
        ids = {int(m.group(1)) for n in flat
               if (m := re.match(rf"{stack}/layers_(\d+)/", n))}
        return max(ids) + 1 if ids else 0

    return dict(vocab_size=int(vocab), emb_dim=int(emb), num_heads=int(heads),
                head_dim=int(qkv // heads), mlp_dim=int(mlp[1]),
                num_encoder_layers=depth("encoder"), num_decoder_layers=depth("decoder"),
                mlp_activations=("gelu", "linear") if gated else ("relu",),
                logits_via_embedding="decoder/logits_dense/kernel" not in flat,
                relative_attention_num_buckets=int(buckets))


def _init_fn(config: Any):
    import flax.linen as nn
    import jax.numpy as jnp

    from synthpre_jax.models.network import Transformer

    tokens = jnp.ones((1, 1), jnp.int32)
    return lambda k: nn.unbox(Transformer(config).init(
        k, tokens, tokens, tokens, enable_dropout=False)["params"])


@functools.lru_cache(maxsize=4)
def _init_program(config: Any):
    import jax

    return jax.jit(_init_fn(config))


def fresh_params(config: Any, seed: int) -> dict:
    """The network's own random init for `config` (params only, unboxed)."""
    import jax

    return _init_program(config)(jax.random.key(seed))


def param_shapes(config: Any) -> dict:
    """Parameter shapes of the network for `config`, without computing anything."""
    import jax

    return jax.eval_shape(_init_fn(config), jax.random.key(0))


# ----------------------------------------------------------------------------- outputs
def format_report(report: Sequence[Any]) -> str:
    """A fixed-width table: group, rule, #tensors, #elements, mean, std."""
    width = max([len("group")] + [len(g.name) for g in report])
    lines = [f"{'group'.ljust(width)}  {'rule':<11} {'tensors':>7} {'elements':>11} "
             f"{'mean':>12} {'std':>12}"]
    for g in report:
        lines.append(f"{g.name.ljust(width)}  {g.rule:<11} {g.n_tensors:>7} {g.n_elements:>11} "
                     f"{g.mean:>12.6g} {g.std:>12.6g}")
    total_t = sum(g.n_tensors for g in report)
    total_e = sum(g.n_elements for g in report)
    lines.append(f"{'total'.ljust(width)}  {'':<11} {total_t:>7} {total_e:>11}")
    return "\n".join(lines)


def per_tensor_std(flat: dict[str, Any], names: Sequence[str]) -> np.ndarray:
    return np.array([np.std(np.asarray(flat[n], np.float64)) for n in names])


def plot_stds(path: str, names: Sequence[str], source_std: np.ndarray, result_std: np.ndarray,
              title: str) -> None:
    """Two panels: std per tensor (source and result, by tensor) and result vs source.
    Log axes; a zero std (e.g. a constant layer norm) is drawn at the bottom edge."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    both = np.concatenate([source_std, result_std])
    lo = both[both > 0].min() / 3 if (both > 0).any() else 1e-8
    hi = max(both.max(), lo * 10)
    src, res = source_std.clip(lo), result_std.clip(lo)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    x = np.arange(len(names))
    ax1.semilogy(x, src, "o", ms=3, label="source")
    ax1.semilogy(x, res, "x", ms=3, label="result")
    ax1.set_ylim(lo * 0.8, hi * 1.5)
    ax1.set_xlabel("tensor (natural name order; fresh-kept embedding/logits excluded)")
    ax1.set_ylabel("std (0 drawn at the bottom)")
    ax1.legend()
    ax1.set_title(title)
    ax2.loglog(src, res, ".", ms=4)
    ax2.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax2.set_xlabel("source std")
    ax2.set_ylabel("result std")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _check_out(out: str) -> None:
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise UserError(f"--out {out} already exists and is not an empty directory; "
                        "choose a new directory")
    paths.check_dir_target(out, "--out")


def _check_plot(plot: Optional[str]) -> None:
    if not plot:
        return
    if not plot.lower().endswith(".png"):
        raise UserError(f"--plot {plot}: give a .png file name")
    if os.path.isdir(plot):
        raise UserError(f"--plot {plot} is a directory; give a .png file name")
    parent = os.path.dirname(os.path.abspath(plot))
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise UserError(f"--plot {plot}: {parent} is a file, not a directory")
    if not os.path.isdir(parent):
        raise UserError(f"--plot {plot}: its directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UserError(f"--plot {plot}: its directory {parent} is not writable")


@contextlib.contextmanager
def _claimed_out(out: str) -> Iterator[None]:
    """Create --out (and prove it writable) before the slow re-sampling, so an unusable
    directory fails in the first second; if anything fails later, remove what this run
    created (parents included), so a failed run leaves no half-written checkpoint behind."""
    existed = os.path.isdir(out)
    before = paths.nearest_existing(out)
    try:
        make_writable_dir(out)
    except OSError as e:
        paths.remove_created(out, before)
        raise UserError(f"--out {out} is not writable ({e.strerror or e}); "
                        "choose another directory") from None
    ok = False
    try:
        yield
        ok = True
    finally:
        if not ok:
            if existed:
                for name in os.listdir(out):
                    path = os.path.join(out, name)
                    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
            else:
                paths.remove_created(out, before)


def _progress(msg: str) -> None:
    print(f"weight-stats: {msg}", file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    from synthpre_jax import gin_utils

    args = _parser().parse_args(gin_utils.rewrite_gin_args(argv))
    import gin

    import synthpre_jax.models.network as network  # registers network.T5Config for gin
    from synthpre_jax import checkpoints, weight_stats

    gin.clear_config()
    if args.model_gin or args.gin_bindings:
        gin_utils.parse_gin([args.model_gin] if args.model_gin else [], args.gin_bindings)
    scheme = resolve_scheme(args.scheme)
    _check_out(args.out)
    _check_plot(args.plot)

    if not os.path.exists(os.path.expanduser(args.source)):
        raise UserError(f"--source {args.source} does not exist; give a checkpoint directory "
                        "(Orbax, legacy T5X or Hugging Face)")
    with _claimed_out(args.out):
        _resample_and_write(args, scheme, network, checkpoints, weight_stats)
    return 0


def _resample_and_write(args: argparse.Namespace, scheme: Any, network: Any, checkpoints: Any,
                        weight_stats: Any) -> None:
    from synthpre_jax import gin_utils

    # no progress line before the source is known to be usable: a bad source is one line
    source = checkpoints.load_params(args.source)
    src_flat, _ = weight_stats.flatten(source)
    if args.model_gin:
        config = gin_utils.call_configurable(network.T5Config)
    else:
        config = network.T5Config(**infer_t5_config(src_flat))
    ws_ignore = () if scheme.include_embeddings else KEEP_FRESH
    weight_stats.check_trees_match(src_flat, weight_stats.flatten(param_shapes(config))[0],
                                   ignore=ws_ignore)  # fail before the (slow) init
    _progress(f"loaded {args.source}: {len(src_flat)} tensors, "
              f"{sum(int(np.size(v)) for v in src_flat.values()) / 1e6:.1f}M parameters")
    _progress(f"initialising the fresh model ({config.num_encoder_layers}+"
              f"{config.num_decoder_layers} layers, d_model {config.emb_dim}, seed {args.seed})")
    fresh = fresh_params(config, args.seed)
    _progress(f"re-sampling with scheme {scheme.name}")
    params, report = weight_stats.transform_with_report(source, fresh, scheme, args.seed,
                                                        donate_fresh=True)
    out_flat, _ = weight_stats.flatten(params)
    names = [n for n in transformable_names(src_flat, scheme.include_embeddings) if n in out_flat]
    src_std = per_tensor_std(src_flat, names) if args.plot else None
    res_std = per_tensor_std(out_flat, names) if args.plot else None

    _progress(f"writing {args.out}")
    step_dir = checkpoints.save_params_checkpoint(args.out, params, step=0)
    record = {"source": str(args.source), "scheme": scheme.name,
              "paper_init_id": scheme.paper_name, "statistic": scheme.statistic,
              "seed": args.seed, "checkpoint": step_dir,
              "t5_config": {k: (list(v) if isinstance(v, tuple) else v)
                            for k, v in dataclasses.asdict(config).items()},
              "groups": [g.to_json() for g in report]}
    with open(os.path.join(args.out, "weight_stats.json"), "w") as f:
        json.dump(record, f, indent=1)
    if args.report:
        print(format_report(report))
    if args.plot:
        plot_stds(args.plot, names, src_std, res_std, f"{scheme.name} (seed {args.seed})")
        _progress(f"plot written to {args.plot}")
    print(f"wrote {step_dir} (use it as INITIAL_CHECKPOINT_PATH)")
