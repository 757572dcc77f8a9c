"""Jitted, batched autoregressive decoding: greedy, temperature/top-k/top-p sampling, beam search.

These are pure JAX functions in the style of T5X's `decoding.py` (same call signatures and the
same conventions, so a T5X user's `decode_fn` bindings carry over), written for this project
because T5X itself is not installable from PyPI.

Conventions shared by both searches
-----------------------------------
* `inputs` [batch, length] are *decoder input* tokens: position 0 holds BOS (0) and a non-zero
  token at position t > 0 is a prompt token that is forced as the (t-1)-th output. For plain
  encoder-decoder decoding `inputs` is all zeros and only its shape matters.
* `cache` is the model's fixed-size key/value cache for batch `batch` (not yet expanded over
  decodes/beams). Every array leaf with ndim >= 1 must have the batch as its leading dimension;
  it is repeated `num_decodes` times (`flat_batch_beam_expand`) and, in beam search, re-gathered
  whenever beams are reordered. Scalar leaves (the `cache_index` counters) are shared by all rows
  and are neither expanded nor gathered.
* `tokens_to_logits(state: DecodingState) -> (logits [batch * n, vocab], new_cache)` is called
  once per step with the token to feed, `state.cur_token` [batch * n, 1]; it must return the
  logits of the *next* token only (the cache is what makes a step cheap).
* Outputs are the generated tokens [batch, n, length] (BOS dropped; padded with 0 after EOS) and
  their scores [batch, n], **sorted in increasing order of score: the best decode is last**
  (`[:, -1]`), exactly as T5X returns them.
* Scores are model log-probabilities of the generated tokens up to and including EOS (forced
  prompt tokens are not counted); beam-search scores are divided by the brevity penalty.
* The loop is one `lax.while_loop` over a fixed-size state, so it compiles once per shape and
  stops as soon as no row can change any more (all EOS, or no live beam can beat the finished).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# A large finite negative number rather than -inf, so that sums and divisions of masked scores
# never produce NaN (-inf - -inf) while still ranking below every real log-probability.
NEG_INF = np.float32(-1.0e7)


@flax.struct.dataclass
class DecodingState:
    """What `tokens_to_logits` sees at one step.

    cur_index: [batch * n] int32, the decoder position of `cur_token` in each row.
    sequences: [batch * n, length + 1] int32 decoder-input buffer (position 0 is BOS).
    cur_token: [batch * n, 1] int32, the token to feed now.
    cache: the model cache pytree, rows aligned with `cur_token`.
    """
    cur_index: jax.Array
    sequences: jax.Array
    cur_token: jax.Array
    cache: Any


TokensToLogits = Callable[[DecodingState], tuple[jax.Array, Any]]


# ------------------------------------------------------------------------------------------------
# cache helpers
# ------------------------------------------------------------------------------------------------
def flat_batch_beam_expand(x: jax.Array, beam_size: int) -> jax.Array:
    """[batch, ...] -> [batch * beam_size, ...]; row b*beam_size + j is a copy of row b."""
    return jnp.repeat(x, beam_size, axis=0)


def expand_cache(cache: Any, beam_size: int) -> Any:
    """Expands every batch-major leaf of a cache pytree over beams; scalars are kept as they are."""
    return jax.tree_util.tree_map(
        lambda x: x if jnp.ndim(x) == 0 else flat_batch_beam_expand(x, beam_size), cache)


def gather_beams(x: jax.Array, beam_indices: jax.Array, batch_size: int, beam_size: int) -> jax.Array:
    """Reorders the flat [batch * beams, ...] rows of `x` by `beam_indices` [batch, new_beams].

    `take_along_axis` keeps the batch dimension a gather batch dimension, so under SPMD each
    data shard gathers its own rows without communication.
    """
    if jnp.ndim(x) == 0:
        return x
    y = x.reshape((batch_size, beam_size) + x.shape[1:])
    idx = beam_indices.reshape(beam_indices.shape + (1,) * (y.ndim - 2))
    y = jnp.take_along_axis(y, idx, axis=1)
    return y.reshape((batch_size * beam_indices.shape[1],) + x.shape[1:])


def gather_cache(cache: Any, beam_indices: jax.Array, batch_size: int, beam_size: int) -> Any:
    """`gather_beams` on every leaf of a cache pytree (scalar `cache_index` leaves untouched)."""
    return jax.tree_util.tree_map(
        lambda x: gather_beams(x, beam_indices, batch_size, beam_size), cache)


def brevity_penalty(alpha: float, length: Any) -> Any:
    """T5X's (GNMT) length penalty ((5 + length) / 6) ** alpha; scores are log-prob / penalty."""
    return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def _fit_length(inputs: jax.Array, length: int) -> jax.Array:
    """Truncates or zero-pads decoder inputs [batch, L] to [batch, length] (static shapes)."""
    if inputs.shape[1] >= length:
        return inputs[:, :length]
    return jnp.pad(inputs, ((0, 0), (0, length - inputs.shape[1])))


