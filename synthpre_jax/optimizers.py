"""Optimizers and learning-rate schedules as gin configurables, with T5X's names and defaults.

Adafactor is composed from optax's building blocks rather than `optax.adafactor` because the
paper's recipe needs `epsilon2` (the parameter-scale floor) and `optax.adafactor` does not
expose it. The schedule mirrors T5X's `create_learning_rate_scheduler`: a product of named
factors, so `FACTORS='constant * linear_warmup * rsqrt_decay'` means what T5X users expect.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import gin
import jax.numpy as jnp
import optax

from synthpre_jax.errors import UserError

Schedule = Callable[[jnp.ndarray], jnp.ndarray]
_KNOWN_FACTORS = ("constant", "linear_warmup", "rsqrt_decay", "rsqrt_normalized_decay",
                  "decay_every", "cosine_decay", "linear_decay")


@gin.configurable(module="utils")
def create_learning_rate_scheduler(factors: str = "constant * linear_warmup * rsqrt_decay",
                                   base_learning_rate: float = 0.5,
                                   warmup_steps: int = 1000,
                                   decay_factor: float = 0.5,
                                   steps_per_decay: int = 20000,
                                   steps_per_cycle: int = 100000,
                                   step_offset: int = 0,
                                   min_learning_rate: float = 1e-8) -> Schedule:
    """T5X's learning-rate factors; e.g. the paper's pre-training is 'rsqrt_decay' with
    warmup_steps=10000 (0.01 flat, then 1/sqrt(step)), fine-tuning 'constant' at 1e-3."""
    names = [n.strip() for n in factors.split("*") if n.strip()]
    for n in names:
        if n not in _KNOWN_FACTORS:
            raise UserError(f"unknown learning-rate factor {n!r} in {factors!r}; known: {', '.join(_KNOWN_FACTORS)}")

    def schedule(step):
        step = jnp.maximum(0, jnp.asarray(step, jnp.float32) - step_offset)
        ret = jnp.asarray(1.0, jnp.float32)
        for name in names:
            if name == "constant":
                ret *= base_learning_rate
            elif name == "linear_warmup":
                ret *= jnp.minimum(1.0, step / max(warmup_steps, 1))
            elif name == "rsqrt_decay":
                ret /= jnp.sqrt(jnp.maximum(step, warmup_steps))
            elif name == "rsqrt_normalized_decay":
                ret *= jnp.sqrt(float(warmup_steps)) / jnp.sqrt(jnp.maximum(step, warmup_steps))
            elif name == "decay_every":
                ret *= decay_factor ** (step // steps_per_decay)
            elif name == "cosine_decay":
                progress = jnp.maximum(0.0, (step - warmup_steps) / float(steps_per_cycle))
                ret *= jnp.maximum(0.0, 0.5 * (1.0 + jnp.cos(jnp.pi * (progress % 1.0))))
            elif name == "linear_decay":
                ret *= jnp.maximum(0.0, 1.0 - step / float(steps_per_cycle))
        return jnp.maximum(ret, min_learning_rate)

    return schedule


@gin.configurable
@dataclasses.dataclass(frozen=True)
class Adafactor:
    """Adafactor with T5X's field names; defaults are the paper's recipe (no momentum,
    decay 0.8, update clipping 1.0, parameter-scale updates, factored for dims >= 128)."""
    decay_rate: float = 0.8
    beta1: Optional[float] = None
    clipping_threshold: Optional[float] = 1.0
    epsilon1: float = 1e-30
    epsilon2: float = 1e-3
    factored: bool = True
    min_dim_size_to_factor: int = 128
    multiply_by_parameter_scale: bool = True
    step_offset: int = 0
    weight_decay_rate: Optional[float] = None

    def make(self, learning_rate_fn: Schedule) -> optax.GradientTransformation:
        chain = [optax.scale_by_factored_rms(factored=self.factored, decay_rate=self.decay_rate,
                                             step_offset=self.step_offset,
                                             min_dim_size_to_factor=self.min_dim_size_to_factor,
                                             epsilon=self.epsilon1)]
        if self.clipping_threshold is not None:
            chain.append(optax.clip_by_block_rms(self.clipping_threshold))
        chain.append(optax.scale_by_learning_rate(learning_rate_fn, flip_sign=False))
        if self.multiply_by_parameter_scale:
            chain.append(optax.scale_by_param_block_rms(min_scale=self.epsilon2))
        if self.beta1 is not None:
            chain.append(optax.ema(self.beta1, debias=False))
        if self.weight_decay_rate is not None:
            chain.append(optax.add_decayed_weights(self.weight_decay_rate))
        chain.append(optax.scale(-1.0))
        return optax.chain(*chain)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class AdamW:
    """AdamW (decoupled weight decay), optionally with global-norm gradient clipping."""
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip_norm: Optional[float] = None

    def make(self, learning_rate_fn: Schedule) -> optax.GradientTransformation:
        tx = optax.adamw(learning_rate_fn, b1=self.b1, b2=self.b2, eps=self.eps, weight_decay=self.weight_decay)
        if self.grad_clip_norm is not None:
            tx = optax.chain(optax.clip_by_global_norm(self.grad_clip_norm), tx)
        return tx
