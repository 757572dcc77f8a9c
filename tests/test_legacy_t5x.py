"""The legacy T5X checkpoint reader: T5X's own tiny test checkpoint, and TensorStore fixtures.

The reference for inline arrays is an independent decode of the msgpack file with the plain
`msgpack` package (no flax); TensorStore fixtures are written in T5X's on-disk layout and
compared with the arrays they were written from.
"""
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import ml_dtypes
import msgpack
import numpy as np
import pytest
import tensorstore as ts
from conftest import SHARED_DATA
from flax import serialization

from synthpre_jax import checkpoints as C
from synthpre_jax import legacy_t5x
from synthpre_jax.errors import UserError

TINY = SHARED_DATA / "t5x" / "test_t5_tiny.checkpoint_0"
needs_tiny = pytest.mark.skipif(not TINY.is_file(), reason=f"shared sample {TINY} is absent")


def _expected_tiny_shapes():
    """Param names/shapes of the tiny T5.1.1 model, written out from its config by hand."""
    emb, hd, mlp, vocab = 8, 4 * 3, 16, 32128
    attn = {f"{n}/kernel": (emb, hd) for n in ("query", "key", "value")} | {"out/kernel": (hd, emb)}
    mlp_p = {"mlp/wi_0/kernel": (emb, mlp), "mlp/wi_1/kernel": (emb, mlp), "mlp/wo/kernel": (mlp, emb)}
    out = {"token_embedder/embedding": (vocab, emb), "decoder/logits_dense/kernel": (emb, vocab)}
    for stack, norm in (("encoder", "encoder_norm"), ("decoder", "decoder_norm")):
        out[f"{stack}/{norm}/scale"] = (emb,)
        out[f"{stack}/relpos_bias/rel_embedding"] = (4, 32)
        for i in range(2):
            pre = f"{stack}/layers_{i}"
            out.update({f"{pre}/{k}": v for k, v in mlp_p.items()})
            out[f"{pre}/pre_mlp_layer_norm/scale"] = (emb,)
            if stack == "encoder":
                out.update({f"{pre}/attention/{k}": v for k, v in attn.items()})
                out[f"{pre}/pre_attention_layer_norm/scale"] = (emb,)
            else:
                for blk in ("self_attention", "encoder_decoder_attention"):
                    out.update({f"{pre}/{blk}/{k}": v for k, v in attn.items()})
                out[f"{pre}/pre_self_attention_layer_norm/scale"] = (emb,)
                out[f"{pre}/pre_cross_attention_layer_norm/scale"] = (emb,)
    return out


def _raw_decode(path):
    """Independent decode: flax's ndarray ext type is msgpack([shape, dtype, bytes]) under code 1."""
    def ext(code, data):
        if code == 1:
            shape, dtype, buf = msgpack.unpackb(data)
            return np.frombuffer(buf, dtype=np.dtype(dtype)).reshape(shape)
        if code == 3:
            dtype, buf = msgpack.unpackb(data)
            return np.frombuffer(buf, dtype=np.dtype(dtype))[0]
        raise AssertionError(code)
    return msgpack.unpackb(path.read_bytes(), ext_hook=ext, raw=False)


@needs_tiny
def test_reads_t5x_tiny_checkpoint():
    ckpt = legacy_t5x.read_legacy_checkpoint(TINY, optimizer_state=True)
    assert ckpt["version"] == 3 and ckpt["step"] == 0
    flat = C.flatten_params(ckpt["params"])
    assert {k: v.shape for k, v in flat.items()} == _expected_tiny_shapes()
    raw = C.flatten_params(_raw_decode(TINY)["optimizer"]["target"])
    for k, v in flat.items():
        assert v.dtype == np.float32
        np.testing.assert_array_equal(v, raw[k], err_msg=k)
    adafactor = C.flatten_params(ckpt["optimizer_state"]["param_states"])
    assert adafactor["token_embedder/embedding/v"].shape == (32128, 8)
    assert set(ckpt["optimizer_state"]) == {"param_states", "step"}
    # the RMS-norm scales of an untrained T5 are ones; embeddings are not
    assert np.all(flat["encoder/encoder_norm/scale"] == 1) and np.std(flat["token_embedder/embedding"]) > 0.1


@needs_tiny
def test_load_params_detects_legacy_file_and_dir(tmp_path):
    step_dir = tmp_path / "model" / "checkpoint_0"
    step_dir.mkdir(parents=True)
    os.symlink(TINY, step_dir / "checkpoint")   # the real layout, without copying the sample
    ref = C.flatten_params(legacy_t5x.read_legacy_checkpoint(TINY)["params"])
    for p in (TINY, step_dir, step_dir / "checkpoint", tmp_path / "model"):
        got = C.flatten_params(C.load_params(str(p)))
        assert got.keys() == ref.keys()
        for k in ref:
            np.testing.assert_array_equal(got[k], ref[k], err_msg=k)


