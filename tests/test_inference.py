"""predict_batch / score_batch on a tiny random T5, checked against independent computations:

* the cached one-token decode step gives the logits of re-running the full decoder on the
  growing prefix (every step, every row), and greedy decoding is the argmax of that re-run;
* score_batch is the sum of log-softmax of the full forward at the targets (numpy, float64);
* HF transformers' PyTorch T5 (a peer implementation) with the same weights: its greedy and
  beam-4 (length penalty 0) generations and its target log-likelihoods;
* beam scores equal score_batch of the returned sequences divided by T5X's brevity penalty;
* sharded decoding on 8 simulated CPU devices (4x2 mesh, parameters sharded by the logical
  axis rules, batch on 'data', under an outer jax.jit) equals one device.
"""
from __future__ import annotations

import functools
import json
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_simulated_devices
from synthpre_jax.errors import UserError
from synthpre_jax.models import decoding, inference, network

EOS = 1
# One batch shape everywhere, so compiled decoders are shared between tests (params are traced
# arguments; the module is static and equal for every seed).
B, IN, L = 4, 10, 6
TINY = dict(vocab_size=32, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64,
            num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0)


@functools.lru_cache(maxsize=None)
def tiny_model(seed: int = 0, **overrides):
    cfg = network.T5Config(**{**TINY, **overrides})
    module = network.Transformer(cfg)
    return module, nn.unbox(_init(module, jax.random.PRNGKey(seed)))


@functools.partial(jax.jit, static_argnums=0)
def _init(module, rng):
    """Compiled once for all seeds (eager Flax init dispatches op by op and is slow)."""
    ones = jnp.ones((2, 8), jnp.int32)
    return module.init({"params": rng}, ones, ones, ones, enable_dropout=False)["params"]


def make_batch(rng: np.random.Generator, batch: int, in_len: int, tgt_len: int, vocab: int = 32) -> dict:
    enc = rng.integers(2, vocab, (batch, in_len)).astype(np.int32)
    for b in range(batch):                                   # padded inputs of varied lengths
        enc[b, rng.integers(in_len // 2, in_len + 1):] = 0
    tgt = rng.integers(2, vocab, (batch, tgt_len)).astype(np.int32)
    for b in range(batch):
        n = rng.integers(1, tgt_len + 1)
        tgt[b, n - 1] = EOS
        tgt[b, n:] = 0
    dec_in = np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], axis=1)
    return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in,
            "decoder_target_tokens": tgt, "decoder_loss_weights": (tgt > 0).astype(np.int32)}


@functools.partial(jax.jit, static_argnums=0)
def _full_logits(module, params, enc, dec_in):
    return module.apply({"params": params}, enc, dec_in, jnp.ones_like(dec_in), enable_dropout=False)


def full_logits(module, params, enc, dec_in):
    """Full (uncached) forward; all target positions valid so that no position is masked out
    (a generated 0 would otherwise count as padding, T5X's target-mask convention)."""
    return np.asarray(_full_logits(module, params, jnp.asarray(enc), jnp.asarray(dec_in)), np.float64)


def log_softmax(x):
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


