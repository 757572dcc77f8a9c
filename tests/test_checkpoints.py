"""Orbax save/restore/resume, damaged-checkpoint skipping, sharded restore, params-only loads.

References are the saved values themselves (bit-for-bit), hand-written expectations for the
assignment map, and orbax/TensorStore-independent facts (files on disk, shapes, shardings).
"""
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import run_simulated_devices, subprocess_env

from synthpre_jax import checkpoints as C
from synthpre_jax.checkpoint_utils import checkpoint_problem, tree_paths
from synthpre_jax.errors import UserError


def _params(seed=0, vocab=64, emb=48):
    rng = np.random.default_rng(seed)
    return {
        "token_embedder": {"embedding": jnp.asarray(rng.normal(size=(vocab, emb)), jnp.float32)},
        "encoder": {
            "layers_0": {"attention": {"query": {"kernel": jnp.asarray(rng.normal(size=(emb, 32)), jnp.float32)}},
                         "pre_attention_layer_norm": {"scale": jnp.ones((emb,), jnp.float32)}},
            "relpos_bias": {"rel_embedding": jnp.asarray(rng.normal(size=(4, 32)), jnp.bfloat16)},
        },
    }


def _state(seed=0, step=7):
    params = _params(seed)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adafactor(1e-2))
    opt_state = tx.init(params)
    # make the optimizer state non-trivial so that restoring zeros would be caught
    _, opt_state = tx.update(jax.tree_util.tree_map(jnp.ones_like, params), opt_state, params)
    return {"step": jnp.asarray(step, jnp.int32), "params": params, "opt_state": opt_state}


def _abstract(state):
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def _bits(x):
    a = np.asarray(x)
    return a.view(np.uint8) if a.ndim else np.frombuffer(a.tobytes(), np.uint8)


def _assert_identical(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_leaves(b)):
        assert x.dtype == y.dtype, path
        assert np.array_equal(_bits(x), _bits(y)), path


def _manager(tmp_path, name="run", **kw):
    kw.setdefault("async_save", False)
    return C.CheckpointManager(str(tmp_path / name), C.SaveCheckpointConfig(**kw))


def test_round_trip_is_bit_identical_with_t5x_layout(tmp_path):
    state = _state()
    with _manager(tmp_path, period=1) as m:
        assert m.save(7, state)
        m.wait_until_finished()
        restored = m.restore(7, _abstract(state))
    _assert_identical(restored, state)
    assert int(restored["step"]) == 7 and isinstance(restored["params"]["encoder"]["relpos_bias"]["rel_embedding"], jax.Array)
    step_dir = tmp_path / "run" / "checkpoint_7"
    assert (step_dir / "state" / "_METADATA").is_file()
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith("checkpoint")) == ["checkpoint_7"]


def test_period_force_and_no_overwrite(tmp_path):
    state = _state()
    with _manager(tmp_path, period=5) as m:
        assert [m.save(s, state) for s in (1, 3, 5, 6)] == [False, False, True, False]
        assert m.save(6, state, force=True)
        assert not m.save(5, state, force=True)   # exists: never overwritten
        assert m.all_steps() == [5, 6]
        assert m.latest_step() == 6


def test_keep_n(tmp_path):
    state = _state()
    with _manager(tmp_path, period=1, keep=2) as m:
        for s in range(1, 6):
            assert m.save(s, state)
        m.wait_until_finished()
        assert m.all_steps() == [4, 5]
    on_disk = sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith("checkpoint"))
    assert on_disk == ["checkpoint_4", "checkpoint_5"]


