"""The benchmark scripts run end to end (--smoke: a toy T5, one round) and write the JSON
fields that benchmarks/RESULTS.md is built from. No timing is asserted (CONTRIBUTING: timings
belong in benchmarks/); what is asserted are the invariants a wrong script would break:
FLOP counts that agree with the traced program, the same model on both sides of the HF
comparison, examples counted consistently with packing, provenance recorded."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO, subprocess_env

BENCH = REPO / "benchmarks"


SCRIPTS = ("train_step", "vs_hf", "input_pipeline")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> dict:
    """Run every script's main(['--smoke', ...]) in one child process (imports and compiled
    programs are shared, which keeps this file fast); returns {script: (JSON, stdout)}."""
    out = tmp_path_factory.mktemp("bench")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import importlib\n"
            "for name in sys.argv[3:]:\n"
            "    importlib.import_module(name).main(['--smoke', f'--out={sys.argv[2]}/{name}.json'])\n")
    proc = subprocess.run([sys.executable, "-c", code, str(BENCH), str(out), *SCRIPTS], cwd=REPO,
                          env=subprocess_env(1), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = {}
    for name in SCRIPTS:
        path = out / f"{name}.json"
        assert f"wrote {path}" in proc.stdout  # the table was printed and the file written
        results[name] = json.loads(path.read_text())
    return results


def _check_machine(m: dict) -> None:
    for key in ("date", "cpu_model", "cpu_cores", "jax", "jaxlib", "device_kind", "commit"):
        assert m.get(key) not in (None, ""), key
    assert len(m["commit"]) == 40 or m["commit"] == "unknown"


def test_flop_count_matches_hand_count_for_t5_small():
    """The analytic count, worked by hand for t5_small at batch 1, lengths 4/2."""
    sys.path.insert(0, str(BENCH))
    import common
    from synthpre_jax.models.network import T5Config
    cfg = T5Config()
    f = common.t5_forward_flops(cfg, 1, 4, 2)
    d, ff, v = 512, 2048, 32128
    enc_layer = 4 * 2 * 4 * d * d + 2 * 2 * 8 * 4 * 4 * 64 + 2 * 2 * 4 * d * ff
    dec_layer = (4 * 2 * 2 * d * d + 2 * 2 * 8 * 2 * 2 * 64                         # self
                 + 2 * 2 * 2 * d * d + 2 * 2 * 4 * d * d + 2 * 2 * 8 * 2 * 4 * 64   # cross
                 + 2 * 2 * 2 * d * ff)                                              # mlp
    assert f["total"] == 6 * enc_layer + 6 * dec_layer + 2 * 2 * d * v
    assert common.train_step_flops(cfg, 1, 4, 2)["total"] == 3 * f["total"]


def test_trim_estimate_buckets_the_longest_row_of_each_group():
    """Groups of 2 rows: longest (20, 5) -> buckets (32, 16); longest (4, 4) -> (16, 16)."""
    import numpy as np
    sys.path.insert(0, str(BENCH))
    import common
    import input_pipeline
    from synthpre_jax.models.network import T5Config
    cfg = T5Config(num_encoder_layers=1, num_decoder_layers=1)
    rows = np.array([[10, 5], [20, 3], [3, 3], [4, 4], [64, 64]])  # the last row is left over
    est = input_pipeline.trim_estimate(rows, cfg, {"inputs": 64, "targets": 64}, group=2, bucket=16)
    assert est["groups"] == 2 and est["longest_inputs_max"] == 20 and est["longest_targets_max"] == 5
    assert est["bucketed_lengths_median"] == [24.0, 16.0]
    f = lambda a, b: common.train_step_flops(cfg, 2, a, b)["total"]  # noqa: E731
    assert est["flops_fraction_of_full"] == pytest.approx((f(32, 16) + f(16, 16)) / 2 / f(64, 64))
    assert est["rows_at_full_length_fraction"] == 0.0


def test_train_step_smoke(smoke):
    data = smoke["train_step"]
    _check_machine(data["machine"])
    (r,) = data["results"]
    assert r["model"] == "t5_tiny" and r["dtype"] == "float32"
    # forward + backward dots of the traced step equal 3x the analytic forward count
    assert r["analytic_over_jaxpr_dots"] == pytest.approx(1.0, rel=1e-6)
    assert r["flops_per_step"]["total"] == 3 * r["flops_per_step"]["forward"]
    assert r["xla_cost_analysis"]["flops"] >= 0.9 * r["flops_per_step"]["total"]
    for key in ("steps_per_s", "tokens_per_s", "achieved_flops_per_s"):
        assert r[key] > 0, key
    assert 0 < r["mfu"]["median"] and 0 < r["mfu_best_rounds"] and r["peak"]["flops_per_s"] > 0
    assert r["tokens_per_step"] == 2 * (8 + 8)
    # the donated train state is updated in place: every state buffer it reads aliases an output
    assert r["donated_buffers_aliased"] == r["state_buffers_used"] > 0


def test_vs_hf_smoke(smoke):
    data = smoke["vs_hf"]
    _check_machine(data["machine"])
    r = data["results"]
    assert data["machine"]["torch"].startswith("2.")
    # both sides train the same network from the same weights
    assert r["init_mean_cross_entropy"]["relative_difference"] < 1e-4
    assert r["ours"]["tokens_per_s"] > 0 and r["hf"]["tokens_per_s"] > 0
    assert r["tokens_per_s_ratio_ours_over_hf"]["n"] == 1
    assert "Adafactor" in r["optimizer"]


def test_input_pipeline_smoke(smoke):
    data = smoke["input_pipeline"]
    _check_machine(data["machine"])
    r = data["results"]
    rows = {row["pack"]: row for row in r["pipeline"]}
    assert set(rows) == {False, True}
    assert rows[False]["examples_per_row"] == 1.0          # unpacked: one example per row
    assert rows[True]["examples_per_row"] > 1.0            # tiny examples pack several per row
    assert rows[True]["nonpadding_fraction_targets"] > rows[False]["nonpadding_fraction_targets"]
    assert r["pipeline_over_consumption"]["median"] > 0
    assert 0 < rows[False]["trim_estimate"]["flops_fraction_of_full"] <= 1.0
    for loop in r["training_loop"]:
        assert 0.0 <= loop["waiting_fraction"] <= loop["data_fraction"] <= 1.0
        before, after = loop["compile_cache_size"]
        assert after == before  # no recompilation inside the loop
