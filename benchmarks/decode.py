"""Decoding speed of t5_small: tokens/s of greedy and beam-4 decoding, and the cost of one
cached decode step relative to one full decoder forward pass on the same batch.

    python benchmarks/decode.py [--batch 64 --input_length 256 --decode_length 64 --beams 4]

Random T5Config() parameters (t5_small: 6+6 layers, d 512, 8x64 heads, d_ff 2048, vocab 32128,
float32). EOS is set to an id the model never emits (-1) so that every run decodes exactly
`decode_length` tokens per example (beam search then cannot stop early either): the numbers
measure the decoder, not how soon a random model happens to stop. Every function is compiled
ahead of time (`.lower().compile()`, reported as compile_s) and then timed over `--repeats`
runs after `--warmup` untimed runs; the median is reported.

Tokens/s counts output tokens: batch * decode_length / wall time (beam search does ~beams x the
model work per output token). `step_over_forward` is one cached step (batch rows, one
token each, cache of decode_length positions) divided by one jitted full decoder pass over all
decode_length positions (encoder output given in both); with a perfect cache it approaches
1 / decode_length. It is reported for the step inside the decoding loop ((greedy time -
encoder time) / decode_length, where XLA has hoisted the loop-invariant cross-attention
key/value projections out of the loop) and for an isolated step (which re-projects them).

Writes benchmarks/results/decode.json and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from synthpre_jax.models import decoding, inference, network  # noqa: E402


def timed(fn, *args, warmup: int, repeats: int) -> float:
    """Median wall seconds of fn(*args) (results blocked on)."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def compile_ahead(jitted, *args):
    """(compiled executable, compile seconds)."""
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - t0


