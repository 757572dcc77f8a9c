"""Names of every synthetic task and configured variant, and `make_task` to build one.

Base task ids are those of the paper's `pretrain.sh` (the 18 simple tasks, LIME's
induct/deduct/abduct, nonsense_summary, nesting_language). Variants are base
tasks with settings:
  * copy ablations (spec §1.6): `identity_vocab{2,10,1000,10000}` (a fixed random
    sub-vocabulary, length 252 as in the release scripts) and
    `identity_len{28,252,1020}` (fixed lengths, full vocabulary);
  * `<task>_tiny`: 100-symbol sub-vocabulary, and raw lengths 10..40 for the
    simple tasks; quick to learn in a CPU demo. `nesting_language_tiny` uses 100
    arc types, 1..6 arcs per sentence and 4 sentences per example.
`lime` draws each example's mode (induct/deduct/abduct) uniformly; the seqio
mixture `synthpre_lime` mixes the three tasks at equal rates instead.
The authors' internal names (`copy`, `first_char`, ...) are accepted as aliases.
"""
from __future__ import annotations

import inspect
from typing import Callable, Optional

import numpy as np

from synthpre_jax.errors import UserError, did_you_mean
from synthpre_jax.synthetic.base import SyntheticTask
from synthpre_jax.synthetic.codec import Codec, FallbackCodec
from synthpre_jax.synthetic.lime import LIME_MODES, LimeTask
from synthpre_jax.synthetic.nesting import NestingLanguageTask
from synthpre_jax.synthetic.nonsense import NonsenseSummaryTask
from synthpre_jax.synthetic.ragged import Ragged
from synthpre_jax.synthetic.rng import Draws
from synthpre_jax.synthetic.simple import INTERNAL_NAMES, SIMPLE_TASK_IDS, SimpleTask

BASE_TASK_IDS: tuple[str, ...] = SIMPLE_TASK_IDS + LIME_MODES + ("nonsense_summary", "nesting_language")
ALIASES: dict[str, str] = {v: k for k, v in INTERNAL_NAMES.items() if v != k}

VARIANTS: dict[str, tuple[str, dict]] = {}
for _v in (2, 10, 1000, 10000):
    VARIANTS[f"identity_vocab{_v}"] = ("identity", {"num_tokens": _v, "length_range": (252, 252)})
for _l in (28, 252, 1020):
    VARIANTS[f"identity_len{_l}"] = ("identity", {"length_range": (_l, _l)})
for _t in SIMPLE_TASK_IDS:
    VARIANTS[f"{_t}_tiny"] = (_t, {"num_tokens": 100, "length_range": (10, 40)})
for _m in LIME_MODES:
    VARIANTS[f"{_m}_tiny"] = (_m, {"num_tokens": 100})
VARIANTS["nesting_language_tiny"] = ("nesting_language", {"num_pairs": 100, "min_pairs": 1,
                                                           "max_pairs": 6, "sentences_per_example": 4})


class LimeMixTask(SyntheticTask):
    """`lime` for the CLI: each example is induct, deduct or abduct with equal probability."""

    task_id = "lime"

    def __init__(self, **kwargs):
        self.parts = [LimeTask(m, **kwargs) for m in LIME_MODES]

    def config(self) -> dict:
        return self.parts[0].config()

    def sample_rows(self, d: Draws) -> dict:
        n = len(d)
        mode = d.sub("mode").randint(0, 2)
        rows = {f: [None] * n for f in self.features}
        for k, p in enumerate(self.parts):
            sel = np.flatnonzero(mode == k)
            if not len(sel):
                continue
            b = p.sample_rows(d.take(sel).sub(p.mode))
            for f in self.features:
                for j, r in zip(sel, b[f].rows()):
                    rows[f][j] = r
        return {f: Ragged.from_rows(rows[f]) for f in self.features}


def _factory(base: str) -> Callable[..., SyntheticTask]:
    if base in SIMPLE_TASK_IDS:
        return lambda codec=None, **kw: SimpleTask(base, codec=codec, **kw)
    if base in LIME_MODES:
        return lambda codec=None, **kw: LimeTask(base, **kw)
    if base == "lime":
        return lambda codec=None, **kw: LimeMixTask(**kw)
    if base == "nonsense_summary":
        return lambda codec=None, **kw: NonsenseSummaryTask(codec=codec, **kw)
    if base == "nesting_language":
        return lambda codec=None, **kw: NestingLanguageTask(**kw)
    raise KeyError(base)


def _constructor(base: str) -> Callable[..., SyntheticTask]:
    if base in SIMPLE_TASK_IDS:
        return SimpleTask
    if base in LIME_MODES or base == "lime":  # the mixture passes its settings to each mode
        return LimeTask
    return {"nonsense_summary": NonsenseSummaryTask,
            "nesting_language": NestingLanguageTask}[base]


def settings_of(name: str) -> list[str]:
    """The settings (constructor keywords) task `name` takes, e.g. for `gen --config`."""
    canon = check_name(name)
    base = VARIANTS[canon][0] if canon in VARIANTS else canon
    params = inspect.signature(_constructor(base).__init__).parameters
    return [p for p in params if p not in ("self", "task_id", "mode", "codec")
            and params[p].kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                   inspect.Parameter.KEYWORD_ONLY)]


def check_settings(name: str, settings: dict) -> None:
    """`UserError` naming the valid settings when `settings` has a key task `name` lacks."""
    valid = settings_of(name)
    for key in settings:
        if key not in valid:
            raise UserError(f"task {check_name(name)} has no setting {key!r}{did_you_mean(key, valid)}; "
                            f"its settings: {', '.join(valid)}")


def task_names() -> list[str]:
    """Every name `make_task` accepts (aliases excluded)."""
    return list(BASE_TASK_IDS) + ["lime"] + list(VARIANTS)


def canonical_name(name: str) -> str:
    return ALIASES.get(name, name)


def check_name(name: str) -> str:
    """The canonical name, or `UserError` with suggestions for an unknown one."""
    canon = canonical_name(name)
    if canon in VARIANTS or canon in BASE_TASK_IDS or canon == "lime":
        return canon

    raise UserError(f"unknown synthetic task {name!r}"
                    f"{did_you_mean(name, task_names() + list(ALIASES))}; "
                    "run 'synthpre gen --list' for all names")


def make_task(name: str, codec: Optional[Codec] = None, **overrides) -> SyntheticTask:
    """Build a task by name (base id, variant or alias); `overrides` adjust its settings.

    Unknown names raise `UserError` with suggestions.
    """
    name = check_name(name)
    check_settings(name, overrides)
    if name in VARIANTS:
        base, cfg = VARIANTS[name]
        cfg = {**cfg, **overrides}
    else:
        base, cfg = name, dict(overrides)
    return _factory(base)(codec=codec or FallbackCodec(), **cfg)
