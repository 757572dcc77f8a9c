"""`synthpre weight-stats`: end to end on tiny checkpoints, and its one-line errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
from flax import traverse_util

from synthpre_jax import cli, weight_stats as ws
from synthpre_jax.weight_stats_cli import fresh_params, infer_t5_config

checkpoints = pytest.importorskip("synthpre_jax.checkpoints")
network = pytest.importorskip("synthpre_jax.models.network")

TINY = dict(vocab_size=40, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
            num_encoder_layers=2, num_decoder_layers=3, relative_attention_num_buckets=32)


def flat(tree):
    return traverse_util.flatten_dict(tree, sep="/")


def _save(tmp, config, seed=1):
    """A 'pre-trained' checkpoint: the network's init with shifted, widened norms."""
    params = {k: np.asarray(v) for k, v in flat(fresh_params(config, seed)).items()}
    rng = np.random.default_rng(seed)
    for k in params:
        if "norm" in k:
            params[k] = rng.normal(0.5, 0.1, params[k].shape).astype(np.float32)
    tree = traverse_util.unflatten_dict(params, sep="/")
    path = checkpoints.save_params_checkpoint(str(tmp), tree)
    return path, params


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    config = network.T5Config(**TINY)
    path, params = _save(tmp_path_factory.mktemp("src") / "ckpt", config)
    return config, path, params


