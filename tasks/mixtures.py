"""seqio mixtures of the synthetic tasks (importing registers them, idempotently).

  synthpre_lime              induct + deduct + abduct at equal rates (the paper's `lime`)
  synthpre_simple            the 18 simple tasks at equal rates
  synthpre_lime_and_simple   LIME's three tasks + the 18 simple tasks, equal rates
  synthpre_all               every base task (also nonsense_summary, nesting_language)
  synthpre_lime_tiny, synthpre_simple_tiny   the `_tiny` variants, for CPU demos
`register_mixture(name, task_names, rates)` adds your own.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import seqio

from tasks import synthetic  # noqa: F401  (registers the tasks)
from synthpre_jax.synthetic.lime import LIME_MODES
from synthpre_jax.synthetic.simple import SIMPLE_TASK_IDS

P = synthetic.TASK_PREFIX
LIME_TASKS = [P + m for m in LIME_MODES]
SIMPLE_TASKS = [P + t for t in SIMPLE_TASK_IDS]
OTHER_TASKS = [P + "nonsense_summary", P + "nesting_language"]


def register_mixture(name: str, task_names: Sequence[str],
                     rates: Optional[Mapping[str, float]] = None) -> seqio.Mixture:
    """Equal rates unless `rates` (task name -> rate) says otherwise; replaces `name`."""
    tasks = [(t, float(rates[t])) for t in task_names] if rates else list(task_names)
    seqio.MixtureRegistry.remove(name)
    return seqio.MixtureRegistry.add(name, tasks, default_rate=1.0)


register_mixture(P + "lime", LIME_TASKS)
register_mixture(P + "simple", SIMPLE_TASKS)
register_mixture(P + "lime_and_simple", LIME_TASKS + SIMPLE_TASKS)
register_mixture(P + "all", LIME_TASKS + SIMPLE_TASKS + OTHER_TASKS)
register_mixture(P + "lime_tiny", [t + "_tiny" for t in LIME_TASKS])
register_mixture(P + "simple_tiny", [t + "_tiny" for t in SIMPLE_TASKS])