def test_async_save_survives_donation_then_restores(tmp_path):
    """The train step donates the state right after save(): the write must use the old values."""
    big = {"step": jnp.asarray(3, jnp.int32),
           "params": {"w": jnp.asarray(np.random.default_rng(1).normal(size=(512, 1024)), jnp.float32)}}
    expected = jax.tree_util.tree_map(np.array, big)
    bump = jax.jit(lambda s: jax.tree_util.tree_map(lambda x: x + 1, s), donate_argnums=0)
    with _manager(tmp_path, period=1, async_save=True) as m:
        abstract = _abstract(big)
        assert m.save(3, big)
        big = bump(big)
        big = bump(big)
        jax.block_until_ready(big)
        m.wait_until_finished()
        restored = m.restore(3, abstract)
    _assert_identical(restored, expected)
    assert not [p for p in (tmp_path / "run").iterdir() if "tmp" in p.name]


def test_new_manager_resumes_latest(tmp_path):
    state = _state()
    with _manager(tmp_path, period=2) as m:
        m.save(2, state)
        m.save(4, _state(seed=1, step=4))
    with _manager(tmp_path) as m2:
        assert m2.latest_step() == 4
        restored = m2.restore(4, _abstract(state))
    _assert_identical(restored, _state(seed=1, step=4))


