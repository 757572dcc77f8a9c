"""EncoderDecoderModel: loss, teacher-forced metrics, predict and score (T5X's model API).

The loss follows T5X exactly because the paper's numbers depend on it: token cross-entropy
summed over target tokens (or normalised per T5X's `loss_normalizing_factor`), an optional
z-loss (log Z)^2 term that keeps the softmax normaliser near 0, and label smoothing with
T5X's normalising constant so that a perfect prediction has zero loss.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from synthpre_jax.errors import UserError

Batch = Mapping[str, jnp.ndarray]

_NORMALIZERS = ("NUM_REAL_TARGET_TOKENS", "NUM_TOTAL_TARGET_TOKENS", "AVERAGE_PER_SEQUENCE")


def cross_entropy_with_logits(logits: jnp.ndarray, targets: jnp.ndarray, vocab_size: int,
                              label_smoothing: float = 0.0, z_loss: float = 0.0
                              ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Per-token (loss, z_loss) in float32; loss already includes the z-loss term."""
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    confidence = 1.0 - label_smoothing
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    if label_smoothing > 0.0:
        low = label_smoothing / (vocab_size - 1)
        normalizing_constant = -(confidence * np.log(confidence) +
                                 (vocab_size - 1) * low * np.log(low + 1e-20))
        mean_logit = jnp.sum(logits, axis=-1)
        expected = confidence * target_logit + low * (mean_logit - target_logit)
        loss = log_z - expected - normalizing_constant
    else:
        loss = log_z - target_logit
    zl = z_loss * jnp.square(log_z)
    return loss + zl, zl


def loss_weights_and_normalizer(batch: Batch, loss_normalizing_factor: Any) -> tuple[jnp.ndarray, Optional[jnp.ndarray]]:
    """Token weights and the divisor for the summed loss (None: plain sum, T5X's default)."""
    targets = batch["decoder_target_tokens"]
    weights = batch.get("decoder_loss_weights")
    weights = (targets > 0) if weights is None else weights
    weights = weights.astype(jnp.float32)
    if loss_normalizing_factor is None:
        return weights, None
    if isinstance(loss_normalizing_factor, (int, float)):
        return weights, jnp.asarray(float(loss_normalizing_factor), jnp.float32)
    if loss_normalizing_factor == "NUM_REAL_TARGET_TOKENS":
        return weights, jnp.maximum(jnp.sum(weights), 1.0)
    if loss_normalizing_factor == "NUM_TOTAL_TARGET_TOKENS":
        return weights, jnp.asarray(float(np.prod(targets.shape)), jnp.float32)
    if loss_normalizing_factor == "AVERAGE_PER_SEQUENCE":
        # Each sequence's tokens weigh 1/len(seq), then the sum is divided by #sequences.
        seg = batch.get("decoder_segment_ids")
        if seg is None:
            per_seq = jnp.maximum(jnp.sum(weights, axis=-1, keepdims=True), 1.0)
            n_seq = jnp.sum(jnp.any(weights > 0, axis=-1))
            return weights / per_seq, jnp.maximum(n_seq.astype(jnp.float32), 1.0)
        onehot = (seg[..., None] == jnp.arange(1, seg.shape[-1] + 1)).astype(jnp.float32)
        counts = jnp.einsum("bl,bls->bs", weights, onehot)
        tok_count = jnp.einsum("bls,bs->bl", onehot, counts)
        n_seq = jnp.sum(counts > 0).astype(jnp.float32)
        return jnp.where(tok_count > 0, weights / jnp.maximum(tok_count, 1.0), 0.0), jnp.maximum(n_seq, 1.0)
    raise UserError(f"unknown loss_normalizing_factor {loss_normalizing_factor!r}; use None, a number or one of {_NORMALIZERS}")


