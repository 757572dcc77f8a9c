"""Tests of the T5 network: T5X parameter tree, init, masks, packing, cache, gin files.

References are independent of the code under test: the parameter list of
§3.2 of the release spec and T5X, the published T5 parameter counts
(t5-small 60,506,624; t5-base 222,903,552), the initialiser formulas, the
bucket formula worked by hand, and the model itself run unpacked / uncached.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synthpre_jax.errors import UserError
from synthpre_jax.models import hf_convert, layers
from synthpre_jax.models.network import T5Config, Transformer

GIN_DIR = Path(__file__).resolve().parents[1] / "gin_configs" / "models"
SMALL = T5Config()  # defaults are T5 1.0 small
SMALL_1_1 = dataclasses.replace(SMALL, num_heads=6, num_encoder_layers=8, num_decoder_layers=8,
                                mlp_dim=1024, mlp_activations=("gelu", "linear"),
                                logits_via_embedding=False)
TINY = T5Config(vocab_size=64, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64,
                num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0)


def _key(seed: int):
    """An 'rbg' PRNG key: same semantics, far cheaper XLA compiles than threefry on CPU."""
    return jax.random.key(seed, impl="rbg")


def _flat(tree) -> dict:
    return {"/".join(str(getattr(k, "key", k)) for k in path): v
            for path, v in jax.tree_util.tree_leaves_with_path(tree)}


def _abstract_variables(cfg: T5Config, length: int = 8):
    tokens = jax.ShapeDtypeStruct((2, length), jnp.int32)
    return jax.eval_shape(lambda t: Transformer(cfg).init(jax.random.key(0), t, t, t,
                                                          enable_dropout=False), tokens)


def _expected_names(cfg: T5Config) -> set[str]:
    """The T5X tree as listed in the release spec §3.2, written out by hand."""
    mlp = (["mlp/wi/kernel"] if len(cfg.mlp_activations) == 1
           else ["mlp/wi_0/kernel", "mlp/wi_1/kernel"]) + ["mlp/wo/kernel"]
    attn = lambda n: [f"{n}/{p}/kernel" for p in ("query", "key", "value", "out")]
    names = {"token_embedder/embedding", "encoder/relpos_bias/rel_embedding",
             "encoder/encoder_norm/scale", "decoder/relpos_bias/rel_embedding",
             "decoder/decoder_norm/scale"}
    for i in range(cfg.num_encoder_layers):
        for p in (["pre_attention_layer_norm/scale", "pre_mlp_layer_norm/scale"]
                  + attn("attention") + mlp):
            names.add(f"encoder/layers_{i}/{p}")
    for i in range(cfg.num_decoder_layers):
        for p in (["pre_self_attention_layer_norm/scale", "pre_cross_attention_layer_norm/scale",
                   "pre_mlp_layer_norm/scale"] + attn("self_attention")
                  + attn("encoder_decoder_attention") + mlp):
            names.add(f"decoder/layers_{i}/{p}")
    if not cfg.logits_via_embedding:
        names.add("decoder/logits_dense/kernel")
    return names


def test_t5_small_parameter_tree_matches_t5x():
    params = _flat(nn.unbox(_abstract_variables(SMALL)["params"]))
    assert set(params) == _expected_names(SMALL)
    assert len(params) == 131
    assert params["token_embedder/embedding"].shape == (32128, 512)
    assert params["encoder/relpos_bias/rel_embedding"].shape == (8, 32)
    assert params["decoder/layers_5/self_attention/query/kernel"].shape == (512, 512)
    assert params["encoder/layers_0/mlp/wi/kernel"].shape == (512, 2048)
    assert params["encoder/layers_0/mlp/wo/kernel"].shape == (2048, 512)
    assert all(v.dtype == jnp.float32 for v in params.values())
    assert sum(math.prod(v.shape) for v in params.values()) == 60_506_624  # published t5-small


def test_t5_1_1_small_parameter_tree():
    params = _flat(nn.unbox(_abstract_variables(SMALL_1_1)["params"]))
    assert set(params) == _expected_names(SMALL_1_1)
    assert len(params) == 1 + (1 + 8 * 9 + 1) + (1 + 8 * 14 + 1) + 1
    assert params["decoder/logits_dense/kernel"].shape == (512, 32128)
    assert params["decoder/layers_7/mlp/wi_1/kernel"].shape == (512, 1024)
    assert params["encoder/layers_0/attention/out/kernel"].shape == (384, 512)
    # hf_convert's independent shape table agrees with the module.
    assert {k: v.shape for k, v in params.items()} == hf_convert.param_shapes(SMALL_1_1)


def test_t5_base_parameter_count():
    base = T5Config(emb_dim=768, num_heads=12, num_encoder_layers=12, num_decoder_layers=12,
                    mlp_dim=3072)
    params = _flat(nn.unbox(_abstract_variables(base)["params"]))
    assert sum(math.prod(v.shape) for v in params.values()) == 222_903_552  # published t5-base


def test_logical_partition_specs_on_every_param():
    variables = _abstract_variables(SMALL_1_1)
    specs = _flat(nn.get_partition_spec(variables)["params"])
    expected = {
        "embedding": ("vocab", "embed"), "rel_embedding": ("heads", "relpos_buckets"),
        "scale": ("embed",), "query": ("embed", "joined_kv"), "key": ("embed", "joined_kv"),
        "value": ("embed", "joined_kv"), "out": ("joined_kv", "embed"),
        "wi_0": ("embed", "mlp"), "wi_1": ("embed", "mlp"), "wo": ("mlp", "embed"),
        "logits_dense": ("embed", "vocab"),
    }
    assert len(specs) == 190
    for name, spec in specs.items():
        parts = name.split("/")
        leaf = parts[-2] if parts[-1] == "kernel" else parts[-1]
        assert tuple(spec) == expected[leaf], name


def test_activation_constraints_follow_logical_rules():
    """Under T5X-style rules the lowered program pins the main activations."""
    cfg = dataclasses.replace(TINY, mlp_dim=48)  # distinct from vocab 64
    rules = (("batch", "data"), ("vocab", "model"), ("embed", None), ("mlp", "model"),
             ("heads", "model"), ("kv", None), ("joined_kv", "model"),
             ("relpos_buckets", None), ("length", None))
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
    abstract = _abstract_variables(cfg)
    tokens = jax.ShapeDtypeStruct((2, 8), jnp.int32)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        text = jax.jit(lambda v, t: Transformer(cfg).apply(v, t, t, t, enable_dropout=False)
                       ).lower(abstract, tokens).as_text()
    constraints = [line for line in text.splitlines() if "sharding_constraint" in line]
    expect = {
        "logits": '[{"data"}, {}, {"model"}]> : tensor<2x8x64xf32>',
        "mlp": '[{"data"}, {}, {"model"}]> : tensor<2x8x48xf32>',
        "heads": '[{"data"}, {}, {"model"}, {}]> : tensor<2x8x2x16xf32>',
        "embed": '[{"data"}, {}, {}]> : tensor<2x8x32xf32>',
    }
    for what, pattern in expect.items():
        assert any(pattern in line for line in constraints), what


def test_init_statistics_follow_t5x_initialisers():
    cfg = T5Config(vocab_size=2000, num_encoder_layers=1, num_decoder_layers=1)
    tokens = jnp.ones((1, 4), jnp.int32)
    init = jax.jit(lambda k: Transformer(cfg).init(k, tokens, tokens, tokens, enable_dropout=False))
    p = _flat(nn.unbox(init(_key(42))["params"]))
    std = lambda n: float(np.std(np.asarray(p[n])))
    rel = lambda a, b: abs(a - b) / b
    q = "encoder/layers_0/attention/query/kernel"
    assert rel(std(q), 1 / math.sqrt(512) / 8) < 0.02  # ≈ 0.0055, folded 1/sqrt(head_dim)
    for n in ("key", "value", "out"):
        assert rel(std(f"decoder/layers_0/self_attention/{n}/kernel"), 1 / math.sqrt(512)) < 0.02
    wi, wo = p["encoder/layers_0/mlp/wi/kernel"], p["encoder/layers_0/mlp/wo/kernel"]
    assert rel(std("encoder/layers_0/mlp/wi/kernel"), 1 / math.sqrt(512)) < 0.02
    assert rel(std("encoder/layers_0/mlp/wo/kernel"), 1 / math.sqrt(2048)) < 0.02
    # Truncated at 2 sigma of the unscaled normal (jax rescales by 1/0.8796).
    assert float(np.abs(wi).max()) <= 2 / 0.87962566 / math.sqrt(512) + 1e-6
    assert float(np.abs(wo).max()) <= 2 / 0.87962566 / math.sqrt(2048) + 1e-6
    # ... whereas q/k/v/out are plain normal: values beyond that bound exist.
    k = np.asarray(p["encoder/layers_0/attention/key/kernel"])
    assert float(np.abs(k).max()) > 2.5 / math.sqrt(512)
    assert rel(std("token_embedder/embedding"), 1.0) < 0.02
    relpos = np.asarray(p["encoder/relpos_bias/rel_embedding"])
    bound = math.sqrt(3 / 20)  # fan_avg of (8, 32) is 20
    assert float(np.abs(relpos).max()) <= bound and float(np.abs(relpos).max()) > 0.8 * bound
    for n in ("encoder/encoder_norm/scale", "decoder/layers_0/pre_mlp_layer_norm/scale"):
        np.testing.assert_array_equal(p[n], np.ones(512, np.float32))


def test_relative_position_buckets_hand_worked():
    rel = np.array([0, -1, 1, -7, -8, -15, -16, -31, -32, -127, -128, -1000, 5, 200])
    # Bidirectional (encoder): 16 buckets per direction, 8 exact, log up to 128.
    # n=8 -> 8 + floor(log(1)/log(16)*8) = 8; n=16 -> 8 + floor(0.25*8) = 10;
    # n=32 -> 8 + 4 = 12; n=127 -> 8 + floor(log(15.875)/log(16)*8) = 15; keys
    # after the query add 16.
    want_bi = [0, 1, 17, 7, 8, 9, 10, 11, 12, 15, 15, 15, 21, 31]
    got = layers.relative_position_bucket(rel, True, 32, 128)
    np.testing.assert_array_equal(got, want_bi)
    # Causal (decoder): 32 buckets, 16 exact; future keys are bucket 0.
    # n=16 -> 16; n=31 -> 16 + floor(log(31/16)/log(8)*16) = 16 + floor(5.09) = 21;
    # n=32 -> 16 + floor(log(2)/log(8)*16) = 21; n=127 -> 16 + floor(15.93) = 31.
    want_causal = [0, 1, 0, 7, 8, 15, 16, 21, 21, 31, 31, 31, 0, 0]
    got = layers.relative_position_bucket(rel, False, 32, 128)
    np.testing.assert_array_equal(got, want_causal)
    # The jnp path (used in the decode step) agrees with the numpy constant path.
    got_jnp = layers.relative_position_bucket(jnp.asarray(rel), False, 32, 128, xp=jnp)
    np.testing.assert_array_equal(np.asarray(got_jnp), want_causal)


ENC_LEN, DEC_LEN = 13, 11  # one shape for most tiny runs: jit compiles once


@pytest.fixture(scope="module")
def tiny_params():
    tokens = jnp.ones((1, 8), jnp.int32)
    init = jax.jit(lambda k: Transformer(TINY).init(k, tokens, tokens, tokens,
                                                    enable_dropout=False))
    return init(_key(0))["params"]


@jax.jit
def _apply_tiny(params, enc, dec, tgt, enc_seg=None, dec_seg=None, enc_pos=None, dec_pos=None):
    return Transformer(TINY).apply({"params": params}, enc, dec, tgt, enc_seg, dec_seg, enc_pos,
                                   dec_pos, enable_dropout=False)


def _example(rng, enc_len, dec_len, vocab=64):
    enc = rng.integers(2, vocab, enc_len)
    tgt = rng.integers(2, vocab, dec_len)
    return enc, np.concatenate([[0], tgt[:-1]]), tgt


def _pad(x, n):
    return np.pad(x, (0, n - len(x)))


def _padded_batch(ex):
    enc, dec, tgt = ex
    return _pad(enc, ENC_LEN)[None], _pad(dec, DEC_LEN)[None], _pad(tgt, DEC_LEN)[None]


def test_packed_segments_equal_separate_runs(tiny_params):
    rng = np.random.default_rng(0)
    a, b = _example(rng, 5, 4), _example(rng, 6, 5)

    def seg_ids(lens, n):
        return _pad(np.concatenate([np.full(l, i + 1) for i, l in enumerate(lens)]), n)[None]

    def positions(lens, n):
        return _pad(np.concatenate([np.arange(l) for l in lens]), n)[None]

    packed = _padded_batch([np.concatenate([a[j], b[j]]) for j in range(3)])
    e_lens, d_lens = [5, 6], [4, 5]
    logits = _apply_tiny(tiny_params, *packed, seg_ids(e_lens, ENC_LEN), seg_ids(d_lens, DEC_LEN),
                         positions(e_lens, ENC_LEN), positions(d_lens, DEC_LEN))
    for ex, start in ((a, 0), (b, 4)):
        ref = _apply_tiny(tiny_params, *_padded_batch(ex))
        n = len(ex[2])
        np.testing.assert_allclose(logits[0, start:start + n], ref[0, :n], rtol=1e-5, atol=1e-5)
    # Sanity: without segment ids the second example sees the first one.
    mixed = _apply_tiny(tiny_params, *packed)
    assert np.abs(np.asarray(mixed[0, 4:9] - logits[0, 4:9])).max() > 1e-3


def test_padding_does_not_change_valid_logits(tiny_params):
    ex = _example(np.random.default_rng(1), 7, 6)
    short = _apply_tiny(tiny_params, *(x[None] for x in ex))
    padded = _apply_tiny(tiny_params, *_padded_batch(ex))
    np.testing.assert_allclose(padded[0, :6], short[0], rtol=1e-5, atol=1e-5)


def test_cached_decode_equals_full_decode():
    # Few buckets and a short max distance so the 12 decode steps reach the
    # logarithmic and the clipped buckets; the gated/untied variant because the
    # tied head is also covered by the HF parity test.
    cfg = dataclasses.replace(TINY, mlp_activations=("gelu", "linear"),
                              logits_via_embedding=False, relative_attention_num_buckets=8,
                              relative_attention_max_distance=8)
    rng = np.random.default_rng(2)
    batch, enc_len, length = 2, 9, 12
    enc = rng.integers(2, cfg.vocab_size, (batch, enc_len))
    enc[1, 6:] = 0  # padding in the encoder input must be respected
    tgt = rng.integers(2, cfg.vocab_size, (batch, length))
    dec = np.concatenate([np.zeros((batch, 1), int), tgt[:, :-1]], axis=1)
    model = Transformer(cfg)
    zeros = jnp.zeros((batch, length), jnp.int32)
    # T5X-style cache initialisation: decode=True on full-length zero inputs.
    variables = jax.jit(lambda k: model.init(k, enc, zeros, zeros, enable_dropout=False,
                                             decode=True))(_key(3))
    params, cache = variables["params"], variables["cache"]
    layer0 = cache["decoder"]["layers_0"]["self_attention"]
    assert layer0["cached_key"].shape == (batch, cfg.num_heads, cfg.head_dim, length)
    assert int(layer0["cache_index"]) == 0

    @jax.jit
    def full_and_encoded(params):
        full = model.apply({"params": params}, enc, dec, tgt, enable_dropout=False)
        encoded = model.apply({"params": params}, enc, enable_dropout=False,
                              method=Transformer.encode)
        return full, encoded

    full, encoded = full_and_encoded(params)

    @jax.jit
    def step(cache, token):
        logits, mutated = model.apply({"params": params, "cache": cache}, encoded, enc, token,
                                      token, enable_dropout=False, decode=True,
                                      method=Transformer.decode, mutable=["cache"])
        return logits[:, 0], mutated["cache"]

    for i in range(length):
        logits, cache = step(cache, jnp.asarray(dec[:, i:i + 1]))
        np.testing.assert_allclose(np.asarray(logits), np.asarray(full[:, i]), rtol=1e-5,
                                   atol=1e-5, err_msg=f"step {i}")
    assert int(cache["decoder"]["layers_1"]["self_attention"]["cache_index"]) == length


def test_dropout_off_is_deterministic_and_on_is_random(tiny_params):
    model = Transformer(dataclasses.replace(TINY, dropout_rate=0.3))
    batch = _padded_batch(_example(np.random.default_rng(4), 6, 5))
    run = jax.jit(lambda key, on: model.apply({"params": tiny_params}, *batch,
                                              enable_dropout=on, rngs={"dropout": key}),
                  static_argnums=1)
    off1, off2 = run(_key(1), False), run(_key(2), False)
    np.testing.assert_array_equal(off1, off2)
    np.testing.assert_allclose(off1, _apply_tiny(tiny_params, *batch), rtol=1e-6, atol=1e-6)
    on1, on1b, on2 = (run(_key(k), True) for k in (1, 1, 2))
    np.testing.assert_array_equal(on1, on1b)
    assert np.abs(np.asarray(on1 - on2)).max() > 1e-3
    assert np.abs(np.asarray(on1 - off1)).max() > 1e-3


def test_remat_keeps_names_and_values(tiny_params):
    batch = _padded_batch(_example(np.random.default_rng(5), 6, 5))
    # One layer per stack (a subset of the tiny params) keeps the two gradient
    # compiles cheap; remat acts per layer, so one is enough to check.
    one = dataclasses.replace(TINY, num_encoder_layers=1, num_decoder_layers=1)
    params = jax.tree_util.tree_map(lambda x: x, dict(tiny_params))
    params = {k: ({n: v for n, v in sub.items() if n != "layers_1"} if k != "token_embedder"
                  else sub) for k, sub in params.items()}

    def loss(cfg):
        model = Transformer(cfg)
        f = lambda p: jnp.sum(jax.nn.log_softmax(model.apply(
            {"params": p}, *batch, enable_dropout=False))[0, :, 3])
        return jax.jit(jax.value_and_grad(f))(params)

    (l0, g0), (l1, g1) = loss(one), loss(dataclasses.replace(one, remat_policy="full"))
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g1)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(np.abs(a).max()))
    for policy in ("full", "minimal"):
        abstract = _abstract_variables(dataclasses.replace(TINY, remat_policy=policy))
        assert set(_flat(nn.unbox(abstract["params"]))) == _expected_names(TINY)


def test_bfloat16_activations_keep_float32_params_and_logits(tiny_params):
    cfg = dataclasses.replace(TINY, dtype="bfloat16")
    batch = _padded_batch(_example(np.random.default_rng(6), 6, 5))
    logits = jax.jit(lambda p: Transformer(cfg).apply({"params": p}, *batch,
                                                      enable_dropout=False))(tiny_params)
    ref = _apply_tiny(tiny_params, *batch)
    assert logits.dtype == jnp.float32
    assert float(jnp.abs(logits - ref).max()) < 0.1 * float(jnp.abs(ref).max())


@pytest.mark.parametrize("bad", [dict(dtype="float8"), dict(remat_policy="some"),
                                 dict(mlp_activations=("swishy",)), dict(num_heads=0),
                                 dict(dropout_rate=1.5)])
def test_bad_config_is_a_user_error(bad):
    with pytest.raises(UserError):
        T5Config(**bad)


# name -> (enc layers, dec layers, emb, heads, head_dim, mlp, activations, tied, dtype, #params)
GIN_FILES = {
    "t5_tiny.gin": (2, 2, 32, 2, 16, 64, ("relu",), True, "float32", None),
    "t5_small.gin": (6, 6, 512, 8, 64, 2048, ("relu",), True, "float32", 60_506_624),
    "t5_1_1_small.gin": (8, 8, 512, 6, 64, 1024, ("gelu", "linear"), False, "bfloat16", None),
    "t5_base.gin": (12, 12, 768, 12, 64, 3072, ("relu",), True, "bfloat16", 222_903_552),
    "t5_1_1_base.gin": (12, 12, 768, 12, 64, 2048, ("gelu", "linear"), False, "bfloat16", None),
    **{f"t5_small_{n}.gin": (n, n, 512, 8, 64, 2048, ("relu",), True, "float32", None)
       for n in (12, 24, 36, 48)},
}


@pytest.mark.parametrize("name", sorted(GIN_FILES))
def test_gin_model_files_parse_alone(name):
    enc, dec, emb, heads, hd, mlp, acts, tied, dtype, n_params = GIN_FILES[name]
    gin.clear_config()
    try:
        gin.parse_config_file(str(GIN_DIR / name))
        cfg = T5Config()
        assert (cfg.num_encoder_layers, cfg.num_decoder_layers, cfg.emb_dim, cfg.num_heads,
                cfg.head_dim, cfg.mlp_dim, cfg.mlp_activations, cfg.logits_via_embedding,
                cfg.dtype) == (enc, dec, emb, heads, hd, mlp, acts, tied, dtype)
        assert cfg.vocab_size == 32128 and cfg.dropout_rate == 0.1
        assert cfg.relative_attention_num_buckets == 32
        assert cfg.relative_attention_max_distance == 128
        gin.parse_config("DROPOUT_RATE = 0.0")  # the macro is what drives dropout
        assert T5Config().dropout_rate == 0.0
        # A gin-built Transformer picks up the bound config.
        gin.parse_config("network.Transformer.config = @network.T5Config()")
        assert Transformer().config == T5Config()
    finally:
        gin.clear_config()
    if n_params is not None:
        shapes = hf_convert.param_shapes(cfg)
        assert sum(math.prod(s) for s in shapes.values()) == n_params