def _error(err: str) -> str:
    """The single error line (progress lines may precede it); no traceback."""
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def _run(argv, capsys):
    rc = cli.main(["weight-stats", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_infer_t5_config(tiny):
    config, _, params = tiny
    inferred = infer_t5_config(params)
    for k, v in inferred.items():
        assert getattr(config, k) == v, k


def test_writes_a_checkpoint_report_and_plot(tiny, tmp_path, capsys):
    config, path, src = tiny
    out_dir, png = tmp_path / "out", tmp_path / "std.png"
    rc, out, err = _run(["--source", path, "--scheme", "per_layer_grouping___init_scale",
                         "--seed", "4", "--out", str(out_dir), "--report", "--plot", str(png)],
                        capsys)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["group", "rule", "tensors", "elements", "mean", "std"]
    assert lines[-1].startswith(f"wrote {out_dir}/checkpoint_0")
    rows = {line.split()[0]: line.split() for line in lines[1:-1]}
    assert len(rows) == 2 * 5 + 4 + 1  # per-layer kernels + norms, 4 singletons, total
    assert rows["decoder/layers_2/kernels"][1:4] == ["N(0,sigma)", "10",
                                                     str(8 * 16 * 16 + 2 * 16 * 32)]
    n_elements = sum(v.size for k, v in src.items() if "token_embedder" not in k)
    assert rows["total"][1:3] == [str(len(src) - 1), str(n_elements)]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((out_dir / "weight_stats.json").read_text())
    assert record["scheme"] == "per_layer_scale" and record["seed"] == 4
    # the checkpoint reloads and equals the transform of the same fresh init and seed
    result = flat(checkpoints.load_params(str(out_dir)))
    expected = flat(ws.transform(traverse_util.unflatten_dict(src, sep="/"),
                                 fresh_params(config, 4), "per_layer_scale", 4))
    assert set(result) == set(expected)
    for k, v in expected.items():
        np.testing.assert_array_equal(result[k], np.asarray(v), err_msg=k)
    # independent check of one layer-norm group: the constant is the layer's pooled mean
    norms = [k for k in src if k.startswith("decoder/layers_1/") and "norm" in k]
    mu = np.concatenate([src[k].astype(np.float64) for k in norms]).mean()
    for k in norms:
        np.testing.assert_allclose(result[k], mu, rtol=1e-6)


def test_t5_1_1_keeps_embedding_and_logits_fresh(tmp_path, capsys):
    config = network.T5Config(**dict(TINY, num_decoder_layers=2,
                                     mlp_activations=("gelu", "linear"),
                                     logits_via_embedding=False))
    path, src = _save(tmp_path / "src", config)
    assert infer_t5_config(src)["mlp_activations"] == ("gelu", "linear")
    rc, out, err = _run(["--source", path, "--scheme", "mlp_scale", "--seed", "0",
                         "--out", str(tmp_path / "out")], capsys)
    assert rc == 0, err
    result = flat(checkpoints.load_params(str(tmp_path / "out")))
    fresh = flat(fresh_params(config, 0))
    for k in ("token_embedder/embedding", "decoder/logits_dense/kernel",
              "encoder/layers_0/attention/query/kernel"):
        np.testing.assert_array_equal(result[k], np.asarray(fresh[k]), err_msg=k)
    wi = "encoder/layers_1/mlp/wi_1/kernel"
    assert abs(result[wi].std() / src[wi].std() - 1) < 0.2
    assert not np.array_equal(result[wi], np.asarray(fresh[wi]))


def test_custom_regex_scheme_from_gin_bindings(tiny, tmp_path, capsys):
    _, path, src = tiny
    rc, out, err = _run(["--source", path, "--scheme", "custom", "--out", str(tmp_path / "o"),
                         "--report",
                         "--gin.weight_stats_groups.RegexScheme.patterns = "
                         "{'qk': '.*attention/(query|key)/'}",
                         "--gin.weight_stats_groups.RegexScheme.statistic = 'mean_std'"],
                        capsys)
    assert rc == 0, err
    (row,) = [line.split() for line in out.splitlines() if line.startswith("qk ")]
    assert row[1:3] == ["N(mu,sigma)", str(2 * (2 + 3 * 2))]
    qk = [k for k in src if "/query/" in k or "/key/" in k]
    ref = np.concatenate([src[k].astype(np.float64).ravel() for k in qk])
    np.testing.assert_allclose([float(row[4]), float(row[5])], [ref.mean(), ref.std()],
                               rtol=1e-5, atol=1e-8)


def test_bad_scheme_exits_2_and_writes_nothing(tiny, tmp_path, capsys):
    _, path, _ = tiny
    rc, out, err = _run(["--source", path, "--scheme", "per_layer", "--seed", "0",
                         "--out", str(tmp_path / "out")], capsys)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("error: unknown weight-stats scheme")
    assert "per_layer_scale" in err and "qkvo_per_param_grouping___init_scale" in err
    assert not (tmp_path / "out").exists()


def test_model_gin_that_does_not_fit_lists_paths(tiny, tmp_path, capsys):
    _, path, _ = tiny
    rc, out, err = _run(["--source", path, "--scheme", "per_param_scale", "--out",
                         str(tmp_path / "out"), "--model-gin", "models/t5_tiny.gin"], capsys)
    assert rc == 2
    assert "does not match the model" in _error(err)
    assert "not in the model: decoder/layers_2/encoder_decoder_attention/key/kernel" in err
    assert not (tmp_path / "out").exists()


def test_other_bad_inputs_exit_2(tiny, tmp_path, capsys):
    _, path, _ = tiny
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    for argv, match in [
        (["--source", path, "--scheme", "mlp_scale", "--out", str(busy)], "not an empty directory"),
        (["--source", str(tmp_path / "none"), "--scheme", "mlp_scale", "--out",
          str(tmp_path / "o1")], f"--source {tmp_path / 'none'} does not exist"),
        (["--source", path, "--scheme", "mlp_scale", "--out",
          str(busy / "keep.txt" / "o3")], "keep.txt is a file, not a directory"),
        (["--source", str(busy / "keep.txt"), "--scheme", "mlp_scale", "--out",
          str(tmp_path / "o5" / "a" / "b")], "no checkpoint found"),
        (["--source", path, "--scheme", "mlp_scale", "--out", str(tmp_path / "o2"),
          "--plot", str(tmp_path / "x.jpg")], ".png"),
    ]:
        rc, out, err = _run(argv, capsys)
        assert rc == 2 and match in _error(err), err
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
    assert not (tmp_path / "o5").exists()  # the parents it created are removed too
    plot_dir = tmp_path / "dir.png"
    plot_dir.mkdir()
    rc, out, err = _run(["--source", path, "--scheme", "mlp_scale", "--out", str(tmp_path / "o6"),
                         "--plot", str(plot_dir)], capsys)
    assert rc == 2 and "is a directory; give a .png file name" in _error(err)
    assert err.count("\n") == 1  # the error alone: no progress line before it


def test_failure_after_out_is_claimed_leaves_nothing(tiny, tmp_path, capsys, monkeypatch):
    """--out is created (and probed) before the re-sampling; a failure later removes it."""
    from synthpre_jax import weight_stats_cli

    _, path, _ = tiny

    claimed = []

    def boom(*a, **k):
        from synthpre_jax.errors import UserError
        claimed.extend(p.name for p in tmp_path.iterdir())  # --out exists before the slow part
        raise UserError("simulated failure while re-sampling")

    monkeypatch.setattr(weight_stats_cli, "fresh_params", boom)
    rc, out, err = _run(["--source", path, "--scheme", "mlp_scale", "--out", str(tmp_path / "o")],
                        capsys)
    assert rc == 2 and "simulated failure" in _error(err)
    assert claimed == ["o"] and not (tmp_path / "o").exists()
    (tmp_path / "empty").mkdir()
    rc, out, err = _run(["--source", path, "--scheme", "mlp_scale", "--out", str(tmp_path / "empty")],
                        capsys)
    assert rc == 2 and list((tmp_path / "empty").iterdir()) == []
