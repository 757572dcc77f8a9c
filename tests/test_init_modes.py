"""Fine-tuning initialisation modes (gin `InitConfig`, gin_configs/init/*.gin) on real
checkpoints written by `checkpoints.save_params_checkpoint`.

Trees have the network's T5X names and shapes (`t5_param_shapes`, checked against the network
in test_weight_stats.py) and are built with NumPy, which keeps these tests free of compiles."""
from __future__ import annotations

import json
from pathlib import Path

import gin
import numpy as np
import pytest
from flax import traverse_util

from synthpre_jax.errors import UserError
from synthpre_jax.init_modes import MODES, InitConfig, initialize_params
from synthpre_jax.weight_stats_groups import resolve_scheme, t5_param_shapes

checkpoints = pytest.importorskip("synthpre_jax.checkpoints")

INIT_DIR = Path(__file__).resolve().parents[1] / "gin_configs" / "init"
TINY = dict(vocab_size=40, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
            num_encoder_layers=2, num_decoder_layers=2)
TINY_11 = dict(TINY, gated=True, tied=False)


def flat(tree):
    return traverse_util.flatten_dict(tree, sep="/")


def model(seed, **overrides):
    """A freshly initialised-looking tree on device: norms 1, other tensors N(0, 0.1)."""
    import jax.numpy as jnp

    rng = np.random.default_rng(seed)
    shapes = t5_param_shapes(**dict(TINY, **overrides))
    return traverse_util.unflatten_dict(
        {k: jnp.ones(s) if "norm" in k else jnp.asarray(rng.normal(0, 0.1, s), jnp.float32)
         for k, s in shapes.items()}, sep="/")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """(checkpoint path, its params as NumPy) of a tiny T5 1.0 trained-looking tree."""
    params = jax_to_numpy(model(1))
    rng = np.random.default_rng(0)
    for k in params:  # give the norms non-trivial statistics, as in a trained model
        if "norm" in k:
            params[k] = rng.normal(0.6, 0.2, params[k].shape).astype(np.float32)
    tree = traverse_util.unflatten_dict(params, sep="/")
    path = checkpoints.save_params_checkpoint(str(tmp_path_factory.mktemp("src") / "ckpt"), tree)
    return path, params


def jax_to_numpy(tree):
    return {k: np.asarray(v) for k, v in flat(tree).items()}


def test_from_scratch_returns_the_fresh_params():
    fresh = model(2)
    params, record = initialize_params(fresh, InitConfig(mode="from_scratch"))
    assert params is fresh and record == {"mode": "from_scratch"}


def test_load_restores_everything(source):
    path, src = source
    fresh = model(2)
    params, record = initialize_params(fresh, InitConfig(mode="load", checkpoint_path=path))
    out = flat(params)
    for k, v in src.items():
        np.testing.assert_array_equal(np.asarray(out[k]), v, err_msg=k)
        assert out[k].dtype == flat(fresh)[k].dtype
    assert record["n_loaded"] == record["n_params"] == len(src) and record["kept_fresh"] == []
    json.dumps(record)


def test_load_all_but_embed_keeps_the_fresh_embedding(source):
    path, src = source
    fresh = model(2)
    params, record = initialize_params(
        fresh, InitConfig(mode="load_all_but_embed", checkpoint_path=path))
    out, new = flat(params), flat(fresh)
    assert out["token_embedder/embedding"] is new["token_embedder/embedding"]
    assert not np.array_equal(np.asarray(new["token_embedder/embedding"]),
                              src["token_embedder/embedding"])
    for k, v in src.items():
        if k != "token_embedder/embedding":
            np.testing.assert_array_equal(np.asarray(out[k]), v, err_msg=k)
    assert record["kept_fresh"] == ["token_embedder/embedding"]


def test_load_all_but_embed_untied_and_other_vocabulary(tmp_path):
    src = jax_to_numpy(model(1, **TINY_11))
    path = checkpoints.save_params_checkpoint(str(tmp_path / "ckpt"),
                                              traverse_util.unflatten_dict(src, sep="/"))
    fresh = model(2, **dict(TINY_11, vocab_size=64))
    params, record = initialize_params(
        fresh, InitConfig(mode="load_all_but_embed", checkpoint_path=path))
    out, new = flat(params), flat(fresh)
    assert record["kept_fresh"] == ["decoder/logits_dense/kernel", "token_embedder/embedding"]
    for k in record["kept_fresh"]:
        assert out[k] is new[k] and out[k].shape[-1 if "logits" in k else 0] == 64
    np.testing.assert_array_equal(np.asarray(out["encoder/layers_1/mlp/wi_1/kernel"]),
                                  src["encoder/layers_1/mlp/wi_1/kernel"])
    with pytest.raises(UserError, match=r"token_embedder/embedding \(40, 16\) vs \(64, 16\)"):
        initialize_params(fresh, InitConfig(mode="load", checkpoint_path=path))


def test_mismatched_model_lists_the_paths(source):
    path, _ = source
    fresh = model(2, num_encoder_layers=3)
    for mode in ("load", "load_all_but_embed"):
        with pytest.raises(UserError) as e:
            initialize_params(fresh, InitConfig(mode=mode, checkpoint_path=path))
        msg = str(e.value)
        assert "\n" not in msg and "missing from the checkpoint" in msg
        assert "encoder/layers_2/mlp/wo/kernel" in msg


