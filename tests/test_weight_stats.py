"""The weight-statistics transform: groupings (spec §3.2-3.3), statistics, reproducibility.

Group sizes are checked on the real T5-small / T5.1.1 / deeper names (no arrays needed);
statistics on trees with the T5-small structure but tiny widths, against float64 NumPy.
"""
from __future__ import annotations

import math

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from synthpre_jax import counter_rng, weight_stats as ws
from synthpre_jax.errors import UserError
from synthpre_jax.weight_stats_groups import (PAPER_ALIASES, SCHEMES, T5_1_1_SMALL,
                                              T5_SMALL, RegexScheme, resolve_scheme,
                                              t5_param_shapes, transformable_names)

# T5-small structure (6+6 layers, 131 tensors), tiny widths so statistics run in milliseconds.
NARROW = dict(num_encoder_layers=6, num_decoder_layers=6, emb_dim=32, num_heads=4, head_dim=8,
              mlp_dim=64, vocab_size=50)


def make_trees(seed: int = 0, fresh_dtype=np.float32, **dims):
    """(source, fresh) nested dicts of NumPy arrays; each source tensor has its own mean/std."""
    shapes = t5_param_shapes(**(dims or NARROW))
    rng = np.random.default_rng(seed)
    src, fresh = {}, {}
    for name, shape in shapes.items():
        if "norm" in name:
            src[name] = rng.normal(rng.uniform(0.2, 1.5), 0.1, shape)
            fresh[name] = np.ones(shape)
        else:
            src[name] = rng.normal(rng.uniform(-0.05, 0.05), rng.uniform(0.02, 0.3), shape)
            fresh[name] = rng.normal(0, 0.05, shape)
    src = {k: v.astype(np.float32) for k, v in src.items()}
    fresh = {k: v.astype(fresh_dtype) for k, v in fresh.items()}
    return (traverse_util.unflatten_dict(src, sep="/"),
            traverse_util.unflatten_dict(fresh, sep="/"))


def flat(tree):
    return traverse_util.flatten_dict(tree, sep="/")


def names_of(**dims):
    return transformable_names(t5_param_shapes(**dims))


# ----------------------------------------------------------------------------- groupings
def _sizes(scheme, names):
    groups = resolve_scheme(scheme).groups(names)
    return len(groups), sum(len(g.paths) for g in groups), groups


def test_t5_small_group_sizes_match_the_spec():
    names = names_of(**T5_SMALL)
    assert len(names) == 130 and len(t5_param_shapes(**T5_SMALL)) == 131
    n, total, groups = _sizes("per_param_mean_std", names)
    assert (n, total) == (130, 130) and all(len(g.paths) == 1 for g in groups)
    assert _sizes("pre_attn_ln_scale", names)[:2] == (18, 18)
    assert _sizes("pre_mlp_ln_scale", names)[:2] == (12, 12)
    assert _sizes("attention_scale", names)[:2] == (72, 72)
    assert _sizes("mlp_scale", names)[:2] == (24, 24)
    assert _sizes("per_layer_scale", names)[:2] == (28, 130)
    n, total, groups = _sizes("across_layers_scale", names)
    assert (n, total) == (9, 130)
    assert {g.name: len(g.paths) for g in groups} == {
        "query": 18, "key": 18, "value": 18, "out": 18, "mlp": 24, "pre_mlp_layer_norm": 12,
        "pre_attention_layer_norm": 18, "final_layer_norm": 2, "relpos": 2}
    n, total, groups = _sizes("whole_model_scale", names)
    assert [(g.name, len(g.paths)) for g in groups] == [("kernels", 96), ("norms", 32),
                                                        ("relpos", 2)]