def _truncate_largest_data_file(step_dir: Path) -> None:
    files = [p for p in step_dir.rglob("*") if p.is_file() and p.parent.name == "d"]
    biggest = max(files, key=lambda p: p.stat().st_size)
    with open(biggest, "r+b") as f:
        f.truncate(biggest.stat().st_size // 2)


DAMAGE = {
    "truncated_data": _truncate_largest_data_file,
    "deleted_data": lambda d: [p.unlink() for p in d.rglob("*") if p.is_file() and p.parent.name == "d"],
    "deleted_manifest": lambda d: (d / "state" / "manifest.ocdbt").unlink(),
    "deleted_metadata": lambda d: (d / "state" / "_METADATA").unlink(),
    "truncated_metadata": lambda d: open(d / "state" / "_METADATA", "r+b").truncate(20),
    "emptied": lambda d: [__import__("shutil").rmtree(d / "state")],
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_latest_step_skips_damaged_checkpoint(tmp_path, caplog, damage):
    state = _state()
    with _manager(tmp_path, period=1) as m:
        m.save(1, state)
        m.save(2, _state(seed=3, step=2))
    step_dir = tmp_path / "run" / "checkpoint_2"
    assert checkpoint_problem(step_dir) is None
    DAMAGE[damage](step_dir)
    assert checkpoint_problem(step_dir) is not None
    with caplog.at_level(logging.WARNING, logger="synthpre_jax.checkpoints"):
        with _manager(tmp_path) as m2:
            assert m2.all_steps() == [1, 2]
            assert m2.latest_step() == 1
            _assert_identical(m2.restore(1, _abstract(state)), state)
            if damage in ("truncated_data", "deleted_data", "deleted_manifest"):
                with pytest.raises(UserError, match="checkpoint_2"):
                    m2.restore(2, _abstract(state))
    assert any("damaged checkpoint" in r.message and "checkpoint_2" in r.message for r in caplog.records)
    assert C.load_params(str(tmp_path / "run"))["encoder"]["layers_0"]["attention"]["query"]["kernel"].shape == (48, 32)


def test_interrupted_save_is_invisible_and_cleaned(tmp_path):
    with _manager(tmp_path, period=1) as m:
        m.save(1, _state())
    tmp = tmp_path / "run" / "checkpoint_9.orbax-checkpoint-tmp-1234"
    (tmp / "state").mkdir(parents=True)
    (tmp / "state" / "junk").write_bytes(b"half")
    with _manager(tmp_path) as m2:
        assert m2.all_steps() == [1] and m2.latest_step() == 1
    assert not tmp.exists()


def test_restore_mismatch_names_paths_and_shapes(tmp_path):
    state = _state()
    with _manager(tmp_path, period=1) as m:
        m.save(1, state)
        wrong = _abstract(state)
        wrong["params"]["token_embedder"]["embedding"] = jax.ShapeDtypeStruct((65, 48), jnp.float32)
        with pytest.raises(UserError, match=r"params/token_embedder/embedding has shape \(64, 48\) "
                                            r"but the model expects \(65, 48\)"):
            m.restore(1, wrong)
        other_opt = _abstract({**state, "opt_state": optax.adam(1e-3).init(state["params"])})
        with pytest.raises(UserError, match="does not match this model/optimizer.*opt_state"):
            m.restore(1, other_opt)
        with pytest.raises(UserError, match="no checkpoint for step 3"):
            m.restore(3, _abstract(state))


def test_save_dtype_bfloat16_casts_params_only(tmp_path):
    state = _state()
    with _manager(tmp_path, period=1, dtype="bfloat16") as m:
        m.save(1, state)
    loaded = C.load_params(str(tmp_path / "run"))
    emb = np.asarray(state["params"]["token_embedder"]["embedding"])
    got = loaded["token_embedder"]["embedding"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, emb.astype(jnp.bfloat16).astype(np.float32))
    assert not np.array_equal(got, emb)


def test_bad_configs_are_user_errors():
    for kw in ({"period": 0}, {"keep": 0}, {"dtype": "int8"}):
        with pytest.raises(UserError):
            C.SaveCheckpointConfig(**kw)
    for kw in ({"mode": "all"}, {"assignment_map": [("a",)]}):
        with pytest.raises(UserError):
            C.RestoreCheckpointConfig(**kw)


# ------------------------------------------------------------------ assignment map, initial params
def test_apply_assignment_map_t5x_semantics():
    restored = {"encoder": {"layers_0": {"k": 1}, "layers_1": {"k": 2}}, "shared": {"k": 3}, "unused": 9}
    fresh = {"encoder": {"layers_0": {"k": -1}, "layers_1": {"k": -2}},
             "decoder": {"layers_0": {"k": -3}, "layers_1": {"k": -4}}, "shared": {"k": -5}, "new": -6}
    amap = [(r"decoder/layers_(\d+)/(.*)", r"encoder/layers_\1/\2"),   # groups
            (r"decoder/layers_1/.*", None),                           # never reached: first match wins
            (r"target/shared/(.*)", r"target/shared/\1"),             # T5X-style train-state paths
            (r"new", None)]
    out = C.apply_assignment_map(restored, fresh, amap)
    assert out == {"encoder": {"layers_0": {"k": 1}, "layers_1": {"k": 2}},
                   "decoder": {"layers_0": {"k": 1}, "layers_1": {"k": 2}}, "shared": {"k": 3}, "new": -6}
    out = C.apply_assignment_map(restored, fresh, [(r"encoder/.*", None)])
    assert out["encoder"] == fresh["encoder"] and out["shared"] == {"k": 3}
    assert out["decoder"] == fresh["decoder"]   # missing from restored: fresh kept (strictness is elsewhere)


def test_flatten_unflatten_round_trip():
    tree = {"a": {"b": {"kernel": 1}, "c": 2}, "d": 3}
    flat = C.flatten_params(tree)
    assert flat == {"a/b/kernel": 1, "a/c": 2, "d": 3}
    assert C.unflatten_params(flat) == tree
    assert C.unflatten_params(C.flatten_params(tree, sep="."), sep=".") == tree


def _fresh(seed=5, vocab=64):
    return jax.tree_util.tree_map(lambda x: jnp.zeros_like(x) - 1, _params(seed, vocab=vocab))


def test_restore_initial_params_strict_and_map(tmp_path, caplog):
    src = _params(0)
    ckpt = C.save_params_checkpoint(str(tmp_path / "init"), src, step=10)
    assert ckpt == str(tmp_path / "init" / "checkpoint_10")
    fresh = _fresh()
    fresh["decoder"] = {"layers_0": {"attention": {"query": {"kernel": jnp.zeros((48, 32), jnp.bfloat16)}}}}
    cfg = C.RestoreCheckpointConfig(path=ckpt)
    with pytest.raises(UserError, match="decoder/layers_0/attention/query/kernel"):
        C.restore_initial_params(cfg, fresh)
    amap = [(r"decoder/(.*)", r"encoder/\1"), (r".*relpos_bias.*", None)]
    out = C.restore_initial_params(C.RestoreCheckpointConfig(path=str(tmp_path / "init"), mode="latest",
                                                             assignment_map=amap), fresh)
    q = np.asarray(src["encoder"]["layers_0"]["attention"]["query"]["kernel"])
    assert out["decoder"]["layers_0"]["attention"]["query"]["kernel"].dtype == jnp.bfloat16   # fresh dtype
    np.testing.assert_array_equal(np.asarray(out["decoder"]["layers_0"]["attention"]["query"]["kernel"]),
                                  q.astype(jnp.bfloat16))
    np.testing.assert_array_equal(np.asarray(out["encoder"]["layers_0"]["attention"]["query"]["kernel"]), q)
    assert out["encoder"]["relpos_bias"]["rel_embedding"] is fresh["encoder"]["relpos_bias"]["rel_embedding"]
    with caplog.at_level(logging.WARNING, logger="synthpre_jax.checkpoints"):
        out = C.restore_initial_params(C.RestoreCheckpointConfig(path=ckpt, strict=False), fresh)
    assert out["decoder"] is not None and float(out["decoder"]["layers_0"]["attention"]["query"]["kernel"][0, 0]) == 0
    assert any("decoder/layers_0/attention/query/kernel keeps its fresh init" in r.message for r in caplog.records)


def test_restore_initial_params_shape_mismatch_and_fallback(tmp_path, caplog):
    ckpt = C.save_params_checkpoint(str(tmp_path / "init"), _params(0))
    fresh = _fresh(vocab=100)
    with pytest.raises(UserError, match=r"token_embedder/embedding has shape \(64, 48\).*\(100, 48\)"):
        C.restore_initial_params(C.RestoreCheckpointConfig(path=ckpt), fresh)
    out = C.restore_initial_params(C.RestoreCheckpointConfig(path=ckpt, strict=False), fresh)
    assert out["token_embedder"]["embedding"] is fresh["token_embedder"]["embedding"]
    missing = str(tmp_path / "nothing_here")
    with pytest.raises(UserError, match="no checkpoint at"):
        C.restore_initial_params(C.RestoreCheckpointConfig(path=missing), fresh)
    with caplog.at_level(logging.WARNING, logger="synthpre_jax.checkpoints"):
        assert C.restore_initial_params(C.RestoreCheckpointConfig(path=missing, fallback_to_scratch=True),
                                        fresh) is fresh
    assert any("from scratch" in r.message for r in caplog.records)
    (tmp_path / "empty_model_dir").mkdir()   # exists but holds no checkpoint: same as missing
    assert C.restore_initial_params(C.RestoreCheckpointConfig(path=str(tmp_path / "empty_model_dir"),
                                                              fallback_to_scratch=True), fresh) is fresh
    # a sequence of paths: the first one that exists is used
    out = C.restore_initial_params(C.RestoreCheckpointConfig(path=[missing, ckpt]), _fresh())
    np.testing.assert_array_equal(np.asarray(out["token_embedder"]["embedding"]),
                                  np.asarray(_params(0)["token_embedder"]["embedding"]))


def test_restore_initial_params_places_with_shardings(tmp_path):
    ckpt = C.save_params_checkpoint(str(tmp_path / "init"), _params(0))
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
    fresh = _fresh()
    shardings = jax.tree_util.tree_map(
        lambda x: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*(["model"] + [None] * (x.ndim - 1)))),
        fresh)
    out = C.restore_initial_params(C.RestoreCheckpointConfig(path=ckpt), fresh, shardings)
    for (path, x), s in zip(jax.tree_util.tree_flatten_with_path(out)[0], jax.tree_util.tree_leaves(shardings)):
        assert x.sharding == s, path


