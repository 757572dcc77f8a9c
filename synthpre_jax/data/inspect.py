"""`synthpre inspect NAME [--split S] [--num N]`: print decoded examples of a task or mixture.

Works for any registered seqio task or mixture: this project's synthetic tasks
and mixtures (`tasks.synthetic`, `tasks.mixtures`), the downstream tasks
(`tasks.downstream`, when present), and anything a user module registers
(`--module my.tasks`). Examples are shown after the task's preprocessing (EOS
appended, span corruption applied), decoded with each feature's vocabulary.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from synthpre_jax import errors
from synthpre_jax.errors import UserError, did_you_mean

DEFAULT_MODULES = ("tasks.synthetic", "tasks.mixtures")
OPTIONAL_MODULES = ("tasks.downstream",)


def _parser() -> argparse.ArgumentParser:
    p = errors.ArgumentParser(prog="synthpre inspect", description=__doc__.split("\n")[0])
    p.add_argument("name", help="a registered seqio task or mixture name")
    p.add_argument("--split", default="train")
    p.add_argument("--num", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lengths", default="inputs=512,targets=512",
                   help="feature lengths, e.g. inputs=512,targets=114")
    p.add_argument("--module", action="append", default=[],
                   help="extra module that registers tasks (repeatable)")
    p.add_argument("--max_ids", type=int, default=48, help="ids shown per feature")
    return p


def _import_modules(extra: list[str]) -> None:
    for name in DEFAULT_MODULES:
        importlib.import_module(name)
    for name in OPTIONAL_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name not in (name, name.rsplit(".", 1)[0]):
                raise
    for name in extra:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            raise UserError(f"cannot import --module {name!r} ({e}); check the module path") from None


def _lengths(spec: str) -> dict[str, int]:
    try:
        return {k.strip(): int(v) for k, v in (kv.split("=") for kv in spec.split(","))}
    except ValueError:
        raise UserError(f"bad --lengths {spec!r}; use e.g. inputs=512,targets=512") from None


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.num < 0:
        raise UserError("--num must be >= 0")
    lengths = _lengths(args.lengths)
    _import_modules(args.module)
    import seqio

    names = list(seqio.TaskRegistry.names()) + list(seqio.MixtureRegistry.names())
    if args.name not in names:
        raise UserError(f"no task or mixture named {args.name!r}{did_you_mean(args.name, names)}; "
                        "synthetic tasks are named synthpre_<task_id>")
    provider = seqio.get_mixture_or_task(args.name)
    if args.split not in provider.splits:
        raise UserError(f"{args.name} has no split {args.split!r}; splits: {list(provider.splits)}")
    extra = {"log_mixing_proportions": False} if isinstance(provider, seqio.Mixture) else {}
    ds = provider.get_dataset(lengths, split=args.split, shuffle=False, seed=args.seed, **extra)
    features = provider.output_features
    for i, ex in enumerate(ds.take(args.num).as_numpy_iterator()):
        print(f"=== {args.name} [{args.split}] example {i}")
        for key, feat in features.items():
            if key not in ex:
                continue
            ids = [int(x) for x in ex[key].reshape(-1)]
            shown = ids[:args.max_ids]
            more = f" ... (+{len(ids) - len(shown)})" if len(ids) > len(shown) else ""
            print(f"{key} ({len(ids)} ids): {feat.vocabulary.decode(ids)}")
            print(f"{' ' * len(key)}  ids: {shown}{more}")
    sys.stdout.flush()
    return 0
