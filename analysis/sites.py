"""Sites: the one vocabulary for *where in the model* patching, probing and the store look.

A site is declarative, in the spirit of pyvene's intervention spec: a frozen :class:`Site` names a
*kind* of activation, a layer and optionally one head and one token position. It knows its
TransformerLens / TransformerBridge hook name, so every consumer reads the same activation for the
same words.

Kinds (:data:`KINDS`; ``l`` is the layer):

========== ============================== =====================================================
kind       hook                           what it is
========== ============================== =====================================================
resid_pre  ``blocks.l.hook_resid_pre``    the residual stream entering block ``l``
resid_mid  ``blocks.l.hook_resid_mid``    the residual stream after block ``l``'s attention
resid_post ``blocks.l.hook_resid_post``   the residual stream leaving block ``l``
attn_out   ``blocks.l.hook_attn_out``     block ``l``'s attention write (all heads, plus ``b_O``)
mlp_out    ``blocks.l.hook_mlp_out``      block ``l``'s MLP write
head_out   ``blocks.l.attn.hook_z``       each head's write ``z[h] @ W_O[h]`` (per head; the
                                          bridge has no per-head hook, so it is read from ``z``)
q, k, v    ``blocks.l.attn.hook_q/k/v``   each head's queries, keys, values (per head)
========== ============================== =====================================================

``head_out`` is the per-head output everywhere (patching, probing, the store): it is the
per-head counterpart of ``attn_out`` and ``mlp_out`` (a component's write into the residual
stream) and the name TransformerLens' patching uses (``get_act_patch_attn_head_out_by_pos``).
Patching ``z`` of one head and patching that head's ``z @ W_O`` write are the same intervention,
because ``W_O`` is linear.

Not every consumer supports every kind: patching takes :data:`PATCH_KINDS` (``resid_post`` at
layer ``l`` is ``resid_pre`` at ``l + 1``), the activation store :data:`STORE_KINDS`.

Text form (:func:`parse_sites`): a comma-separated list of ``kind`` (every layer), ``kind.layer``
or, for a per-head kind, ``kind.layer.head``. Group aliases (:data:`ALIASES`): ``attn`` →
``attn_out``, ``mlp`` → ``mlp_out``, ``head`` → ``head_out``. A bare ``resid`` is refused: it
would have to mean one of ``resid_pre``, ``resid_mid`` or ``resid_post``, and a patching result at
``resid_pre`` of layer ``l`` sits one block before a probing result at ``resid_post`` of the same
layer, so the kind must be spelled out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from codetransfer.errors import CodetransferError, did_you_mean

KINDS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "head_out", "q", "k", "v")
"""Every site kind, in model order within a block."""

HEAD_KINDS = ("head_out", "q", "k", "v")
"""Kinds that have one activation per head."""

PATCH_KINDS = ("resid_pre", "resid_mid", "attn_out", "mlp_out", "head_out", "q", "k", "v")
"""Kinds that activation patching supports."""

STORE_KINDS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "head_out")
"""Kinds that the activation store can hold."""

ALIASES = {"attn": "attn_out", "mlp": "mlp_out", "head": "head_out"}
"""Group aliases accepted by the parser, and the kind each stands for."""

AMBIGUOUS = {"resid": ("resid_pre", "resid_mid", "resid_post")}
"""Names refused because they could mean several kinds."""

HOOKS = {
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "resid_mid": "blocks.{layer}.hook_resid_mid",
    "resid_post": "blocks.{layer}.hook_resid_post",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
    "head_out": "blocks.{layer}.attn.hook_z",
    "q": "blocks.{layer}.attn.hook_q",
    "k": "blocks.{layer}.attn.hook_k",
    "v": "blocks.{layer}.attn.hook_v",
}
"""The TransformerBridge hook each kind reads (``{layer}`` filled in)."""


def resolve_kind(name: str, allowed: Sequence[str] = KINDS, where: str = "site") -> str:
    """The canonical kind for ``name`` (aliases resolved); refuses unknown, ambiguous or unsupported names."""
    name = str(name).strip()
    if name in AMBIGUOUS:
        options = AMBIGUOUS[name]
        raise CodetransferError(
            f"{where}: '{name}' is ambiguous; write one of {', '.join(options)} "
            "(patching used to read it as resid_pre and probing as resid_post)"
        )
    kind = ALIASES.get(name, name)
    if kind not in KINDS:
        choices = list(allowed) + [a for a, k in ALIASES.items() if k in allowed]
        raise CodetransferError(
            f"{where}: unknown site kind '{name}'{did_you_mean(name, choices)}; expected one of {', '.join(allowed)}"
        )
    if kind not in allowed:
        raise CodetransferError(
            f"{where}: site kind '{kind}' is not supported here; expected one of {', '.join(allowed)}"
        )
    return kind


@dataclass(frozen=True)
class Site:
    """One place in the model: a kind of activation at a layer, optionally one head and one position."""

    kind: str
    """One of :data:`KINDS` (aliases such as ``attn`` are resolved on construction)."""
    layer: int | None
    """Block index, 0-based; None = every layer (a pattern, expanded by :meth:`at_layers`)."""
    head: int | None = None
    """Head index for a per-head kind; None = every head (or a kind without heads)."""
    pos: int | str | None = None
    """Token position: an index, a span key, or None = every position."""

    def __post_init__(self):
        object.__setattr__(self, "kind", resolve_kind(self.kind))
        if self.head is not None and self.kind not in HEAD_KINDS:
            raise CodetransferError(
                f"site: '{self.kind}' has no heads, got head={self.head}; heads exist for {', '.join(HEAD_KINDS)}"
            )

    @property
    def per_head(self) -> bool:
        """Whether the kind has one activation per head."""
        return self.kind in HEAD_KINDS

    @property
    def name(self) -> str:
        """The text form: ``kind.layer`` (``kind.layer.head`` with one head; ``kind`` for every layer)."""
        if self.layer is None:
            return self.kind
        return f"{self.kind}.{self.layer}" + ("" if self.head is None else f".{self.head}")

    @property
    def hook(self) -> str:
        """The TransformerBridge hook name this site reads."""
        if self.layer is None:
            raise CodetransferError(f"site: '{self.kind}' has no layer; pick one (e.g. '{self.kind}.0')")
        return HOOKS[self.kind].format(layer=self.layer)

    def at_layers(self, n_layers: int) -> list[Site]:
        """This site at every layer of an ``n_layers`` model (itself, checked, when a layer is set)."""
        if self.layer is None:
            return [Site(self.kind, layer, self.head, self.pos) for layer in range(n_layers)]
        if not 0 <= self.layer < n_layers:
            raise CodetransferError(
                f"sites: '{self.name}' asks for layer {self.layer} but the model has {n_layers} layers "
                f"(0..{n_layers - 1}); pick a layer in range"
            )
        return [self]

    @classmethod
    def from_name(cls, text: str, allowed: Sequence[str] = KINDS, where: str = "sites") -> Site:
        """Parse one ``kind[.layer[.head]]``."""
        spec = str(text).strip()
        kind, *rest = spec.split(".")
        kind = resolve_kind(kind, allowed, where)
        numbers = []
        for part, what in zip(rest, ("layer", "head")):
            try:
                numbers.append(int(part))
            except ValueError:
                raise CodetransferError(
                    f"{where}: {what} in '{spec}' must be an integer, got '{part}'; write e.g. '{kind}.0'"
                ) from None
        if len(rest) > 2 or (len(rest) == 2 and kind not in HEAD_KINDS):
            form = "kind.layer.head" if kind in HEAD_KINDS else "kind.layer"
            raise CodetransferError(f"{where}: expected '{form}' at most, got '{spec}'")
        if any(n < 0 for n in numbers):
            raise CodetransferError(f"{where}: layer and head in '{spec}' must be >= 0")
        layer = numbers[0] if numbers else None
        head = numbers[1] if len(numbers) > 1 else None
        return cls(kind, layer, head)


def parse_sites(
    sites: str | Iterable[str | Site],
    n_layers: int | None = None,
    *,
    allowed: Sequence[str] = KINDS,
    where: str = "sites",
) -> list[Site]:
    """Parse ``"resid_pre,attn_out.1,head_out.2.3"`` (or a list of such strings) into sites.

    With ``n_layers`` every bare kind is expanded to all layers and every layer is checked against
    the model; without it, bare kinds stay patterns (``layer=None``). Duplicates are dropped, order
    is kept. Unknown kinds get a did-you-mean hint; ``resid`` is refused as ambiguous; kinds outside
    ``allowed`` are refused.
    """
    if isinstance(sites, str):
        specs = [s.strip() for s in sites.split(",") if s.strip()]
    else:
        specs = list(sites)
    if not specs:
        raise CodetransferError(
            f"{where}: expected at least one of {', '.join(allowed)} (optionally '.layer'), got none"
        )
    out: list[Site] = []
    for spec in specs:
        site = spec if isinstance(spec, Site) else Site.from_name(spec, allowed, where)
        if site.kind not in allowed:
            resolve_kind(site.kind, allowed, where)
        for s in site.at_layers(n_layers) if n_layers is not None else [site]:
            if s not in out:
                out.append(s)
    return out


def parse_kinds(sites: str | Iterable[str], allowed: Sequence[str] = KINDS, where: str = "sites") -> list[str]:
    """Canonical kinds of a comma-separated list of kinds (no layers), e.g. ``"resid_pre,attn,head"``."""
    out = []
    for site in parse_sites(sites, allowed=allowed, where=where):
        if site.layer is not None:
            raise CodetransferError(f"{where}: expected site kinds without a layer, got '{site.name}'")
        if site.kind not in out:
            out.append(site.kind)
    return out


def hook_name(kind: str, layer: int) -> str:
    """The TransformerBridge hook name of ``kind`` (aliases allowed) at ``layer``."""
    return Site(kind, layer).hook