@needs_tiny
def test_tiny_checkpoint_fits_network_and_runs_forward():
    network = pytest.importorskip("synthpre_jax.models.network", reason="network module not present")
    import flax.linen as nn
    cfg = network.T5Config(vocab_size=32128, emb_dim=8, num_heads=4, head_dim=3, mlp_dim=16,
                           mlp_activations=("gelu", "linear"), num_encoder_layers=2, num_decoder_layers=2,
                           logits_via_embedding=False, dropout_rate=0.0)
    model = network.Transformer(cfg)
    enc = jnp.array([[5, 9, 100, 31000, 1, 0]], jnp.int32)
    dec_in = jnp.array([[0, 7, 8, 9]], jnp.int32)
    dec_tgt = jnp.array([[7, 8, 9, 1]], jnp.int32)
    abstract = nn.unbox(jax.eval_shape(lambda k: model.init(k, enc, dec_in, dec_tgt, enable_dropout=False),
                                       jax.random.PRNGKey(0))["params"])
    fresh = jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype), abstract)
    params = C.restore_initial_params(C.RestoreCheckpointConfig(path=str(TINY)), fresh)   # strict: all paths, shapes
    flat_abs = {k: (v.shape, v.dtype) for k, v in C.flatten_params(abstract).items()}
    assert {k: (v.shape, v.dtype) for k, v in C.flatten_params(params).items()} == flat_abs
    logits = model.apply({"params": params}, enc, dec_in, dec_tgt, enable_dropout=False)
    assert logits.shape == (1, 4, 32128) and bool(jnp.all(jnp.isfinite(logits)))
    assert float(jnp.std(logits)) > 0


# ------------------------------------------------------------------ TensorStore fixtures
def _write_zarr(directory, rel, array, *, dtype=None, chunks=None):
    spec = {"driver": "zarr", "dtype": dtype or str(array.dtype),
            "kvstore": {"driver": "file", "path": str(directory / rel)},
            "metadata": {"chunks": list(chunks or array.shape), "compressor": {"id": "gzip", "level": 1},
                         "shape": list(array.shape)}}
    ts.open(spec, create=True, open=True).result().write(array).result()
    spec["kvstore"]["path"] = rel   # T5X stores the path relative to the checkpoint dir
    return spec


def _write_msgpack(path, tree):
    path.write_bytes(serialization.msgpack_serialize(tree))


@pytest.fixture
def ts_checkpoint(tmp_path):
    """A version-3 T5X checkpoint with TensorStore and inline leaves, in T5X's layout."""
    rng = np.random.default_rng(0)
    d = tmp_path / "model" / "checkpoint_5"
    d.mkdir(parents=True)
    arrays = {
        "encoder/layers_0/attention/query/kernel": rng.normal(size=(8, 6)).astype(np.float32),
        "token_embedder/embedding": rng.normal(size=(10, 8)).astype(ml_dtypes.bfloat16),
        "decoder/relpos_bias/rel_embedding": rng.normal(size=(2, 32)).astype(np.float32),
        "encoder/encoder_norm/scale": rng.normal(size=(8,)).astype(np.float32),
    }
    v = rng.normal(size=(8, 6)).astype(np.float32)
    q = _write_zarr(d, "target.encoder.layers_0.attention.query.kernel",
                    arrays["encoder/layers_0/attention/query/kernel"], chunks=(4, 6))
    e = _write_zarr(d, "target.token_embedder.embedding", arrays["token_embedder/embedding"], dtype="bfloat16")
    r = _write_zarr(d, "target.decoder.relpos_bias.rel_embedding", arrays["decoder/relpos_bias/rel_embedding"])
    r = {"driver": "zarr", "dtype": r["dtype"], "kvstore": {"driver": "file"}, "path": r["kvstore"]["path"],
         "metadata": r["metadata"]}   # tensorstore < 0.1.14 put the path at the top level
    s = _write_zarr(d, "state.param_states.encoder.layers_0.attention.query.kernel.v/", v)
    s["kvstore"]["driver"] = "gfile"      # as written by T5X on Google's file systems
    os.remove(d / "state.param_states.encoder.layers_0.attention.query.kernel.v" / ".zarray")  # spec still has it
    tree = {"version": 3, "optimizer": {
        "target": {"encoder": {"layers_0": {"attention": {"query": {"kernel": q}}},
                               "encoder_norm": {"scale": arrays["encoder/encoder_norm/scale"]}},
                   "decoder": {"relpos_bias": {"rel_embedding": r}},
                   "token_embedder": {"embedding": e}},
        "state": {"step": np.asarray(5, np.int32),
                  "param_states": {"encoder": {"layers_0": {"attention": {"query": {"kernel": {"v": s}}}}}}}}}
    _write_msgpack(d / "checkpoint", tree)
    return d, arrays, v