def _parse(files, bindings=()):
    gin.clear_config()
    gin.parse_config_files_and_bindings([str(INIT_DIR / f) for f in files], list(bindings))
    try:
        return InitConfig()
    finally:
        gin.clear_config()


def test_every_init_gin_file_gives_a_valid_config():
    files = sorted(p.name for p in INIT_DIR.glob("*.gin"))
    assert {"from_scratch.gin", "load.gin", "load_all_but_embed.gin",
            "constant_preattn_ln.gin"} <= set(files)
    schemes = set()
    for name in files:
        cfg = _parse([name], ["INITIAL_CHECKPOINT_PATH = '/ckpt'"])
        assert cfg.mode in MODES, name
        if cfg.mode in ("load", "load_all_but_embed", "weight_stats"):
            assert cfg.checkpoint_path == "/ckpt", name
        if cfg.mode == "weight_stats":
            if cfg.scheme != "custom":
                assert cfg.scheme == name[:-4]
                assert resolve_scheme(cfg.scheme).name == cfg.scheme
            schemes.add(cfg.scheme)
    assert len(schemes - {"custom"}) == 9
    cfg = _parse(["per_param_scale.gin"], ["INITIAL_CHECKPOINT_PATH = None",
                                           "INIT_SOURCE_CHECKPOINT = '/other'"])
    assert cfg.checkpoint_path == "/other"


def test_weight_stats_mode_from_its_gin_file(source):
    path, src = source
    cfg = _parse(["per_layer_scale.gin"], [f"INITIAL_CHECKPOINT_PATH = '{path}'"])
    fresh = model(2)
    params, record = initialize_params(fresh, cfg)
    out = flat(params)
    norms = ["encoder/layers_1/pre_attention_layer_norm/scale",
             "encoder/layers_1/pre_mlp_layer_norm/scale"]
    mu = np.concatenate([src[k].astype(np.float64) for k in norms]).mean()
    for k in norms:
        np.testing.assert_allclose(np.asarray(out[k]), mu, rtol=1e-6)
    assert out["token_embedder/embedding"] is flat(fresh)["token_embedder/embedding"]
    assert record["scheme"] == "per_layer_scale"
    assert record["paper_init_id"] == "per_layer_grouping___init_scale"
    assert record["seed"] == 0 and record["kept_fresh"] == ["token_embedder/embedding"]
    assert len(record["groups"]) == 2 * 4 + 4 and record["n_resampled"] == len(src) - 1
    json.loads(json.dumps(record))
    again, _ = initialize_params(fresh, cfg)
    other, _ = initialize_params(fresh, InitConfig(**dict(vars(cfg), seed=1)))
    k = "decoder/layers_0/mlp/wi/kernel"
    assert np.array_equal(np.asarray(flat(again)[k]), np.asarray(out[k]))
    assert not np.array_equal(np.asarray(flat(other)[k]), np.asarray(out[k]))


@pytest.mark.parametrize("value", ["-0.5", "1e-3", "0.4"])
def test_constant_preattn_ln_from_its_gin_file(value):
    cfg = _parse(["constant_preattn_ln.gin"], [f"PRE_ATTN_LN_VALUE = {value}"])
    fresh = model(2)
    params, record = initialize_params(fresh, cfg)
    out = flat(params)
    assert record["n_set"] == 2 + 2 * 2 and record["value"] == float(value)
    for k in record["paths"]:
        assert np.all(np.asarray(out[k]) == np.float32(value)), k
    assert np.all(np.asarray(out["decoder/layers_1/pre_mlp_layer_norm/scale"]) == 1.0)


def test_finetune_gin_with_an_init_file():
    """runs/finetune.gin binds the path and seed; an init/ file picks the mode."""
    from synthpre_jax import gin_utils, train

    train._register_configurables()
    gin.clear_config()
    try:
        gin_utils.parse_gin(["runs/finetune.gin", "init/per_layer_scale.gin"],
                            ["INITIAL_CHECKPOINT_PATH = '/ckpt'", "RANDOM_SEED = 5"])
        cfg = InitConfig()
    finally:
        gin.clear_config()
    assert (cfg.mode, cfg.scheme, cfg.checkpoint_path, cfg.seed) == (
        "weight_stats", "per_layer_scale", "/ckpt", 5)


def test_bad_configs_are_one_line_errors(source, tmp_path):
    path, _ = source
    fresh = model(2)
    bad = [
        (InitConfig(mode="load_all"), "unknown InitConfig.mode 'load_all'"),
        (InitConfig(mode="load"), "needs a source checkpoint"),
        (InitConfig(mode="weight_stats", checkpoint_path=path), "needs InitConfig.scheme"),
        (InitConfig(mode="weight_stats", checkpoint_path=str(tmp_path / "nothing"),
                    scheme="per_param_scal"), "unknown weight-stats scheme"),
        (InitConfig(mode="constant_preattn_ln"), "needs InitConfig.value"),
        (InitConfig(mode="constant_preattn_ln", value="high"), "must be a number"),
        (InitConfig(mode="load", checkpoint_path=str(tmp_path / "nothing")), "does not exist"),
        (InitConfig(mode="weight_stats", checkpoint_path=path, scheme="mlp_scale",
                    seed="x"), "seed must be an integer"),
    ]
    for cfg, match in bad:
        with pytest.raises(UserError, match=match) as e:
            initialize_params(fresh, cfg)
        assert "\n" not in str(e.value)
