"""Helpers behind `checkpoints`: parameter paths, the assignment map, and checkpoint validation.

Kept apart from `checkpoints.py` so that each module stays small and the pure pieces (path
flattening, T5X assignment-map resolution) can be tested without Orbax.

Validation exists because Orbax only guarantees that a *finished* save is atomic: a checkpoint
that was complete once can still be damaged later (a disk filled during copy, a half-synced
bucket, files removed by hand). Orbax lists such a step as usual and only fails deep inside
restore. `checkpoint_problem` finds that cheaply before a resume picks the step: it reads the
tree metadata and walks the OCDBT B+tree (small node files only) and checks that every data file
a value lives in exists and is long enough, without reading array data.
"""
from __future__ import annotations

import json
import logging
import re
from typing import Any, Iterable, Mapping, Optional, Sequence

import jax
from etils import epath

log = logging.getLogger(__name__)

ITEM_NAME = "state"          # checkpoint_<step>/state/ (the name T5X's Orbax layout uses)
STEP_PREFIX = "checkpoint"   # checkpoint_<step>, as T5X names step directories
_STEP_DIR_RE = re.compile(rf"^{STEP_PREFIX}_(\d+)$")


# --------------------------------------------------------------------------- parameter paths
def flatten_params(params: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
    """{'a/b/kernel': leaf} for a nested mapping (empty sub-mappings are dropped, as in T5X)."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        for key, value in node.items():
            path = f"{prefix}{sep}{key}" if prefix else str(key)
            if isinstance(value, Mapping):
                walk(value, path)
            else:
                out[path] = value

    walk(params, "")
    return out


def unflatten_params(flat: Mapping[str, Any], sep: str = "/") -> dict:
    """Inverse of `flatten_params`."""
    out: dict = {}
    for path, value in flat.items():
        node = out
        *parents, last = path.split(sep)
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return out


def _key_str(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def tree_paths(tree: Any) -> dict[str, Any]:
    """{'opt_state/1/0/v/encoder/...': leaf} for any pytree (dicts, lists, namedtuples).

    Dict keys, sequence indices and namedtuple field names all become plain path parts, so the
    paths of an optax state and of Orbax's stored metadata for it compare equal.
    """
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)[0]
    return {"/".join(_key_str(k) for k in path): leaf for path, leaf in leaves if leaf is not None}


# --------------------------------------------------------------------------- assignment map
def resolve_assignment(fresh_paths: Iterable[str],
                       assignment_map: Optional[Sequence[tuple[str, Optional[str]]]]
                       ) -> tuple[dict[str, Optional[str]], set[str]]:
    """For each fresh param path, the restored path it takes (None: keep the fresh value).

    T5X semantics: the first rule whose regex fully matches the path decides; its replacement
    (with regex groups) names the restored path, None keeps the fresh init; no matching rule
    means the same path. T5X writes patterns over train-state paths ('target/encoder/...');
    those are accepted too: a rule is also tried on 'target/<path>' and a 'target/' prefix of
    the replacement is dropped. Returns (mapping, patterns that matched nothing).
    """
    rules = [(re.compile(p), r) for p, r in (assignment_map or ())]
    used: set[str] = set()
    mapping: dict[str, Optional[str]] = {}
    for path in fresh_paths:
        mapping[path] = path
        for regex, repl in rules:
            m = regex.fullmatch(path) or regex.fullmatch("target/" + path)
            if m is None:
                continue
            used.add(regex.pattern)
            if repl is None:
                mapping[path] = None
            else:
                src = m.expand(repl)
                mapping[path] = src[len("target/"):] if src.startswith("target/") else src
            break
    unused = {regex.pattern for regex, _ in rules} - used
    return mapping, unused


def apply_assignment_map(restored: Mapping[str, Any], fresh: Mapping[str, Any],
                         assignment_map: Optional[Sequence[tuple[str, Optional[str]]]]) -> dict:
    """A tree shaped like `fresh` whose leaves come from `restored` as the map says.

    Pure. A None rule keeps the fresh leaf; a fresh path whose source is missing from
    `restored` also keeps the fresh leaf (strictness is checked by `restore_initial_params`).
    Restored params that no fresh path takes are dropped.
    """
    flat_restored = flatten_params(restored)
    flat_fresh = flatten_params(fresh)
    mapping, _ = resolve_assignment(flat_fresh, assignment_map)
    out = {}
    for path, value in flat_fresh.items():
        src = mapping[path]
        out[path] = flat_restored[src] if src is not None and src in flat_restored else value
    return unflatten_params(out)


# --------------------------------------------------------------------------- step directories
def step_dirs(model_dir: epath.PathLike) -> dict[int, epath.Path]:
    """{step: path} of the finished-looking `checkpoint_<step>` directories under `model_dir`."""
    root = epath.Path(model_dir)
    if not root.is_dir():
        return {}
    out = {}
    for child in root.iterdir():
        m = _STEP_DIR_RE.match(child.name)
        if m and child.is_dir():
            out[int(m.group(1))] = child
    return out


def is_orbax_item_dir(path: epath.PathLike) -> bool:
    """Whether `path` holds one Orbax PyTree item (its `_METADATA` tree file)."""
    return (epath.Path(path) / "_METADATA").is_file()


def orbax_item_dir(step_dir: epath.PathLike) -> Optional[epath.Path]:
    """The item directory inside an Orbax step directory (ours: `state`; Orbax default: `default`)."""
    step_dir = epath.Path(step_dir)
    for name in (ITEM_NAME, "default"):
        if is_orbax_item_dir(step_dir / name):
            return step_dir / name
    return step_dir if is_orbax_item_dir(step_dir) else None


def _array_names(tree_metadata: Mapping[str, Any]) -> list[str]:
    """Stored names ('params.encoder.layers_0...') of the array leaves in Orbax's `_METADATA`."""
    names = []
    for entry in tree_metadata.values():
        value = entry.get("value_metadata", {})
        if value.get("skip_deserialize") or value.get("value_type") not in ("jax.Array", "np.ndarray"):
            continue
        names.append(".".join(str(k["key"]) for k in entry["key_metadata"]))
    return names


def _ocdbt_problem(item_dir: epath.Path, names: list[str]) -> Optional[str]:
    """Walk the OCDBT tree of `item_dir`; report a missing/short file or a missing array."""
    import tensorstore as ts

    if not (item_dir / "manifest.ocdbt").is_file():
        return "manifest.ocdbt is missing"
    base = ts.KvStore.open(_kvstore_url(item_dir)).result()
    keys: set[bytes] = set()
    sizes: dict[str, int] = {}

    def check_location(loc: str) -> Optional[str]:
        # '<kind>:<base path>:<relative path>:<offset>:<length>'
        head, offset, length = loc.rsplit(":", 2)
        _, base_path, rel = head.split(":", 2)
        name = base_path + rel
        if name not in sizes:
            f = item_dir / name
            sizes[name] = f.stat().length if f.is_file() else -1
        if sizes[name] < int(offset) + int(length):
            return f"data file {name} is missing" if sizes[name] < 0 else f"data file {name} is truncated"
        return None

    try:
        manifest = ts.ocdbt.dump(base).result()
        root = manifest["versions"][-1]["root"]
        pending = [root["location"]] if "location" in root else []
        while pending:
            loc = pending.pop()
            problem = check_location(loc)
            if problem:
                return problem
            node = ts.ocdbt.dump(base, loc).result()
            for entry in node.get("entries", []):
                if "location" in entry:          # interior node: child subtree
                    pending.append(entry["location"])
                    continue
                keys.add(entry["key"])
                if "indirect_value" in entry:
                    problem = check_location(entry["indirect_value"])
                    if problem:
                        return problem
    except Exception as e:  # noqa: BLE001 - any unreadable node means the step is damaged
        return f"OCDBT index unreadable ({str(e).splitlines()[0][:200]})"
    present = {k.split(b"/", 1)[0].decode() for k in keys}
    missing = [n for n in names if n not in present]
    if missing:
        return f"{len(missing)} arrays missing from the index, e.g. {missing[0]}"
    return None


def _kvstore_url(path: epath.Path) -> str:
    s = str(path)
    return (s if "://" in s else "file://" + s).rstrip("/") + "/"


def checkpoint_problem(step_dir: epath.PathLike) -> Optional[str]:
    """Why the Orbax checkpoint in `step_dir` cannot be restored, or None if it looks complete."""
    step_dir = epath.Path(step_dir)
    item = step_dir / ITEM_NAME
    if not item.is_dir():
        item = orbax_item_dir(step_dir) or item
        if not item.is_dir():
            return f"the '{ITEM_NAME}' item directory is missing"
    try:
        meta = json.loads((item / "_METADATA").read_text())
        names = _array_names(meta["tree_metadata"])
    except FileNotFoundError:
        return "_METADATA is missing"
    except (ValueError, KeyError, TypeError) as e:
        return f"_METADATA is unreadable ({e})"
    if not names:
        return "no arrays recorded in _METADATA"
    if meta.get("use_ocdbt", True):
        return _ocdbt_problem(item, names)
    missing = [n for n in names if not (item / n).is_dir()]
    return f"array directory {missing[0]} is missing" if missing else None
