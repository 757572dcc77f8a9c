"""Time and peak host memory of the weight-statistics transform on a T5-base-sized tree.

    python benchmarks/weight_stats.py [--schemes per_param_scale,...] [--repeats 2] [--small]

Tree: T5 1.0 base shapes (12+12 layers, d_model 768, 12 heads x 64, d_ff 3072, vocab 32128;
222.9M float32 parameters in 257 tensors). The source is host NumPy, 64-byte aligned (what
`checkpoints.load_params` returns); the fresh tree is on the JAX device (as the trainer has it).

Measured, in the same process:
  floor      the memory-bandwidth floor: NumPy copies of every tensor of the tree into
             preallocated buffers (read and write every byte once), best of `--repeats`;
  rng        the draws alone (compiled) into every resampled tensor's shape, best of
             `--repeats`: `counter_rng` (what the transform uses) and threefry
             (`jax.random.normal`, what it used before) for comparison;
  first      one transform including compilation;
  steady     the transform once compiled (best of `--repeats`), as the CLI and fine-tuning
             run it (fresh tree donated), with the compiled CPU kernels
             (`weight_stats_native`), split into the statistics (exact-sum passes) and the
             sampling; `xla` the same with the kernels off (the XLA programs, what
             accelerators run), alternating with it; `keep` without donating (new output
             buffers);
  peak_mem   growth of the process's peak resident memory during one steady transform
             (Linux VmHWM, reset through /proc/self/clear_refs), next to the output's size.
Wall times on a shared machine vary with its load (recorded); `cpu x` (process CPU time of
the transform over that of the floor) varies less. Goal (issue 5): steady within 3x of the
floor. Writes benchmarks/results/weight_stats.json.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import traverse_util  # noqa: E402

from synthpre_jax import counter_rng, weight_stats as ws  # noqa: E402
from synthpre_jax import weight_stats_native as wn  # noqa: E402
from synthpre_jax.weight_stats_groups import (  # noqa: E402
    T5_BASE, resolve_scheme, t5_param_shapes, transformable_names)

DEFAULT_SCHEMES = ("per_param_scale", "per_param_mean_std", "whole_model_scale",
                   "per_layer_scale", "pre_attn_ln_scale")


def _vm(field: str) -> int:
    """A /proc/self/status memory field in bytes (0 where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def build_trees(dims: dict, seed: int = 0) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    src, fresh = {}, {}
    for name, shape in t5_param_shapes(**dims).items():
        x = wn.aligned_empty(shape)  # as checkpoints.load_params returns large tensors
        x[...] = rng.standard_normal(shape, dtype=np.float32)
        x *= np.float32(0.05 if "norm" not in name else 0.1)
        if "norm" in name:
            x += np.float32(0.5)
        src[name] = x
        fresh[name] = jnp.ones(shape) if "norm" in name else jnp.asarray(
            rng.standard_normal(shape, dtype=np.float32))
    return (traverse_util.unflatten_dict(src, sep="/"),
            traverse_util.unflatten_dict(fresh, sep="/"))


def best(fn, repeats: int, cpu: Optional[list] = None) -> float:
    """Best wall time of `repeats` runs; appends that run's process CPU time to `cpu`."""
    times = []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        times.append((time.perf_counter() - t, time.process_time() - c))
    wall, cpu_s = min(times)
    if cpu is not None:
        cpu.append(cpu_s)
    return wall


def measure_floor(flat_src: dict, repeats: int, cpu: list) -> float:
    dst = {k: np.empty_like(v) for k, v in flat_src.items()}
    for k, v in flat_src.items():  # fault the pages in before timing
        dst[k][...] = 0

    def copy():
        for k, v in flat_src.items():
            np.copyto(dst[k], v)

    return best(copy, repeats, cpu)


def measure_rng(shapes: list[tuple[int, ...]], repeats: int) -> dict:
    """The draws alone (compiled), into new buffers: the transform's own sampler (on a CPU
    two programs: hash bits, then normals in place), the same values from one fused
    program, and, for comparison, `jax.random.normal` (threefry)."""
    kd = jax.random.key_data(jax.random.key(0))
    sampler = ws._sampler("N(0,sigma)", "float32",
                          jax.sharding.SingleDeviceSharding(jax.devices()[0]), False)
    one, zero = np.float32(1), np.float32(0)
    fused = jax.jit(lambda k, shape: counter_rng.standard_normal(k, shape), static_argnums=1)
    threefry = jax.jit(lambda k, shape: jax.random.normal(jax.random.wrap_key_data(k), shape,
                                                          jnp.float32), static_argnums=1)
    out = {}
    for name, draw in (("counter", lambda k, shape: sampler(k[None], np.int32(0), zero, one,
                                                            shape=shape)),
                       ("counter_fused", fused), ("threefry", threefry)):
        for s in set(shapes):
            draw(kd, s).block_until_ready()

        def run():
            jax.block_until_ready([draw(kd, s) for s in shapes])

        cpu: list = []
        out[f"{name}_s"] = best(run, repeats, cpu)
        out[f"{name}_cpu_s"] = cpu[0]
    return out


@contextlib.contextmanager
def _kernels(on: bool):
    """The compiled CPU kernels (`weight_stats_native`) on, or off (the XLA programs)."""
    saved = wn.library
    if not on:
        wn.library = lambda: None
    try:
        yield
    finally:
        wn.library = saved


def _copy_tree(tree: dict) -> dict:
    return jax.block_until_ready(jax.tree_util.tree_map(jnp.copy, tree))


def measure_scheme(source: dict, fresh: dict, scheme: str, repeats: int, rng_s: dict) -> dict:
    """`steady` is the transform as `synthpre weight-stats` and fine-tuning run it (the fresh
    tree donated: its buffers become the result's); `steady_keep_s` keeps the fresh tree
    (new output buffers, whose first touch costs page faults)."""
    flat_src = ws.flatten(source)[0]
    groups = resolve_scheme(scheme).groups(transformable_names(flat_src))
    paths = [p for g in groups for p in g.paths]
    n_out = sum(flat_src[p].size for p in paths)
    t = time.perf_counter()
    jax.block_until_ready(ws.transform(source, _copy_tree(fresh), scheme, 0, donate_fresh=True))
    first = time.perf_counter() - t

    variants = (True, False) if wn.library() is not None else (False,)  # kernels on/off
    runs: dict[bool, list] = {on: [] for on in variants}
    for _ in range(repeats):  # alternately, so that load changes hit both alike
        for on in variants:
            donated = _copy_tree(fresh)
            cpu: list = []
            with _kernels(on):
                t = best(lambda d=donated: jax.block_until_ready(
                    ws.transform(source, d, scheme, 1, donate_fresh=True)), 1, cpu)
            runs[on].append((t, cpu[0]))
    steady, steady_cpu = min(runs[variants[0]])
    steady_xla = min(runs[False])[0]
    keep = best(lambda: jax.block_until_ready(ws.transform(source, fresh, scheme, 1)), repeats)
    order = sorted(paths)
    placed = [jax.device_put(flat_src[p]) for p in order]  # as the transform places them
    index = {p: i for i, p in enumerate(order)}
    stats = best(lambda: ws.group_statistics(placed, [[index[p] for p in g.paths]
                                                      for g in groups]), repeats)
    donated = _copy_tree(fresh)
    before = _vm("VmRSS")
    peak_ok = _reset_peak()
    out = ws.transform(source, donated, scheme, 2, donate_fresh=True)
    jax.block_until_ready(out)
    peak = _vm("VmHWM") - before if peak_ok else None
    del out, donated
    shapes = [flat_src[p].shape for p in paths]
    key = tuple(sorted(shapes))
    if key not in rng_s:
        rng_s[key] = measure_rng(shapes, repeats)
    return dict(scheme=scheme, groups=len(groups), tensors=len(paths), elements=int(n_out),
                output_bytes=int(4 * n_out), first_s=first, steady_s=steady,
                steady_cpu_s=steady_cpu, steady_keep_s=keep, stats_s=stats,
                sampling_s=max(steady - stats, 0.0), steady_xla_s=steady_xla,
                kernels=wn.library() is not None, rng_s=rng_s[key]["counter_s"],
                rng_cpu_s=rng_s[key]["counter_cpu_s"], rng_fused_s=rng_s[key]["counter_fused_s"],
                threefry_s=rng_s[key]["threefry_s"],
                peak_mem_growth_bytes=peak)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--schemes", default=",".join(DEFAULT_SCHEMES))
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--small", action="store_true", help="T5-small instead of T5-base (quick)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "weight_stats.json"))
    args = p.parse_args(argv)
    dims = dict(T5_BASE)
    if args.small:
        dims.update(num_encoder_layers=6, num_decoder_layers=6, emb_dim=512, num_heads=8,
                    mlp_dim=2048)
    print(f"building a {'T5-small' if args.small else 'T5-base'}-shaped tree ...", flush=True)
    source, fresh = build_trees(dims)
    flat_src = ws.flatten(source)[0]
    n_elem = sum(v.size for v in flat_src.values())
    tree_bytes = sum(v.nbytes for v in flat_src.values())
    floor_cpu: list = []
    floor = measure_floor(flat_src, args.repeats, floor_cpu)
    print(f"tree: {len(flat_src)} tensors, {n_elem / 1e6:.1f}M params, {tree_bytes / 2**30:.2f} "
          f"GiB; floor (read+write once): {floor:.3f} s ({2 * tree_bytes / floor / 1e9:.1f} GB/s)",
          flush=True)
    rows, rng_cache = [], {}
    for scheme in args.schemes.split(","):
        r = measure_scheme(source, fresh, scheme, args.repeats, rng_cache)
        r["ratio_to_floor"] = r["steady_s"] / floor
        r["cpu_ratio_to_floor"] = r["steady_cpu_s"] / max(floor_cpu[0], 1e-9)
        rows.append(r)
        print(f"  {scheme}: {r['steady_s']:.3f} s steady", flush=True)

    head = (f"{'scheme':<20} {'tensors':>7} {'Mparams':>8} {'first s':>8} {'steady s':>8} "
            f"{'keep s':>7} {'stats s':>8} {'sample s':>8} {'xla s':>7} {'rng s':>7} {'3fry s':>7} "
            f"{'x floor':>7} {'cpu x':>6} {'peak MiB':>8} {'out MiB':>7}")
    print(head)
    for r in rows:
        peak = "n/a" if r["peak_mem_growth_bytes"] is None else \
            f"{r['peak_mem_growth_bytes'] / 2**20:.0f}"
        print(f"{r['scheme']:<20} {r['tensors']:>7} {r['elements'] / 1e6:>8.1f} "
              f"{r['first_s']:>8.2f} {r['steady_s']:>8.3f} {r['steady_keep_s']:>7.3f} "
              f"{r['stats_s']:>8.3f} {r['sampling_s']:>8.3f} {r['steady_xla_s']:>7.3f} "
              f"{r['rng_s']:>7.3f} "
              f"{r['threefry_s']:>7.3f} {r['ratio_to_floor']:>7.1f} "
              f"{r['cpu_ratio_to_floor']:>6.1f} {peak:>8} {r['output_bytes'] / 2**20:>7.0f}")
    result = dict(
        tree="t5_small" if args.small else "t5_base", tensors=len(flat_src),
        params=int(n_elem), bytes=int(tree_bytes), floor_s=floor, floor_cpu_s=floor_cpu[0],
        floor_GBps=2 * tree_bytes / floor / 1e9, repeats=args.repeats, schemes=rows,
        machine=dict(platform=platform.platform(), cpus=os.cpu_count(),
                     load_avg=os.getloadavg(), jax=jax.__version__,
                     device=str(jax.devices()[0]), device_count=jax.device_count()))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
