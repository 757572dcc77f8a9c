"""Counter-based randomness: example `i` of (task, split, seed) without the ones before it.

Every example has its own 64-bit key, `key_i = mix(base + i*G)` with `base` a
SHA-256 of (task key, split, seed). A sampler draws its numbers in named stages:
number `j` of stage `s` of example `i` is `mix(mix(key_i ^ hash(s)) + (j+1)*G)`
mapped to [0, 1), where `mix` is the SplitMix64 finaliser (a bijection of
uint64) and G the 64-bit golden-ratio constant. So the random numbers of an
example depend only on (seed, split, task key, i, stage, j):
  * any set of examples can be generated together, vectorised, in any chunking
    (one NumPy pass over a chunk of 1024 examples instead of a loop);
  * example i costs nothing extra to reach (random access, resume at any index);
  * hosts can take indices i ≡ h (mod H) and the global batch at every step is
    the same whatever H is, for any per-host batch size.
Train and validation differ in `base` (different split), so their streams are
unrelated. Samplers must draw each stage once per example (`Draws` enforces it);
rejection loops name their rounds (`sub(f"try{k}")`) so that an example's draws
never depend on which other examples share its chunk.

`UniformStream` serves per-example Python samplers (nonsense summaries, LIME's
reference loop): the same counter-based numbers, prefetched for all examples of a
chunk at once; `stream_numbers` gives any position of many streams at once, for
samplers that follow a per-example loop's order of draws vectorised (LIME).
"""
from __future__ import annotations

import functools
import hashlib
from typing import Iterator, Optional, Sequence

import numpy as np

from synthpre_jax.synthetic import native

SPLIT_IDS: dict[str, int] = {"train": 0, "validation": 1, "test": 2}
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_TO_UNIT = 2.0 ** -53


def split_id(split: str) -> int:
    """Integer id of a split name; train and validation streams never share one."""
    try:
        return SPLIT_IDS[split]
    except KeyError:
        from synthpre_jax.errors import UserError

        raise UserError(f"unknown split {split!r}; use one of {sorted(SPLIT_IDS)}") from None


def stable_hash(text: str, bits: int = 32) -> int:
    """A hash of `text` that is identical in every process (unlike `hash`)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:bits // 8], "little")


@functools.lru_cache(maxsize=4096)
def _stage_hash(stage: str) -> np.uint64:
    """`stable_hash(stage, 64)` (cached: samplers name the same stages for every block)."""
    return np.uint64(stable_hash(stage, 64))


def mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 arrays (wrapping arithmetic; `x` is not modified)."""
    with np.errstate(over="ignore"):
        z = x >> _S30
        z ^= x
        z *= _M1
        t = z >> _S27
        z ^= t
        z *= _M2
        np.right_shift(z, _S31, out=t)
        z ^= t
        return z


