"""Reader for legacy (pre-Orbax) T5X checkpoints, so their weights can seed a run here.

Layout read (T5X `checkpoints.Checkpointer`, format versions 2 and 3):

    checkpoint_<step>/
      checkpoint                        msgpack: {'version': 3, 'optimizer': {'target': params,
                                                  'state': {'step': ..., 'param_states': ...}}}
      target.encoder.layers_0.attention.query.kernel/   zarr array (TensorStore), one per
      state.param_states....                            partitioned leaf

Small leaves are stored inline in the msgpack as flax ndarray extension values. Large
(partitioned) leaves are replaced by the JSON of their `tensorstore.Spec`, whose kvstore path is
*relative* to the msgpack's directory (driver 'file', 'gfile' or 'gcs'; tensorstore < 0.1.14 put
'path' at the top level of the spec). T5X's early Orbax layout uses the same msgpack with
'_optimizer' in place of 'optimizer' and 'PLACEHOLDER://<name>' strings for zarr arrays.
Version 2 wrote bfloat16 TensorStore arrays as their uint16 bits; version 0 is a plain Flax
optimizer state ({'target', 'state'} at the top). T5X itself refuses versions < 2; their params
are still read here (with a warning), since the tree layout is the same.

Decoding the msgpack is flax.serialization's job and reading zarr is TensorStore's; this module
only knows the T5X layout around them, because t5x itself is not installable from PyPI.
"""
from __future__ import annotations

import copy
import logging
import os
import re
from typing import Any, Optional

import numpy as np
from etils import epath

from synthpre_jax.errors import UserError

log = logging.getLogger(__name__)

PLACEHOLDER = "PLACEHOLDER://"
_MSGPACK_MAP_MARKERS = set(range(0x80, 0x90)) | {0xDE, 0xDF}


def find_legacy_msgpack(path: epath.PathLike) -> Optional[epath.Path]:
    """The T5X msgpack file that `path` names or holds (dir/checkpoint, dir/state/checkpoint)."""
    p = epath.Path(path)
    if p.is_file():
        candidates = [p]
    elif p.is_dir():
        candidates = [p / "checkpoint", p / "state" / "checkpoint"]
    else:
        candidates = []
    for c in candidates:
        if c.is_file() and _looks_like_msgpack_map(c):
            return c
    return None


def _looks_like_msgpack_map(path: epath.Path) -> bool:
    """A msgpack map starts with a map marker (T5X's TF-format `checkpoint` file starts with 'm')."""
    with path.open("rb") as f:
        head = f.read(1)
    return bool(head) and head[0] in _MSGPACK_MAP_MARKERS


def read_legacy_checkpoint(path: epath.PathLike, *, optimizer_state: bool = False) -> dict:
    """Read a legacy T5X checkpoint.

    Args:
      path: the checkpoint directory (`checkpoint_<step>`) or its `checkpoint` msgpack file.
      optimizer_state: also read the optimizer state (e.g. Adafactor's `param_states`).

    Returns:
      {'params': nested dict of numpy arrays (stored dtype), 'step': int or None,
       'version': int, 'optimizer_state': raw optimizer state (only if asked)}.
    """
    from flax import serialization

    msgpack_file = find_legacy_msgpack(path)
    if msgpack_file is None:
        raise UserError(f"no legacy T5X checkpoint at {path}: expected a msgpack file named "
                        "'checkpoint' (or that directory); check the path")
    try:
        contents = serialization.msgpack_restore(msgpack_file.read_bytes())
    except Exception as e:  # noqa: BLE001 - any decode failure is a bad file from the user
        raise UserError(f"{msgpack_file} is not a readable T5X checkpoint ({type(e).__name__}: "
                        f"{str(e)[:120]}); check that the file is complete") from e
    if not isinstance(contents, dict):
        raise UserError(f"{msgpack_file} is not a T5X checkpoint (top level is not a mapping)")
    version = int(contents.get("version", 0))
    if "optimizer" in contents:
        opt = contents["optimizer"]
    elif "_optimizer" in contents:
        opt = contents["_optimizer"]
    elif "target" in contents:
        opt = contents
    else:
        raise UserError(f"{msgpack_file}: T5X checkpoint format version {version} with top-level "
                        f"keys {sorted(contents)} is not supported (expected 'optimizer' or "
                        "'target'); convert it with T5X first")
    if version > 3:
        log.warning("%s: T5X checkpoint format version %d is newer than 3; reading it as 3",
                    msgpack_file, version)
    elif version < 2 and "_optimizer" not in contents:
        log.warning("%s: T5X checkpoint format version %d predates T5X's own reader (>= 2); "
                    "reading its params with the same layout", msgpack_file, version)
    if not isinstance(opt, dict) or not isinstance(opt.get("target"), dict):
        raise UserError(f"{msgpack_file}: the checkpoint has no parameter tree ('target')")
    # Versions before 3 wrote bfloat16 TensorStore arrays as their raw uint16 bits.
    reader = _TensorStoreReader(msgpack_file.parent, msgpack_file,
                                bf16_as_uint16=version < 3 and "_optimizer" not in contents)
    state = opt.get("state") if isinstance(opt.get("state"), dict) else {}
    out = {"params": reader.resolve(opt["target"], "target"),
           "step": reader.resolve(state.get("step"), "state/step"), "version": version}
    if optimizer_state:
        out["optimizer_state"] = reader.resolve(state, "state")
    reader.read_all()
    out = reader.fill(out)
    out["step"] = None if out["step"] is None else int(np.asarray(out["step"]))
    _check_params(out["params"], msgpack_file)
    return out