def test_regex_semantics_of_the_subset_groupings():
    names = names_of(**T5_SMALL)
    pre_attn = resolve_scheme("pre_attn_ln_scale").groups(names)
    assert all(g.paths[0].endswith("attention_layer_norm/scale") for g in pre_attn)
    assert sum("pre_cross" in g.paths[0] for g in pre_attn) == 6
    attention = resolve_scheme("attention_scale").groups(names)
    assert all(g.paths[0].endswith("/kernel") and "mlp" not in g.paths[0] for g in attention)
    mlp = resolve_scheme("mlp_scale").groups(names)
    assert {g.paths[0].split("/")[-2] for g in mlp} == {"wi", "wo"}
    per_layer = resolve_scheme("per_layer_scale").groups(names)
    enc0 = {g.name: g for g in per_layer}["encoder/layers_0/norms"]
    assert enc0.paths == ("encoder/layers_0/pre_attention_layer_norm/scale",
                          "encoder/layers_0/pre_mlp_layer_norm/scale")
    assert len({g.name: g for g in per_layer}["decoder/layers_5/kernels"].paths) == 10


def test_groupings_follow_depth_and_t5_1_1():
    deep = names_of(**dict(T5_SMALL, num_encoder_layers=12, num_decoder_layers=10))
    assert _sizes("per_layer_scale", deep)[:2] == (2 * 22 + 4, len(deep))
    assert _sizes("across_layers_scale", deep)[1] == len(deep)
    v11 = names_of(**T5_1_1_SMALL)  # 8+8 layers, wi_0/wi_1, untied logits (kept fresh)
    assert len(v11) == 188 and "decoder/logits_dense/kernel" not in v11
    assert _sizes("mlp_scale", v11)[:2] == (48, 48)
    assert _sizes("attention_scale", v11)[:2] == (96, 96)
    assert _sizes("whole_model_scale", v11)[1] == 188
    groups = {g.name: len(g.paths) for g in _sizes("across_layers_scale", v11)[2]}
    assert groups["mlp"] == 48 and groups["pre_attention_layer_norm"] == 24


def test_shapes_match_the_network():
    network = pytest.importorskip("synthpre_jax.models.network")
    import flax.linen as nn

    for dims, cfg in ((T5_SMALL, {}),
                      (T5_1_1_SMALL, dict(num_encoder_layers=8, num_decoder_layers=8,
                                          num_heads=6, mlp_dim=1024,
                                          mlp_activations=("gelu", "linear"),
                                          logits_via_embedding=False))):
        t = jnp.ones((1, 1), jnp.int32)
        abstract = jax.eval_shape(lambda k: network.Transformer(network.T5Config(**cfg)).init(
            k, t, t, t, enable_dropout=False), jax.random.key(0))
        got = {k: tuple(v.shape) for k, v in flat(nn.unbox(abstract["params"])).items()}
        assert got == t5_param_shapes(**dims)


def test_paper_aliases_and_readable_names():
    assert len(SCHEMES) == 9 and len(PAPER_ALIASES) == 9
    for paper, readable in PAPER_ALIASES.items():
        assert resolve_scheme(paper) is resolve_scheme(readable)
    assert resolve_scheme("per_param_grouping___init_mean_std").statistic == "mean_std"
    assert {s.statistic for n, s in SCHEMES.items() if n != "per_param_mean_std"} == {"scale"}


# ----------------------------------------------------------------------------- statistics
def _f64_stats(src, paths):
    x = np.concatenate([np.asarray(src[p], np.float64).ravel() for p in paths])
    return x.mean(), x.std()


def _check_group(values: np.ndarray, rule: str, mu: float, sigma: float, where: str):
    n = values.size
    if rule == "const(mu)":
        np.testing.assert_allclose(values, mu, rtol=2e-6, atol=1e-7, err_msg=where)
        assert np.all(values == values.ravel()[0]), where
        return
    centre = mu if rule == "N(mu,sigma)" else 0.0
    assert abs(values.mean() - centre) <= 6 * sigma / math.sqrt(n) + 1e-7, where
    assert abs(values.std() - sigma) <= 6 * sigma / math.sqrt(2 * n) + 1e-7, where


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_each_scheme_reproduces_the_group_statistics(scheme):
    source, fresh = make_trees(seed=1)
    out, report = ws.transform_with_report(source, fresh, scheme, rng=7)
    src, new, old = flat(source), flat(out), flat(fresh)
    assert set(new) == set(old)
    for p in new:
        assert new[p].shape == old[p].shape and new[p].dtype == old[p].dtype, p
    covered = set()
    for g in report:
        mu, sigma = _f64_stats(src, g.paths)
        assert g.n_tensors == len(g.paths)
        assert g.n_elements == sum(src[p].size for p in g.paths)
        np.testing.assert_allclose([g.mean, g.std], [mu, sigma], rtol=1e-6, atol=1e-9)
        values = np.concatenate([np.asarray(new[p], np.float64).ravel() for p in g.paths])
        _check_group(values, g.rule, mu, sigma, f"{scheme}:{g.name}")
        covered.update(g.paths)
    for p in new:  # everything outside the groups is the very same fresh object
        if p not in covered:
            assert new[p] is old[p], p
    assert "token_embedder/embedding" not in covered
    expected = {"per_param_mean_std": 130, "per_param_scale": 130, "whole_model_scale": 130,
                "across_layers_scale": 130, "per_layer_scale": 130, "pre_attn_ln_scale": 18,
                "pre_mlp_ln_scale": 12, "attention_scale": 72, "mlp_scale": 24}[scheme]
    assert len(covered) == expected