def test_tensorstore_leaves(ts_checkpoint):
    d, arrays, v = ts_checkpoint
    ckpt = legacy_t5x.read_legacy_checkpoint(d, optimizer_state=True)
    assert ckpt["step"] == 5 and ckpt["version"] == 3
    flat = C.flatten_params(ckpt["params"])
    assert flat.keys() == arrays.keys()
    for k, a in arrays.items():
        assert flat[k].dtype == a.dtype, k
        np.testing.assert_array_equal(flat[k], a, err_msg=k)
    np.testing.assert_array_equal(
        ckpt["optimizer_state"]["param_states"]["encoder"]["layers_0"]["attention"]["query"]["kernel"]["v"], v)
    loaded = C.flatten_params(C.load_params(str(d.parent)))   # model dir -> latest step, float32
    assert loaded["token_embedder/embedding"].dtype == np.float32
    np.testing.assert_array_equal(loaded["token_embedder/embedding"],
                                  arrays["token_embedder/embedding"].astype(np.float32))


def test_missing_tensorstore_dir_is_user_error(ts_checkpoint):
    d, _, _ = ts_checkpoint
    shutil.rmtree(d / "target.encoder.layers_0.attention.query.kernel")
    with pytest.raises(UserError, match="encoder/layers_0/attention/query/kernel.*whole checkpoint directory"):
        legacy_t5x.read_legacy_checkpoint(d)


def test_version2_bfloat16_stored_as_uint16(tmp_path):
    x = np.random.default_rng(1).normal(size=(4, 4)).astype(ml_dtypes.bfloat16)
    spec = _write_zarr(tmp_path, "target.w", x.view(np.uint16))
    _write_msgpack(tmp_path / "checkpoint", {"version": 2, "optimizer": {"target": {"w": spec},
                                                                          "state": {"step": np.int32(3)}}})
    got = legacy_t5x.read_legacy_checkpoint(tmp_path)["params"]["w"]
    assert got.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(got.view(np.uint16), x.view(np.uint16))


def test_t5x_orbax_placeholder_layout(tmp_path):
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    _write_zarr(tmp_path, "_optimizer.target.dense.kernel", w)
    _write_zarr(tmp_path, "_optimizer.state.step", np.asarray(9, np.int32))
    _write_msgpack(tmp_path / "checkpoint", {
        "_optimizer": {"target": {"dense": {"kernel": "PLACEHOLDER://_optimizer.target.dense.kernel"}},
                       "state": {"step": "PLACEHOLDER://_optimizer.state.step"}},
        "flax_mutables": None})
    ckpt = legacy_t5x.read_legacy_checkpoint(tmp_path / "checkpoint")
    assert ckpt["step"] == 9
    np.testing.assert_array_equal(ckpt["params"]["dense"]["kernel"], w)


def test_version0_flax_layout_reads_with_warning(tmp_path, caplog):
    _write_msgpack(tmp_path / "checkpoint", {"target": {"w": np.ones((2,), np.float32)},
                                             "state": {"step": np.int32(4)}})
    with caplog.at_level(logging.WARNING, logger="synthpre_jax.legacy_t5x"):
        ckpt = legacy_t5x.read_legacy_checkpoint(tmp_path)
    assert ckpt["version"] == 0 and ckpt["step"] == 4 and ckpt["params"]["w"].tolist() == [1, 1]
    assert any("version 0" in r.message for r in caplog.records)


def test_unrecognised_inputs_are_user_errors(tmp_path):
    (tmp_path / "tf").mkdir()
    (tmp_path / "tf" / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-0"\n')  # T5X TF format
    with pytest.raises(UserError, match="no legacy T5X checkpoint"):
        legacy_t5x.read_legacy_checkpoint(tmp_path / "tf")
    with pytest.raises(UserError, match="no checkpoint found"):
        C.load_params(str(tmp_path / "tf"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "checkpoint").write_bytes(b"\x82\xa7version\x03\xa9optim")   # truncated msgpack
    with pytest.raises(UserError, match="not a readable T5X checkpoint"):
        legacy_t5x.read_legacy_checkpoint(tmp_path / "bad")
    _write_msgpack(tmp_path / "bad" / "checkpoint", {"version": 3, "something": {}})
    with pytest.raises(UserError, match="version 3 .* not supported"):
        legacy_t5x.read_legacy_checkpoint(tmp_path / "bad")