def _check_params(params: dict, where: epath.Path) -> None:
    def walk(node: Any, prefix: str) -> None:
        for k, v in node.items():
            path = f"{prefix}/{k}" if prefix else k
            if isinstance(v, dict):
                walk(v, path)
            elif not isinstance(v, np.ndarray):
                raise UserError(f"{where}: parameter {path} is stored as {type(v).__name__} "
                                f"({str(v)[:80]!r}), not an array; the checkpoint is incomplete")

    walk(params, "")


class _Pending:
    """Stands for a TensorStore leaf until all reads are issued together (concurrent I/O)."""

    def __init__(self, index: int):
        self.index = index


class _TensorStoreReader:
    def __init__(self, ckpt_dir: epath.Path, msgpack_file: epath.Path, bf16_as_uint16: bool):
        self.ckpt_dir = str(ckpt_dir)
        self.bf16_as_uint16 = bf16_as_uint16
        self.msgpack_file = msgpack_file
        self.specs: list[tuple[dict, str]] = []
        self.arrays: list[np.ndarray] = []

    def resolve(self, node: Any, where: str) -> Any:
        """Copy of `node` with inline arrays as numpy and TensorStore leaves as `_Pending`."""
        if isinstance(node, dict):
            if _is_ts_spec(node):
                return self._defer(self._absolute_spec(node, where), where)
            return {k: self.resolve(v, f"{where}/{k}") for k, v in node.items()}
        if isinstance(node, str) and node.startswith(PLACEHOLDER):
            rel = node[len(PLACEHOLDER):]
            return self._defer({"driver": "zarr", "kvstore": self._kvstore(rel)}, where)
        if isinstance(node, (np.ndarray, np.generic)):
            return np.asarray(node)
        return node

    def _defer(self, spec: dict, where: str) -> _Pending:
        self.specs.append((spec, where))
        return _Pending(len(self.specs) - 1)

    def _kvstore(self, rel: str) -> dict:
        m = re.fullmatch(r"gs://([^/]*)/(.*)", self.ckpt_dir, re.DOTALL)
        if m:
            return {"driver": "gcs", "bucket": m.group(1), "path": os.path.join(m.group(2), rel)}
        return {"driver": "file", "path": os.path.join(self.ckpt_dir, rel)}

    def _absolute_spec(self, spec: dict, where: str) -> dict:
        spec = copy.deepcopy(spec)
        kv = spec.get("kvstore")
        rel = kv.get("path") if isinstance(kv, dict) else None
        if rel is None:
            rel = spec.pop("path", None)   # tensorstore < 0.1.14 layout
        else:
            spec.pop("path", None)
        if not isinstance(rel, str):
            raise UserError(f"{self.msgpack_file}: TensorStore leaf {where} has no relative path "
                            f"in its spec ({str(spec)[:120]}); the checkpoint is not T5X's")
        spec["kvstore"] = self._kvstore(rel)
        return spec

    def read_all(self) -> None:
        """Open and read every deferred TensorStore leaf, all requests in flight at once."""
        import tensorstore as ts

        opens = [ts.open(_without_layout(spec), open=True) for spec, _ in self.specs]
        stores = []
        for (spec, where), fut in zip(self.specs, opens):
            try:
                stores.append(fut.result())
            except Exception as e:  # noqa: BLE001
                stores.append(self._open_without_zarray(spec, where, e))
        reads = [s.read() for s in stores]
        for (spec, where), fut in zip(self.specs, reads):
            try:
                arr = np.asarray(fut.result())
            except Exception as e:  # noqa: BLE001
                raise UserError(f"{self.msgpack_file}: cannot read TensorStore array {where} "
                                f"({str(e).splitlines()[0][:160]}); the checkpoint is damaged") from e
            if arr.dtype == np.uint16 and self.bf16_as_uint16:
                import ml_dtypes
                arr = arr.view(ml_dtypes.bfloat16)
            self.arrays.append(arr)

    def _open_without_zarray(self, spec: dict, where: str, err: Exception) -> Any:
        """Open a zarr array whose `.zarray` file is gone, from the metadata kept in the spec."""
        import tensorstore as ts

        meta = spec.get("metadata") or {}
        # Only when chunk files are there: an absent array would otherwise read as fill values.
        if "NOT_FOUND" in str(err) and "shape" in meta and "chunks" in meta and _has_keys(spec["kvstore"]):
            try:
                return ts.open(spec, open=True, assume_metadata=True).result()
            except Exception:  # noqa: BLE001
                pass
        raise UserError(f"{self.msgpack_file}: cannot open TensorStore array {where} at "
                        f"{spec.get('kvstore', {}).get('path')} ({str(err).splitlines()[0][:160]}); "
                        "copy the whole checkpoint directory, not only the msgpack file") from err

    def fill(self, node: Any) -> Any:
        if isinstance(node, dict):
            return {k: self.fill(v) for k, v in node.items()}
        if isinstance(node, _Pending):
            return self.arrays[node.index]
        return node


def _has_keys(kvstore: dict) -> bool:
    import tensorstore as ts

    try:
        kv = dict(kvstore, path=kvstore["path"].rstrip("/") + "/")
        return bool(ts.KvStore.open(kv).result().list().result())
    except Exception:  # noqa: BLE001
        return False


def _is_ts_spec(node: dict) -> bool:
    return isinstance(node.get("driver"), str) and ("kvstore" in node or "path" in node)


def _without_layout(spec: dict) -> dict:
    """The spec minus chunking/compression, so the stored `.zarray` decides them (as T5X does)."""
    spec = copy.deepcopy(spec)
    meta = spec.get("metadata")
    if isinstance(meta, dict):
        meta.pop("chunks", None)
        meta.pop("compressor", None)
    return spec