# ------------------------------------------------------------------ load_params autodetection
def test_load_params_formats(tmp_path):
    src = _params(2)
    expected = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), src)
    with _manager(tmp_path, period=1) as m:
        m.save(4, {"step": jnp.asarray(4, jnp.int32), "params": src,
                   "opt_state": optax.adafactor(1e-2).init(src)})
    for p in (tmp_path / "run", tmp_path / "run" / "checkpoint_4", tmp_path / "run" / "checkpoint_4" / "state"):
        _assert_identical(C.load_params(str(p)), expected)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="no checkpoint found"):
        C.load_params(str(tmp_path / "junk"))
    with pytest.raises(UserError, match="does not exist"):
        C.load_params(str(tmp_path / "missing"))


def test_load_params_hf_dir(tmp_path):
    hf = pytest.importorskip("synthpre_jax.models.hf_convert", reason="HF conversion not available")
    pytest.importorskip("safetensors")
    import flax.linen as nn
    from synthpre_jax.models.network import T5Config, Transformer
    cfg = T5Config(vocab_size=40, emb_dim=8, num_heads=2, head_dim=4, mlp_dim=16, num_encoder_layers=1,
                   num_decoder_layers=1, mlp_activations=("gelu", "linear"), logits_via_embedding=False)
    tokens = jnp.ones((1, 4), jnp.int32)
    params = Transformer(cfg).init(jax.random.PRNGKey(0), tokens, tokens, tokens, enable_dropout=False)["params"]
    params = jax.tree_util.tree_map(np.asarray, nn.unbox(params))
    hf.save_hf_checkpoint(params, cfg, str(tmp_path / "hf"))
    got = C.load_params(str(tmp_path / "hf"))
    assert C.flatten_params(got).keys() == C.flatten_params(params).keys()
    for k, v in C.flatten_params(params).items():
        np.testing.assert_array_equal(C.flatten_params(got)[k], v, err_msg=k)


