"""Building blocks of the T5 network (Flax linen), numerically as in T5X.

Every parameter is created in float32 with a T5X logical-axis annotation
(`nn.with_logical_partitioning`), so `nn.get_partition_spec(variables)` yields
the logical specs and `nn.unbox(variables)` the plain tree with T5X's names.
Kernels are stored 2-D (`[in, out]`) exactly as T5X stores them and reshaped
to per-head views inside the computation, so checkpoints interoperate.

Why these are written here instead of taken from a library: T5X (which owns
`t5x.examples.t5.layers`) is not installable from PyPI, and Flax's own
`nn.MultiHeadDotProductAttention` uses different parameter names and shapes
(3-D kernels, biases), a 1/sqrt(d) logit scaling and a different cache layout.
"""
from __future__ import annotations

import functools
import operator
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = Any
Initializer = Callable[..., Array]

# Additive bias for masked attention logits (T5X's value); finite so that a
# fully masked row (a padding query) gives a uniform softmax instead of NaN.
NEG_INF = -1e10

EMBED_INIT = nn.initializers.normal(stddev=1.0)
ATTENTION_INIT = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
MLP_INIT = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
RELPOS_INIT = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")


def query_init(head_dim: int) -> Initializer:
    """ATTENTION_INIT divided by sqrt(head_dim).

    T5 never scales attention logits by 1/sqrt(d); T5X folds that factor into
    the query initialiser instead (equivalent under Adafactor's relative
    updates), and checkpoints assume it.
    """
    scale = float(np.sqrt(head_dim))

    def init(key, shape, dtype=jnp.float32):
        return ATTENTION_INIT(key, shape, dtype) / scale

    return init


def dense(x: Array, kernel: Array) -> Array:
    """x[..., in] @ kernel[in, out] as one 2-D matmul over the flattened leading axes.

    Same math as einsum('...i,io->...o'). Why flattened: with batch and length kept as two
    axes, the weight gradient contracts both at once and XLA:CPU materialises a transposed
    copy of the incoming gradient for it (measured: ~30% of an MLP block's backward time).
    """
    y = jnp.dot(x.reshape(-1, x.shape[-1]), kernel)
    return y.reshape(x.shape[:-1] + (kernel.shape[-1],))


def constrain(x: Array, axes: Sequence[str]) -> Array:
    """Logical sharding constraint; a no-op outside a mesh/rules context."""
    return nn.with_logical_constraint(x, tuple(axes))


def activation_fn(name: str) -> Callable[[Array], Array]:
    """'linear' or the name of a flax.linen activation (T5X's convention).

    Note 'gelu' is flax's default tanh approximation, which is what T5.1.1
    (and HF's 'gelu_new') uses.
    """
    if name == "linear":
        return lambda x: x
    fn = getattr(nn, name, None)
    if fn is None or not callable(fn):
        raise ValueError(f"unknown activation {name!r}")
    return fn


# ---------------------------------------------------------------------------
# Relative position buckets
# ---------------------------------------------------------------------------
def relative_position_bucket(relative_position: Array, bidirectional: bool,
                             num_buckets: int, max_distance: int, xp=np) -> Array:
    """Bucket of `memory_position - query_position` (Mesh-TF / T5X scheme).

    Half the buckets (all of them when not bidirectional) cover exact small
    distances, the rest grow logarithmically up to `max_distance`; everything
    further shares the last bucket. Without `bidirectional`, keys after the
    query (positive relative positions) all fall in bucket 0. `xp` is numpy for
    trace-time constants and jax.numpy for the dynamic decode-step row.
    """
    n = -relative_position
    ret = 0
    if bidirectional:
        num_buckets //= 2
        ret = (n < 0).astype(np.int32) * num_buckets
        n = xp.abs(n)
    else:
        n = xp.maximum(n, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    # The eps (as in T5X) keeps exact powers from rounding down a bucket.
    scaled = (xp.log(n.astype(np.float32) / max_exact + np.finfo(np.float32).eps)
              / np.log(max_distance / max_exact) * (num_buckets - max_exact))
    val_if_large = max_exact + scaled.astype(np.int32)
    val_if_large = xp.minimum(val_if_large, num_buckets - 1)
    return ret + xp.where(is_small, n, val_if_large)


class RelativePositionBiases(nn.Module):
    """One [heads, buckets] table per stack, turned into an attention bias.

    Unlike T5X, the caller passes the query and key positions, so the decoder
    can ask for just the current step's row during cached decoding instead of
    building the full [L, L] bias in every step and layer.
    """
    num_buckets: int
    max_distance: int
    num_heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, q_positions: Array, k_positions: Array,
                 bidirectional: bool) -> Array:
        """Bias of shape [1, heads, len(q_positions), len(k_positions)]."""
        table = self.param(
            "rel_embedding",
            nn.with_logical_partitioning(RELPOS_INIT, ("heads", "relpos_buckets")),
            (self.num_heads, self.num_buckets), jnp.float32)
        static = isinstance(q_positions, np.ndarray) and isinstance(k_positions, np.ndarray)
        xp = np if static else jnp
        rel = k_positions[None, :] - q_positions[:, None]
        buckets = relative_position_bucket(
            rel, bidirectional, self.num_buckets, self.max_distance, xp=xp)
        # A gather from the small table; T5X's one-hot contraction exists for
        # old TPU SPMD limits and costs heads*buckets*q*k extra FLOPs.
        values = jnp.take(table, jnp.asarray(buckets, jnp.int32), axis=1)
        return values[None].astype(self.dtype)


