"""Parameter groupings and named schemes of the weight-statistics transform.

A *grouping* maps the '/'-joined parameter names of the **source** tree to disjoint groups;
a *scheme* pairs a grouping with a statistic (`mean_std` or `scale`). This module is pure
Python (no JAX) so that group membership can be checked, listed and tested from names alone.

Regex semantics follow the paper's release exactly (`re.match`, i.e. anchored at the start of
the name): `.*attention/` matches only the q/k/v/out kernels (not `...attention_layer_norm`),
`.*attention.*norm` the pre-attention / pre-self / pre-cross layer norms, `.*mlp/` only
wi/wi_0/wi_1/wo, `.*mlp.*norm` the pre-MLP layer norms. Depth is never hard-coded: per-layer
groups are built from the `<stack>/layers_<i>/` prefixes found in the tree.

The token embedding and the untied `decoder/logits_dense/kernel` are never offered to a grouping
(they stay at their fresh init) unless a user-defined `RegexScheme` asks for them.
"""
from __future__ import annotations

import dataclasses
import functools
import re
from typing import Callable, Iterable, Mapping, Optional, Sequence, Union

import gin

from synthpre_jax.errors import UserError, did_you_mean

# Parameters that keep the fresh init in every built-in scheme and in `load_all_but_embed`.
KEEP_FRESH: tuple[str, ...] = ("token_embedder/embedding", "decoder/logits_dense/kernel")

STATISTICS: tuple[str, ...] = ("mean_std", "scale")

# The paper's regexes (spec §3.2/§3.4).
ATTENTION_KERNEL_RE = r".*attention/"
MLP_KERNEL_RE = r".*mlp/"
PRE_ATTN_LN_RE = r".*attention.*norm"
PRE_MLP_LN_RE = r".*mlp.*norm"
# Table 3: `pre_self_attn_ln` and `pre_cross_attn_ln` of the release's regex dictionary.
TABLE3_PRE_ATTN_LN_RES: tuple[str, ...] = (
    r"(encoder/.*pre_attention_layer)|(decoder/.*pre_self.*norm)",
    r".*pre_cross",
)
_LAYER_RE = re.compile(r"^(?P<prefix>[^/]+/layers_(?P<index>\d+))/")


@dataclasses.dataclass(frozen=True)
class Group:
    """A set of source tensors whose elements are pooled into one mean and one std."""

    name: str
    paths: tuple[str, ...]

    @property
    def is_norm(self) -> bool:
        """The release's test for a layer-norm group: its *first* name contains 'norm'."""
        return "norm" in self.paths[0]


Grouping = Callable[[Sequence[str]], list[Group]]


@functools.lru_cache(maxsize=65536)
def natural_key(name: str) -> tuple:
    """Sort key that puts layers_10 after layers_9 (plain sorting would not). Cached: a
    transform sorts the same few hundred names several times."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def natural_sorted(names: Iterable[str]) -> list[str]:
    return sorted(names, key=natural_key)


def _matching(names: Sequence[str], pattern: str) -> list[str]:
    rx = re.compile(pattern)
    return [n for n in names if rx.match(n)]


def _singletons(names: Sequence[str]) -> list[Group]:
    return [Group(n, (n,)) for n in names]


def _require_covered(grouping: str, names: Sequence[str], groups: Sequence[Group]) -> None:
    covered = {p for g in groups for p in g.paths}
    missing = [n for n in names if n not in covered]
    if missing:
        raise UserError(
            f"the {grouping} grouping does not know where to put {len(missing)} source "
            f"tensor(s): {_short_list(missing)}; is the source a T5X-named T5 parameter tree?")


def _short_list(items: Sequence[str], limit: int = 8) -> str:
    items = list(items)
    head = ", ".join(items[:limit])
    return head + (f" ... and {len(items) - limit} more" if len(items) > limit else "")


# ----------------------------------------------------------------------------- groupings
def per_param_grouping(names: Sequence[str]) -> list[Group]:
    """One group per tensor (130 for T5-small)."""
    return _singletons(names)


def whole_model_grouping(names: Sequence[str]) -> list[Group]:
    """Paper's `across_ALL_layer_AND_per_layer`: all kernels / all norms / both relpos tables."""
    kernel_rx = re.compile(f"({ATTENTION_KERNEL_RE})|({MLP_KERNEL_RE})")
    kernels = [n for n in names if kernel_rx.match(n)]
    norms = [n for n in names if "norm" in n and n not in kernels]
    relpos = [n for n in names if "relpos" in n and n not in kernels and n not in norms]
    groups = [Group("kernels", tuple(kernels)), Group("norms", tuple(norms)),
              Group("relpos", tuple(relpos))]
    _require_covered("whole_model", names, groups)
    return groups


