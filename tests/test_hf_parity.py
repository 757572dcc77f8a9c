"""Numerical parity with HF transformers' PyTorch T5 (an independent implementation).

Our params go through `to_hf_state_dict` into `T5ForConditionalGeneration`
and the logits must agree on padded random inputs long enough (40) to reach
the logarithmic relative-position buckets; a randomly initialised HF model
converted the other way must agree too. Round trips must be exact.
"""
from __future__ import annotations

import dataclasses
import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from synthpre_jax.errors import UserError  # noqa: E402
from synthpre_jax.models import hf_convert  # noqa: E402
from synthpre_jax.models.network import T5Config, Transformer  # noqa: E402

V1_0 = T5Config(vocab_size=300, emb_dim=64, num_heads=4, head_dim=16, mlp_dim=128,
                num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0)
V1_1 = dataclasses.replace(V1_0, num_heads=3, head_dim=24, num_decoder_layers=3,
                           mlp_activations=("gelu", "linear"), logits_via_embedding=False)
CONFIGS = {"v1_0": V1_0, "v1_1": V1_1}
B, ENC_LEN, DEC_LEN = 3, 40, 37


def _inputs(vocab: int):
    rng = np.random.default_rng(0)
    enc = rng.integers(2, vocab, (B, ENC_LEN))
    enc[0, 30:] = 0
    enc[2, 6:] = 0
    tgt = rng.integers(2, vocab, (B, DEC_LEN))
    tgt[1, 21:] = 0
    tgt[2, 4:] = 0
    dec = np.concatenate([np.zeros((B, 1), np.int64), tgt[:, :-1]], axis=1) * (tgt > 0)
    return enc, dec, tgt


@functools.lru_cache(maxsize=None)
def _forward(cfg: T5Config):
    """One jitted forward per config (compiled once for all tests)."""
    return jax.jit(lambda p, e, d, t: Transformer(cfg).apply({"params": p}, e, d, t,
                                                             enable_dropout=False))


def _ours(cfg: T5Config, params, enc, dec, tgt) -> np.ndarray:
    return np.asarray(_forward(cfg)(params, enc, dec, tgt))


def _hf_model(cfg: T5Config, state: dict | None):
    model = transformers.T5ForConditionalGeneration(
        transformers.T5Config(**hf_convert.hf_config_dict(cfg)))
    if not cfg.logits_via_embedding and model.lm_head.weight is model.shared.weight:
        # transformers 5.x ties lm_head to shared whatever the config says (its
        # from_pretrained unties when both tensors differ); untie explicitly.
        model.lm_head.weight = torch.nn.Parameter(model.shared.weight.detach().clone())
    if state is not None:
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()},
                              strict=True)
    return model.eval()


def _hf_logits(model, enc, dec, tgt) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc > 0).long(),
                    decoder_input_ids=torch.tensor(dec),
                    decoder_attention_mask=torch.tensor(tgt > 0).long())
    return out.logits.float().numpy()


def _assert_close(ours: np.ndarray, theirs: np.ndarray, tgt: np.ndarray):
    """Relative error < 1e-4 on every non-padding target position.

    Padding query rows are not compared: T5X masks them out entirely, HF only
    masks padding keys, so the two are free to differ there.
    """
    valid = tgt > 0
    a, b = ours[valid], theirs[valid]
    assert np.linalg.norm(a - b) / np.linalg.norm(b) < 1e-4
    assert np.abs(a - b).max() < 1e-4 * np.abs(b).max()


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def case(request):
    cfg = CONFIGS[request.param]
    enc, dec, tgt = _inputs(cfg.vocab_size)
    key = jax.random.key(7, impl="rbg")  # cheap compiles; same init semantics
    params = jax.jit(lambda k: Transformer(cfg).init(k, enc[:1], dec[:1], tgt[:1],
                                                     enable_dropout=False))(key)["params"]
    params = jax.tree_util.tree_map(np.asarray, nn.unbox(params))
    return cfg, params, (enc, dec, tgt), _ours(cfg, params, enc, dec, tgt)


def test_our_params_give_hf_logits(case):
    cfg, params, (enc, dec, tgt), ours = case
    hf = _hf_logits(_hf_model(cfg, hf_convert.to_hf_state_dict(params, cfg)), enc, dec, tgt)
    _assert_close(ours, hf, tgt)


def test_round_trip_is_exact(case):
    cfg, params, _, _ = case
    back = hf_convert.from_hf_state_dict(hf_convert.to_hf_state_dict(params, cfg), cfg)
    flat = lambda t: dict(jax.tree_util.tree_leaves_with_path(t))
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(params)
    for (path, a), (_, b) in zip(sorted(flat(params).items(), key=str),
                                 sorted(flat(back).items(), key=str)):
        assert b.dtype == np.float32
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


