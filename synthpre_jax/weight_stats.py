"""The weight-statistics transform (the paper's Table 2) and the Table 3 constant layer norm.

`transform(source, fresh, scheme, rng)` re-samples a freshly initialised parameter tree from
per-group statistics of a source (pre-trained) tree: see `weight_stats_groups` for the
groupings and schemes. Differences from the release, all deliberate:

* seeded and reproducible: the draw for a tensor depends only on (seed, its path, its shape):
  its key is `jax.random.fold_in` of the seed with a SHA-256 of the path, and element i is a
  keyed hash of i turned normal (`counter_rng`), so it does not change with the other tensors
  in the tree, the number of devices or hosts, or the Python process;
* sharding-aware: statistics are on-device reductions of each source tensor where it lives
  (only scalars reach the host), and each new tensor is drawn by a jitted program whose output
  has the fresh tensor's sharding: each device draws only its own shard, and the values equal
  the single-device draw. A host (NumPy) source is placed shard by shard like the fresh
  tensor (on one CPU process the compiled kernels read it where it is). No full copy of a
  sharded tensor is gathered;
* statistics are two-pass (group mean, then the mean of squared deviations from it) over
  exact, order-independent per-tensor sums (see `_grid_sum`), so they do not change
  with the sharding either; the tests check them against NumPy float64.

Tensors that no group covers are returned as the very same fresh objects (bit-identical).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import re
from typing import Any, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
from flax import traverse_util

from synthpre_jax import counter_rng, weight_stats_native
from synthpre_jax.errors import UserError
from synthpre_jax.weight_stats_groups import (KEEP_FRESH, TABLE3_PRE_ATTN_LN_RES, Group, Scheme,
                                              SchemeLike, natural_sorted, resolve_scheme,
                                              transformable_names)

Params = Mapping[str, Any]
RngLike = Union[int, np.integer, jax.Array]


@dataclasses.dataclass(frozen=True)
class GroupStats:
    """What the transform did to one group (for reports and the run's init record)."""

    name: str
    rule: str  # 'N(mu,sigma)', 'N(0,sigma)' or 'const(mu)'
    n_tensors: int
    n_elements: int
    mean: float
    std: float
    paths: tuple[str, ...]

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["paths"] = list(self.paths)
        return d


# ----------------------------------------------------------------------------- trees
def flatten(params: Params) -> tuple[dict[str, Any], bool]:
    """'/'-joined flat view of a nested param dict; also says whether a top-level 'params'
    collection wrapper was stripped (so callers can pass either form)."""
    wrapped = isinstance(params, Mapping) and set(params.keys()) == {"params"}
    inner = params["params"] if wrapped else params
    if not isinstance(inner, Mapping):
        raise UserError(f"expected a nested dict of parameters, got {type(inner).__name__}")
    return traverse_util.flatten_dict(inner, sep="/"), wrapped


def unflatten(flat: Mapping[str, Any], wrapped: bool) -> dict:
    tree = traverse_util.unflatten_dict(dict(flat), sep="/")
    return {"params": tree} if wrapped else tree


def _short(items: Sequence[str], limit: int = 6) -> str:
    items = list(items)
    return ", ".join(items[:limit]) + (f" ... and {len(items) - limit} more"
                                       if len(items) > limit else "")


def check_trees_match(source: Mapping[str, Any], fresh: Mapping[str, Any],
                      ignore: Sequence[str] = (), what: str = "source checkpoint") -> None:
    """Raise one UserError line listing every path that differs in presence or shape.

    `ignore` lists paths that may differ (e.g. the kept-fresh embedding when it is not used).
    """
    src = {k: tuple(np.shape(v)) for k, v in source.items() if k not in ignore}
    new = {k: tuple(np.shape(v)) for k, v in fresh.items() if k not in ignore}
    missing = natural_sorted(set(new) - set(src))
    extra = natural_sorted(set(src) - set(new))
    shapes = [f"{k} {src[k]} vs {new[k]}" for k in natural_sorted(set(src) & set(new))
              if src[k] != new[k]]
    if not (missing or extra or shapes):
        return
    parts = []
    if missing:
        parts.append(f"missing from the {what}: {_short(missing)}")
    if extra:
        parts.append(f"not in the model: {_short(extra)}")
    if shapes:
        parts.append(f"shape differs ({what} vs model): {_short(shapes)}")
    raise UserError(f"the {what} does not match the model: " + "; ".join(parts)
                    + "; use a model config with the checkpoint's layers/widths/T5 version")


def _path_words(path: str) -> tuple[int, int]:
    """Two 32-bit words of SHA-256(path): stable across processes (unlike hash())."""
    digest = hashlib.sha256(path.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:8], "little")