def test_scale_rules_per_scheme():
    source, fresh = make_trees(seed=2)
    rules = {g.name: g.rule for g in ws.transform_with_report(source, fresh,
                                                             "whole_model_scale", 0)[1]}
    assert rules == {"kernels": "N(0,sigma)", "norms": "const(mu)", "relpos": "N(0,sigma)"}
    report = ws.transform_with_report(source, fresh, "per_param_mean_std", 0)[1]
    assert {g.rule for g in report} == {"N(mu,sigma)"}
    # pre_attn_ln_scale leaves pre-MLP and final norms at the fresh 1.0
    out = flat(ws.transform(source, fresh, "pre_attn_ln_scale", 0))
    assert np.all(np.asarray(out["encoder/layers_3/pre_mlp_layer_norm/scale"]) == 1.0)
    assert np.all(np.asarray(out["decoder/decoder_norm/scale"]) == 1.0)


def test_large_group_statistics_are_tight():
    source, fresh = make_trees(seed=3)
    out, report = ws.transform_with_report(source, fresh, "whole_model_scale", 11)
    kernels = report[0]
    values = np.concatenate([np.asarray(flat(out)[p]).ravel() for p in kernels.paths])
    assert values.size == kernels.n_elements > 100_000
    assert abs(values.mean()) < 5 * kernels.std / math.sqrt(values.size)
    assert abs(values.std() / kernels.std - 1) < 0.01


def test_statistics_are_float64_accurate_on_a_large_offset_tensor():
    """Mean 1 and std 1e-3 over 2M elements: float32 sums would be off by ~1e-4; the exact
    fixed-point sums are within ~1e-9 of float64."""
    rng = np.random.default_rng(0)
    big = rng.normal(1.0, 1e-3, (2048, 1024)).astype(np.float32)
    source = {"a": {"kernel": big}, "b": {"scale": np.ones(8, np.float32)}}
    fresh = {"a": {"kernel": np.zeros_like(big)}, "b": {"scale": np.ones(8, np.float32)}}
    scheme = RegexScheme(patterns={"a": "a/"}, statistic="mean_std")
    out, (g,) = ws.transform_with_report(source, fresh, scheme, 0)
    ref = np.asarray(big, np.float64)
    np.testing.assert_allclose(g.mean, ref.mean(), rtol=1e-8)
    np.testing.assert_allclose(g.std, ref.std(), rtol=1e-7)
    assert out["b"]["scale"] is fresh["b"]["scale"]


def test_statistics_do_not_depend_on_layout():
    """Exact sums: the same elements in another shape/order give bit-identical statistics
    (a float32 reduction would not; this is what makes 1 and 8 devices agree)."""
    rng = np.random.default_rng(1)
    x = rng.normal(0.3, 0.7, (96, 640)).astype(np.float32)
    variants = [x, x.T.copy(), x[::-1].reshape(640, 96), x.ravel()[::-1].copy()]
    stats = [ws.group_statistics([v], [[0]]) for v in variants]
    assert all(s[0][0] == stats[0][0][0] and s[1][0] == stats[0][1][0] for s in stats)
    a, b = x[:40], x[40:]
    pooled = ws.group_statistics([b.T.copy(), a], [[0, 1]])  # a group pools its tensors
    np.testing.assert_allclose([pooled[0][0], pooled[1][0]], [stats[0][0][0], stats[0][1][0]],
                               rtol=1e-8)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_source_is_a_user_error(bad):
    source, fresh = make_trees()
    src = flat(source)
    src["decoder/layers_1/mlp/wi/kernel"] = src["decoder/layers_1/mlp/wi/kernel"].copy()
    src["decoder/layers_1/mlp/wi/kernel"][3, 4] = bad
    with pytest.raises(UserError, match="decoder/layers_1/mlp/wi/kernel has non-finite"):
        ws.transform(traverse_util.unflatten_dict(src, sep="/"), fresh, "mlp_scale", 0)