def _check_static(name: str, value: Any, ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(f"{name}={value!r}: {what}")


# ------------------------------------------------------------------------------------------------
# temperature sampling (greedy when topk == 1 or temperature == 0)
# ------------------------------------------------------------------------------------------------
def _filter_logits(logits: jax.Array, temperature: float, topk: int, topp: float) -> jax.Array:
    """Temperature-scaled logits with everything outside the top-k / nucleus set masked.

    Order as in HF/T5X: scale by temperature, keep the top-k, then the smallest set of the
    remaining tokens whose probability reaches `topp`.
    """
    logits = logits / temperature
    if 0 < topk < logits.shape[-1]:
        kth = lax.top_k(logits, topk)[0][..., -1:]
        logits = jnp.where(logits < kth, NEG_INF, logits)
    if topp > 0.0:
        sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        keep = mass_before < topp                       # the first token is always kept
        threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, NEG_INF, logits)
    return logits


def temperature_sample(inputs: jax.Array, cache: Any, tokens_to_logits: TokensToLogits, eos_id: int,
                       decode_rng: Optional[jax.Array] = None, num_decodes: int = 1,
                       temperature: float = 1.0, topk: int = 1, topp: float = 0.0,
                       initial_index: Optional[jax.Array] = None,
                       max_decode_steps: Optional[int] = None) -> tuple[jax.Array, jax.Array]:
    """Greedy decoding or ancestral sampling with a fixed-size cache.

    Args:
      inputs: [batch, length] decoder inputs (BOS at 0, optional non-zero prompt tokens).
      cache: model cache for `batch` rows (see module docstring).
      tokens_to_logits: one decoder step, see `DecodingState`.
      eos_id: end-of-sequence id; a row stops after emitting it.
      decode_rng: PRNG key for sampling (default `PRNGKey(0)`; ignored when greedy).
      num_decodes: independent samples per example.
      temperature, topk, topp: Python numbers (static). `topk == 1` or `temperature == 0`
        is greedy argmax; `topk == 0` disables top-k; `topp == 0` disables nucleus filtering.
      initial_index: optional [batch] int positions at which decoding starts, for a cache that
        was already filled with the first `initial_index` decoder inputs (prompt prefill).
      max_decode_steps: optional cap on the number of tokens generated per row.

    Returns:
      (sequences [batch, num_decodes, length], log_probs [batch, num_decodes]) sorted by
      log-probability, best last. log_probs are under the model's unscaled distribution.
    """
    _check_static("num_decodes", num_decodes, int(num_decodes) >= 1, "must be >= 1")
    _check_static("temperature", temperature, float(temperature) >= 0.0, "must be >= 0")
    _check_static("topk", topk, int(topk) >= 0, "must be >= 0 (0 disables top-k)")
    _check_static("topp", topp, 0.0 <= float(topp) < 1.0, "must be in [0, 1) (0 disables top-p)")
    greedy = int(topk) == 1 or float(temperature) == 0.0
    batch, length = inputs.shape
    n = int(num_decodes)
    rows = batch * n

    seqs0 = flat_batch_beam_expand(
        jnp.concatenate([inputs.astype(jnp.int32), jnp.zeros((batch, 1), jnp.int32)], axis=1), n)
    forced_all = seqs0                                   # non-zero at t+1: forced output t
    cache0 = expand_cache(cache, n)
    if initial_index is None:
        start = jnp.zeros((rows,), jnp.int32)
    else:
        start = flat_batch_beam_expand(jnp.asarray(initial_index, jnp.int32).reshape(batch), n)
    limit = jnp.full((rows,), length, jnp.int32)
    if max_decode_steps is not None:
        limit = jnp.minimum(limit, start + int(max_decode_steps))
    rng0 = decode_rng if decode_rng is not None else jax.random.PRNGKey(0)
    positions = jnp.arange(length + 1, dtype=jnp.int32)[None, :]

    def cond(carry):
        cur, _, ended, _, _, _ = carry
        return jnp.any(~ended & (cur < limit))

    def body(carry):
        cur, seqs, ended, log_prob, cache_, rng = carry
        token = jnp.take_along_axis(seqs, cur[:, None], axis=1)
        state = DecodingState(cur_index=cur, sequences=seqs, cur_token=token, cache=cache_)
        logits, new_cache = tokens_to_logits(state)
        logits = logits.astype(jnp.float32)
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        rng, step_rng = jax.random.split(rng)
        if greedy:
            sampled = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        else:
            sampled = jax.random.categorical(
                step_rng, _filter_logits(logits, float(temperature), int(topk), float(topp)),
                axis=-1).astype(jnp.int32)
        nxt = jnp.minimum(cur + 1, length)
        forced = jnp.take_along_axis(forced_all, nxt[:, None], axis=1)[:, 0]
        is_forced = forced != 0
        active = ~ended & (cur < limit)
        token_out = jnp.where(is_forced, forced, sampled)
        token_out = jnp.where(active, token_out, 0)
        step_lp = jnp.take_along_axis(log_probs, token_out[:, None], axis=1)[:, 0]
        log_prob = log_prob + jnp.where(active & ~is_forced, step_lp, 0.0)
        write = active[:, None] & (positions == (cur + 1)[:, None])
        seqs = jnp.where(write, token_out[:, None], seqs)
        ended = ended | (active & (token_out == eos_id))
        return (jnp.minimum(cur + 1, length), seqs, ended, log_prob, new_cache, rng)

    carry0 = (start, seqs0, jnp.zeros((rows,), bool), jnp.zeros((rows,), jnp.float32), cache0, rng0)
    _, seqs, _, log_prob, _, _ = lax.while_loop(cond, body, carry0)

    seqs = seqs[:, 1:].reshape(batch, n, length)
    log_prob = log_prob.reshape(batch, n)
    order = jnp.argsort(log_prob, axis=1)                # ascending: best last
    seqs = jnp.take_along_axis(seqs, order[:, :, None], axis=1)
    log_prob = jnp.take_along_axis(log_prob, order, axis=1)
    return seqs, log_prob