# ------------------------------------------------------------------------------------------------
def test_cached_steps_equal_full_decoder_and_greedy_is_its_argmax():
    module, params = tiny_model()
    rng = np.random.default_rng(0)
    batch, length = B, L
    b = make_batch(rng, batch, IN, length)
    enc = jnp.asarray(b["encoder_input_tokens"])

    # Teacher-forced cached steps on a fixed random prefix vs the full decoder on that prefix.
    tokens = np.concatenate([np.zeros((batch, 1), np.int32),
                             rng.integers(0, 32, (batch, length - 1)).astype(np.int32)], axis=1)
    encoded = jax.jit(inference._encode, static_argnums=0)(module, params, enc)
    cache = jax.jit(inference.init_decoder_cache, static_argnums=(0, 4))(module, params, encoded, enc, length)
    step = jax.jit(inference._step_fn(module, params, encoded, enc, length))
    ref = full_logits(module, params, enc, tokens)
    for t in range(length):
        state = decoding.DecodingState(cur_index=jnp.full((batch,), t), sequences=jnp.asarray(tokens),
                                       cur_token=jnp.asarray(tokens[:, t:t + 1]), cache=cache)
        logits, cache = step(state)
        np.testing.assert_allclose(np.asarray(logits), ref[:, t], rtol=1e-4, atol=1e-4)

    # Greedy decoding vs argmax of the full decoder re-run on the growing prefix.
    decodes, aux = inference.predict_batch(module, params, b, inference.DecodeConfig(method="greedy"))
    decodes = np.asarray(decodes)
    prefix = np.zeros((batch, length), np.int32)
    done = np.zeros(batch, bool)
    want = np.zeros((batch, length), np.int32)
    want_lp = np.zeros(batch)
    for t in range(length):
        lp = log_softmax(full_logits(module, params, enc, prefix)[:, t])
        nxt = np.where(done, 0, lp.argmax(-1))
        want_lp += np.where(done, 0.0, lp[np.arange(batch), nxt])
        want[:, t] = nxt
        done |= nxt == EOS
        if t + 1 < length:
            prefix[:, t + 1] = nxt
    np.testing.assert_array_equal(decodes, want)
    np.testing.assert_allclose(np.asarray(aux["scores"]), want_lp, rtol=1e-4, atol=1e-4)


