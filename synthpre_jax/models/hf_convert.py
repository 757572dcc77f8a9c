"""Convert T5 parameters between this project (T5X names) and HF transformers.

The HF `T5ForConditionalGeneration` state dict is the interchange format most
users hold. The mapping is exact (no numerical change besides transposes):
- HF Linear weights are [out, in]; our 2-D kernels are [in, out];
- HF keeps the relative attention bias only in block 0 of each stack, shaped
  [buckets, heads]; ours is one [heads, buckets] table per stack;
- neither side scales attention logits by 1/sqrt(d) (T5X folds it into the
  query kernel, HF's T5Attention uses scaling 1.0), so q kernels map as-is;
- tied v1.0 checkpoints scale decoder output by d_model**-0.5 in HF
  (`tie_word_embeddings=True`), which equals T5X's logits / sqrt(emb_dim);
- HF 'gated-gelu' uses gelu_new (tanh approximation) == flax's nn.gelu.

Checkpoints are read and written with `safetensors.numpy`, so no torch is
needed except for legacy `pytorch_model.bin` files.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Iterator, Mapping

import numpy as np

from synthpre_jax.errors import UserError
from synthpre_jax.models.network import T5Config

# Activation tuples we can express exactly in HF's `feed_forward_proj`.
_FF_PROJ = {
    ("relu",): "relu",
    ("silu",): "silu",
    ("gelu", "linear"): "gated-gelu",  # HF maps this one to gelu_new == nn.gelu
    ("relu", "linear"): "gated-relu",
    ("silu", "linear"): "gated-silu",
}
_FF_PROJ_INV = {v: k for k, v in _FF_PROJ.items()}
# Keys HF itself ignores or re-derives by tying (never errors when present).
_TIED_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
_IGNORED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)


def _mapping(config: T5Config) -> Iterator[tuple[str, str, tuple, bool]]:
    """Yield (our '/'-joined name, HF key, our shape, transpose?) for every tensor."""
    e, h, d, f = config.emb_dim, config.num_heads, config.head_dim, config.mlp_dim
    hd = h * d
    nb = config.relative_attention_num_buckets
    yield "token_embedder/embedding", "shared.weight", (config.vocab_size, e), False

    def attention(ours: str, theirs: str):
        for a, b in (("query", "q"), ("key", "k"), ("value", "v")):
            yield f"{ours}/{a}/kernel", f"{theirs}.{b}.weight", (e, hd), True
        yield f"{ours}/out/kernel", f"{theirs}.o.weight", (hd, e), True

    def mlp(ours: str, theirs: str):
        if len(config.mlp_activations) == 1:
            yield f"{ours}/wi/kernel", f"{theirs}.wi.weight", (e, f), True
        else:
            for i in range(len(config.mlp_activations)):
                yield f"{ours}/wi_{i}/kernel", f"{theirs}.wi_{i}.weight", (e, f), True
        yield f"{ours}/wo/kernel", f"{theirs}.wo.weight", (f, e), True

    for stack, n_layers in (("encoder", config.num_encoder_layers),
                            ("decoder", config.num_decoder_layers)):
        yield (f"{stack}/relpos_bias/rel_embedding",
               f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
               (h, nb), True)
        for i in range(n_layers):
            ours, theirs = f"{stack}/layers_{i}", f"{stack}.block.{i}.layer"

            def norm(name: str, idx: int):
                return f"{ours}/{name}/scale", f"{theirs}.{idx}.layer_norm.weight", (e,), False

            if stack == "encoder":
                yield norm("pre_attention_layer_norm", 0)
                yield from attention(f"{ours}/attention", f"{theirs}.0.SelfAttention")
                mlp_idx = 1
            else:
                yield norm("pre_self_attention_layer_norm", 0)
                yield from attention(f"{ours}/self_attention", f"{theirs}.0.SelfAttention")
                yield norm("pre_cross_attention_layer_norm", 1)
                yield from attention(f"{ours}/encoder_decoder_attention",
                                     f"{theirs}.1.EncDecAttention")
                mlp_idx = 2
            yield norm("pre_mlp_layer_norm", mlp_idx)
            yield from mlp(f"{ours}/mlp", f"{theirs}.{mlp_idx}.DenseReluDense")
        final = "encoder_norm" if stack == "encoder" else "decoder_norm"
        yield f"{stack}/{final}/scale", f"{stack}.final_layer_norm.weight", (e,), False
    if not config.logits_via_embedding:
        yield "decoder/logits_dense/kernel", "lm_head.weight", (e, config.vocab_size), True


def param_shapes(config: T5Config) -> dict[str, tuple]:
    """Our flat parameter names ('/'-joined) and shapes for `config`."""
    return {ours: shape for ours, _, shape, _ in _mapping(config)}


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        name = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(_flatten(v, name))
        else:
            out[name] = v
    return out


def _unflatten(flat: Mapping[str, Any]) -> dict:
    tree: dict = {}
    for name, v in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return tree


def _to_numpy(x: Any) -> np.ndarray:
    """Any array (numpy, jax, boxed, torch) -> float32 numpy."""
    x = getattr(x, "value", x)  # flax LogicallyPartitioned / Partitioned box
    if hasattr(x, "detach"):  # torch tensor (bf16 has no numpy dtype)
        x = x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float32)


def to_hf_state_dict(params: Mapping[str, Any], config: T5Config) -> dict[str, np.ndarray]:
    """Our params -> HF T5ForConditionalGeneration state dict (numpy float32).

    Includes the tied copies HF's `state_dict()` has (`encoder/decoder
    .embed_tokens`, and `lm_head` = shared when tied), so
    `model.load_state_dict(..., strict=True)` accepts it.
    """
    if set(params) == {"params"}:
        params = params["params"]
    flat = _flatten(params)
    expected = param_shapes(config)
    for name in flat:
        if name not in expected:
            raise UserError(f"parameter {name!r} does not belong to this T5Config "
                            f"({len(expected)} tensors expected); check the model gin file")
    out: dict[str, np.ndarray] = {}
    for ours, theirs, shape, transpose in _mapping(config):
        if ours not in flat:
            raise UserError(f"parameter {ours!r} (shape {shape}) is missing from the "
                            "parameters; check the model gin file matches the checkpoint")
        arr = _to_numpy(flat[ours])
        if arr.shape != shape:
            raise UserError(f"parameter {ours!r} has shape {arr.shape}, this T5Config "
                            f"expects {shape}; check the model gin file")
        out[theirs] = np.ascontiguousarray(arr.T if transpose else arr)
    for key in _TIED_COPIES:
        out[key] = out["shared.weight"]
    if config.logits_via_embedding:
        out["lm_head.weight"] = out["shared.weight"]
    return out


def from_hf_state_dict(state_dict: Mapping[str, Any], config: T5Config) -> dict:
    """HF T5 state dict -> our nested params dict of float32 numpy arrays.

    Tied copies and the stale cross-attention relpos table that old HF
    checkpoints carry are ignored; any other unknown key is an error because
    it means the checkpoint and `config` disagree (e.g. more layers).
    """
    sd = dict(state_dict)
    if "shared.weight" not in sd:  # some exports keep only the stack copies
        for alt in _TIED_COPIES:
            if alt in sd:
                sd["shared.weight"] = sd[alt]
                break
    flat: dict[str, np.ndarray] = {}
    used = set(_TIED_COPIES) | set(_IGNORED)
    if config.logits_via_embedding:
        used.add("lm_head.weight")
    for ours, theirs, shape, transpose in _mapping(config):
        if theirs not in sd:
            raise UserError(f"HF checkpoint lacks tensor {theirs!r} (needed for {ours!r}, "
                            f"shape {shape}); the checkpoint does not match the T5Config")
        arr = _to_numpy(sd[theirs])
        want = shape[::-1] if transpose else shape
        if arr.shape != want:
            raise UserError(f"HF tensor {theirs!r} has shape {arr.shape}, expected {want} "
                            f"for {ours!r}; the checkpoint does not match the T5Config")
        flat[ours] = np.ascontiguousarray(arr.T if transpose else arr)
        used.add(theirs)
    extra = sorted(k for k in sd if k not in used)
    if extra:
        raise UserError(f"HF checkpoint has unexpected tensor {extra[0]!r} (and {len(extra) - 1} "
                        "more); the checkpoint does not match the T5Config")
    return _unflatten(flat)


def hf_config_dict(config: T5Config) -> dict:
    """Keyword arguments for `transformers.T5Config` describing `config`."""
    proj = _FF_PROJ.get(tuple(config.mlp_activations))
    if proj is None:
        raise UserError(f"mlp_activations {config.mlp_activations} have no HF T5 equivalent; "
                        f"supported: {sorted(map(list, _FF_PROJ))}")
    return {
        "vocab_size": config.vocab_size,
        "d_model": config.emb_dim,
        "d_kv": config.head_dim,
        "d_ff": config.mlp_dim,
        "num_layers": config.num_encoder_layers,
        "num_decoder_layers": config.num_decoder_layers,
        "num_heads": config.num_heads,
        "relative_attention_num_buckets": config.relative_attention_num_buckets,
        "relative_attention_max_distance": config.relative_attention_max_distance,
        "dropout_rate": config.dropout_rate,
        "layer_norm_epsilon": 1e-6,
        "initializer_factor": 1.0,
        "feed_forward_proj": proj,
        "tie_word_embeddings": bool(config.logits_via_embedding),
        "is_encoder_decoder": True,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
    }


def t5config_from_hf(hf_config: Mapping[str, Any]) -> T5Config:
    """Our T5Config from an HF T5 config (dict or config object).

    The activation dtype stays float32 (an HF `torch_dtype` describes storage,
    not compute); set `dtype` yourself for bfloat16 training.
    """
    if not isinstance(hf_config, Mapping):
        hf_config = hf_config.to_dict()
    model_type = hf_config.get("model_type", "t5")
    if model_type not in ("t5", "mt5"):
        raise UserError(f"HF config has model_type {model_type!r}; only T5 checkpoints "
                        "(model_type 't5') can be converted")
    for key in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads"):
        if key not in hf_config:
            raise UserError(f"HF T5 config lacks {key!r}; is config.json complete?")
    eps = float(hf_config.get("layer_norm_epsilon", 1e-6))
    if abs(eps - 1e-6) > 1e-12:
        raise UserError(f"HF T5 config has layer_norm_epsilon={eps}; this network uses 1e-6")
    proj = hf_config.get("feed_forward_proj", "relu")
    if proj not in _FF_PROJ_INV:
        raise UserError(f"HF feed_forward_proj {proj!r} is not supported; "
                        f"use one of {sorted(_FF_PROJ_INV)}")
    # HF semantics: a missing tie_word_embeddings means tied (T5 1.0).
    tied = hf_config.get("tie_word_embeddings", True)
    if "scale_decoder_outputs" in hf_config and "tie_word_embeddings" not in hf_config:
        tied = bool(hf_config["scale_decoder_outputs"])
    num_layers = int(hf_config["num_layers"])
    return T5Config(
        vocab_size=int(hf_config["vocab_size"]),
        emb_dim=int(hf_config["d_model"]),
        num_heads=int(hf_config["num_heads"]),
        num_encoder_layers=num_layers,
        num_decoder_layers=int(hf_config.get("num_decoder_layers") or num_layers),
        head_dim=int(hf_config["d_kv"]),
        mlp_dim=int(hf_config["d_ff"]),
        mlp_activations=_FF_PROJ_INV[proj],
        dropout_rate=float(hf_config.get("dropout_rate", 0.1)),
        logits_via_embedding=bool(tied),
        relative_attention_num_buckets=int(hf_config.get("relative_attention_num_buckets", 32)),
        relative_attention_max_distance=int(hf_config.get("relative_attention_max_distance", 128)),
    )


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    """All tensors of a .safetensors file as float32 numpy (bf16 via flax/ml_dtypes)."""
    from safetensors import safe_open
    out = {}
    with safe_open(path, framework="numpy") as f:
        keys = list(f.keys())
        bad = []
        for k in keys:
            try:
                out[k] = np.asarray(f.get_tensor(k), dtype=np.float32)
            except TypeError:  # bfloat16 has no plain-numpy dtype
                bad.append(k)
    if bad:
        with safe_open(path, framework="flax") as f:
            for k in bad:
                out[k] = np.asarray(f.get_tensor(k), dtype=np.float32)
    return out


def load_hf_checkpoint(path: str) -> tuple[dict, T5Config]:
    """Read an HF T5 checkpoint directory -> (our params, our T5Config).

    Accepts `model.safetensors`, a sharded `model.safetensors.index.json`, or
    a legacy `pytorch_model.bin` (which needs torch).
    """
    if not os.path.isdir(path):
        raise UserError(f"HF checkpoint directory {path!r} does not exist")
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise UserError(f"{path!r} has no config.json; pass an HF T5 checkpoint directory")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            hf_cfg = json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{cfg_path!r} is not valid JSON ({e})") from None
    config = t5config_from_hf(hf_cfg)
    single = os.path.join(path, "model.safetensors")
    index = os.path.join(path, "model.safetensors.index.json")
    legacy = os.path.join(path, "pytorch_model.bin")
    if os.path.isfile(single):
        state = _read_safetensors(single)
    elif os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        state = {}
        for shard in shards:
            state.update(_read_safetensors(os.path.join(path, shard)))
    elif os.path.isfile(legacy):
        try:
            import torch
        except ImportError:
            raise UserError(f"{legacy!r} is a PyTorch file and torch is not installed; "
                            "install torch or convert it to model.safetensors") from None
        state = {k: _to_numpy(v) for k, v in
                 torch.load(legacy, map_location="cpu", weights_only=True).items()}
    else:
        raise UserError(f"{path!r} has no model.safetensors, model.safetensors.index.json "
                        "or pytorch_model.bin")
    return from_hf_state_dict(state, config), config


def save_hf_checkpoint(params: Mapping[str, Any], config: T5Config, path: str) -> None:
    """Write config.json + model.safetensors that `from_pretrained` loads.

    Tied copies are left out as HF itself does. Files are written under
    temporary names and renamed, so an interrupted save leaves no partial file.
    """
    from safetensors.numpy import save_file
    state = to_hf_state_dict(params, config)
    for key in _TIED_COPIES:
        state.pop(key)
    if config.logits_via_embedding:
        state.pop("lm_head.weight")
    hf_cfg = dict(hf_config_dict(config), model_type="t5",
                  architectures=["T5ForConditionalGeneration"], torch_dtype="float32")
    os.makedirs(path, exist_ok=True)
    for name, writer in (
            ("model.safetensors", lambda p: save_file(state, p, metadata={"format": "pt"})),
            ("config.json", lambda p: _write_json(hf_cfg, p))):
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=path)
        os.close(fd)
        try:
            writer(tmp)
            os.replace(tmp, os.path.join(path, name))
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def _write_json(obj: Any, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