def step_vs_forward(module, params, batch: int, input_length: int, decode_length: int,
                    warmup: int, repeats: int) -> dict:
    """Seconds of the encoder, of one isolated cached decoder step and of one full decoder pass
    (teacher forced over all decode_length positions), same batch, encoder output given."""
    rng = np.random.default_rng(0)
    enc_tokens = jnp.asarray(rng.integers(2, 32000, (batch, input_length)), jnp.int32)
    dec_tokens = jnp.asarray(rng.integers(2, 32000, (batch, decode_length)), jnp.int32)
    encode = jax.jit(inference._encode, static_argnums=0)
    encoded = encode(module, params, enc_tokens)
    cache = jax.jit(inference.init_decoder_cache, static_argnums=(0, 4))(
        module, params, encoded, enc_tokens, decode_length)

    @jax.jit
    def encoder(params, enc_tokens):
        return inference._encode(module, params, enc_tokens)

    @jax.jit
    def one_step(params, encoded, enc_tokens, token, cache):
        step = inference._step_fn(module, params, encoded, enc_tokens, decode_length)
        state = decoding.DecodingState(cur_index=jnp.zeros((batch,), jnp.int32), sequences=token,
                                       cur_token=token, cache=cache)
        return step(state)

    @jax.jit
    def full_decoder(params, encoded, enc_tokens, dec_tokens):
        return module.apply({"params": params}, encoded, enc_tokens, dec_tokens, dec_tokens,
                            enable_dropout=False, method=module.decode)

    out = {}
    for name, fn, args in (("encoder_s", encoder, (params, enc_tokens)),
                           ("step_isolated_s", one_step, (params, encoded, enc_tokens, dec_tokens[:, :1], cache)),
                           ("full_decoder_s", full_decoder, (params, encoded, enc_tokens, dec_tokens))):
        compiled, _ = compile_ahead(fn, *args)
        out[name] = timed(compiled, *args, warmup=warmup, repeats=max(repeats, 3))
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--input_length", type=int, default=256)
    ap.add_argument("--decode_length", type=int, default=64)
    ap.add_argument("--beams", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "decode.json"))
    args = ap.parse_args(argv)

    cfg = network.T5Config()                                        # t5_small defaults
    module = network.Transformer(cfg)
    ones = jnp.ones((1, 8), jnp.int32)
    init = jax.jit(lambda r: module.init({"params": r}, ones, ones, ones, enable_dropout=False))
    params = jax.tree_util.tree_map(lambda x: getattr(x, "value", x), init(jax.random.PRNGKey(0))["params"],
                                    is_leaf=lambda x: hasattr(x, "value"))
    rng = np.random.default_rng(1)
    enc = rng.integers(2, 32000, (args.batch, args.input_length)).astype(np.int32)
    tgt = np.ones((args.batch, args.decode_length), np.int32)
    batch = {"encoder_input_tokens": jnp.asarray(enc), "decoder_target_tokens": jnp.asarray(tgt)}
    n_tokens = args.batch * args.decode_length

    config = dict(vars(args))
    config["out"] = os.path.relpath(args.out, ROOT)                 # no machine paths in results
    results: dict = {"config": {**config, "model": "t5_small (T5Config defaults, float32)",
                                "eos_id": -1, "devices": str(jax.devices()),
                                "cpu_count": os.cpu_count(), "platform": platform.platform(),
                                "loadavg_at_start": os.getloadavg(),
                                "jax": jax.__version__}}
    rows = []
    for name, dc in (("greedy", inference.DecodeConfig(method="greedy")),
                     (f"beam{args.beams}", inference.DecodeConfig(method="beam", num_decodes=args.beams,
                                                                  alpha=0.6))):
        jitted = jax.jit(lambda p, b, dc=dc: inference.predict_batch(module, p, b, dc, eos_id=-1)[0])
        compiled, compile_s = compile_ahead(jitted, params, batch)
        print(f"[{name}] compiled in {compile_s:.1f}s; timing {args.warmup}+{args.repeats} runs ...",
              flush=True)
        secs = timed(compiled, params, batch, warmup=args.warmup, repeats=args.repeats)
        results[name] = {"seconds": secs, "tokens_per_s": n_tokens / secs,
                         "seconds_per_step": secs / args.decode_length, "compile_s": compile_s}
        rows.append((name, secs, n_tokens / secs, 1000 * secs / args.decode_length))

    print("[encoder, isolated step, full decoder pass] ...", flush=True)
    parts = step_vs_forward(module, params, args.batch, args.input_length, args.decode_length,
                            args.warmup, args.repeats)
    results.update(parts)
    # In the while loop XLA hoists the (loop-invariant) cross-attention key/value projections of
    # the encoder output, so a loop step is cheaper than an isolated step; the in-loop step is
    # the greedy time less the encoder, spread over the steps (the one-time hoisted cross K/V
    # projection stays included).
    in_loop = (results["greedy"]["seconds"] - parts["encoder_s"]) / args.decode_length
    results["step_in_loop_s"] = in_loop
    results["step_over_forward"] = in_loop / parts["full_decoder_s"]
    results["step_isolated_over_forward"] = parts["step_isolated_s"] / parts["full_decoder_s"]
    results["ideal_step_over_forward"] = 1.0 / args.decode_length

    print(f"\nt5_small, batch {args.batch}, input {args.input_length}, decode {args.decode_length} "
          f"tokens, {jax.devices()[0].platform} x{jax.device_count()} ({os.cpu_count()} cores)")
    print(f"{'method':<10}{'seconds':>10}{'tokens/s':>12}{'ms/step':>10}")
    for name, secs, tps, ms in rows:
        print(f"{name:<10}{secs:>10.2f}{tps:>12.1f}{ms:>10.1f}")
    print(f"encoder {1000 * parts['encoder_s']:.0f} ms; full decoder pass {1000 * parts['full_decoder_s']:.0f} ms; "
          f"greedy step in the loop {1000 * in_loop:.0f} ms -> step/forward = "
          f"{results['step_over_forward']:.3f} (ideal 1/{args.decode_length} = {1 / args.decode_length:.3f}); "
          f"isolated step {1000 * parts['step_isolated_s']:.0f} ms "
          f"({results['step_isolated_over_forward']:.3f}, re-projects the encoder output)")
    results["loadavg_at_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(out)
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
