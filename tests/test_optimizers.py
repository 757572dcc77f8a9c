"""Adafactor against an independent NumPy implementation of Shazeer & Stern's algorithm in its
matrix form (row/column second-moment factors), as T5X configures it; T5X's LR factors."""
import numpy as np
import jax
import jax.numpy as jnp
import optax
import pytest

from synthpre_jax.errors import UserError
from synthpre_jax.optimizers import Adafactor, AdamW, create_learning_rate_scheduler


def reference_adafactor(params, grads_seq, lr_fn, decay_exp=0.8, eps1=1e-30, eps2=1e-3,
                        clip=1.0, min_dim=128):
    params = {k: v.astype(np.float64).copy() for k, v in params.items()}
    state = {}
    for i, grads in enumerate(grads_seq):
        beta2 = 1.0 - (i + 1.0) ** (-decay_exp)
        for k, g in grads.items():
            g = g.astype(np.float64)
            g2 = g * g + eps1
            p = params[k]
            if g.ndim == 2 and min(g.shape) >= min_dim:
                r = state.get((k, "r"), np.zeros(g.shape[0]))
                c = state.get((k, "c"), np.zeros(g.shape[1]))
                # Factor along the larger dim: rows are the smaller dim index's statistics.
                small, large = (0, 1) if g.shape[0] <= g.shape[1] else (1, 0)
                r = beta2 * r + (1 - beta2) * g2.mean(axis=1)
                c = beta2 * c + (1 - beta2) * g2.mean(axis=0)
                state[(k, "r")], state[(k, "c")] = r, c
                if small == 0:   # v_hat_ij = R_i C_j / mean(R)
                    vhat = np.outer(r, c) / r.mean()
                else:            # v_hat_ij = R_i C_j / mean(C)
                    vhat = np.outer(r, c) / c.mean()
            else:
                v = state.get((k, "v"), np.zeros(g.shape))
                v = beta2 * v + (1 - beta2) * g2
                state[(k, "v")] = v
                vhat = v
            u = g / np.sqrt(vhat)
            u = u / max(1.0, np.sqrt(np.mean(u * u)) / clip)
            scale = max(np.sqrt(np.mean(p * p)), eps2)
            params[k] = p - lr_fn(i) * scale * u
    return params


@pytest.mark.parametrize("shape_big", [(128, 256), (256, 128)])
def test_adafactor_matches_reference(shape_big):
    rng = np.random.default_rng(0)
    shapes = {"big": shape_big, "small2d": (8, 32), "vec": (64,), "tiny_vec": (3,)}
    params = {k: rng.normal(size=s).astype(np.float32) * (1e-4 if k == "tiny_vec" else 1.0) for k, s in shapes.items()}
    grads_seq = [{k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()} for _ in range(4)]
    lr_fn = lambda i: 0.01 / np.sqrt(max(i, 3))
    tx = Adafactor().make(lambda step: 0.01 / jnp.sqrt(jnp.maximum(step, 3)))
    p = jax.tree_util.tree_map(jnp.asarray, params)
    state = tx.init(p)
    for g in grads_seq:
        upd, state = tx.update(jax.tree_util.tree_map(jnp.asarray, g), state, p)
        p = optax.apply_updates(p, upd)
    ref = reference_adafactor(params, grads_seq, lr_fn)
    for k in shapes:
        np.testing.assert_allclose(np.asarray(p[k]), ref[k], rtol=2e-5, atol=1e-7, err_msg=k)


def test_adafactor_no_momentum_state_is_factored():
    tx = Adafactor().make(lambda s: 1e-3)
    state = tx.init({"w": jnp.zeros((512, 2048)), "b": jnp.zeros((512,))})
    sizes = sorted(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state) if hasattr(x, "shape"))
    # factored: 512 + 2048 row/col stats, never a full 512x2048 second moment
    assert 512 * 2048 not in sizes


def test_rsqrt_decay_is_papers_pretraining_schedule():
    f = create_learning_rate_scheduler(factors="rsqrt_decay", base_learning_rate=1.0, warmup_steps=10000)
    assert float(f(0)) == pytest.approx(0.01)
    assert float(f(10000)) == pytest.approx(0.01)
    assert float(f(40000)) == pytest.approx(0.01 * np.sqrt(10000 / 40000))


def test_constant_and_products():
    f = create_learning_rate_scheduler(factors="constant", base_learning_rate=1e-3)
    assert float(f(123456)) == pytest.approx(1e-3)
    g = create_learning_rate_scheduler(factors="constant * linear_warmup * rsqrt_decay",
                                       base_learning_rate=2.0, warmup_steps=100)
    assert float(g(50)) == pytest.approx(2.0 * 0.5 / 10.0)
    assert float(g(400)) == pytest.approx(2.0 / 20.0)


def test_unknown_factor_is_user_error():
    with pytest.raises(UserError, match="rsqrt_dekay"):
        create_learning_rate_scheduler(factors="constant * rsqrt_dekay")


def test_adamw_reduces_quadratic():
    tx = AdamW(weight_decay=0.0).make(lambda s: 0.1)
    p = {"x": jnp.array([3.0, -2.0])}
    s = tx.init(p)
    for _ in range(100):
        g = jax.grad(lambda q: jnp.sum(q["x"] ** 2))(p)
        u, s = tx.update(g, s, p)
        p = optax.apply_updates(p, u)
    assert float(jnp.max(jnp.abs(p["x"]))) < 0.1