def _counter_inputs(keys: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """keys[r] + j*G for j = 1..counts[r] of every row r, flat (one repeat, one arange)."""
    total = int(counts.sum())
    starts = (np.cumsum(counts) - counts).astype(np.uint64)
    with np.errstate(over="ignore"):
        base = np.repeat(keys - starts * GOLDEN + GOLDEN, counts)
        j = np.arange(total, dtype=np.uint64)
        j *= GOLDEN
        j += base
    return j


def to_unit(z: np.ndarray) -> np.ndarray:
    """uint64 -> float64 in [0, 1) using the top 53 bits."""
    return (z >> _S11).astype(np.float64) * _TO_UNIT


def example_keys(seed: int, split: str, task_key: str, indices) -> np.ndarray:
    """The per-example keys of examples `indices` of (task, split, seed)."""
    if seed < 0:
        from synthpre_jax.errors import UserError

        raise UserError(f"seed must be >= 0, got {seed}")
    base = np.uint64(stable_hash(f"{task_key}|{split_id(split)}|{int(seed)}", 64))
    idx = np.asarray(indices, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return mix(base + idx * GOLDEN)


class Draws:
    """Uniform numbers for a set of examples ("rows"), one named stage at a time.

    `d.sub("name")` is the stage "name"; each stage gives one array of draws per
    call and may be used once (a second use would repeat numbers).
    """

    __slots__ = ("keys", "_used")

    def __init__(self, keys: np.ndarray):
        self.keys = np.asarray(keys, dtype=np.uint64)
        self._used = False

    @classmethod
    def for_examples(cls, seed: int, split: str, task_key: str, indices) -> "Draws":
        return cls(example_keys(seed, split, task_key, indices))

    @classmethod
    def from_generator(cls, rng: np.random.Generator, n: int) -> "Draws":
        """Keys taken from a NumPy Generator (for `sample(rng)`-style use)."""
        return cls(rng.integers(0, 2**64, size=n, dtype=np.uint64))

    def __len__(self) -> int:
        return len(self.keys)

    def sub(self, stage: str) -> "Draws":
        h = _stage_hash(stage)
        keys = native.counter_sub(self.keys, int(h)) if self.keys.ndim == 1 else None
        if keys is not None:
            return Draws(keys)
        with np.errstate(over="ignore"):
            return Draws(mix(self.keys ^ h))

    def take(self, rows) -> "Draws":
        return Draws(self.keys[np.asarray(rows)])

    def _claim(self) -> None:
        if self._used:
            raise RuntimeError("a Draws stage was used twice; take a new sub() stage")
        self._used = True

    def uniform(self, counts) -> np.ndarray:
        """Row r gets counts[r] numbers (flat, row-major). `counts` may be a scalar."""
        self._claim()
        return self.numbers_unchecked(counts)

    def numbers_unchecked(self, counts) -> np.ndarray:
        """`uniform` for a stage already claimed (e.g. by `stream_keys`)."""
        counts = np.broadcast_to(np.asarray(counts, dtype=np.int64), self.keys.shape)
        out = native.counter_rows(self.keys, counts)
        return to_unit(mix(_counter_inputs(self.keys, counts))) if out is None else out

    def integers(self, n: int, counts) -> np.ndarray:
        """Row r gets counts[r] integers uniform in [0, n) (n < 2**32), flat.

        The same draws as `uniform` (number j of the stage), mapped with integer
        arithmetic: (top 32 bits * n) >> 32.
        """
        self._claim()
        counts = np.broadcast_to(np.asarray(counts, dtype=np.int64), self.keys.shape)
        if not 0 < n < 2**32:
            raise ValueError(f"integers: n must be in 1..2**32-1, got {n}")
        out = native.counter_rows(self.keys, counts, n=n)
        if out is not None:
            return out
        z = mix(_counter_inputs(self.keys, counts))
        z >>= np.uint64(32)
        z *= np.uint64(n)
        z >>= np.uint64(32)
        return z.astype(np.int64)

    def matrix(self, k: int) -> np.ndarray:
        """[rows, k] numbers: number j of every row."""
        self._claim()
        return self.matrix_unchecked(k)

    def randint(self, lo, hi) -> np.ndarray:
        """One integer per row, uniform in [lo, hi] (inclusive, elementwise)."""
        lo = np.broadcast_to(np.asarray(lo, dtype=np.int64), self.keys.shape)
        hi = np.broadcast_to(np.asarray(hi, dtype=np.int64), self.keys.shape)
        u = self.uniform(1)
        return lo + np.minimum((u * (hi - lo + 1)).astype(np.int64), hi - lo)

    def stream_keys(self) -> np.ndarray:
        """The stage's per-row keys, for `stream_numbers`: the numbers each row's
        `UniformStream` would yield, taken at any positions, for all rows at once."""
        self._claim()
        return self.keys

    def streams(self, prefetch: int = 128) -> list["UniformStream"]:
        """One Python stream per row; the first `prefetch` numbers come in one pass."""
        self._claim()
        first = self.matrix_unchecked(prefetch).tolist()
        return [UniformStream(k, buf) for k, buf in zip(self.keys.tolist(), first)]

    def matrix_unchecked(self, k: int, offset: int = 0) -> np.ndarray:
        out = native.counter_rows(self.keys, k, offset)
        if out is not None:
            return out.reshape(len(self.keys), k)
        j = np.arange(offset + 1, offset + k + 1, dtype=np.uint64)
        with np.errstate(over="ignore"):
            return to_unit(mix(self.keys[:, None] + j[None, :] * GOLDEN))


def stream_numbers(keys: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Number j (1-based, elementwise) of the streams with these keys: what the j-th
    `UniformStream.random()` of each stream returns, for vectorised per-example samplers."""
    out = native.counter_at(keys, j)
    if out is not None:
        return out
    with np.errstate(over="ignore"):
        return to_unit(mix(np.asarray(keys, np.uint64) + np.asarray(j).astype(np.uint64) * GOLDEN))


class UniformStream:
    """One example's counter-based numbers as Python floats (buffered)."""

    __slots__ = ("_key", "_buf", "_pos", "_next")

    def __init__(self, key: int, first: Optional[list] = None):
        self._key = key  # a Python int; an array only when more numbers are needed
        self._buf: list[float] = list(first) if first is not None else []
        self._pos = 0
        self._next = len(self._buf)  # counter offset of the next refill

    def _more(self, k: int) -> list[float]:
        j = np.arange(self._next + 1, self._next + k + 1, dtype=np.uint64)
        self._next += k
        with np.errstate(over="ignore"):
            return to_unit(mix(np.uint64(self._key) + j * GOLDEN)).tolist()

    def random(self) -> float:
        if self._pos >= len(self._buf):
            self._buf = self._more(max(64, len(self._buf)))
            self._pos = 0
        u = self._buf[self._pos]
        self._pos += 1
        return u

    def take(self, k: int) -> list[float]:
        if self._pos + k > len(self._buf):
            self._buf = self._buf[self._pos:] + self._more(max(k, 64))
            self._pos = 0
        out = self._buf[self._pos:self._pos + k]
        self._pos += k
        return out

    def randint(self, a: int, b: int) -> int:
        """Uniform integer in [a, b] (both inclusive), like `random.randint`."""
        return a + min(int(self.random() * (b - a + 1)), b - a)

    def choices(self, pool: Sequence, k: int) -> list:
        """k draws with replacement from `pool`, like `random.choices`."""
        n = len(pool)
        return [pool[int(u * n)] for u in self.take(k)]

    def shuffle(self, x: list) -> None:
        """In-place Fisher-Yates shuffle, like `random.shuffle`."""
        us = self.take(max(len(x) - 1, 0))
        for j, i in enumerate(range(len(x) - 1, 0, -1)):
            k = int(us[j] * (i + 1))
            x[i], x[k] = x[k], x[i]

    def sample_distinct(self, pool: Sequence, k: int) -> list:
        """k distinct elements of `pool` in random order, like `random.sample`."""
        n = len(pool)
        if k > n:
            raise ValueError("sample larger than population")
        if k * 4 > n:  # dense: partial Fisher-Yates on a copy
            arr = list(pool)
            us = self.take(k)
            for i in range(k):
                j = i + int(us[i] * (n - i))
                arr[i], arr[j] = arr[j], arr[i]
            return arr[:k]
        seen: set = set()
        out = []
        while len(out) < k:
            for u in self.take(k - len(out)):
                j = int(u * n)
                if j not in seen:
                    seen.add(j)
                    out.append(pool[j])
                    if len(out) == k:
                        break
        return out


def config_generator(seed: int, task_key: str, purpose: str) -> np.random.Generator:
    """A Generator for per-dataset constants (e.g. a random sub-vocabulary).

    Shared by all splits, so train and validation use the same sub-vocabulary.
    """
    words = [int(seed) & 0xFFFFFFFF, int(seed) >> 32 & 0xFFFFFFFF]
    entropy = [stable_hash(task_key + "|" + purpose), 0xC0FFEE] + words
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))


def shard_indices(num_shards: int, shard_index: int, start_index: int = 0,
                  stop_index: Optional[int] = None, chunk: int = 1024) -> Iterator[np.ndarray]:
    """Chunks of the global indices one host owns: i ≡ shard_index (mod num_shards).

    Hosts are disjoint and together cover every index >= start_index. Resuming at
    global index `s` starts every host at its first owned index >= s.
    """
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        from synthpre_jax.errors import UserError

        raise UserError(f"bad shard {shard_index} of {num_shards}")
    i = start_index + ((shard_index - start_index) % num_shards)
    step = chunk * num_shards
    while stop_index is None or i < stop_index:
        hi = i + step if stop_index is None else min(i + step, stop_index)
        yield np.arange(i, hi, num_shards, dtype=np.int64)
        i += step