# ---------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------
class Kernel(nn.Module):
    """A bias-free 2-D weight `<name>/kernel`, returned for the parent's einsum."""
    shape: tuple
    axes: tuple
    init: Initializer = MLP_INIT

    @nn.compact
    def __call__(self) -> Array:
        return self.param("kernel", nn.with_logical_partitioning(self.init, self.axes),
                          tuple(int(s) for s in self.shape), jnp.float32)


class Embed(nn.Module):
    """Token embedding [vocab, embed] shared by encoder, decoder and (v1.0) logits."""
    num_embeddings: int
    features: int
    dtype: Any = jnp.float32

    def setup(self):
        self.embedding = self.param(
            "embedding", nn.with_logical_partitioning(EMBED_INIT, ("vocab", "embed")),
            (self.num_embeddings, self.features), jnp.float32)

    def __call__(self, tokens: Array) -> Array:
        """Gather rows (T5X uses a one-hot matmul, which costs a full
        [tokens, vocab] x [vocab, embed] product for a lookup)."""
        x = jnp.take(self.embedding, tokens.astype(jnp.int32), axis=0)
        return constrain(x.astype(self.dtype), ("batch", "length", "embed"))

    def attend(self, query: Array) -> Array:
        """query @ embedding.T in float32 (T5X's attend_dtype for stability)."""
        q = query.astype(jnp.float32)
        logits = jnp.einsum("te,ve->tv", q.reshape(-1, q.shape[-1]), self.embedding)  # see dense()
        return logits.reshape(q.shape[:-1] + (self.embedding.shape[0],))


class LayerNorm(nn.Module):
    """T5's RMS norm: no mean subtraction, no bias, eps 1e-6, float32 math."""
    epsilon: float = 1e-6
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = x.astype(jnp.float32)
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                           (x.shape[-1],), jnp.float32)
        y = x * lax.rsqrt(jnp.mean(lax.square(x), axis=-1, keepdims=True) + self.epsilon)
        return (y * scale).astype(self.dtype)


# ---------------------------------------------------------------------------
# Attention and MLP
# ---------------------------------------------------------------------------
def _sum_leading_tree(g: Array) -> Array:
    """Sum over axis 0 as a tree of half-slices added elementwise (one fused loop in XLA)."""
    while g.shape[0] > 1:
        n, half = g.shape[0], g.shape[0] // 2
        s = g[:half] + g[half:2 * half]
        if n % 2:
            s = jnp.concatenate([s[:1] + g[2 * half:], s[1:]], axis=0)
        g = s
    return g[0]


def _sum_leading(g: Array) -> Array:
    """jnp.sum(g, axis=0), computed the fast way for the backend.

    XLA:CPU (jaxlib 0.10, YNNPACK reductions) sums over a leading axis at ~0.2 GB/s, about
    100x slower than adding the half-slices elementwise; there that reduction of the shared
    relative-position bias's gradient was ~10% of a t5_small step at length 512. Elsewhere
    (and whenever the batch axis may be sharded) the plain reduction is the right lowering.
    """
    return lax.platform_dependent(g, cpu=_sum_leading_tree, default=lambda x: jnp.sum(x, axis=0))