@gin.configurable(module="models")
class EncoderDecoderModel:
    """T5X-style wrapper of the Transformer: variables, loss, metrics, decoding.

    `optimizer_def` (an `optimizers.Adafactor`/`AdamW`) lives here as in T5X gin files.
    """

    def __init__(self, module: nn.Module, input_vocabulary: Any = None, output_vocabulary: Any = None,
                 optimizer_def: Any = None, label_smoothing: float = 0.0, z_loss: float = 1e-4,
                 loss_normalizing_factor: Any = None, decode_config: Any = None):
        self.module = module
        self.input_vocabulary = input_vocabulary
        self.output_vocabulary = output_vocabulary
        self.optimizer_def = optimizer_def
        self.label_smoothing = float(label_smoothing)
        self.z_loss = float(z_loss)
        self.loss_normalizing_factor = loss_normalizing_factor
        self.decode_config = decode_config

    @property
    def config(self):
        return self.module.config

    # ---- variables ---------------------------------------------------------------------------
    def get_initial_variables(self, rng: jax.Array, input_shapes: Mapping[str, tuple[int, ...]],
                              input_types: Optional[Mapping[str, Any]] = None) -> Any:
        """Boxed (logically annotated) variables of a fresh model for batches of these shapes."""
        input_types = input_types or {}

        def z(name):
            return jnp.ones(input_shapes[name], input_types.get(name, jnp.int32))

        kw = {}
        for k in ("encoder_segment_ids", "decoder_segment_ids", "encoder_positions", "decoder_positions"):
            if k in input_shapes:
                kw[k] = z(k)
        return self.module.init({"params": rng, "dropout": rng}, z("encoder_input_tokens"),
                                z("decoder_input_tokens"), z("decoder_target_tokens"),
                                enable_dropout=False, **kw)

    # ---- loss and metrics ----------------------------------------------------------------------
    def _logits(self, params, batch: Batch, dropout_rng: Optional[jax.Array]) -> jnp.ndarray:
        rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
        return self.module.apply(
            {"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
            batch["decoder_target_tokens"],
            encoder_segment_ids=batch.get("encoder_segment_ids"),
            decoder_segment_ids=batch.get("decoder_segment_ids"),
            encoder_positions=batch.get("encoder_positions"),
            decoder_positions=batch.get("decoder_positions"),
            enable_dropout=dropout_rng is not None, rngs=rngs)

    def loss_fn(self, params, batch: Batch, dropout_rng: Optional[jax.Array],
                normalizer: Optional[jnp.ndarray] = None) -> tuple[jnp.ndarray, dict]:
        """(loss, metric sums). `normalizer` overrides the batch's own divisor so gradient
        accumulation over microbatches equals the full-batch gradient."""
        logits = self._logits(params, batch, dropout_rng)
        targets = batch["decoder_target_tokens"]
        weights, own_norm = loss_weights_and_normalizer(batch, self.loss_normalizing_factor)
        norm = normalizer if normalizer is not None else own_norm
        tok_loss, tok_z = cross_entropy_with_logits(logits, targets, logits.shape[-1],
                                                    self.label_smoothing, self.z_loss)
        loss = jnp.sum(tok_loss * weights)
        z_loss = jnp.sum(tok_z * weights)
        if norm is not None:
            loss, z_loss = loss / norm, z_loss / norm
        return loss, self._metric_sums(logits, batch, loss, z_loss)

    def _metric_sums(self, logits, batch: Batch, loss, z_loss) -> dict:
        """Additive statistics; `metrics_from_sums` turns them into T5X's metric names."""
        targets = batch["decoder_target_tokens"]
        weights = batch.get("decoder_loss_weights")
        weights = (targets > 0) if weights is None else weights
        weights = weights.astype(jnp.float32)
        correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32) * weights
        tok_ce, _ = cross_entropy_with_logits(logits, targets, logits.shape[-1], 0.0, 0.0)
        return {
            "loss": loss,
            "z_loss": z_loss,
            "cross_ent_sum": jnp.sum(tok_ce * weights),
            "correct": jnp.sum(correct),
            "weight_sum": jnp.sum(weights),
            "num_tokens": jnp.asarray(float(np.prod(targets.shape)), jnp.float32),
            "nonpadding_tokens": jnp.sum((targets > 0).astype(jnp.float32)),
            "num_examples": jnp.sum(jnp.any(targets > 0, axis=-1).astype(jnp.float32)) if
            batch.get("decoder_segment_ids") is None else
            jnp.sum(jnp.max(batch["decoder_segment_ids"], axis=-1).astype(jnp.float32)),
        }

    def eval_fn(self, params, batch: Batch) -> dict:
        """Teacher-forced evaluation sums (no dropout)."""
        return self.loss_fn(params, batch, None)[1]

    # ---- decoding ----------------------------------------------------------------------------
    def predict_batch(self, params, batch: Batch, rng: Optional[jax.Array] = None,
                      decode_config: Any = None, return_all_decodes: bool = False):
        """(decodes [b, len], {'scores': [b]}) with the configured search (default: beam 4, alpha 0.6)."""
        from synthpre_jax.models import inference
        cfg = decode_config or self.decode_config or inference.DecodeConfig()
        eos_id = getattr(self.output_vocabulary, "eos_id", None) or 1
        return inference.predict_batch(self.module, params, batch, cfg, rng=rng, eos_id=eos_id,
                                       return_all_decodes=return_all_decodes)

    def score_batch(self, params, batch: Batch) -> jnp.ndarray:
        """Log-likelihood of the given targets, per example."""
        from synthpre_jax.models import inference
        return inference.score_batch(self.module, params, batch)


def metrics_from_sums(sums: Mapping[str, float], steps: int = 1) -> dict[str, float]:
    """T5X's metric names from sums accumulated over `steps` steps: losses are averaged per
    step (T5X's AveragePerStep), accuracy is weighted by non-padding target tokens."""
    w = max(float(sums["weight_sum"]), 1e-9)
    steps = max(int(steps), 1)
    return {
        "loss": float(sums["loss"]) / steps,
        "accuracy": float(sums["correct"]) / w,
        "cross_ent_loss": float(sums["cross_ent_sum"]) / steps,
        "cross_ent_loss_per_all_target_tokens": float(sums["cross_ent_sum"]) / max(float(sums["num_tokens"]), 1e-9),
        "z_loss": float(sums["z_loss"]) / steps,
        "nonpadding_fraction": float(sums["nonpadding_tokens"]) / max(float(sums["num_tokens"]), 1e-9),
        "loss_per_nonpadding_target_token": float(sums["loss"]) / w,
    }


@dataclasses.dataclass
class MetricSums:
    """Host-side running sums of metric statistics across steps."""
    sums: dict = dataclasses.field(default_factory=dict)
    steps: int = 0

    def add(self, m: Mapping[str, Any]) -> None:
        for k, v in m.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.steps += 1

    def reset(self) -> None:
        self.sums, self.steps = {}, 0