# (group name, regex) of the paper's across_ALL_layer grouping, in the order of its 9 groups.
ACROSS_LAYER_TYPES: tuple[tuple[str, str], ...] = (
    ("query", r".*attention/query/"),
    ("key", r".*attention/key/"),
    ("value", r".*attention/value/"),
    ("out", r".*attention/out/"),
    ("mlp", MLP_KERNEL_RE),
    ("pre_mlp_layer_norm", PRE_MLP_LN_RE),
    ("pre_attention_layer_norm", PRE_ATTN_LN_RE),
    ("final_layer_norm", r"^[^/]+/(?!layers_)[^/]*norm"),
    ("relpos", r".*relpos"),
)


def across_layers_grouping(names: Sequence[str]) -> list[Group]:
    """Paper's `across_ALL_layer`: one group per parameter type, pooled over all layers and
    both stacks (9 groups for T5). Like the release's assert, every tensor must be covered."""
    groups, taken = [], set()
    for gname, pattern in ACROSS_LAYER_TYPES:
        members = tuple(n for n in _matching(names, pattern) if n not in taken)
        taken.update(members)
        groups.append(Group(gname, members))
    _require_covered("across_layers", names, groups)
    return groups


def per_layer_grouping(names: Sequence[str]) -> list[Group]:
    """For every `<stack>/layers_<i>` found: {its kernels} and {its norm scales}; every tensor
    outside the layers (relpos tables, final norms) is its own group. 28 groups for T5-small;
    unlike the release (which hard-codes range(6)) any depth works."""
    layers: dict[str, list[str]] = {}
    outside: list[str] = []
    for n in names:
        m = _LAYER_RE.match(n)
        if m:
            layers.setdefault(m.group("prefix"), []).append(n)
        else:
            outside.append(n)
    groups = []
    for prefix in natural_sorted(layers):
        members = layers[prefix]
        kernels = tuple(n for n in members if "norm" not in n)
        norms = tuple(n for n in members if "norm" in n)
        groups += [Group(f"{prefix}/kernels", kernels), Group(f"{prefix}/norms", norms)]
    return groups + _singletons(outside)


def regex_singletons(pattern: str) -> Grouping:
    """Every tensor whose name matches `pattern` becomes its own group."""
    def grouping(names: Sequence[str]) -> list[Group]:
        return _singletons(_matching(names, pattern))
    grouping.__name__ = f"regex_singletons({pattern})"
    return grouping


GROUPINGS: dict[str, Grouping] = {
    "per_param": per_param_grouping,
    "whole_model": whole_model_grouping,
    "across_layers": across_layers_grouping,
    "per_layer": per_layer_grouping,
    "pre_attn_ln": regex_singletons(PRE_ATTN_LN_RE),
    "pre_mlp_ln": regex_singletons(PRE_MLP_LN_RE),
    "attention": regex_singletons(ATTENTION_KERNEL_RE),
    "mlp": regex_singletons(MLP_KERNEL_RE),
}


# ----------------------------------------------------------------------------- schemes
@dataclasses.dataclass(frozen=True)
class Scheme:
    """A grouping plus the statistic applied to each group.

    statistic 'mean_std': every element ~ N(mu_g, sigma_g).
    statistic 'scale': a group whose first name contains 'norm' becomes the constant mu_g,
    every other tensor ~ N(0, sigma_g).
    """

    name: str
    grouping: Grouping
    statistic: str
    paper_name: Optional[str] = None
    include_embeddings: bool = False

    def groups(self, names: Sequence[str]) -> list[Group]:
        """Groups of `names` (already without the kept-fresh tensors), validated."""
        groups = self.grouping(natural_sorted(names))
        groups = [Group(g.name, tuple(natural_sorted(g.paths))) for g in groups]
        validate_groups(self.name, names, groups)
        return groups