def test_bfloat16_fresh_params_keep_their_dtype():
    source, fresh = make_trees(seed=4, fresh_dtype=jnp.bfloat16)
    out = flat(ws.transform(source, fresh, "per_param_scale", 0))
    assert {str(v.dtype) for v in out.values()} == {"bfloat16"}
    ln = np.asarray(out["encoder/layers_0/pre_attention_layer_norm/scale"], np.float32)
    mu = np.asarray(flat(source)["encoder/layers_0/pre_attention_layer_norm/scale"],
                    np.float64).mean()
    np.testing.assert_allclose(ln, mu, rtol=1e-2)  # bfloat16 has 8 bits of mantissa


def test_params_collection_wrapper_is_accepted():
    source, fresh = make_trees(seed=5)
    out = ws.transform({"params": source}, {"params": fresh}, "mlp_scale", 0)
    assert set(out) == {"params"}
    plain = ws.transform(source, fresh, "mlp_scale", 0)
    a, b = flat(out["params"]), flat(plain)
    assert all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)


# ----------------------------------------------------------------------------- reproducibility
def test_same_seed_same_result_other_seed_other_result():
    source, fresh = make_trees(seed=6)
    a = flat(ws.transform(source, fresh, "per_param_mean_std", 5))
    b = flat(ws.transform(source, fresh, "per_param_mean_std", 5))
    c = flat(ws.transform(source, fresh, "per_param_mean_std", 6))
    k = "decoder/layers_2/mlp/wo/kernel"
    assert all(np.array_equal(np.asarray(a[p]), np.asarray(b[p])) for p in a)
    assert not np.array_equal(np.asarray(a[k]), np.asarray(c[k]))
    # a key of the same seed gives the same draws as the int seed
    d = flat(ws.transform(source, fresh, "per_param_mean_std", jax.random.key(5)))
    assert np.array_equal(np.asarray(a[k]), np.asarray(d[k]))
    # tensors of one shape and group get different draws
    x = np.asarray(a["encoder/layers_0/attention/key/kernel"])
    y = np.asarray(a["encoder/layers_0/attention/value/kernel"])
    assert abs(np.corrcoef(x.ravel(), y.ravel())[0, 1]) < 0.2


def test_a_tensors_draw_depends_only_on_seed_and_path():
    """Adding layers changes no draw of the common tensors (per-tensor statistics), and the
    draw is exactly sigma * normal(tensor_key(seed, path))."""
    big_src, big_fresh = make_trees(seed=8, **dict(NARROW, num_encoder_layers=7))

    def drop_layer_6(tree):
        return traverse_util.unflatten_dict(
            {k: v for k, v in flat(tree).items() if "encoder/layers_6/" not in k}, sep="/")

    small_src, small_fresh = drop_layer_6(big_src), drop_layer_6(big_fresh)
    a = flat(ws.transform(small_src, small_fresh, "attention_scale", 3))
    b = flat(ws.transform(big_src, big_fresh, "attention_scale", 3))
    assert len(b) == len(a) + 8
    for p in a:
        assert np.array_equal(np.asarray(a[p]), np.asarray(b[p])), p
    p = "decoder/layers_1/self_attention/query/kernel"
    sigma = np.float32(np.asarray(flat(small_src)[p], np.float64).std())
    z = counter_rng.standard_normal(jax.random.key_data(ws.tensor_key(jax.random.key(3), p)),
                                    a[p].shape)
    np.testing.assert_allclose(np.asarray(a[p]), sigma * np.asarray(z), rtol=1e-5, atol=1e-8)