@jax.custom_vjp
def _add_batch_shared(x: Array, bias: Array) -> Array:
    return x + bias


def _add_batch_shared_fwd(x, bias):
    return x + bias, None


def _add_batch_shared_bwd(_, g):
    return g, _sum_leading(g)[None]


_add_batch_shared.defvjp(_add_batch_shared_fwd, _add_batch_shared_bwd)


def add_bias(logits: Array, bias: Array) -> Array:
    """logits + bias; a bias shared by every batch row ([1, ...], e.g. the relative-position
    bias) gets its gradient summed over the batch by `_sum_leading` (same value, see there)."""
    if (bias.ndim == logits.ndim and bias.shape[0] == 1 and logits.shape[0] > 1
            and bias.shape[1:] == logits.shape[1:] and bias.dtype == logits.dtype):
        return _add_batch_shared(logits, bias)
    return logits + bias


def _dropout_attention(weights: Array, rate: float, rng: Array) -> Array:
    """Attention-probability dropout, broadcast over the query axis as in T5X."""
    keep_prob = 1.0 - rate
    shape = list(weights.shape)
    shape[-2] = 1
    keep = jax.random.bernoulli(rng, keep_prob, shape)
    return weights * (keep.astype(weights.dtype) / jnp.asarray(keep_prob, weights.dtype))


class MultiHeadAttention(nn.Module):
    """T5X multi-head dot-product attention with 2-D q/k/v/out kernels.

    `biases` is a tuple of additive terms, each broadcastable to
    [batch, heads, q_len, kv_len] (padding/segment/causal masks as 0/-1e10 and
    the relative-position bias); they are summed here so XLA fuses them into the
    softmax instead of materialising a [batch, heads, q, k] bias per stack.

    With `decode=True` a 'cache' collection holds cached_key and cached_value
    in T5X's [batch, heads, head_dim, length] layout plus a scalar cache_index.
    If the cache does not exist yet this is the initialisation pass: shapes come
    from the full-length input and the output is computed normally. Otherwise
    the input must be a single position [batch, 1, embed]; its key/value are
    written at cache_index, keys after it are masked, and the index advances.
    """
    num_heads: int
    head_dim: int
    dtype: Any = jnp.float32
    dropout_rate: float = 0.0
    float32_logits: bool = True

    @nn.compact
    def __call__(self, inputs_q: Array, inputs_kv: Array, biases: tuple = (), *,
                 deterministic: bool = True, decode: bool = False) -> Array:
        h, d = self.num_heads, self.head_dim
        emb = inputs_q.shape[-1]

        def project(name, x, init):
            # A plain 2-D matmul, then a free reshape of the output into heads: contracting
            # against the kernel reshaped to [e, h, d] made XLA:CPU copy (transpose) every
            # kernel in every step.
            k = Kernel((x.shape[-1], h * d), ("embed", "joined_kv"), init, name=name)()
            y = dense(x.astype(self.dtype), k.astype(self.dtype))
            y = y.reshape(y.shape[:-1] + (h, d))
            return constrain(y, ("batch", "length", "heads", "kv"))

        query = project("query", inputs_q, query_init(d))
        key = project("key", inputs_kv, ATTENTION_INIT)
        value = project("value", inputs_kv, ATTENTION_INIT)
        biases = tuple(b for b in biases if b is not None)
        logit_dtype = jnp.float32 if self.float32_logits else self.dtype
        if self.float32_logits:
            query = query.astype(jnp.float32)

        # Keys/values as [batch, kv_len, heads, head_dim], or in the decode
        # step as the cache's [batch, heads, head_dim, kv_len] layout.
        k_spec, v_spec = "bkhd", "bkhd"
        if decode and self.has_variable("cache", "cached_key"):
            cached_key = self.variable("cache", "cached_key")
            cached_value = self.variable("cache", "cached_value")
            cache_index = self.variable("cache", "cache_index")
            batch, heads, depth, length = cached_key.value.shape
            if query.shape != (batch, 1, heads, depth):
                raise ValueError(
                    "autoregressive cache: expected a single decoding position of shape "
                    f"{(batch, 1, heads, depth)}, got query shape {query.shape}")
            idx = cache_index.value
            at = (0, 0, 0, idx)
            cached_key.value = lax.dynamic_update_slice(
                cached_key.value,
                jnp.transpose(key, (0, 2, 3, 1)).astype(cached_key.value.dtype), at)
            cached_value.value = lax.dynamic_update_slice(
                cached_value.value,
                jnp.transpose(value, (0, 2, 3, 1)).astype(cached_value.value.dtype), at)
            cache_index.value = idx + 1
            key, value = cached_key.value, cached_value.value
            k_spec, v_spec = "bhdk", "bhdk"
            step_mask = jnp.where(jnp.arange(length) <= idx, 0.0, NEG_INF)
            biases = biases + (step_mask.astype(logit_dtype)[None, None, None, :],)
        elif decode:  # initialisation pass: zero caches of the full length
            b_, l_, h_, d_ = key.shape
            self.variable("cache", "cached_key", jnp.zeros, (b_, h_, d_, l_), key.dtype)
            self.variable("cache", "cached_value", jnp.zeros, (b_, h_, d_, l_), value.dtype)
            self.variable("cache", "cache_index", lambda: jnp.array(0, dtype=jnp.int32))

        if self.float32_logits:
            key = key.astype(jnp.float32)
        logits = jnp.einsum(f"bqhd,{k_spec}->bhqk", query, key)
        for b in biases:
            logits = add_bias(logits, b.astype(logit_dtype))
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
        if not deterministic and self.dropout_rate > 0.0:
            weights = _dropout_attention(weights, self.dropout_rate, self.make_rng("dropout"))
        x = jnp.einsum(f"bhqk,{v_spec}->bqhd", weights, value.astype(self.dtype))
        x = constrain(x, ("batch", "length", "heads", "kv"))

        out = Kernel((h * d, emb), ("joined_kv", "embed"), ATTENTION_INIT, name="out")()
        x = x.reshape(x.shape[:-2] + (h * d,))
        return dense(x, out.astype(self.dtype))


