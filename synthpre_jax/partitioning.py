"""Mesh, logical axis rules, shardings and multi-host set-up (T5X's PjitPartitioner idea).

`jax.jit` with `NamedSharding`s on a `('data', 'model')` mesh is what T5X calls pjit. Parameters
carry T5X logical axis names (see models/network.py); the rules here map them to mesh axes,
so the same model runs data-parallel (num_partitions=1) or with model parallelism without
touching the network code. Batches are assembled per host with
`jax.make_array_from_process_local_data`, so each host only ever loads its own shard.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from synthpre_jax.errors import UserError

LogicalRules = Sequence[tuple[str, Optional[str | tuple[str, ...]]]]


@gin.configurable
def standard_logical_axis_rules(activation_partitioning_dims: int = 1,
                                parameter_partitioning_dims: int = 1) -> LogicalRules:
    """T5X's standard mapping of logical axis names onto the ('data', 'model') mesh.

    1/1 is pure data parallelism plus Megatron-style model parallelism over heads/mlp/vocab;
    2 for parameters additionally shards 'embed' over 'data' (ZeRO-3-like), 2 for activations
    shards activations' 'embed' over 'model'.
    """
    if activation_partitioning_dims not in (1, 2) or parameter_partitioning_dims not in (1, 2):
        raise UserError("activation_partitioning_dims and parameter_partitioning_dims must be 1 or 2")
    rules: list[tuple[str, Any]] = [
        ("batch", "data"),
        ("vocab", "model"),
        ("mlp", "model"),
        ("heads", "model"),
        ("kv", None),
        ("joined_kv", "model"),
        ("relpos_buckets", None),
        ("abspos_buckets", None),
        ("length", None),
        ("layers", None),
        ("stack", None),
        ("mlp_activations", None),
    ]
    if activation_partitioning_dims == 2 and parameter_partitioning_dims == 2:
        rules.append(("embed", ("model", "data")))  # unusual; kept for completeness
    elif parameter_partitioning_dims == 2:
        rules.append(("embed", "data"))
    elif activation_partitioning_dims == 2:
        rules.append(("embed", "model"))
    else:
        rules.append(("embed", None))
    return rules


@dataclasses.dataclass(frozen=True)
class DataLayout:
    """Which slice of the global batch this host loads."""
    batch_size: int             # global batch
    shard_id: int               # this host's data shard
    num_shards: int             # number of distinct data shards across hosts
    per_host_batch_size: int


@gin.configurable
def initialize_distributed(multiprocess_gpu: bool = False,
                           coordinator_address: Optional[str] = None,
                           process_count: Optional[int] = None,
                           process_index: Optional[int] = None,
                           cpu_collectives: bool = False) -> None:
    """Multi-host start-up: automatic on TPU pods, explicit on GPU clusters (T5X's flags).

    `cpu_collectives` lets several CPU processes form one mesh (used by the localhost tests).
    """
    if coordinator_address and (multiprocess_gpu or cpu_collectives):
        if process_count is None or process_index is None:
            raise UserError("--coordinator_address needs --process_count and --process_index")
        if cpu_collectives:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=coordinator_address,
                                   num_processes=process_count, process_id=process_index)
    elif multiprocess_gpu:
        raise UserError("--multiprocess_gpu needs --coordinator_address, --process_count and --process_index")
    elif os.environ.get("TPU_NAME") or os.environ.get("CLOUD_TPU_TASK_ID") is not None:
        try:  # On TPU VMs jax discovers the slice itself.
            jax.distributed.initialize()
        except (RuntimeError, ValueError) as e:  # already initialised or single host
            logging.info("jax.distributed.initialize skipped: %s", e)


_SYNC_COUNT = [0]


def sync_hosts(tag: str, timeout_s: int = 1800) -> None:
    """Block until every process reaches this call (a no-op with one process).

    Uses the coordination service's barrier, not a device collective: multi-process CPU
    collectives (gloo) give a late process only 30 s to join, and on a busy machine hosts can
    be further apart than that after set-up, tracing and compiling. Every process must make
    the same sequence of calls (the barrier names are numbered).
    """
    if jax.process_count() == 1:
        return
    from orbax.checkpoint import multihost
    _SYNC_COUNT[0] += 1
    multihost.get_barrier_sync_fn()(key=f"synthpre_{tag}_{_SYNC_COUNT[0]}", timeout_ms=timeout_s * 1000)


@gin.configurable
class PjitPartitioner:
    """Builds the ('data', 'model') mesh over all devices of all hosts and the shardings on it.

    num_partitions: size of the 'model' axis (1 = pure data parallelism).
    model_parallel_submesh: T5X's TPU submesh spec; its product gives num_partitions.
    logical_axis_rules: mapping of logical names to mesh axes (default: T5X's standard).
    """

    def __init__(self, num_partitions: Optional[int] = 1,
                 model_parallel_submesh: Optional[tuple[int, ...]] = None,
                 logical_axis_rules: Optional[LogicalRules] = None,
                 devices: Optional[Sequence[jax.Device]] = None):
        if model_parallel_submesh is not None:
            num_partitions = int(np.prod(model_parallel_submesh))
        num_partitions = int(num_partitions or 1)
        devices = list(devices if devices is not None else jax.devices())
        n = len(devices)
        if num_partitions < 1 or n % num_partitions:
            raise UserError(f"num_partitions={num_partitions} does not divide the {n} available devices; "
                            f"choose a divisor of {n}")
        self.num_partitions = num_partitions
        self.logical_axis_rules = tuple(logical_axis_rules or standard_logical_axis_rules())
        self.mesh = Mesh(self._device_grid(devices, n // num_partitions, num_partitions), ("data", "model"))

    @staticmethod
    def _device_grid(devices: list, data: int, model: int) -> np.ndarray:
        # Keep each process's devices contiguous along 'data' so a host's batch rows are its own.
        ordered = sorted(devices, key=lambda d: (d.process_index, d.id))
        if jax.process_count() == 1 and ordered[0].platform in ("tpu", "gpu"):
            from jax.experimental import mesh_utils
            return mesh_utils.create_device_mesh((data, model), devices=ordered)
        return np.asarray(ordered, dtype=object).reshape(data, model)

    @contextlib.contextmanager
    def context(self):
        """Mesh + logical-axis-rules context under which model code is traced, so the
        activation constraints (`nn.with_logical_constraint`) resolve on this mesh."""
        set_mesh = getattr(jax, "set_mesh", None) or getattr(jax.sharding, "use_mesh", None)
        with nn.logical_axis_rules(self.logical_axis_rules):
            if set_mesh is not None:
                with set_mesh(self.mesh):
                    yield
            else:  # older jax
                with self.mesh:
                    yield

    @property
    def data_size(self) -> int:
        return self.mesh.shape["data"]

    # ---- shardings -------------------------------------------------------------------------
    def sharding(self, spec: P) -> NamedSharding:
        return NamedSharding(self.mesh, spec)

    def logical_to_mesh(self, logical_specs: Any) -> Any:
        """Logical PartitionSpec tree -> NamedSharding tree."""
        return nn.logical_to_mesh_sharding(logical_specs, self.mesh, self.logical_axis_rules)

    def param_shardings(self, boxed_params: Any) -> Any:
        """Shardings for a (boxed, logically annotated) parameter tree."""
        return self.logical_to_mesh(nn.get_partition_spec(boxed_params))

    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    def opt_state_shardings(self, abstract_opt_state: Any, params_abstract: Any, param_shardings: Any) -> Any:
        """Optimizer-state shardings: a leaf shaped like its parameter shares its sharding.

        Optax states embed the parameter tree (e.g. Adafactor's v / v_row / v_col), so the
        parameter path is the suffix of the state leaf's key path. Factored statistics and
        counters are small and replicated.
        """
        flat_params = {_dict_path(p): (leaf.shape, s) for (p, leaf), s in zip(
            jax.tree_util.tree_flatten_with_path(params_abstract)[0],
            jax.tree_util.tree_leaves(param_shardings))}

        def pick(path, leaf):
            keys = _dict_path(path)
            for start in range(len(keys)):
                hit = flat_params.get(keys[start:])
                if hit is not None and getattr(leaf, "shape", None) == hit[0]:
                    return hit[1]
            return self.replicated()

        return jax.tree_util.tree_map_with_path(pick, abstract_opt_state)

    def batch_sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, P("data"))

    # ---- data layout and host-local batches ------------------------------------------------
    def data_layout(self, batch_size: int) -> DataLayout:
        """The data shard of this host: hosts whose devices hold the same batch rows share one."""
        if batch_size % self.data_size:
            raise UserError(f"batch size {batch_size} is not divisible by the data-parallel size "
                            f"{self.data_size} ({len(self.mesh.devices.flat)} devices / "
                            f"{self.num_partitions} partitions); change BATCH_SIZE or num_partitions")
        rows_by_process: dict[int, set] = {}
        for (i, _), d in np.ndenumerate(self.mesh.devices):
            rows_by_process.setdefault(d.process_index, set()).add(i)
        distinct = sorted({tuple(sorted(r)) for r in rows_by_process.values()})
        mine = tuple(sorted(rows_by_process[jax.process_index()]))
        num_shards = len(distinct)
        return DataLayout(batch_size=batch_size, shard_id=distinct.index(mine), num_shards=num_shards,
                          per_host_batch_size=batch_size // num_shards)

    def make_global_batch(self, host_batch: Mapping[str, np.ndarray], global_batch_size: int) -> dict:
        """Host-local numpy batch -> globally sharded jax.Arrays (batch over 'data')."""
        sharding = self.batch_sharding()
        out = {}
        for k, v in host_batch.items():
            v = np.asarray(v)
            out[k] = jax.make_array_from_process_local_data(sharding, v, (global_batch_size,) + v.shape[1:])
        return out


def _dict_path(path: Sequence[Any]) -> tuple:
    """The dict-key components of a pytree key path: the parameter path inside optax states."""
    return tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))
