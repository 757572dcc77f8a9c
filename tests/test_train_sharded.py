"""Sharded training equals single-device training: 6 steps of a tiny T5 on 8 simulated CPU
devices on a 2x4 ('data', 'model') mesh, and on a 4x2 mesh with 2 microbatches, give the
losses of 1 device (without / with microbatches; 1e-5 relative), and the parameters really
are sharded over 'model'. (4x2 without microbatches added 25% to the suite's longest test and
nothing the two meshes do not cover.)"""
import json
import sys
import textwrap

from conftest import run_simulated_devices

SCRIPT = textwrap.dedent(r'''
    import json, sys, tempfile
    import gin, jax
    from conftest import tiny_train_argv
    from synthpre_jax import gin_utils, train as T
    from synthpre_jax.partitioning import PjitPartitioner
    assert jax.device_count() == 8, jax.devices()
    out = {}
    for data, model, micro in json.loads(sys.argv[1]):
        gin.clear_config()
        d = tempfile.mkdtemp()
        extra = ["--gin.train.stats_period=1", "--gin.EVAL_PERIOD=1000", "--gin.EVAL_STEPS=1",
                 "--gin.CHECKPOINT_PERIOD=1000", "--gin.DROPOUT_RATE=0.1",
                 "--gin.train.train_eval_dataset_cfg=None",  # no eval: only the losses are compared
                 f"--gin.NUM_MICROBATCHES={micro}",
                 # widths divisible by the model axis so every partitioned dim really is split
                 "--gin.network.T5Config.num_heads=4", "--gin.network.T5Config.head_dim=8"]
        args = T.parse_args(tiny_train_argv(d, 6, batch=16, extra=extra))
        T._register_configurables()
        gin_utils.parse_gin(args.gin_file, args.gin_bindings, args.gin_search_paths)
        part = PjitPartitioner(num_partitions=model, devices=jax.devices()[:data * model])
        res = gin_utils.call_configurable(T.train, partitioner=part)
        p = res["state"]["params"]
        wi = p["encoder"]["layers_0"]["mlp"]["wi"]["kernel"]
        q = p["encoder"]["layers_0"]["attention"]["query"]["kernel"]
        emb = p["token_embedder"]["embedding"]
        out[f"{data}x{model}x{micro}"] = {
            "losses": [m["loss"] for m in res["train_metrics"]],
            "wi_spec": str(wi.sharding.spec), "q_spec": str(q.sharding.spec), "emb_spec": str(emb.sharding.spec),
            "wi_shard_shape": list(wi.addressable_shards[0].data.shape), "wi_shape": list(wi.shape),
            "n_devices": len(wi.sharding.device_set),
            "microbatches": gin.query_parameter("%NUM_MICROBATCHES"),
        }
    print("RESULT" + json.dumps(out))
''')


def test_sharded_equals_single_device():
    configs = [(1, 1, 1), (2, 4, 1), (1, 1, 2), (4, 2, 2)]
    proc = run_simulated_devices([sys.executable, "-c", SCRIPT, json.dumps(configs)], 8)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    # microbatches draw their own dropout masks, so they are compared with 1 device + microbatches
    assert {k: r["microbatches"] for k, r in out.items()} == {
        "1x1x1": 1, "2x4x1": 1, "1x1x2": 2, "4x2x2": 2}  # the configurations really differ
    for key, ref_key in (("2x4x1", "1x1x1"), ("4x2x2", "1x1x2")):
        ref = out[ref_key]["losses"]
        assert len(ref) == 6 and len(out[key]["losses"]) == 6
        for a, b in zip(out[key]["losses"], ref):
            assert abs(a - b) <= 1e-5 * abs(b), (key, a, b)
    for key, model in (("4x2x2", 2), ("2x4x1", 4)):
        r = out[key]
        assert "model" in r["wi_spec"] and "model" in r["q_spec"] and "model" in r["emb_spec"], r
        assert r["wi_shard_shape"][1] == r["wi_shape"][1] // model, r
        assert r["n_devices"] == 8