def tensor_key(rng: jax.Array, path: str) -> jax.Array:
    """The key that draws tensor `path`: fold_in(fold_in(rng, w0), w1)."""
    w0, w1 = _path_words(path)
    return jax.random.fold_in(jax.random.fold_in(rng, np.uint32(w0)), np.uint32(w1))


def _key_data(rng: RngLike) -> tuple[np.ndarray, str]:
    if isinstance(rng, (int, np.integer)):
        rng = jax.random.key(int(rng))
    if not isinstance(rng, jax.Array):
        raise UserError(f"weight-stats rng must be an int seed or a jax key, got {type(rng)}")
    if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return np.asarray(jax.random.key_data(rng)), str(jax.random.key_impl(rng))
    return np.asarray(rng, dtype=np.uint32), "threefry2x32"


# ----------------------------------------------------------------------------- shardings
def _default_sharding(leaves: Sequence[Any]) -> jax.sharding.Sharding:
    """A replicated sharding on the device set the fresh tree lives on."""
    for x in leaves:
        if isinstance(x, jax.Array):
            s = x.sharding
            if isinstance(s, jax.sharding.NamedSharding):
                return jax.sharding.NamedSharding(s.mesh, jax.sharding.PartitionSpec())
            if len(s.device_set) == 1:
                return s
    return jax.sharding.SingleDeviceSharding(jax.devices()[0])


def _place(src: Any, like: Any) -> Any:
    """Put a host (NumPy) source tensor on the fresh tensor's sharding, one shard per device,
    so a sharded model never needs the whole source tensor on any single device."""
    if isinstance(src, jax.Array) or not isinstance(like, jax.Array):
        return src
    arr = np.asarray(src)
    if len(like.sharding.device_set) == 1:
        # one device: the CPU client adopts a 64-byte-aligned host array without a copy (what
        # `checkpoints.load_params` returns for large tensors)
        return jax.device_put(arr, like.sharding)
    return jax.make_array_from_callback(arr.shape, like.sharding, lambda idx: arr[idx])


# ----------------------------------------------------------------------------- the programs
# Small jitted programs instead of one big one: XLA's CPU compile time grows badly with many
# unrolled draws and reductions (20+ s for T5-small in one program), while programs
# per distinct (shape, dtype, rule, sharding) compile in well under a second and are reused
# across tensors, schemes and calls.
#
# Statistics must not depend on how a tensor is laid out: a float32 sum of a tensor sharded 8
# ways rounds differently from the same sum on one device, and a 1-ulp change of sigma would
# change every draw. So each tensor is summed *exactly*: its elements are rounded to a
# fixed-point grid relative to the tensor's max |x| (a power-of-two scale 2**(e - F), so an
# element moves by at most 2**-(F+1) of max |x|, below float32's own 2**-24 on that element
# for F >= 24) and summed in float64. Every grid value is an integer of magnitude <= 2**F,
# and F is chosen so that n * 2**F <= 2**53: every partial sum, in any order, on any
# mesh, is an exactly representable integer, so the total is exact and order-free. (Integer
# limb sums did the same but cost 4x more on CPUs without 256-bit integer SIMD.) The host
# combines a group's tensors in float64. No library offers an order-independent sharded
# reduction, hence this code.
_MAX_FIXED_BITS = 29