# ------------------------------------------------------------------ 8 simulated devices
_SHARDED = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from synthpre_jax import checkpoints as C
    assert jax.device_count() == 8
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
    rng = np.random.default_rng(0)
    params = {"emb": rng.normal(size=(16, 8)).astype(np.float32), "wo": rng.normal(size=(8, 6)).astype(np.float32)}
    save_spec = {"emb": P("data", "model"), "wo": P(None, "model")}
    load_spec = {"emb": P("model", None), "wo": P("data", None)}
    put = lambda tree, spec: {k: jax.device_put(v, NamedSharding(mesh, spec[k])) for k, v in tree.items()}
    state = {"step": jax.device_put(jnp.int32(5), NamedSharding(mesh, P())), "params": put(params, save_spec)}
    state["opt_state"] = jax.jit(optax.adam(1e-3).init)(state["params"])
    m = C.CheckpointManager(sys.argv[1], C.SaveCheckpointConfig(period=5, async_save=True))
    m.save(5, state); m.wait_until_finished()
    target = {k: NamedSharding(mesh, load_spec[k]) for k in params}
    abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    abstract["params"] = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=target[k]) for k, v in params.items()}
    r = m.restore(m.latest_step(), abstract)
    m.close()
    out = {"sharding_ok": all(r["params"][k].sharding == target[k] for k in params),
           "values_ok": all(np.array_equal(np.asarray(r["params"][k]), params[k]) for k in params),
           "shard_shapes": {k: sorted({tuple(s.data.shape) for s in r["params"][k].addressable_shards}) for k in params},
           "opt_sharding_ok": r["opt_state"][0].mu["emb"].sharding == state["opt_state"][0].mu["emb"].sharding,
           "step": int(r["step"])}
    fresh = {k: jnp.zeros_like(v) for k, v in params.items()}
    init = C.restore_initial_params(C.RestoreCheckpointConfig(path=sys.argv[1]), fresh, target)
    out["init_sharding_ok"] = all(init[k].sharding == target[k] for k in params)
    out["init_values_ok"] = all(np.array_equal(np.asarray(init[k]), params[k]) for k in params)
    print("RESULT" + json.dumps(out))
