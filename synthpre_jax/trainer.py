"""Jitted, sharded train and eval steps (T5X's Trainer idea).

The train state is a plain dict {'step', 'params', 'opt_state'} so Orbax saves it as-is.
Dropout randomness is `fold_in(seed_key, step)`: a resumed run draws exactly the masks an
uninterrupted one would, which is what makes resume bit-exact. Gradient accumulation splits
each device's rows into microbatches (rows stay on their device) and sums gradients with the
full batch's loss normaliser, so any `num_microbatches` gives the full-batch gradient.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Optional

import flax
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from synthpre_jax.errors import UserError
from synthpre_jax.models.model import EncoderDecoderModel, loss_weights_and_normalizer
from synthpre_jax.partitioning import PjitPartitioner

State = dict


@gin.configurable
class Trainer:
    """Holds the compiled steps for one model on one mesh."""

    def __init__(self, model: EncoderDecoderModel, partitioner: PjitPartitioner,
                 learning_rate_fn: Callable, num_microbatches: Optional[int] = None,
                 random_seed: int = 0, skip_nonfinite: bool = False):
        self.model = model
        # True: a step whose loss or update is NaN/inf keeps the old params and optimizer state
        # (the step counter still advances, so the data position and dropout stay aligned).
        self.skip_nonfinite = bool(skip_nonfinite)
        self.partitioner = partitioner
        self.learning_rate_fn = learning_rate_fn
        self.num_microbatches = int(num_microbatches or 1)
        if self.num_microbatches < 1:
            raise UserError("num_microbatches must be >= 1")
        if model.optimizer_def is None:
            raise UserError("the model has no optimizer: bind EncoderDecoderModel.optimizer_def "
                            "(e.g. @optimizers.Adafactor())")
        self.tx: optax.GradientTransformation = model.optimizer_def.make(learning_rate_fn)
        key = jax.random.key(random_seed)
        self.init_key, self.dropout_key = jax.random.split(key)
        self._train_step = None
        self._eval_step = None

    # ---- state ---------------------------------------------------------------------------------
    def abstract_state(self, input_shapes: Mapping[str, tuple]) -> tuple[State, State]:
        """(ShapeDtypeStruct tree, NamedSharding tree) of the train state, without allocating."""
        with self.partitioner.context():
            boxed = jax.eval_shape(lambda k: self.model.get_initial_variables(k, input_shapes), self.init_key)
        if "params" not in boxed:
            raise UserError("the model produced no parameters")
        param_shardings = self.partitioner.param_shardings(boxed["params"])
        params_abs = nn.unbox(boxed["params"])
        opt_abs = jax.eval_shape(self.tx.init, params_abs)
        opt_shardings = self.partitioner.opt_state_shardings(opt_abs, params_abs, param_shardings)
        rep = self.partitioner.replicated()
        abstract = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": params_abs, "opt_state": opt_abs}
        shardings = {"step": rep, "params": param_shardings, "opt_state": opt_shardings}
        abstract = jax.tree_util.tree_map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
        return abstract, shardings

    def init_params(self, input_shapes: Mapping[str, tuple], shardings: State) -> Any:
        """Fresh parameters, created directly in their shardings (same values on any mesh)."""
        fn = jax.jit(lambda k: nn.unbox(self.model.get_initial_variables(k, input_shapes)["params"]),
                     out_shardings=shardings["params"])
        with self.partitioner.context():
            return fn(self.init_key)

    def state_from_params(self, params: Any, shardings: State) -> State:
        """A step-0 state around given params (fresh optimizer state)."""
        init = jax.jit(self.tx.init, out_shardings=shardings["opt_state"])
        with self.partitioner.context():
            opt_state = init(params)
        step = jax.device_put(jnp.zeros((), jnp.int32), shardings["step"])
        return {"step": step, "params": params, "opt_state": opt_state}

    # ---- steps ---------------------------------------------------------------------------------
    def _grads(self, params, batch, rng):
        model = self.model
        n = self.num_microbatches
        grad_fn = jax.value_and_grad(model.loss_fn, has_aux=True)
        if n == 1:
            (_, sums), grads = grad_fn(params, batch, rng)
            return grads, sums
        _, normalizer = loss_weights_and_normalizer(batch, model.loss_normalizing_factor)
        b = next(iter(batch.values())).shape[0]
        if b % n:
            raise UserError(f"batch size {b} is not divisible by num_microbatches={n}")
        data_spec = NamedSharding(self.partitioner.mesh, P("data"))

        def split(x):  # [B, ...] -> [n, B/n, ...] keeping each device's rows on that device
            x = x.reshape((b // n, n) + x.shape[1:])
            x = jnp.swapaxes(x, 0, 1)
            return jax.lax.with_sharding_constraint(x, NamedSharding(self.partitioner.mesh, P(None, "data")))

        micro = jax.tree_util.tree_map(split, dict(batch))

        def body(carry, xs):
            g_acc, s_acc = carry
            i, mb = xs
            mb = jax.tree_util.tree_map(lambda x: jax.lax.with_sharding_constraint(x, data_spec), mb)
            (_, sums), g = grad_fn(params, mb, jax.random.fold_in(rng, i), normalizer)
            return (jax.tree_util.tree_map(jnp.add, g_acc, g),
                    jax.tree_util.tree_map(jnp.add, s_acc, sums)), None

        zeros_g = jax.tree_util.tree_map(jnp.zeros_like, params)
        zeros_s = jax.tree_util.tree_map(
            lambda a: jnp.zeros(a.shape, a.dtype),
            jax.eval_shape(lambda: grad_fn(params, jax.tree_util.tree_map(lambda x: x[0], micro), rng, normalizer)[0][1]))
        (grads, sums), _ = jax.lax.scan(body, (zeros_g, zeros_s), (jnp.arange(n), micro))
        return grads, sums

    def _train_step_fn(self, state: State, batch: Mapping[str, jnp.ndarray]):
        rng = jax.random.fold_in(self.dropout_key, state["step"])
        grads, sums = self._grads(state["params"], batch, rng)
        updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        sums = dict(sums)
        sums["learning_rate"] = self.learning_rate_fn(state["step"])
        # Non-finite gradients always give a non-finite update (the optimizers here divide by
        # or scale with them), and the update is what would corrupt the state, so loss + update
        # are checked. The host reads the flag; checkpoints of flagged states are never written.
        finite = _all_finite((sums["loss"], updates))
        sums["nonfinite"] = 1.0 - finite.astype(jnp.float32)
        if self.skip_nonfinite:
            keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
            params = jax.tree_util.tree_map(keep, params, state["params"])
            opt_state = jax.tree_util.tree_map(keep, opt_state, state["opt_state"])
        return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, sums

    def compile_train_step(self, shardings: State) -> Callable:
        if self._train_step is None:
            batch_sh = self.partitioner.batch_sharding()
            self._train_step = jax.jit(self._train_step_fn, in_shardings=(shardings, batch_sh),
                                       out_shardings=(shardings, self.partitioner.replicated()),
                                       donate_argnums=(0,))
        return self._train_step

    def train_step(self, state: State, batch: Mapping[str, jnp.ndarray], shardings: State):
        with self.partitioner.context():
            return self.compile_train_step(shardings)(state, batch)

    def eval_step(self, params: Any, batch: Mapping[str, jnp.ndarray], param_shardings: Any) -> dict:
        if self._eval_step is None:
            self._eval_step = jax.jit(self.model.eval_fn,
                                      in_shardings=(param_shardings, self.partitioner.batch_sharding()),
                                      out_shardings=self.partitioner.replicated())
        with self.partitioner.context():
            return self._eval_step(params, batch)


def _all_finite(tree: Any) -> jnp.ndarray:
    """A scalar bool: every floating value in `tree` is finite."""
    flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
             if jnp.issubdtype(jnp.result_type(x), jnp.floating)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)


def model_info(params: Any, shardings: Any) -> str:
    """T5X-like model-info.txt: every parameter with shape, dtype, size and sharding."""
    flat = flax.traverse_util.flatten_dict(params, sep="/")
    flat_sh = flax.traverse_util.flatten_dict(shardings, sep="/", is_leaf=lambda p, x: isinstance(x, NamedSharding))
    lines, total = [], 0
    for k in sorted(flat):
        v = flat[k]
        n = int(functools.reduce(lambda a, b: a * b, v.shape, 1))
        total += n
        spec = getattr(flat_sh.get(k), "spec", None)
        lines.append(f"Variable {k:70s} size {n:<12d} shape {str(tuple(v.shape)):20s} dtype {v.dtype} partition spec {spec}")
    lines.append(f"Total number of parameters: {total}")
    return "\n".join(lines) + "\n"