def _fixed_bits(n: int) -> int:
    """Grid bits F for a sum of n values: n * 2**F <= 2**53, at most 29."""
    return max(1, min(_MAX_FIXED_BITS, 53 - max(int(n) - 1, 1).bit_length()))


def _grid_sum(x: jax.Array, e: jax.Array, bits: int) -> jax.Array:
    """Exact float64 sum of round(x * 2**(bits - e)) for |x| < 2**e (run under x64)."""
    # round-to-nearest integers, exact in float32 (jnp.trunc would be 5x slower on XLA:CPU)
    q = jnp.round(x * jnp.ldexp(jnp.float32(1), bits - e))
    return jnp.sum(q.astype(jnp.float64))


@functools.partial(jax.jit, static_argnames=("bits",))
def _tensor_sum_parts(x: jax.Array, *, bits: int) -> tuple:
    """(max |x|, e with |x| < 2**e, exact grid sum, max(x), min(x)) of one tensor."""
    x = x.astype(jnp.float32)
    # max and min rather than max |x| (the same value): the second pass needs them
    hi, lo = jnp.max(x), jnp.min(x)
    m = jnp.maximum(hi, -lo)
    e = jnp.maximum(jnp.frexp(m)[1], -96)  # clamp keeps 2**(bits - e) finite
    return m, e, _grid_sum(x, e, bits), hi, lo


@functools.partial(jax.jit, static_argnames=("bits",))
def _tensor_squared_deviation_parts(x: jax.Array, mu: jax.Array, hi: jax.Array, lo: jax.Array,
                                    *, bits: int) -> tuple:
    """Exact grid sum of ((x - mu) / 2**k)**2 with 2**k > max|x - mu| (scaled so squares of
    tiny deviations do not underflow and every square is < 1), with max|x - mu| and k.
    hi, lo: max(x) and min(x) from the first pass."""
    x = x.astype(jnp.float32)
    # max|x - mu| from max(x) and min(x): rounding is monotonic, so this is the same value,
    # and the only pass over x is the sum's
    m = jnp.maximum(hi - mu, mu - lo)
    d = x - mu
    k = jnp.maximum(jnp.frexp(m)[1], -100)
    # two exact power-of-two steps: for |x| >= 2**126, 2**-k alone is subnormal, which XLA
    # flushes to zero (every deviation would vanish); the CPU kernels' one step is the same
    # value
    half = k // 2
    d = d * jnp.ldexp(jnp.float32(1), -half) * jnp.ldexp(jnp.float32(1), half - k)
    return m, k, _grid_sum(jnp.square(d), jnp.int32(0), bits)


def _program_parts(fn: Any, calls: Sequence[tuple], bits: Sequence[int]) -> list:
    """Every tensor's results of `fn` (an exact-sum program): one small program per tensor
    (compiled once per shape and sharding, so cheap to compile and shared across schemes). A
    program on a sharded tensor all-reduces; those run one at a time, since several collective
    programs in flight at once can deadlock XLA's CPU collectives (each waits for device
    threads the others hold)."""
    parts = []
    with jax.enable_x64(True):
        for args, b in zip(calls, bits):
            result = fn(*args, bits=b)
            if isinstance(args[0], jax.Array) and len(args[0].sharding.device_set) > 1:
                jax.block_until_ready(result)
            parts.append(result)
    return jax.device_get(parts)


def _exact_sums(parts: Sequence[tuple], bits: Sequence[int], names: Sequence[str],
                squared: bool = False) -> tuple[np.ndarray, list]:
    """Each tensor's exact sum (of x, or of squared deviations) in float64 from its exact grid
    total, and the further results of its program (or kernel)."""
    out, extra = [], []
    for (m, e, total, *rest), b, name in zip(parts, bits, names):
        if not np.isfinite(m):
            raise UserError(f"source tensor {name} has non-finite values (NaN or inf); "
                            "its checkpoint cannot provide weight statistics")
        # total is an exact integer; sums of squares were scaled by 2**(-2e)
        scale = 2 * int(e) - b if squared else int(e) - b
        out.append(math.ldexp(float(total), scale))
        extra.append(rest)
    return np.array(out, np.float64), extra