def test_score_batch_equals_full_forward_log_softmax():
    module, params = tiny_model()
    b = make_batch(np.random.default_rng(1), B, IN, L)
    b["decoder_loss_weights"][2, 0] = 0                   # weights, not targets > 0, are used
    got = np.asarray(inference.score_batch(module, params, b))
    logits = np.asarray(module.apply({"params": params}, b["encoder_input_tokens"], b["decoder_input_tokens"],
                                     b["decoder_target_tokens"], enable_dropout=False), np.float64)
    lp = np.take_along_axis(log_softmax(logits), b["decoder_target_tokens"][..., None], -1)[..., 0]
    want = (lp * b["decoder_loss_weights"]).sum(-1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    del b["decoder_loss_weights"]
    want_mask = (lp * (b["decoder_target_tokens"] > 0)).sum(-1)
    np.testing.assert_allclose(np.asarray(inference.score_batch(module, params, b)), want_mask, rtol=1e-5)


def hyp_length(seq: np.ndarray) -> int:
    hits = np.flatnonzero(seq == EOS)
    return int(hits[0]) + 1 if hits.size else len(seq)


def test_beam_scores_are_penalised_log_likelihoods_and_beam1_is_greedy():
    module, params = tiny_model(1)
    batch, length = B, L
    b = make_batch(np.random.default_rng(2), batch, IN, length)
    cfg = inference.DecodeConfig(method="beam", num_decodes=4, alpha=0.6)
    decodes, aux = inference.predict_batch(module, params, b, cfg, return_all_decodes=True)
    decodes, scores = np.asarray(decodes), np.asarray(aux["scores"])
    assert decodes.shape == (batch, 4, length) and scores.shape == (batch, 4)
    assert np.all(np.diff(scores, axis=1) >= 0)
    for j in range(4):
        seqs = decodes[:, j]
        lens = np.array([hyp_length(s) for s in seqs])
        weights = (np.arange(length)[None] < lens[:, None]).astype(np.float64)
        dec_in = np.concatenate([np.zeros((batch, 1), np.int32), seqs[:, :-1]], 1)
        lp = log_softmax(full_logits(module, params, b["encoder_input_tokens"], dec_in))
        ll = (np.take_along_axis(lp, seqs[..., None], -1)[..., 0] * weights).sum(-1)
        np.testing.assert_allclose(scores[:, j], ll / ((5.0 + lens) / 6.0) ** 0.6, rtol=1e-4, atol=1e-4)
    best, best_aux = inference.predict_batch(module, params, b, cfg)
    np.testing.assert_array_equal(np.asarray(best), decodes[:, -1])
    greedy, g_aux = inference.predict_batch(module, params, b, inference.DecodeConfig(method="greedy"))
    beam1, b1_aux = inference.predict_batch(module, params, b,
                                            inference.DecodeConfig(method="beam", num_decodes=1, alpha=0.0))
    np.testing.assert_array_equal(np.asarray(beam1), np.asarray(greedy))
    np.testing.assert_allclose(np.asarray(b1_aux["scores"]), np.asarray(g_aux["scores"]), rtol=1e-5)


def test_against_hf_transformers_t5():
    """Peer implementation: HF's PyTorch T5 with our weights decodes and scores the same."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from synthpre_jax.models import hf_convert
    module, params = tiny_model(2)
    cfg = module.config
    hf = transformers.T5ForConditionalGeneration(transformers.T5Config(**hf_convert.hf_config_dict(cfg)))
    hf.load_state_dict({k: torch.from_numpy(v) for k, v in hf_convert.to_hf_state_dict(params, cfg).items()},
                       strict=False)
    hf.eval()
    batch, length = B, L
    b = make_batch(np.random.default_rng(3), batch, IN, length)
    ids = torch.from_numpy(b["encoder_input_tokens"].astype(np.int64))
    mask = ids > 0

    def hf_generate(**kw):
        with torch.no_grad():
            out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=length,
                              min_new_tokens=0, do_sample=False, **kw).numpy()[:, 1:]
        return np.pad(out, ((0, 0), (0, length - out.shape[1])))

    greedy, _ = inference.predict_batch(module, params, b, inference.DecodeConfig(method="greedy"))
    np.testing.assert_array_equal(np.asarray(greedy), hf_generate(num_beams=1))
    beam, _ = inference.predict_batch(module, params, b, inference.DecodeConfig(num_decodes=4, alpha=0.0))
    np.testing.assert_array_equal(np.asarray(beam), hf_generate(num_beams=4, length_penalty=0.0,
                                                                early_stopping=False))
    with torch.no_grad():
        logits = hf(input_ids=ids, attention_mask=mask,
                    decoder_input_ids=torch.from_numpy(b["decoder_input_tokens"].astype(np.int64))).logits
    lp = torch.log_softmax(logits.double(), -1).numpy()
    want = (np.take_along_axis(lp, b["decoder_target_tokens"][..., None], -1)[..., 0]
            * b["decoder_loss_weights"]).sum(-1)
    np.testing.assert_allclose(np.asarray(inference.score_batch(module, params, b)), want, rtol=1e-4, atol=1e-4)


def test_sampling_is_seeded_and_in_topk():
    module, params = tiny_model()
    b = make_batch(np.random.default_rng(4), B, IN, L)
    cfg = inference.DecodeConfig(method="sample", num_decodes=3, topk=4, temperature=1.0)
    a, aa = inference.predict_batch(module, params, b, cfg, rng=jax.random.PRNGKey(1), return_all_decodes=True)
    c, _ = inference.predict_batch(module, params, b, cfg, rng=jax.random.PRNGKey(1), return_all_decodes=True)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
    assert a.shape == (B, 3, L)
    # every sampled token is among the top 4 of the full decoder's logits on its prefix
    a = np.asarray(a)
    for j in range(3):
        seq = a[:, j]
        dec_in = np.concatenate([np.zeros((B, 1), np.int32), seq[:, :-1]], 1)
        logits = full_logits(module, params, b["encoder_input_tokens"], dec_in)
        top4 = np.argsort(-logits, -1)[..., :4]
        alive = np.cumsum(seq == EOS, 1) - (seq == EOS) == 0
        assert np.all((top4 == seq[..., None]).any(-1) | ~alive)


def test_user_errors():
    module, params = tiny_model()
    b = make_batch(np.random.default_rng(5), B, IN, L)
    with pytest.raises(UserError, match="max_decode_length"):
        inference.DecodeConfig(max_decode_length=0)
    with pytest.raises(UserError, match="method"):
        inference.DecodeConfig(method="nucleus")
    packed = dict(b, decoder_segment_ids=np.ones((B, L), np.int32))
    with pytest.raises(UserError, match="unpacked"):
        inference.predict_batch(module, params, packed, inference.DecodeConfig())
    with pytest.raises(UserError, match="unpacked"):
        inference.score_batch(module, params, packed)
    empty = dict(b, decoder_target_tokens=np.zeros((B, 0), np.int32))
    with pytest.raises(UserError, match="at least 1"):
        inference.predict_batch(module, params, empty, inference.DecodeConfig())
    d, _ = inference.predict_batch(module, params, b, inference.DecodeConfig(method="greedy", max_decode_length=3))
    assert d.shape == (B, 3)


SHARDED = textwrap.dedent(r'''
    import json
    import jax, jax.numpy as jnp, numpy as np
    import flax.linen as nn
    from jax.sharding import NamedSharding, PartitionSpec as P
    from synthpre_jax.models import inference, network
    from synthpre_jax.partitioning import PjitPartitioner
    from test_inference import TINY, make_batch
    assert jax.device_count() == 8
    cfg = network.T5Config(**dict(TINY, num_heads=4, head_dim=8))
    module = network.Transformer(cfg)
    ones = jnp.ones((2, 8), jnp.int32)
    boxed = module.init({"params": jax.random.PRNGKey(0)}, ones, ones, ones, enable_dropout=False)["params"]
    params = nn.unbox(boxed)
    batch = make_batch(np.random.default_rng(0), 8, 12, 7)
    configs = {"greedy": inference.DecodeConfig(method="greedy"),
               "beam": inference.DecodeConfig(num_decodes=4, alpha=0.6),
               "sample": inference.DecodeConfig(method="sample", num_decodes=2, topk=5)}

    def run_all(params, batch):
        out = {}
        for name, dc in configs.items():
            f = jax.jit(lambda p, bt, dc=dc: inference.predict_batch(module, p, bt, dc, rng=jax.random.PRNGKey(3),
                                                                     return_all_decodes=True))
            d, aux = f(params, batch)
            out[name] = (np.asarray(d).tolist(), np.asarray(aux["scores"]).tolist())
        out["score"] = np.asarray(jax.jit(lambda p, bt: inference.score_batch(module, p, bt))(params, batch)).tolist()
        return out

    dev0 = jax.devices()[0]
    res = {"1": run_all(jax.device_put(params, dev0), jax.device_put(batch, dev0))}
    for data, model in ((4, 2),):
        part = PjitPartitioner(num_partitions=model)
        with part.mesh, nn.logical_axis_rules(part.logical_axis_rules):
            p = jax.device_put(params, part.param_shardings(boxed))
            bt = jax.device_put(batch, part.batch_sharding())
            spec = str(p["encoder"]["layers_0"]["mlp"]["wi"]["kernel"].sharding.spec)
            res[f"{data}x{model}"] = run_all(p, bt)
            res[f"{data}x{model}"]["wi_spec"] = spec
    print("RESULT" + json.dumps(res))
''')


def test_sharded_decode_equals_single_device():
    proc = run_simulated_devices([sys.executable, "-c", SHARDED], 8)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(proc.stdout.split("RESULT", 1)[1])
    ref = res["1"]
    assert "model" in res["4x2"]["wi_spec"]
    for mesh in ("4x2",):
        for name in ("greedy", "beam", "sample"):
            assert res[mesh][name][0] == ref[name][0], (mesh, name)
            np.testing.assert_allclose(res[mesh][name][1], ref[name][1], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(res[mesh]["score"], ref["score"], rtol=1e-5, atol=1e-5)