def test_donating_the_fresh_tree_gives_the_same_result():
    source, fresh = make_trees(seed=10)
    fresh = jax.tree_util.tree_map(jnp.asarray, fresh)
    kept = flat(ws.transform(source, fresh, "per_param_scale", 4))
    donated_in = flat(jax.tree_util.tree_map(jnp.copy, fresh))
    out = flat(ws.transform(source, traverse_util.unflatten_dict(donated_in, sep="/"),
                            "per_param_scale", 4, donate_fresh=True))
    assert all(np.array_equal(np.asarray(kept[p]), np.asarray(out[p])) for p in kept)
    emb = "token_embedder/embedding"
    assert out[emb] is donated_in[emb] and not donated_in[emb].is_deleted()  # kept fresh
    assert donated_in["encoder/layers_0/mlp/wi/kernel"].is_deleted()  # its buffer was reused


# ----------------------------------------------------------------------------- Table 3
@pytest.mark.parametrize("value", [0.4, -0.5, 1e-3])
def test_constant_preattn_ln(value):
    _, fresh = make_trees(seed=9)
    out, paths = ws.constant_preattn_ln(fresh, value)
    assert len(paths) == 18
    new, old = flat(out), flat(fresh)
    for p in new:
        if p in paths:
            assert np.all(np.asarray(new[p]) == np.float32(value)) and new[p].dtype == old[p].dtype
        else:
            assert new[p] is old[p]
    assert np.all(new["encoder/layers_0/pre_mlp_layer_norm/scale"] == 1.0)


def test_constant_preattn_ln_on_device_arrays():
    _, fresh = make_trees(seed=9)
    fresh = jax.tree_util.tree_map(jnp.asarray, fresh)
    out, paths = ws.constant_preattn_ln(fresh, "1e-3")
    assert isinstance(flat(out)[paths[0]], jax.Array)
    assert np.all(np.asarray(flat(out)[paths[-1]]) == np.float32(1e-3))


@pytest.mark.parametrize("value", ["abc", float("nan"), None])
def test_constant_preattn_ln_rejects_non_numbers(value):
    _, fresh = make_trees(seed=9)
    with pytest.raises(UserError, match="constant_preattn_ln value"):
        ws.constant_preattn_ln(fresh, value)


# ----------------------------------------------------------------------------- bad input
def test_unknown_scheme_lists_the_valid_ones():
    source, fresh = make_trees()
    with pytest.raises(UserError) as e:
        ws.transform(source, fresh, "per_param_scal", 0)
    msg = str(e.value)
    assert "\n" not in msg and "per_param_scale" in msg
    assert "mlp_per_param_grouping___init_scale" in msg


def test_mismatched_trees_name_the_paths():
    source, fresh = make_trees()
    src = flat(source)
    del src["encoder/layers_5/mlp/wo/kernel"]
    src["encoder/layers_0/mlp/wi/kernel"] = np.zeros((32, 65), np.float32)
    src["encoder/extra/kernel"] = np.zeros((2, 2), np.float32)
    with pytest.raises(UserError) as e:
        ws.transform(traverse_util.unflatten_dict(src, sep="/"), fresh, "per_param_scale", 0)
    msg = str(e.value)
    assert "\n" not in msg
    assert "missing from the source checkpoint: encoder/layers_5/mlp/wo/kernel" in msg
    assert "not in the model: encoder/extra/kernel" in msg
    assert "encoder/layers_0/mlp/wi/kernel (32, 65) vs (32, 64)" in msg


def test_embedding_shape_may_differ_for_builtin_schemes():
    source, fresh = make_trees()
    src = flat(source)
    src["token_embedder/embedding"] = np.zeros((77, 32), np.float32)
    out = ws.transform(traverse_util.unflatten_dict(src, sep="/"), fresh, "per_param_scale", 0)
    assert out["token_embedder"]["embedding"] is fresh["token_embedder"]["embedding"]