def validate_groups(scheme: str, names: Sequence[str], groups: Sequence[Group]) -> None:
    """Reject empty groups, tensors in two groups and names the source does not have."""
    known, seen = set(names), {}
    if not groups:
        raise UserError(f"weight-stats scheme {scheme!r} selects no tensors of the source tree")
    for g in groups:
        if not g.paths:
            raise UserError(f"weight-stats scheme {scheme!r}: group {g.name!r} is empty "
                            "(no source tensor matches it); fix its pattern or use another scheme")
        for p in g.paths:
            if p not in known:
                raise UserError(f"weight-stats scheme {scheme!r}: group {g.name!r} names {p!r}, "
                                "which is not a transformable source tensor")
            if p in seen:
                raise UserError(f"weight-stats scheme {scheme!r}: tensor {p!r} is in two groups "
                                f"({seen[p]!r} and {g.name!r}); make the patterns disjoint")
            seen[p] = g.name


# readable name -> (grouping, statistic, the paper's init_id)
_NAMED: tuple[tuple[str, str, str, str], ...] = (
    ("per_param_mean_std", "per_param", "mean_std", "per_param_grouping___init_mean_std"),
    ("per_param_scale", "per_param", "scale", "per_param_grouping___init_scale"),
    ("whole_model_scale", "whole_model", "scale",
     "across_ALL_layer_AND_per_layer_grouping___init_scale"),
    ("pre_attn_ln_scale", "pre_attn_ln", "scale", "preattnln_per_param_grouping___init_scale"),
    ("across_layers_scale", "across_layers", "scale", "across_ALL_layer_grouping___init_scale"),
    ("per_layer_scale", "per_layer", "scale", "per_layer_grouping___init_scale"),
    ("pre_mlp_ln_scale", "pre_mlp_ln", "scale", "premlpln_per_param_grouping___init_scale"),
    ("attention_scale", "attention", "scale", "qkvo_per_param_grouping___init_scale"),
    ("mlp_scale", "mlp", "scale", "mlp_per_param_grouping___init_scale"),
)
SCHEMES: dict[str, Scheme] = {
    name: Scheme(name, GROUPINGS[grouping], stat, paper)
    for name, grouping, stat, paper in _NAMED
}
PAPER_ALIASES: dict[str, str] = {s.paper_name: s.name for s in SCHEMES.values()}
CUSTOM_SCHEME = "custom"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class RegexScheme:
    """A user-defined grouping given as regular expressions (bind it in gin).

    `patterns` is a list of regexes or a {group name: regex} dict; each regex is `re.match`ed
    against the source tree's '/'-joined names and forms one group (or, with
    `per_param=True`, one group per matching tensor). Example:

        RegexScheme.patterns = {'qk': '.*attention/(query|key)/', 'vo': '.*attention/(value|out)/'}
        RegexScheme.statistic = 'scale'
        InitConfig.scheme = 'custom'

    The token embedding and untied logits are only eligible with `include_embeddings=True`.
    """

    patterns: Union[Sequence[str], Mapping[str, str]] = ()
    statistic: str = "scale"
    per_param: bool = False
    include_embeddings: bool = False
    name: str = CUSTOM_SCHEME

    def to_scheme(self) -> Scheme:
        if self.statistic not in STATISTICS:
            raise UserError(f"RegexScheme.statistic must be one of {', '.join(STATISTICS)}, "
                            f"not {self.statistic!r}")
        items = (list(self.patterns.items()) if isinstance(self.patterns, Mapping)
                 else [(p, p) for p in self.patterns])
        if not items:
            raise UserError("RegexScheme.patterns is empty; bind it in gin, e.g. "
                            "RegexScheme.patterns = ['.*attention/']")
        compiled = []
        for gname, pattern in items:
            try:
                compiled.append((str(gname), re.compile(pattern)))
            except (re.error, TypeError) as e:
                raise UserError(f"RegexScheme pattern {pattern!r} is not a valid regex: {e}")
        per_param = self.per_param

        def grouping(names: Sequence[str]) -> list[Group]:
            groups = []
            for gname, rx in compiled:
                members = tuple(n for n in names if rx.match(n))
                if not members:
                    example = f" (names look like {names[-1]!r})" if names else ""
                    raise UserError(f"RegexScheme group {gname!r} is empty: pattern "
                                    f"{rx.pattern!r} matches no source tensor{example}")
                groups += _singletons(members) if per_param else [Group(gname, members)]
            return groups

        return Scheme(self.name, grouping, self.statistic, None, self.include_embeddings)


SchemeLike = Union[str, Scheme, RegexScheme]


def valid_scheme_names() -> list[str]:
    return list(SCHEMES) + [CUSTOM_SCHEME] + list(PAPER_ALIASES)