def group_statistics(tensors: Sequence[Any], groups: Sequence[Sequence[int]],
                     names: Optional[Sequence[str]] = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std (ddof 0) of each group of `tensors` (indices per group).

    Two passes (group mean, then the mean of squared deviations from it) of exact per-tensor
    sums on device (a sharded tensor reduces where it lives; only scalars reach the host), so
    the result is bit-identical for any sharding and on every host.
    """
    tensors = tuple(tensors)
    names = list(names) if names is not None else [f"#{i}" for i in range(len(tensors))]
    members = [i for g in groups for i in g]
    if len(members) != len(set(members)):
        raise ValueError("group_statistics: a tensor is in more than one group")
    counts = [math.prod(np.shape(x)) for x in tensors]
    size = [sum(counts[i] for i in g) for g in groups]
    for g, n in zip(groups, size):
        if n == 0:
            raise UserError("a weight-stats group has no elements (its tensors are empty: "
                            f"{_short([names[i] for i in g])}); leave them out of the scheme")
    # empty tensors add nothing to any sum (and have no max for the exact-sum grid)
    used = [i for i, n in enumerate(counts) if n]
    sub, sub_names = tuple(tensors[i] for i in used), [names[i] for i in used]
    bits = [_fixed_bits(counts[i]) for i in used]
    # on CPUs the compiled kernels, one pass over the whole tree at a time (same values)
    native = weight_stats_native.usable(sub)
    pieces = weight_stats_native.Pieces(sub) if native else None
    parts = (weight_stats_native.sum_parts_all(pieces, bits) if native else
             _program_parts(_tensor_sum_parts, [(x,) for x in sub], bits))
    sums = np.zeros(len(tensors))
    sums[used], hi_lo = _exact_sums(parts, bits, sub_names)
    mus = np.array([sum(sums[i] for i in g) / n for g, n in zip(groups, size)])
    tensor_mu = np.zeros(len(tensors), np.float32)
    for g, mu in zip(groups, mus):
        tensor_mu[list(g)] = mu
    sub_mu = tensor_mu[used]
    if native:
        parts = weight_stats_native.squared_deviation_parts_all(
            pieces, sub_mu, [h for h, _ in hi_lo], [lo for _, lo in hi_lo], bits)
    else:
        parts = _program_parts(_tensor_squared_deviation_parts,
                               [(x, sub_mu[j], *hi_lo[j]) for j, x in enumerate(sub)], bits)
    sq = np.zeros(len(tensors))
    sq[used], _ = _exact_sums(parts, bits, sub_names, squared=True)
    sigmas = np.sqrt([sum(sq[i] for i in g) / n for g, n in zip(groups, size)])
    return mus, sigmas


@functools.lru_cache(maxsize=8)
def _keys_program(impl: str, sharding: Any):
    """(base key data, path words [n, 2]) -> key data of every tensor [n, ...]."""
    def run(key_data: jax.Array, words: jax.Array):
        base = jax.random.wrap_key_data(key_data, impl=impl)
        fold = lambda w: jax.random.key_data(  # noqa: E731
            jax.random.fold_in(jax.random.fold_in(base, w[0]), w[1]))
        return jax.vmap(fold)(words)

    return jax.jit(run, out_shardings=sharding)


@functools.lru_cache(maxsize=256)
def _sampler(rule: str, dtype: str, sharding: Any, donate: bool):
    """(all keys, tensor index, mu, sigma[, the fresh tensor]) -> one new tensor, drawn
    directly into `sharding` (each device computes only its own shard). With `donate` the
    fresh tensor's buffer is reused for the result: writing into memory that is already
    mapped costs about a fifth of writing a new buffer on the CPU (no page faults).

    Draws into 4-byte dtypes run as two programs, the hash bits written into the output
    buffer and then turned into normals in place (`counter_rng.normal_from_bits`): the same
    values as one fused program, ~15% faster on XLA:CPU (accelerators keep the fused program:
    there it saves a memory pass, and the raw bits never pass through float storage)."""
    def fused(keys, i, mu, sigma, fresh=None, *, shape):
        del fresh  # only its buffer is used (donated)
        if rule == "const(mu)":
            return jnp.full(shape, mu, jnp.float32).astype(dtype)
        return _scaled(counter_rng.standard_normal(keys[i], shape), mu, sigma)

    def _scaled(z, mu, sigma):
        return (mu + sigma * z if rule == "N(mu,sigma)" else sigma * z).astype(dtype)

    jit = functools.partial(jax.jit, static_argnames=("shape",), out_shardings=sharding)
    on_cpu = all(d.platform == "cpu" for d in sharding.device_set)
    if rule == "const(mu)" or np.dtype(dtype).itemsize != 4 or not on_cpu:
        return jit(fused, donate_argnums=(4,) if donate else (), keep_unused=donate)

    def bits(keys, i, fresh=None, *, shape):
        del fresh
        k0, k1 = counter_rng.key_words(keys[i])
        return lax.bitcast_convert_type(counter_rng.random_bits(k0, k1, shape), jnp.float32)

    def finish(raw, mu, sigma):
        return _scaled(counter_rng.normal_from_bits(lax.bitcast_convert_type(raw, jnp.uint32)),
                       mu, sigma)

    bits_program = jit(bits, donate_argnums=(2,) if donate else (), keep_unused=donate)
    finish_program = jax.jit(finish, out_shardings=sharding, donate_argnums=(0,))

    def run(keys, i, mu, sigma, fresh=None, *, shape):
        raw = bits_program(keys, i, *((fresh,) if donate else ()), shape=shape)
        return finish_program(raw, mu, sigma)

    run.programs = (bits_program, finish_program)  # for tests that inspect the compiled code
    return run


def _rule(scheme: Scheme, group: Group) -> str:
    if scheme.statistic == "mean_std":
        return "N(mu,sigma)"
    return "const(mu)" if group.is_norm else "N(0,sigma)"


def transform_with_report(source_params: Params, fresh_params: Params, scheme: SchemeLike,
                          rng: RngLike, *, donate_fresh: bool = False
                          ) -> tuple[dict, list[GroupStats]]:
    """`transform`, also returning the statistics of every group (source mean/std)."""
    scheme = resolve_scheme(scheme)
    src_flat, _ = flatten(source_params)
    fresh_flat, wrapped = flatten(fresh_params)
    ignore = () if scheme.include_embeddings else KEEP_FRESH
    check_trees_match(src_flat, fresh_flat, ignore=ignore)
    names = transformable_names(src_flat, include_embeddings=scheme.include_embeddings)
    groups = scheme.groups(names)

    order = natural_sorted(p for g in groups for p in g.paths)  # shares programs across schemes
    index = {p: i for i, p in enumerate(order)}
    src = tuple(src_flat[p] for p in order)
    if not weight_stats_native.usable(src):  # the CPU kernels read host arrays where they are
        src = tuple(_place(x, fresh_flat[p]) for x, p in zip(src, order))
    rules = [_rule(scheme, g) for g in groups]
    default = _default_sharding(list(fresh_flat.values()))
    mus, sigmas = group_statistics(src, [[index[p] for p in g.paths] for g in groups], order)
    key_data, impl = _key_data(rng)
    words = np.array([_path_words(p) for p in order], dtype=np.uint32)
    keys = _keys_program(impl, default)(key_data, words)
    host_words = None
    native_draws: dict[str, dict] = {}  # drawn by the CPU kernels, all in one pass
    result = dict(fresh_flat)
    for j, (g, rule) in enumerate(zip(groups, rules)):
        for p in g.paths:
            like = fresh_flat[p]
            on_device = isinstance(like, jax.Array)
            sharding = like.sharding if on_device else default
            donate = donate_fresh and on_device
            if rule != "const(mu)" and weight_stats_native.can_draw(like.dtype, sharding):
                if host_words is None:  # counter_rng's two words of every tensor's key
                    host_words = np.stack(jax.device_get(jax.vmap(counter_rng.key_words)(keys)), 1)
                k0, k1 = host_words[index[p]]
                native_draws[p] = dict(
                    shape=tuple(np.shape(like)), sharding=sharding, k0=k0, k1=k1, rule=rule,
                    mu=mus[j], sigma=sigmas[j],
                    # into the fresh tensor's own memory, as XLA's donation would
                    target=weight_stats_native.take_buffer(like) if donate else None)
                continue
            sample = _sampler(rule, str(np.dtype(like.dtype)), sharding, donate)
            args = (keys, np.int32(index[p]), np.float32(mus[j]), np.float32(sigmas[j]))
            result[p] = sample(*args, *((like,) if donate else ()), shape=tuple(np.shape(like)))
    result.update(zip(native_draws, weight_stats_native.draw_many(list(native_draws.values()))))

    report = [GroupStats(g.name, rule, len(g.paths),
                         int(sum(math.prod(np.shape(src_flat[p])) for p in g.paths)),
                         float(mu), float(sd), g.paths)
              for g, rule, mu, sd in zip(groups, rules, mus, sigmas)]
    return unflatten(result, wrapped), report


def transform(source_params: Params, fresh_params: Params, scheme: SchemeLike,
              rng: RngLike, *, donate_fresh: bool = False) -> dict:
    """Re-sample `fresh_params` from per-group statistics of `source_params`.

    source_params: the pre-trained tree (NumPy or jax.Array leaves, any sharding);
    fresh_params: the freshly initialised tree of the same model (its dtypes and shardings are
        kept; tensors outside every group are returned unchanged);
    scheme: a readable name (`per_param_scale`), a paper init_id
        (`per_param_grouping___init_scale`), 'custom' (the gin-bound `RegexScheme`) or a Scheme;
    rng: an int seed or a jax PRNG key;
    donate_fresh: reuse the buffers of the re-sampled fresh tensors for the result (they are
        deleted; tensors outside every group are untouched). For callers that discard the
        fresh tree, e.g. the fine-tuning initialisation: less memory and ~2x faster on a CPU.
    """
    return transform_with_report(source_params, fresh_params, scheme, rng,
                                 donate_fresh=donate_fresh)[0]


# ----------------------------------------------------------------------------- Table 3
def preattn_ln_paths(names: Sequence[str]) -> list[str]:
    """The release's Table 3 targets: encoder pre-attention, decoder pre-self and pre-cross
    layer norms (18 for T5-small)."""
    rxs = [re.compile(r) for r in TABLE3_PRE_ATTN_LN_RES]
    return natural_sorted(n for n in names if any(rx.match(n) for rx in rxs))


def constant_preattn_ln(fresh_params: Params, value: float) -> tuple[dict, list[str]]:
    """Set every pre-attention layer-norm scale to `value` (Table 3); keep everything else.

    Any float works (negative, 1e-3, ...), unlike the release's string encoding. Returns the
    new tree and the paths that were set.
    """
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise UserError(f"constant_preattn_ln value must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise UserError(f"constant_preattn_ln value must be finite, got {value!r}")
    flat, wrapped = flatten(fresh_params)
    paths = preattn_ln_paths(list(flat))
    if not paths:
        raise UserError("constant_preattn_ln found no pre-attention layer norm in the model "
                        "(expected names like encoder/layers_0/pre_attention_layer_norm/scale)")
    on_device = [p for p in paths if isinstance(flat[p], jax.Array)]
    result = dict(flat)
    for p in paths:
        if p not in on_device:
            result[p] = np.full(np.shape(flat[p]), value, dtype=np.asarray(flat[p]).dtype)
    if on_device:
        specs = tuple((tuple(flat[p].shape), str(flat[p].dtype)) for p in on_device)
        fill = jax.jit(lambda: tuple(jnp.full(s, value, d) for s, d in specs),
                       out_shardings=tuple(flat[p].sharding for p in on_device))
        result.update(zip(on_device, fill()))
    return unflatten(result, wrapped), paths