class MlpBlock(nn.Module):
    """Feed-forward block: wi (or gated wi_0 * wi_1), dropout, wo."""
    intermediate_dim: int
    activations: tuple = ("relu",)
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, inputs: Array, *, deterministic: bool = True) -> Array:
        emb = inputs.shape[-1]
        x_in = inputs.astype(self.dtype)
        hidden = []
        for i, act in enumerate(self.activations):
            name = "wi" if len(self.activations) == 1 else f"wi_{i}"
            k = Kernel((emb, self.intermediate_dim), ("embed", "mlp"), MLP_INIT, name=name)()
            hidden.append(activation_fn(act)(dense(x_in, k.astype(self.dtype))))
        x = functools.reduce(operator.mul, hidden)
        x = nn.Dropout(rate=self.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)
        x = constrain(x, ("batch", "length", "mlp"))
        wo = Kernel((self.intermediate_dim, emb), ("mlp", "embed"), MLP_INIT, name="wo")()
        return dense(x, wo.astype(self.dtype))


# ---------------------------------------------------------------------------
# Masks (as additive biases)
# ---------------------------------------------------------------------------
def mask_to_bias(mask: Optional[Array], dtype: Any) -> Optional[Array]:
    """Boolean [batch, q, k] mask -> additive [batch, 1, q, k] bias (0 / -1e10)."""
    if mask is None:
        return None
    return jnp.where(mask, 0.0, NEG_INF).astype(dtype)[:, None, :, :]


def attention_mask(q_valid: Array, k_valid: Array, q_segments: Optional[Array] = None,
                   k_segments: Optional[Array] = None, causal: bool = False) -> Array:
    """[batch, q, k] boolean mask: both positions valid, same segment, causal."""
    mask = q_valid[:, :, None] & k_valid[:, None, :]
    if q_segments is not None and k_segments is not None:
        mask = mask & (q_segments[:, :, None] == k_segments[:, None, :])
    if causal:
        q_len, k_len = q_valid.shape[-1], k_valid.shape[-1]
        mask = mask & jnp.asarray(np.tril(np.ones((q_len, k_len), dtype=bool)))[None]
    return mask