def test_empty_and_overlapping_groups_are_rejected():
    source, fresh = make_trees()
    with pytest.raises(UserError, match="group 'nothing' is empty"):
        ws.transform(source, fresh, RegexScheme(patterns={"nothing": "encoder/nope"}), 0)
    with pytest.raises(UserError, match="is in two groups"):
        ws.transform(source, fresh, RegexScheme(patterns=[".*attention/", ".*query"]), 0)
    with pytest.raises(UserError, match="not a valid regex"):
        ws.transform(source, fresh, RegexScheme(patterns=["("]), 0)


def test_user_regex_grouping_from_gin():
    source, fresh = make_trees(seed=10)
    gin.clear_config()
    try:
        gin.parse_config("""
            import synthpre_jax.weight_stats_groups
            weight_stats_groups.RegexScheme.patterns = {'qk': '.*attention/(query|key)/',
                                                        'vo': '.*attention/(value|out)/'}
            weight_stats_groups.RegexScheme.statistic = 'scale'
        """)
        out, report = ws.transform_with_report(source, fresh, "custom", 0)
    finally:
        gin.clear_config()
    assert [(g.name, g.n_tensors, g.rule) for g in report] == [("qk", 36, "N(0,sigma)"),
                                                               ("vo", 36, "N(0,sigma)")]
    # the embedding is only reachable when asked for
    with pytest.raises(UserError, match="is empty"):
        ws.transform(source, fresh, RegexScheme(patterns=["token_embedder/"]), 0)
    out = ws.transform(source, fresh, RegexScheme(patterns=["token_embedder/"], per_param=True,
                                                  include_embeddings=True,
                                                  statistic="mean_std"), 0)
    emb = np.asarray(out["token_embedder"]["embedding"], np.float64)
    ref = np.asarray(source["token_embedder"]["embedding"], np.float64)
    assert abs(emb.std() / ref.std() - 1) < 0.1


def test_grid_sums_are_exact_integers_of_any_layout():
    """The float64 sums behind the statistics add integers only, so their value is exact and
    the same in every summation order (checked against Python's integer arithmetic)."""
    rng = np.random.default_rng(12)
    x = (rng.standard_normal((333, 517)) * rng.uniform(1e-6, 1, (333, 517))).astype(np.float32)
    bits = ws._fixed_bits(x.size)
    with jax.enable_x64(True):
        m, e, total, hi, lo = (np.asarray(v) for v in ws._tensor_sum_parts(x, bits=bits))
        m2, e2, total2, _, _ = (np.asarray(v)
                                for v in ws._tensor_sum_parts(x.T.copy()[::-1], bits=bits))
    assert float(total) == int(total) and total == total2 and e == e2 and m == m2
    assert m == np.max(np.abs(x)) and hi == x.max() and lo == x.min()
    q = np.round(x.astype(np.float64) * 2.0 ** (bits - int(e)))  # exact in float64 too
    assert int(total) == sum(int(v) for v in q.ravel())
    assert ws._fixed_bits(30_000_000) == 28 and ws._fixed_bits(1000) == 29
    # the deviation pass's max |x - mu| (from max and min of x) is the elementwise one
    mu = np.float32(x.mean())
    with jax.enable_x64(True):
        md = np.asarray(ws._tensor_squared_deviation_parts(x, mu, hi, lo, bits=bits)[0])
    assert md == np.max(np.abs(x - mu))


def test_empty_tensors_add_nothing_to_their_group():
    """A 0-element tensor has no max for the exact-sum grid: it is left out of the sums (the
    group's statistics are those of its other tensors); a group with no elements at all is one
    clear error."""
    rng = np.random.default_rng(2)
    full = rng.standard_normal(1000).astype(np.float32) * 0.3 + 0.1
    empty = np.zeros((0, 4), np.float32)
    with_empty = ws.group_statistics([empty, full, np.full(3, 2.0, np.float32)], [[0, 1], [2]])
    without = ws.group_statistics([full, np.full(3, 2.0, np.float32)], [[0], [1]])
    np.testing.assert_array_equal(with_empty[0], without[0])
    np.testing.assert_array_equal(with_empty[1], without[1])
    with pytest.raises(UserError, match=r"group has no elements .*enc/e"):
        ws.group_statistics([empty, full], [[0], [1]], ["enc/e", "enc/f"])
