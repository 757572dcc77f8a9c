"""The task interface and the deterministic example streams built on it.

A task turns `Draws` (counter-based random numbers for a set of examples, see
`synthetic.rng`) into a block of examples, vectorised over the whole set
(`sample_rows`). The stream functions here define example `i` of
(task, split, seed) as row 0 of `sample_rows(Draws.for_examples(seed, split,
task.key, [i]))`; generating many indices at once gives the same rows, faster.
Everything above this module (seqio sources, the CLI, the benchmarks) reads
examples only through these functions.
"""
from __future__ import annotations

import abc
from typing import Iterator, Optional

import numpy as np

from synthpre_jax.synthetic.malloc_tuning import tune_malloc
from synthpre_jax.synthetic.ragged import Ragged
from synthpre_jax.synthetic.rng import Draws, shard_indices

Block = dict  # feature name -> Ragged
CHUNK = 1024  # examples generated per vectorised pass


class SyntheticTask(abc.ABC):
    """One synthetic pre-training task.

    Subclasses set `task_id` and implement `sample_rows`. `key` names the random
    stream; it includes every non-default setting, so two differently configured
    tasks never share examples.
    """

    task_id: str = ""
    features: tuple[str, ...] = ("inputs", "targets")

    def config(self) -> dict:
        """Non-default settings that change the examples (part of `key`)."""
        return {}

    @property
    def key(self) -> str:
        cfg = self.config()
        if not cfg:
            return self.task_id
        return self.task_id + "[" + ",".join(f"{k}={cfg[k]}" for k in sorted(cfg)) + "]"

    @abc.abstractmethod
    def sample_rows(self, d: Draws) -> Block:
        """One example per row of `d`; row r may use only row r's draws."""

    def sample_block(self, rng: np.random.Generator, n: int) -> Block:
        """n examples whose keys come from a NumPy Generator."""
        return self.sample_rows(Draws.from_generator(rng, n))

    def sample(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One example (the issue's `sample(rng)`)."""
        block = self.sample_block(rng, 1)
        return {f: block[f].row(0).copy() for f in self.features}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.key})"


# -- streams ----------------------------------------------------------------
def generate(task: SyntheticTask, seed: int, split: str, indices) -> Block:
    """Examples `indices` (any order, any spacing) in one vectorised pass."""
    tune_malloc()
    return task.sample_rows(Draws.for_examples(seed, split, task.key, indices))


def concat_blocks(blocks: list[Block], features: tuple[str, ...]) -> Block:
    return {f: Ragged.concat([b[f] for b in blocks]) for f in features}


def generate_range(task: SyntheticTask, seed: int, split: str, start: int, stop: int,
                   chunk: int = CHUNK) -> Block:
    """Examples start..stop-1."""
    parts = [generate(task, seed, split, np.arange(a, min(a + chunk, stop)))
             for a in range(start, stop, chunk)]
    return concat_blocks(parts, task.features)


def example(task: SyntheticTask, seed: int, split: str, i: int) -> dict[str, np.ndarray]:
    """Example i alone."""
    block = generate(task, seed, split, [i])
    return {f: block[f].row(0).copy() for f in task.features}


def iter_shard(task: SyntheticTask, seed: int, split: str, num_shards: int = 1,
               shard_index: int = 0, start_index: int = 0, stop_index: Optional[int] = None,
               exclude: Optional[set] = None, exclude_feature: Optional[str] = None,
               chunk: int = CHUNK) -> Iterator[tuple[np.ndarray, Block]]:
    """Yield (global indices, block) for one host's share (i ≡ shard_index mod num_shards).

    `exclude` drops examples whose `exclude_feature` bytes are in the set (used
    to keep training examples out of the validation set; see `key_bytes`).
    """
    for idx in shard_indices(num_shards, shard_index, start_index, stop_index, chunk):
        block = generate(task, seed, split, idx)
        if exclude:
            keep = np.array([k not in exclude for k in key_bytes(block[exclude_feature])])
            if not keep.all():
                block = {f: r.select(keep) for f, r in block.items()}
                idx = idx[keep]
        yield idx, block


def key_bytes(r: Ragged) -> list[bytes]:
    """One hashable, exact key per row (its int32 bytes)."""
    buf = r.values.tobytes()
    off = (r.offsets * 4).tolist()
    return [buf[off[j]:off[j + 1]] for j in range(len(r))]


def validation_keys(task: SyntheticTask, seed: int, size: int, feature: str) -> set:
    """Keys of the whole validation split, for exact train/validation disjointness."""
    keys: set = set()
    for _, block in iter_shard(task, seed, "validation", stop_index=size):
        keys.update(key_bytes(block[feature]))
    return keys