def resolve_scheme(scheme: SchemeLike) -> Scheme:
    """A readable name, a paper `init_id`, 'custom' (the gin-bound RegexScheme) or an object."""
    if isinstance(scheme, Scheme):
        return scheme
    if isinstance(scheme, RegexScheme):
        return scheme.to_scheme()
    if not isinstance(scheme, str) or not scheme:
        raise UserError(f"weight-stats scheme must be a name, got {scheme!r}; valid: "
                        + ", ".join(valid_scheme_names()))
    if scheme in SCHEMES:
        return SCHEMES[scheme]
    if scheme in PAPER_ALIASES:
        return SCHEMES[PAPER_ALIASES[scheme]]
    if scheme == CUSTOM_SCHEME:
        return RegexScheme().to_scheme()
    raise UserError(f"unknown weight-stats scheme {scheme!r}"
                    f"{did_you_mean(scheme, valid_scheme_names())}; valid: "
                    + ", ".join(valid_scheme_names()))


def transformable_names(names: Iterable[str], include_embeddings: bool = False) -> list[str]:
    """The names a grouping may see: all but the kept-fresh embedding/logits."""
    return natural_sorted(n for n in names if include_embeddings or n not in KEEP_FRESH)


# ----------------------------------------------------------------------------- T5 shapes
def t5_param_shapes(*, num_encoder_layers: int, num_decoder_layers: int, emb_dim: int,
                    num_heads: int, head_dim: int, mlp_dim: int, vocab_size: int = 32128,
                    gated: bool = False, tied: bool = True,
                    relpos_buckets: int = 32) -> dict[str, tuple[int, ...]]:
    """Shapes of a T5X-named T5 1.0 (`gated=False`) or 1.1 (`gated=True`) parameter tree.

    Used by tests and benchmarks to build trees without instantiating the network; the tests
    cross-check it against the network's own `jax.eval_shape` init.
    """
    qkv = emb_dim, num_heads * head_dim
    out = num_heads * head_dim, emb_dim
    wis = ("wi_0", "wi_1") if gated else ("wi",)
    shapes: dict[str, tuple[int, ...]] = {"token_embedder/embedding": (vocab_size, emb_dim)}

    def attention(prefix: str) -> None:
        for k in ("query", "key", "value"):
            shapes[f"{prefix}/{k}/kernel"] = qkv
        shapes[f"{prefix}/out/kernel"] = out

    def mlp(prefix: str) -> None:
        for w in wis:
            shapes[f"{prefix}/{w}/kernel"] = (emb_dim, mlp_dim)
        shapes[f"{prefix}/wo/kernel"] = (mlp_dim, emb_dim)

    shapes["encoder/relpos_bias/rel_embedding"] = (num_heads, relpos_buckets)
    for i in range(num_encoder_layers):
        p = f"encoder/layers_{i}"
        shapes[f"{p}/pre_attention_layer_norm/scale"] = (emb_dim,)
        attention(f"{p}/attention")
        shapes[f"{p}/pre_mlp_layer_norm/scale"] = (emb_dim,)
        mlp(f"{p}/mlp")
    shapes["encoder/encoder_norm/scale"] = (emb_dim,)
    shapes["decoder/relpos_bias/rel_embedding"] = (num_heads, relpos_buckets)
    for i in range(num_decoder_layers):
        p = f"decoder/layers_{i}"
        shapes[f"{p}/pre_self_attention_layer_norm/scale"] = (emb_dim,)
        attention(f"{p}/self_attention")
        shapes[f"{p}/pre_cross_attention_layer_norm/scale"] = (emb_dim,)
        attention(f"{p}/encoder_decoder_attention")
        shapes[f"{p}/pre_mlp_layer_norm/scale"] = (emb_dim,)
        mlp(f"{p}/mlp")
    shapes["decoder/decoder_norm/scale"] = (emb_dim,)
    if not tied:
        shapes["decoder/logits_dense/kernel"] = (emb_dim, vocab_size)
    return shapes


T5_SMALL = dict(num_encoder_layers=6, num_decoder_layers=6, emb_dim=512, num_heads=8,
                head_dim=64, mlp_dim=2048)
T5_BASE = dict(num_encoder_layers=12, num_decoder_layers=12, emb_dim=768, num_heads=12,
               head_dim=64, mlp_dim=3072)
T5_1_1_SMALL = dict(num_encoder_layers=8, num_decoder_layers=8, emb_dim=512, num_heads=6,
                    head_dim=64, mlp_dim=1024, gated=True, tied=False)
