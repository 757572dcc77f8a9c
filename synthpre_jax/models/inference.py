"""Model-level decoding and scoring for the T5 encoder-decoder (what `EncoderDecoderModel`
delegates `predict_batch` and `score_batch` to).

The flow is T5X's: encode once, create the fixed-size decoder cache by a `decode=True` pass on
full-length zero decoder inputs (`mutable=['cache']`), expand the encoder output over beams /
samples, and hand a one-token `tokens_to_logits` step to `decoding.beam_search` or
`decoding.temperature_sample`. Both public functions are traceable (they may be wrapped in an
outer `jax.jit` with sharded inputs) and also jit themselves, so an eager call compiles once
per (module, shapes, config) and is fast.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Optional

import gin
import jax
import jax.numpy as jnp

from synthpre_jax.errors import UserError
from synthpre_jax.models import decoding

Batch = Mapping[str, Any]

_METHODS = ("beam", "greedy", "sample")
_PACKING_FEATURES = ("encoder_segment_ids", "decoder_segment_ids", "encoder_positions",
                     "decoder_positions")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """How `predict_batch` decodes (the paper: beam 4, alpha 0.6, per-task max length).

    method: 'beam' | 'greedy' | 'sample'.
    num_decodes: beam size for 'beam', number of samples for 'sample' (best returned);
      ignored by 'greedy'.
    alpha: brevity-penalty exponent of beam search (T5X's ((5 + len) / 6) ** alpha).
    temperature, topk, topp: sampling controls ('sample' only); topk=1 or temperature=0 is
      greedy, topk=0 / topp=0 disable those filters.
    max_decode_length: number of decoded tokens; None uses the batch's target feature length.
    """
    method: str = "beam"
    num_decodes: int = 4
    alpha: float = 0.6
    temperature: float = 1.0
    topk: int = 1
    topp: float = 0.0
    max_decode_length: Optional[int] = None

    def __post_init__(self):
        if self.method not in _METHODS:
            raise UserError(f"DecodeConfig.method={self.method!r} is not supported; use one of "
                            f"{list(_METHODS)}")
        if int(self.num_decodes) < 1:
            raise UserError(f"DecodeConfig.num_decodes={self.num_decodes} must be at least 1 "
                            "(beam size or number of samples)")
        if self.max_decode_length is not None and int(self.max_decode_length) < 1:
            raise UserError(f"max_decode_length={self.max_decode_length} must be at least 1; "
                            "set it to the task's target length or leave it None")
        if float(self.temperature) < 0.0:
            raise UserError(f"DecodeConfig.temperature={self.temperature} must be >= 0")
        if int(self.topk) < 0:
            raise UserError(f"DecodeConfig.topk={self.topk} must be >= 0 (0 disables top-k)")
        if not 0.0 <= float(self.topp) < 1.0:
            raise UserError(f"DecodeConfig.topp={self.topp} must be in [0, 1) (0 disables top-p)")


def _require(batch: Batch, *names: str) -> None:
    missing = [n for n in names if n not in batch]
    if missing:
        raise UserError(f"batch lacks feature(s) {missing}; decoding and scoring need the "
                        f"features of seqio.EncDecFeatureConverter (has: {sorted(batch)})")


def _require_unpacked(batch: Batch, what: str) -> None:
    packed = [k for k in _PACKING_FEATURES if batch.get(k) is not None]
    if packed:
        raise UserError(f"{what} needs unpacked batches but this one has {packed}; use "
                        "pack=False for the inference/scoring dataset (EncDecFeatureConverter)")


def _encode(module, params, encoder_input_tokens):
    return module.apply({"params": params}, encoder_input_tokens, enable_dropout=False,
                        method=module.encode)


def init_decoder_cache(module, params, encoded, encoder_input_tokens, max_decode_length: int):
    """The model's decoder cache for `max_decode_length` positions, T5X-style: a `decode=True`
    pass on full-length zero decoder inputs that creates the 'cache' collection. Under jit the
    pass itself is dead code (only the freshly initialised cache is used) and is removed."""
    zeros = jnp.zeros((encoder_input_tokens.shape[0], max_decode_length), jnp.int32)
    _, variables = module.apply(
        {"params": params}, encoded, encoder_input_tokens, zeros, zeros, enable_dropout=False,
        decode=True, max_decode_length=max_decode_length, mutable=["cache"], method=module.decode)
    return variables["cache"]


def _step_fn(module, params, encoded, encoder_input_tokens, max_decode_length: int):
    """`tokens_to_logits` for the decoding loop: one cached decoder step on [rows, 1] tokens."""

    def tokens_to_logits(state: decoding.DecodingState):
        logits, variables = module.apply(
            {"params": params, "cache": state.cache}, encoded, encoder_input_tokens,
            state.cur_token, state.cur_token, enable_dropout=False, decode=True,
            max_decode_length=max_decode_length, mutable=["cache"], method=module.decode)
        return logits[:, -1, :].astype(jnp.float32), variables["cache"]

    return tokens_to_logits


@functools.partial(jax.jit, static_argnames=("module", "max_decode_length", "decode_config",
                                             "eos_id"))
def _decode_all(module, params, encoder_input_tokens, rng, *, max_decode_length: int,
                decode_config: DecodeConfig, eos_id: int):
    """All decodes [b, n, L] and scores [b, n] (best last)."""
    cfg = decode_config
    batch = encoder_input_tokens.shape[0]
    encoded = _encode(module, params, encoder_input_tokens)
    cache = init_decoder_cache(module, params, encoded, encoder_input_tokens, max_decode_length)
    n = 1 if cfg.method == "greedy" else int(cfg.num_decodes)
    # The encoder ran once at batch b; only its output is repeated over beams/samples.
    enc_x = decoding.flat_batch_beam_expand(encoded, n)
    tok_x = decoding.flat_batch_beam_expand(encoder_input_tokens, n)
    step = _step_fn(module, params, enc_x, tok_x, max_decode_length)
    prompt = jnp.zeros((batch, max_decode_length), jnp.int32)
    if cfg.method == "beam":
        return decoding.beam_search(prompt, cache, step, eos_id, num_decodes=n, alpha=cfg.alpha,
                                    max_decode_len=max_decode_length)
    if cfg.method == "greedy":
        return decoding.temperature_sample(prompt, cache, step, eos_id, num_decodes=1, topk=1)
    return decoding.temperature_sample(prompt, cache, step, eos_id, decode_rng=rng, num_decodes=n,
                                       temperature=cfg.temperature, topk=cfg.topk, topp=cfg.topp)


def predict_batch(module, params, batch: Batch, decode_config: DecodeConfig,
                  rng: Optional[jax.Array] = None, eos_id: int = 1,
                  return_all_decodes: bool = False) -> tuple[jax.Array, dict]:
    """Decodes a batch of seqio.EncDecFeatureConverter features (unpacked).

    Returns (decodes [b, L], {'scores': [b]}) for the best decode, or with
    `return_all_decodes` (decodes [b, n, L], {'scores': [b, n]}) sorted best last (T5X's order).
    Decodes hold the generated ids, EOS included, then 0s. L is
    `decode_config.max_decode_length` or the batch's target length. Scores are beam scores
    (log-prob / brevity penalty) for 'beam' and log-probabilities otherwise.
    """
    if not isinstance(decode_config, DecodeConfig):
        raise UserError(f"decode_config must be an inference.DecodeConfig, got {type(decode_config).__name__}")
    _require(batch, "encoder_input_tokens")
    _require_unpacked(batch, "decoding")
    length = decode_config.max_decode_length
    if length is None:
        target = batch.get("decoder_target_tokens", batch.get("decoder_input_tokens"))
        if target is None:
            raise UserError("cannot tell the decode length: set DecodeConfig.max_decode_length "
                            "or pass decoder_target_tokens in the batch")
        length = target.shape[1]
    if int(length) < 1:
        raise UserError(f"max_decode_length={length} must be at least 1; set it to the task's "
                        "target length")
    if rng is None:
        rng = jax.random.PRNGKey(0)
    decodes, scores = _decode_all(module, params, jnp.asarray(batch["encoder_input_tokens"]), rng,
                                  max_decode_length=int(length), decode_config=decode_config,
                                  eos_id=int(eos_id))
    if return_all_decodes:
        return decodes, {"scores": scores}
    return decodes[:, -1, :], {"scores": scores[:, -1]}


@functools.partial(jax.jit, static_argnames=("module",))
def _score(module, params, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
           weights):
    logits = module.apply({"params": params}, encoder_input_tokens, decoder_input_tokens,
                          decoder_target_tokens, enable_dropout=False)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    token_lp = jnp.take_along_axis(log_probs, decoder_target_tokens[..., None], axis=-1)[..., 0]
    return jnp.sum(token_lp * weights, axis=-1)


def score_batch(module, params, batch: Batch) -> jax.Array:
    """Log-likelihood of the given targets per example, [b]: the teacher-forced sum of
    log p(target_t | targets_<t, inputs) over tokens weighted by `decoder_loss_weights` (or
    `targets > 0` when absent). Unpacked batches only (a packed row holds several examples)."""
    _require(batch, "encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")
    _require_unpacked(batch, "scoring")
    targets = jnp.asarray(batch["decoder_target_tokens"])
    weights = batch.get("decoder_loss_weights")
    weights = (targets > 0) if weights is None else jnp.asarray(weights)
    return _score(module, params, jnp.asarray(batch["encoder_input_tokens"]),
                  jnp.asarray(batch["decoder_input_tokens"]), targets,
                  weights.astype(jnp.float32))
