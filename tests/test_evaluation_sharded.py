"""Inference eval on a 2x2 mesh of 4 simulated CPU devices (parameters sharded over 'model',
batches over 'data', a padded last batch) gives the predictions and metrics of one device."""
import json
import sys
import textwrap

import pytest

from conftest import run_simulated_devices

SCRIPT = textwrap.dedent(r'''
    import json, os, sys, tempfile
    import jax, numpy as np
    import flax.linen as nn
    from synthpre_jax import eval as eval_lib, evaluation
    from synthpre_jax.data.dataset import DatasetConfig
    from synthpre_jax.models import inference, network
    from synthpre_jax.models.model import EncoderDecoderModel
    from synthpre_jax.partitioning import PjitPartitioner
    assert jax.device_count() == 4
    cfg = network.T5Config(vocab_size=32, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64,
                           num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0)
    model = EncoderDecoderModel(module=network.Transformer(cfg))
    shapes = {k: (2, 12) for k in ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")}
    params = jax.device_get(nn.unbox(model.get_initial_variables(jax.random.PRNGKey(1), shapes)["params"]))
    data = DatasetConfig(mixture_or_task_name="toy_copy_text_mix", task_feature_lengths={"inputs": 12, "targets": 12},
                         split="test", batch_size=4, module="toy_eval_tasks")
    out = {}
    for name, part in (("1", PjitPartitioner(devices=jax.devices()[:1])), ("2x2", PjitPartitioner(num_partitions=2))):
        d = tempfile.mkdtemp()
        _, sh = eval_lib.abstract_params(model, part)
        placed = jax.device_put(params, sh)
        wi = placed["encoder"]["layers_0"]["mlp"]["wi"]["kernel"].sharding
        out[name] = {"spec": str(wi.spec), "devices": len(wi.device_set)}
        ev = evaluation.InferenceEvaluator(model, part, data, d, num_examples=10, json_write_n_results=None,
                                           decode_config=inference.DecodeConfig(), stream=False)   # beam 4
        out[name]["metrics"] = ev.evaluate(1, placed, sh)
        with open(os.path.join(d, "inference_eval", "toy_copy_text-000001.jsonl")) as f:
            out[name]["preds"] = [json.loads(l)["output"] for l in f]
    print("RESULT" + json.dumps(out))
''')


def test_sharded_inference_eval_equals_single_device():
    proc = run_simulated_devices([sys.executable, "-c", SCRIPT], 4)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(proc.stdout.split("RESULT", 1)[1])
    one, mesh = res["1"], res["2x2"]
    assert "model" in mesh["spec"] and (one["devices"], mesh["devices"]) == (1, 4)
    assert len(one["preds"]) == 10
    assert mesh["preds"] == one["preds"]
    assert mesh["metrics"].keys() == one["metrics"].keys()
    for k, v in one["metrics"].items():
        assert mesh["metrics"][k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    ll = one["metrics"]["toy_copy_text_scored/mean_log_likelihood"]
    assert ll < -1.0   # an untrained model: the scores are real numbers, not a constant
