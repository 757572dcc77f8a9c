"""The transform on sharded jax.Arrays: 8 simulated devices (4x2 mesh) vs one device.

The child process sees 8 CPU devices (XLA_FLAGS set before JAX is imported); it shards the
fresh tree, runs the transform and `initialize_params`, checks the output shardings and that
the compiled programs gather nothing, and saves the values. This process computes the same on
one device; the draws must be bit-identical.
"""
from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest

from conftest import run_simulated_devices
from test_weight_stats import flat, make_trees
from synthpre_jax import weight_stats as ws

SCHEMES = ("per_param_mean_std", "whole_model_scale", "per_layer_scale")

CHILD = textwrap.dedent("""
    import sys
    import jax, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from test_weight_stats import make_trees, flat
    from synthpre_jax import weight_stats as ws
    from synthpre_jax.init_modes import InitConfig, initialize_params

    assert jax.device_count() == 8, jax.devices()
    out_npz, ckpt = sys.argv[1], sys.argv[2]
    schemes = sys.argv[3].split(",")
    mesh = jax.make_mesh((4, 2), ("data", "model"))

    def spec(shape):
        axes = [ax if dim % n == 0 else None
                for dim, (ax, n) in zip(shape[-2:], (("data", 4), ("model", 2)))]
        return P(*axes) if len(shape) == 2 else P("model" if shape[0] % 2 == 0 else None)

    source, fresh = make_trees(seed=21)
    shardings = jax.tree_util.tree_map(lambda x: NamedSharding(mesh, spec(x.shape)), fresh)
    fresh_sharded = jax.tree_util.tree_map(jax.device_put, fresh, shardings)
    flat_sh = flat(shardings)
    results = {}
    for scheme in schemes:
        out = flat(ws.transform(source, fresh_sharded, scheme, 7))
        for k, v in out.items():
            assert v.sharding.is_equivalent_to(flat_sh[k], v.ndim), (k, v.sharding)
            results[f"{scheme}|{k}"] = np.asarray(v)
    # the programs work shard-locally: reductions all-reduce scalars, sampling gathers nothing
    k = "encoder/layers_0/mlp/wi/kernel"
    x = flat(fresh_sharded)[k]
    assert len(x.sharding.device_set) == 8 and x.addressable_shards[0].data.shape == (8, 32)
    with jax.enable_x64(True):
        texts = [ws._tensor_sum_parts.lower(x, bits=29).compile().as_text(),
                 ws._tensor_squared_deviation_parts.lower(
                     x, np.float32(0), np.float32(1), np.float32(-1), bits=29)
                 .compile().as_text()]
    keys = ws._keys_program("threefry2x32", NamedSharding(mesh, P()))(
        np.zeros(2, np.uint32), np.zeros((1, 2), np.uint32))
    for rule in ("N(0,sigma)", "N(mu,sigma)"):
        for donate in (False, True):
            # on CPU: the hash bits, then the normals in place (two programs)
            bits, finish = ws._sampler(rule, "float32", x.sharding, donate).programs
            texts.append(bits.lower(keys, np.int32(0), *((x,) if donate else ()),
                                    shape=x.shape).compile().as_text())
            raw = jax.ShapeDtypeStruct(x.shape, np.float32, sharding=x.sharding)
            texts.append(finish.lower(raw, np.float32(0), np.float32(1)).compile().as_text())
    assert not any("all-gather" in t for t in texts)
    assert "all-reduce" in texts[0]
    # initialize_params with the trainer's shardings
    for mode, extra in (("load", {}), ("weight_stats", dict(scheme="per_layer_scale", seed=3))):
        params, record = initialize_params(fresh_sharded, InitConfig(
            mode=mode, checkpoint_path=ckpt, **extra), shardings,
            donate_fresh=mode == "weight_stats")  # the last use of fresh_sharded
        for k, v in flat(params).items():
            assert v.sharding.is_equivalent_to(flat_sh[k], v.ndim), (mode, k)
            results[f"init:{mode}|{k}"] = np.asarray(v)
    np.savez(out_npz, **results)
    print("child ok")
""")


@pytest.fixture(scope="module")
def child(tmp_path_factory):
    checkpoints = pytest.importorskip("synthpre_jax.checkpoints")
    tmp = tmp_path_factory.mktemp("ws_sharding")
    source, _ = make_trees(seed=21)
    ckpt = checkpoints.save_params_checkpoint(str(tmp / "src"), source)
    out = tmp / "child.npz"
    proc = run_simulated_devices([sys.executable, "-c", CHILD, str(out), ckpt, ",".join(SCHEMES)], 8,
                                 fast_compile=False)  # compared bit for bit with this process
    assert proc.returncode == 0 and "child ok" in proc.stdout, proc.stderr[-3000:]
    with np.load(out) as z:
        return {k: z[k] for k in z.files}, ckpt


@pytest.mark.parametrize("scheme", SCHEMES)
def test_same_draws_on_one_and_eight_devices(child, scheme):
    results, _ = child
    source, fresh = make_trees(seed=21)
    single = flat(ws.transform(source, fresh, scheme, 7))
    assert len(single) == 131
    for k, v in single.items():
        np.testing.assert_array_equal(results[f"{scheme}|{k}"], np.asarray(v), err_msg=k)


def test_initialize_params_sharded_matches_single_device(child):
    from synthpre_jax.init_modes import InitConfig, initialize_params

    results, ckpt = child
    source, fresh = make_trees(seed=21)
    src = flat(source)
    for k, v in src.items():
        np.testing.assert_array_equal(results[f"init:load|{k}"], v, err_msg=k)
    params, _ = initialize_params(fresh, InitConfig(mode="weight_stats", checkpoint_path=ckpt,
                                                    scheme="per_layer_scale", seed=3))
    for k, v in flat(params).items():
        np.testing.assert_array_equal(results[f"init:weight_stats|{k}"], np.asarray(v), err_msg=k)
    assert not np.array_equal(np.asarray(flat(params)["encoder/layers_1/mlp/wo/kernel"]),
                              src["encoder/layers_1/mlp/wo/kernel"])