# ------------------------------------------------------------------------------------------------
# beam search
# ------------------------------------------------------------------------------------------------
def beam_search(inputs: jax.Array, cache: Any, tokens_to_logits: TokensToLogits, eos_id: int,
                num_decodes: int = 4, alpha: float = 0.6,
                max_decode_len: Optional[int] = None) -> tuple[jax.Array, jax.Array]:
    """Beam search with T5X's brevity penalty and a fixed-size cache.

    A hypothesis is finished when it emits EOS or reaches `max_decode_len` tokens; its score is
    log p(tokens) / brevity_penalty(alpha, number of tokens). At every step the 2k best
    continuations are ranked; the k best non-EOS ones stay live (so the beam never shrinks)
    and EOS continuations are finalised only if they rank among the best k (as in fairseq and
    HF; T5X finalises any EOS among the 2k). This makes beam 1 with alpha 0 exactly greedy.
    The loop stops when, for every example, the worst of the k finished hypotheses is at least
    the best score any live beam could still reach, which never changes the result.

    Args:
      inputs: [batch, length] decoder inputs (BOS at 0; non-zero later tokens are forced).
      cache: model cache for `batch` rows; expanded over beams here and reordered with them.
      tokens_to_logits: one decoder step, see `DecodingState`.
      eos_id: end-of-sequence id.
      num_decodes: beam size k (static).
      alpha: brevity-penalty exponent (static).
      max_decode_len: number of output positions (default `inputs.shape[1]`); the cache must
        hold at least this many positions.

    Returns:
      (sequences [batch, k, max_decode_len], scores [batch, k]) best last. With fewer than k
      possible hypotheses the surplus entries have scores near NEG_INF.
    """
    _check_static("num_decodes", num_decodes, int(num_decodes) >= 1, "beam size must be >= 1")
    length = int(max_decode_len) if max_decode_len is not None else inputs.shape[1]
    _check_static("max_decode_len", max_decode_len, length >= 1, "must be >= 1")
    k = int(num_decodes)
    alpha = float(alpha)
    batch = inputs.shape[0]
    inputs = _fit_length(inputs.astype(jnp.int32), length)
    ext = jnp.concatenate([inputs, jnp.zeros((batch, 1), jnp.int32)], axis=1)   # [b, L+1]
    penalty_max = brevity_penalty(alpha, length)

    live_seqs0 = jnp.broadcast_to(ext[:, None, :], (batch, k, length + 1))
    live_lp0 = jnp.tile(jnp.asarray([0.0] + [NEG_INF] * (k - 1), jnp.float32)[None], (batch, 1))
    fin_seqs0 = jnp.zeros((batch, k, length + 1), jnp.int32)
    fin_scores0 = jnp.full((batch, k), NEG_INF, jnp.float32)
    cache0 = expand_cache(cache, k)

    def cond(carry):
        i, _, live_lp, _, fin_scores, _ = carry
        # Best reachable score of a live beam: log-probs only fall, so it is the best live
        # log-prob divided by the penalty at the shortest or the longest remaining length.
        best_live = live_lp[:, 0]
        bound = jnp.maximum(best_live / brevity_penalty(alpha, i + 1), best_live / penalty_max)
        worst_fin = fin_scores[:, -1]
        return (i < length) & ~jnp.all(worst_fin >= bound)

    def body(carry):
        i, live_seqs, live_lp, fin_seqs, fin_scores, cache_ = carry
        flat_seqs = live_seqs.reshape(batch * k, length + 1)
        token = lax.dynamic_slice_in_dim(flat_seqs, i, 1, axis=1)
        state = DecodingState(cur_index=jnp.full((batch * k,), i, jnp.int32), sequences=flat_seqs,
                              cur_token=token, cache=cache_)
        logits, new_cache = tokens_to_logits(state)
        vocab = logits.shape[-1]
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(batch, k, vocab)
        forced = lax.dynamic_index_in_dim(ext, i + 1, axis=1, keepdims=False)          # [b]
        forced_lp = jnp.where(jnp.arange(vocab)[None, :] == forced[:, None], 0.0, NEG_INF)
        log_probs = jnp.where((forced != 0)[:, None, None], forced_lp[:, None, :], log_probs)

        cand = (live_lp[:, :, None] + log_probs).reshape(batch, k * vocab)
        top_lp, top_idx = lax.top_k(cand, min(2 * k, k * vocab))                     # [b, 2k]
        parent = top_idx // vocab
        tok = (top_idx % vocab).astype(jnp.int32)
        top_seqs = jnp.take_along_axis(live_seqs, parent[:, :, None], axis=1)
        top_seqs = lax.dynamic_update_slice_in_dim(top_seqs, tok[:, :, None], i + 1, axis=2)
        finishing = (tok == eos_id) | (i + 1 >= length)

        # Live: the k best continuations that did not finish.
        live_cand = jnp.where(finishing, NEG_INF, top_lp)
        new_live_lp, live_pick = lax.top_k(live_cand, k)
        new_live_seqs = jnp.take_along_axis(top_seqs, live_pick[:, :, None], axis=1)
        new_cache = gather_cache(new_cache, jnp.take_along_axis(parent, live_pick, axis=1), batch, k)

        # Finished: merge this step's finishing hypotheses that rank in the top k.
        rank_ok = jnp.arange(top_lp.shape[1])[None, :] < k
        scores = jnp.where(finishing & rank_ok, top_lp / brevity_penalty(alpha, i + 1), NEG_INF)
        all_scores = jnp.concatenate([fin_scores, scores], axis=1)
        all_seqs = jnp.concatenate([fin_seqs, top_seqs], axis=1)
        new_fin_scores, fin_pick = lax.top_k(all_scores, k)
        new_fin_seqs = jnp.take_along_axis(all_seqs, fin_pick[:, :, None], axis=1)
        return (i + 1, new_live_seqs, new_live_lp, new_fin_seqs, new_fin_scores, new_cache)

    carry0 = (jnp.asarray(0, jnp.int32), live_seqs0, live_lp0, fin_seqs0, fin_scores0, cache0)
    _, _, _, fin_seqs, fin_scores, _ = lax.while_loop(cond, body, carry0)
    # top_k sorts descending; flip so that the best is last, as T5X returns it.
    return fin_seqs[:, ::-1, 1:], fin_scores[:, ::-1]