""")


def test_restore_into_8_devices_4x2_mesh(tmp_path):
    proc = run_simulated_devices([sys.executable, "-c", _SHARDED, str(tmp_path / "run")], 8, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT"):])
    assert out == {"sharding_ok": True, "values_ok": True, "opt_sharding_ok": True, "step": 5,
                   "shard_shapes": {"emb": [[8, 8]], "wo": [[2, 6]]},
                   "init_sharding_ok": True, "init_values_ok": True}


def test_tree_paths_match_orbax_metadata_paths(tmp_path):
    """Namedtuple fields, tuple indices and dict keys give the same path strings as Orbax's metadata."""
    state = _state()
    with _manager(tmp_path, period=1) as m:
        m.save(1, state)
    stored = C._stored_tree(tmp_path / "run" / "checkpoint_1" / "state")
    stored_paths = {p for p, v in tree_paths(stored).items() if hasattr(v, "shape")}
    assert stored_paths == set(tree_paths(state))
    assert "opt_state/1/0/v_row/token_embedder/embedding" in stored_paths
    assert os.path.isdir(tmp_path / "run" / "checkpoint_1" / "state")


# ------------------------------------------------------------------ 2 processes on localhost
_TWO_HOSTS = textwrap.dedent("""
    import json, sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    port, pid, model_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=pid)
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from synthpre_jax import checkpoints as C
    from synthpre_jax.checkpoint_utils import checkpoint_problem
    assert jax.device_count() == 4 and jax.local_device_count() == 2
    mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "model"))
    full = {"w": np.arange(64 * 48, dtype=np.float32).reshape(64, 48) / 7, "b": np.arange(48, dtype=np.float32)}
    def make(spec):
        return {k: jax.make_array_from_callback(v.shape, NamedSharding(mesh, spec[k]), lambda i, v=v: v[i])
                for k, v in full.items()}
    state = {"step": jax.make_array_from_callback((), NamedSharding(mesh, P()), lambda i: np.int32(6)),
             "params": make({"w": P("data", "model"), "b": P("model")})}
    m = C.CheckpointManager(model_dir, C.SaveCheckpointConfig(period=3, async_save=True))
    saved = m.save(6, state)
    m.wait_until_finished()
    target = {"w": NamedSharding(mesh, P("model", None)), "b": NamedSharding(mesh, P())}
    abstract = {"step": jax.ShapeDtypeStruct((), np.int32, sharding=NamedSharding(mesh, P())),
                "params": {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=target[k]) for k, v in full.items()}}
    latest = m.latest_step()
    r = m.restore(latest, abstract)
    m.close()
    local_ok = all(np.array_equal(np.asarray(s.data), full[k][s.index])
                   for k in full for s in r["params"][k].addressable_shards)
    loaded = C.load_params(model_dir)
    print("RESULT" + json.dumps({"saved": saved, "latest": latest, "step": int(r["step"]),
                                 "problem": checkpoint_problem(f"{model_dir}/checkpoint_6"),
                                 "local_ok": local_ok, "sharding_ok": r["params"]["w"].sharding == target["w"],
                                 "load_params_ok": all(np.array_equal(loaded[k], full[k]) for k in full)}))
""")


def test_two_processes_save_and_restore(tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    root = str(Path(__file__).resolve().parents[1])
    procs = [subprocess.Popen([sys.executable, "-c", _TWO_HOSTS, str(port), str(i), str(tmp_path / "run")],
                              env=subprocess_env(2), cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        lines = [ln for ln in out.splitlines() if ln.startswith("RESULT")]
        assert p.returncode == 0 and lines, err[-3000:]
        outs.append(json.loads(lines[-1][len("RESULT"):]))
    expected = {"saved": True, "latest": 6, "step": 6, "problem": None, "local_ok": True, "sharding_ok": True,
                "load_params_ok": True}
    assert outs == [expected, expected]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoint_6" / "state").iterdir()
                  if p.name.startswith("ocdbt")) == ["ocdbt.process_0", "ocdbt.process_1"]