def test_save_and_load_checkpoint(case, tmp_path):
    cfg, params, (enc, dec, tgt), ours = case
    hf_convert.save_hf_checkpoint(params, cfg, str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded, loaded_cfg = hf_convert.load_hf_checkpoint(str(tmp_path))
    assert loaded_cfg == cfg
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, loaded)
    # transformers itself reads the directory and reproduces our logits.
    model = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path)).eval()
    _assert_close(ours, _hf_logits(model, enc, dec, tgt), tgt)


def test_random_hf_model_converts_to_same_logits(case):
    cfg, _, (enc, dec, tgt), _ = case
    torch.manual_seed(0)
    model = _hf_model(cfg, None)
    if not cfg.logits_via_embedding:
        torch.nn.init.normal_(model.lm_head.weight, std=0.05)
    with torch.no_grad():  # HF inits the relpos tables near zero; make them matter
        for stack in (model.encoder, model.decoder):
            bias = stack.block[0].layer[0].SelfAttention.relative_attention_bias.weight
            bias.copy_(torch.randn_like(bias))
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    params = hf_convert.from_hf_state_dict(state, cfg)
    _assert_close(_ours(cfg, params, enc, dec, tgt), _hf_logits(model, enc, dec, tgt), tgt)


def test_load_pytorch_bin_and_bfloat16_safetensors(case, tmp_path):
    cfg, params, _, _ = case
    state = hf_convert.to_hf_state_dict(params, cfg)
    config_json = json.dumps(dict(hf_convert.hf_config_dict(cfg), model_type="t5"))
    legacy, bf16 = tmp_path / "legacy", tmp_path / "bf16"
    for d in (legacy, bf16):
        d.mkdir()
        (d / "config.json").write_text(config_json)
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state.items()},
               legacy / "pytorch_model.bin")
    loaded, _ = hf_convert.load_hf_checkpoint(str(legacy))
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, loaded)

    from safetensors.torch import save_file
    halves = {k: torch.from_numpy(np.array(v)).bfloat16() for k, v in state.items()
              if k not in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")}
    if cfg.logits_via_embedding:
        halves.pop("lm_head.weight")
    save_file(halves, str(bf16 / "model.safetensors"))
    loaded, _ = hf_convert.load_hf_checkpoint(str(bf16))
    rounded = jax.tree_util.tree_map(
        lambda x: np.asarray(jnp.asarray(x, jnp.bfloat16), np.float32), params)
    jax.tree_util.tree_map(np.testing.assert_array_equal, rounded, loaded)


def test_configs_round_trip():
    for cfg in CONFIGS.values():
        assert hf_convert.t5config_from_hf(hf_convert.hf_config_dict(cfg)) == cfg
        hf = transformers.T5Config(**hf_convert.hf_config_dict(cfg))
        assert hf_convert.t5config_from_hf(hf.to_dict()).mlp_activations == cfg.mlp_activations
    # A published-style T5 1.1 config.json (tie_word_embeddings false, gated-gelu).
    v11 = hf_convert.t5config_from_hf({
        "model_type": "t5", "d_model": 512, "d_kv": 64, "d_ff": 1024, "num_layers": 8,
        "num_heads": 6, "vocab_size": 32128, "feed_forward_proj": "gated-gelu",
        "tie_word_embeddings": False, "dropout_rate": 0.1})
    assert (v11.num_decoder_layers, v11.mlp_activations, v11.logits_via_embedding) == (
        8, ("gelu", "linear"), False)


def test_mismatches_are_one_line_user_errors(case, tmp_path):
    cfg, params, _, _ = case
    state = hf_convert.to_hf_state_dict(params, cfg)
    key = "decoder.block.1.layer.0.SelfAttention.k.weight"
    deeper = dataclasses.replace(cfg, num_encoder_layers=1)
    (tmp_path / "config.json").write_text(json.dumps(hf_convert.hf_config_dict(cfg)))
    cases = [
        (lambda: hf_convert.from_hf_state_dict(
            {k: v for k, v in state.items() if k != key}, cfg), key),
        (lambda: hf_convert.from_hf_state_dict(
            dict(state, **{key: np.zeros((3, 3), np.float32)}), cfg), "(3, 3)"),
        (lambda: hf_convert.from_hf_state_dict(state, deeper), "encoder.block.1."),
        (lambda: hf_convert.to_hf_state_dict(params, deeper), "layers_1"),
        (lambda: hf_convert.load_hf_checkpoint(str(tmp_path / "nowhere")), "does not exist"),
        (lambda: hf_convert.load_hf_checkpoint(str(tmp_path)), "model.safetensors"),
        (lambda: hf_convert.hf_config_dict(dataclasses.replace(cfg, mlp_activations=("tanh",))),
         "tanh"),
    ]
    for call, needle in cases:
        with pytest.raises(UserError) as info:
            call()
        assert needle in str(info.value) and "\n" not in str(info.value)
