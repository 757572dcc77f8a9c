"""The T5 encoder-decoder (T5 1.0 and 1.1) in Flax linen, T5X-compatible.

Same call signature, parameter tree, initialisers and numerics as T5X's
`examples/t5/network.py`, so T5X gin files, checkpoints and intuitions carry
over. Written here because T5X is not on PyPI (see DESIGN.md).

Where this differs from T5X, on purpose (numerically neutral):
- relative-position bias is computed once per stack (T5X recomputes it in
  every layer) and, in cached decoding, only the current step's row is built,
  from the cache index (T5X builds the full [L, L] bias per step and layer
  from `max_decode_length`, which is therefore optional here);
- the token lookup is a gather, not a one-hot matmul;
- the decode cache is written with `dynamic_update_slice` instead of a
  one-hot broadcast (same [batch, heads, head_dim, length] layout and names);
- `encoder_positions`/`decoder_positions` are accepted and, as in T5X, not
  needed: packed segments are contiguous, so in-row offsets already equal the
  within-segment position differences the bias depends on, and attention
  across segments is masked. This keeps the bias [1, heads, q, k] instead of
  a per-example [batch, heads, q, k] tensor.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from synthpre_jax.errors import UserError
from synthpre_jax.models import layers

Array = Any

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
_REMAT_POLICIES = ("none", "full", "minimal")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class T5Config:
    """Hyperparameters of the network (T5X's field names; see gin_configs/models)."""
    vocab_size: int = 32128
    dtype: str = "float32"  # activation/compute dtype; params are always float32
    emb_dim: int = 512
    num_heads: int = 8
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    head_dim: int = 64
    mlp_dim: int = 2048
    mlp_activations: tuple = ("relu",)  # v1.1: ("gelu", "linear")
    dropout_rate: float = 0.1
    logits_via_embedding: bool = True  # v1.0 tied; False -> decoder/logits_dense
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    float32_attention_logits: bool = True
    remat_policy: str = "none"  # 'none' | 'full' | 'minimal'

    def __post_init__(self):
        # gin and JSON give lists; a tuple keeps the config hashable (it is a
        # Flax module attribute and a jit static argument).
        if isinstance(self.mlp_activations, str):
            object.__setattr__(self, "mlp_activations", (self.mlp_activations,))
        object.__setattr__(self, "mlp_activations", tuple(self.mlp_activations))
        if self.dtype not in _DTYPES:
            raise UserError(f"T5Config.dtype={self.dtype!r} is not supported; "
                            f"use one of {sorted(_DTYPES)}")
        if self.remat_policy not in _REMAT_POLICIES:
            raise UserError(f"T5Config.remat_policy={self.remat_policy!r} is not supported; "
                            f"use one of {list(_REMAT_POLICIES)}")
        if not self.mlp_activations:
            raise UserError("T5Config.mlp_activations is empty; use e.g. ('relu',) "
                            "or ('gelu', 'linear')")
        for act in self.mlp_activations:
            try:
                layers.activation_fn(act)
            except ValueError:
                raise UserError(f"T5Config.mlp_activations has unknown activation {act!r}; "
                                "use 'linear' or a flax.linen activation name "
                                "such as 'relu' or 'gelu'") from None
        for name in ("vocab_size", "emb_dim", "num_heads", "head_dim", "mlp_dim",
                     "relative_attention_num_buckets", "relative_attention_max_distance"):
            if int(getattr(self, name)) <= 0:
                raise UserError(f"T5Config.{name} must be positive, got {getattr(self, name)}")
        for name in ("num_encoder_layers", "num_decoder_layers"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"T5Config.{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= float(self.dropout_rate) < 1.0:
            raise UserError(f"T5Config.dropout_rate must be in [0, 1), got {self.dropout_rate}")

    @property
    def jnp_dtype(self) -> Any:
        """The activation dtype as a jnp dtype."""
        return _DTYPES[self.dtype]

    @property
    def logits_dtype(self) -> Any:
        """The dtype attention logits and mask biases are computed in."""
        return jnp.float32 if self.float32_attention_logits else self.jnp_dtype


def _remat(cls: type, config: T5Config, decode: bool) -> type:
    """Wrap a layer class in nn.remat per config (param names are unchanged).

    Not applied when decoding: there is no backward pass to save memory for.
    """
    if config.remat_policy == "none" or decode:
        return cls
    policy = None
    if config.remat_policy == "minimal":
        # Keep the weight matmul outputs, recompute attention and elementwise.
        policy = jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    return nn.remat(cls, policy=policy)


def _dropout(config: T5Config, x: Array, deterministic: bool, broadcast: bool = True) -> Array:
    dims = (-2,) if broadcast else ()
    return nn.Dropout(rate=config.dropout_rate, broadcast_dims=dims)(x, deterministic=deterministic)


def _attention(config: T5Config, name: str) -> layers.MultiHeadAttention:
    return layers.MultiHeadAttention(
        num_heads=config.num_heads, head_dim=config.head_dim, dtype=config.jnp_dtype,
        dropout_rate=config.dropout_rate, float32_logits=config.float32_attention_logits,
        name=name)


def _mlp(config: T5Config) -> layers.MlpBlock:
    return layers.MlpBlock(intermediate_dim=config.mlp_dim, activations=config.mlp_activations,
                           dropout_rate=config.dropout_rate, dtype=config.jnp_dtype, name="mlp")


_EMBED_AXES = ("batch", "length", "embed")


class EncoderLayer(nn.Module):
    """Pre-norm self-attention + MLP block; flags are attributes so nn.remat can wrap it."""
    config: T5Config
    deterministic: bool = True

    @nn.compact
    def __call__(self, inputs: Array, biases: tuple) -> Array:
        cfg, det = self.config, self.deterministic
        x = layers.LayerNorm(dtype=cfg.jnp_dtype, name="pre_attention_layer_norm")(inputs)
        x = _attention(cfg, "attention")(x, x, biases, deterministic=det)
        x = _dropout(cfg, x, det) + inputs
        x = layers.constrain(x, _EMBED_AXES)
        y = layers.LayerNorm(dtype=cfg.jnp_dtype, name="pre_mlp_layer_norm")(x)
        y = _mlp(cfg)(y, deterministic=det)
        y = _dropout(cfg, y, det) + x
        return layers.constrain(y, _EMBED_AXES)


class DecoderLayer(nn.Module):
    """Pre-norm causal self-attention, encoder-decoder attention and MLP."""
    config: T5Config
    deterministic: bool = True
    decode: bool = False

    @nn.compact
    def __call__(self, inputs: Array, encoded: Array, self_biases: tuple,
                 cross_biases: tuple) -> Array:
        cfg, det = self.config, self.deterministic
        x = layers.LayerNorm(dtype=cfg.jnp_dtype, name="pre_self_attention_layer_norm")(inputs)
        x = _attention(cfg, "self_attention")(x, x, self_biases, deterministic=det,
                                              decode=self.decode)
        x = _dropout(cfg, x, det) + inputs
        x = layers.constrain(x, _EMBED_AXES)
        y = layers.LayerNorm(dtype=cfg.jnp_dtype, name="pre_cross_attention_layer_norm")(x)
        y = _attention(cfg, "encoder_decoder_attention")(y, encoded, cross_biases,
                                                         deterministic=det)
        y = _dropout(cfg, y, det) + x
        y = layers.constrain(y, _EMBED_AXES)
        z = layers.LayerNorm(dtype=cfg.jnp_dtype, name="pre_mlp_layer_norm")(y)
        z = _mlp(cfg)(z, deterministic=det)
        z = _dropout(cfg, z, det) + y
        return layers.constrain(z, _EMBED_AXES)


def _relpos(config: T5Config) -> layers.RelativePositionBiases:
    return layers.RelativePositionBiases(
        num_buckets=config.relative_attention_num_buckets,
        max_distance=config.relative_attention_max_distance,
        num_heads=config.num_heads, dtype=config.logits_dtype, name="relpos_bias")


class Encoder(nn.Module):
    """Embedding dropout, N encoder layers sharing one relpos table, final norm."""
    config: T5Config
    shared_embedding: nn.Module

    @nn.compact
    def __call__(self, tokens: Array, mask_bias: Optional[Array],
                 deterministic: bool = True) -> Array:
        cfg = self.config
        x = self.shared_embedding(tokens)
        x = _dropout(cfg, x, deterministic).astype(cfg.jnp_dtype)
        positions = np.arange(tokens.shape[-1])
        pos_bias = _relpos(cfg)(positions, positions, bidirectional=True)
        layer_cls = _remat(EncoderLayer, cfg, decode=False)
        for i in range(cfg.num_encoder_layers):
            x = layer_cls(cfg, deterministic, name=f"layers_{i}")(x, (mask_bias, pos_bias))
        x = layers.LayerNorm(dtype=cfg.jnp_dtype, name="encoder_norm")(x)
        # T5X: no broadcast on this last dropout.
        return _dropout(cfg, x, deterministic, broadcast=False)


class Decoder(nn.Module):
    """Decoder stack and output logits (tied via the embedding, or logits_dense)."""
    config: T5Config
    shared_embedding: nn.Module

    def _step_position_bias(self) -> Optional[Array]:
        """In a cached decode step, the relpos bias row of the current position.

        The index and cache length come from layer 0's self-attention cache
        (all layers advance together), so no `max_decode_length` is needed.
        Returns None on the cache-initialisation pass.
        """
        cache = self.variables.get("cache", {})
        layer0 = cache.get("layers_0", {}).get("self_attention", {})
        if "cached_key" not in layer0:
            return None
        length = layer0["cached_key"].shape[-1]
        index = jnp.reshape(layer0["cache_index"], (1,))
        return _relpos(self.config)(index, jnp.arange(length), bidirectional=False)

    @nn.compact
    def __call__(self, encoded: Array, tokens: Array, self_mask_bias: Optional[Array],
                 cross_mask_bias: Optional[Array], deterministic: bool = True,
                 decode: bool = False) -> Array:
        cfg = self.config
        y = self.shared_embedding(tokens)
        y = _dropout(cfg, y, deterministic).astype(cfg.jnp_dtype)
        pos_bias = self._step_position_bias() if decode else None
        if pos_bias is None:
            positions = np.arange(tokens.shape[-1])
            pos_bias = _relpos(cfg)(positions, positions, bidirectional=False)
        layer_cls = _remat(DecoderLayer, cfg, decode)
        for i in range(cfg.num_decoder_layers):
            y = layer_cls(cfg, deterministic, decode, name=f"layers_{i}")(
                y, encoded, (self_mask_bias, pos_bias), (cross_mask_bias,))
        y = layers.LayerNorm(dtype=cfg.jnp_dtype, name="decoder_norm")(y)
        y = _dropout(cfg, y, deterministic)
        if cfg.logits_via_embedding:
            # Tied (T5 1.0): logits / sqrt(emb_dim); scaling y first is cheaper.
            logits = self.shared_embedding.attend(y.astype(jnp.float32) / np.sqrt(cfg.emb_dim))
        else:
            kernel = layers.Kernel((cfg.emb_dim, cfg.vocab_size), ("embed", "vocab"),
                                   layers.MLP_INIT, name="logits_dense")()
            logits = layers.dense(y.astype(jnp.float32), kernel)
        return layers.constrain(logits, ("batch", "length", "vocab"))


@gin.configurable
class Transformer(nn.Module):
    """T5 encoder-decoder with T5X's `Transformer` interface (returns float32 logits)."""
    config: T5Config

    def setup(self):
        cfg = self.config
        self.token_embedder = layers.Embed(cfg.vocab_size, cfg.emb_dim, dtype=cfg.jnp_dtype)
        self.encoder = Encoder(cfg, self.token_embedder)
        self.decoder = Decoder(cfg, self.token_embedder)

    def encode(self, encoder_input_tokens: Array, encoder_segment_ids: Optional[Array] = None,
               encoder_positions: Optional[Array] = None, enable_dropout: bool = True) -> Array:
        """Encoder output [batch, length, emb]; padding id 0, segments attend within."""
        del encoder_positions  # see module docstring
        if encoder_input_tokens.ndim != 2:
            raise ValueError(f"encoder_input_tokens must be [batch, length], "
                             f"got shape {encoder_input_tokens.shape}")
        valid = encoder_input_tokens > 0
        mask = layers.attention_mask(valid, valid, encoder_segment_ids, encoder_segment_ids)
        mask_bias = layers.mask_to_bias(mask, self.config.logits_dtype)
        return self.encoder(encoder_input_tokens, mask_bias, deterministic=not enable_dropout)

    def decode(self, encoded: Array, encoder_input_tokens: Array, decoder_input_tokens: Array,
               decoder_target_tokens: Array, encoder_segment_ids: Optional[Array] = None,
               decoder_segment_ids: Optional[Array] = None,
               decoder_positions: Optional[Array] = None, enable_dropout: bool = True,
               decode: bool = False, max_decode_length: Optional[int] = None) -> Array:
        """Decoder logits [batch, length, vocab] in float32.

        With `decode=True`, the first call (no cache yet, full-length inputs)
        creates the cache; later calls take one token [batch, 1] per step.
        `max_decode_length` is accepted for T5X compatibility and not needed.
        """
        del decoder_positions, max_decode_length  # see module docstring
        dtype = self.config.logits_dtype
        enc_valid = encoder_input_tokens > 0
        if decode:
            if encoder_segment_ids is not None or decoder_segment_ids is not None:
                raise ValueError("packed inputs (segment ids) cannot be used with decode=True")
            # Target padding is unknown while decoding; the causal/step mask
            # lives in the attention (init pass: causal over the full length).
            # (In a single-token step the causal mask here is trivially true.)
            ones = jnp.ones_like(decoder_target_tokens, dtype=bool)
            self_mask = layers.attention_mask(ones, ones, causal=True)
            cross_mask = layers.attention_mask(ones, enc_valid)
        else:
            dec_valid = decoder_target_tokens > 0
            self_mask = layers.attention_mask(dec_valid, dec_valid, decoder_segment_ids,
                                              decoder_segment_ids, causal=True)
            cross_mask = layers.attention_mask(dec_valid, enc_valid, decoder_segment_ids,
                                               encoder_segment_ids)
        return self.decoder(encoded, decoder_input_tokens, layers.mask_to_bias(self_mask, dtype),
                            layers.mask_to_bias(cross_mask, dtype),
                            deterministic=not enable_dropout, decode=decode)

    def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
                 decoder_target_tokens: Array, encoder_segment_ids: Optional[Array] = None,
                 decoder_segment_ids: Optional[Array] = None,
                 encoder_positions: Optional[Array] = None,
                 decoder_positions: Optional[Array] = None, *, enable_dropout: bool = True,
                 decode: bool = False, max_decode_length: Optional[int] = None) -> Array:
        """Full forward pass: logits [batch, target_length, vocab] (float32)."""
        encoded = self.encode(encoder_input_tokens, encoder_segment_ids=encoder_segment_ids,
                              encoder_positions=encoder_positions, enable_dropout=enable_dropout)
        return self.decode(encoded, encoder_input_tokens, decoder_input_tokens,
                           decoder_target_tokens, encoder_segment_ids=encoder_segment_ids,
                           decoder_segment_ids=decoder_segment_ids,
                           decoder_positions=decoder_positions, enable_dropout=enable_dropout,
                           decode=decode, max_decode_length=max_decode_length)
