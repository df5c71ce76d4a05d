"""The symmetry spec: which tensor axes each unit group acts on, and the cells.

A spec is plain data (frozen dataclasses of names and integers): derived from the model's
graph by `symmetry_spec`, or written by hand for models the derivation does not support.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

CellKind = Literal["absorbed", "homogeneous", "invariant", "stream", "binary", "output"]


@dataclass(frozen=True)
class Slot:
    """Unit i of a group owns the i-th block of `block` consecutive indices along `axis`
    of the state-dict tensor `tensor` (block > 1 for a Linear reading flattened channels).
    The units occupy the indices `start` to `stop` of that axis (default: all of it), so
    that several groups or slots can share one axis (the query, key and value rows of an
    attention layer's packed projection). Slots with `match=False` (running statistics,
    which depend on the data more than on the weights and would dominate the similarity)
    are permuted but not matched on."""

    tensor: str
    axis: int
    block: int = 1
    match: bool = True  # used by alignment scores (False: BatchNorm running statistics)
    start: int = 0
    stop: int | None = None  # None: to the end of the axis

    @property
    def whole(self) -> bool:
        """Whether the units cover the whole axis (every slot but a sub-range)."""
        return self.start == 0 and self.stop is None


@dataclass(frozen=True)
class CellFamily:
    """One cell per unit of `group`: unit i's cell is the concatenation of its slices in
    `members`. Canonicalization divides unit i's members by the cell norm s_i and
    compensates: `homogeneous` and `stream` cells multiply the `compensate` slices (the
    consumers' input columns) by s_i; `absorbed` cells rescale the running statistics of
    the BatchNorm modules in `batchnorm`, which normalize the scale away; `invariant` cells
    feed a sign activation, which absorbs the scale (nothing is compensated). An `output`
    cell (group None) is the whole output layer, one global positive factor that changes
    the loss but not the predictions. A `binary` cell holds the latent weights of a binary
    layer (one row per unit, or the whole output layer when group is None): only their
    signs enter the function, so canonical form replaces them by their signs (+-1, +1 at
    0) instead of normalizing them; its point on the sphere is w / sqrt(n_c).
    `span`: the consecutive units one cell holds (1: one cell per unit; the group's size:
    one cell for all of them, e.g. the global scale of a LayerNorm's input at eps = 0; C/G:
    one per GroupNorm group). Its vector is the concatenation of those units' slices, and a
    scale multiplies all of them by one factor."""

    name: str
    group: str | None
    kind: CellKind
    members: tuple[Slot, ...]
    compensate: tuple[Slot, ...] = ()
    batchnorm: tuple[str, ...] = ()
    span: int = 1


@dataclass(frozen=True)
class TranslationFamily:
    """Translations of `group`'s units in blocks of `span` consecutive units: adding one
    vector v to the `members` slices of every unit of a block (for a Linear's rows
    W -> W + 1 v^T, for a bias b -> b + c 1) keeps the function, because every use of the
    units subtracts their mean over the block first (LayerNorm: span = all units; GroupNorm:
    span = the channels of one group). Canonical form centers the members over each block."""

    name: str
    group: str
    members: tuple[Slot, ...]
    span: int


@dataclass(frozen=True)
class UnitGroup:
    """Hidden units that share one permutation (a layer's outputs, or every writer and
    reader of a residual stream). `slots`: every tensor axis the permutation acts on.
    `flip`: the slices a unit's sign flip negates (empty unless the units feed an odd
    activation); `sign_rule`: the slices whose sum fixes the canonical sign.
    `activation_nodes`: graph nodes whose outputs carry the group's channels. `blocks` > 1:
    the units form that many blocks of size/blocks consecutive units (GroupNorm groups), and
    only permutations within blocks and of whole blocks are symmetries. Per-unit
    scale freedom lives in the spec's cells, sign freedom in `flip`: a unit with neither
    (e.g. in front of GELU without BatchNorm) has permutation symmetry only, and the slices
    no cell holds are Euclidean coordinates of the network (outside cells). The channel of
    an activation node is its axis 1, or its last axis for the nodes in `channel_last`
    (token tensors). The heads of an attention layer form a group without activation
    nodes (they live inside one module)."""

    name: str
    size: int
    slots: tuple[Slot, ...]
    flip: tuple[Slot, ...] = ()
    sign_rule: tuple[Slot, ...] = ()
    stream: bool = False
    activation_nodes: tuple[str, ...] = ()
    channel_last: tuple[str, ...] = ()  # activation nodes of (batch, tokens, channels) tensors
    blocks: int = 1

    @property
    def odd(self) -> bool:
        return bool(self.flip)


@dataclass(frozen=True)
class AttentionHeads:
    """A `torch.nn.MultiheadAttention` used as self-attention: `heads` units of `head_dim`
    channels each, permuted as the unit group `group`. Per head h, besides the permutation,
    GL(head_dim) acts on the query-key circuit (W_Q,h -> A^T W_Q,h with its bias, W_K,h ->
    A^-1 W_K,h) and on the value-output circuit (W_V,h -> B W_V,h with its bias, W_O,h ->
    W_O,h B^-1); the key bias is free (softmax ignores a per-query constant) and the value
    bias can move into the output bias (attention weights sum to 1). `in_proj`: the packed
    (3E, E) query/key/value weight; `in_bias`, `out_bias`: None without biases."""

    module: str
    group: str
    heads: int
    head_dim: int
    in_proj: str
    out_proj: str
    in_bias: str | None = None
    out_bias: str | None = None

    @property
    def embed_dim(self) -> int:
        return self.heads * self.head_dim


@dataclass(frozen=True)
class SymmetrySpec:
    """All symmetries of one architecture. `groups` run from input to output; `cells` are
    in an order where every cell comes after the cells that compensate into it;
    `bias_folds` pairs a bias in front of a BatchNorm with that BatchNorm's prefix;
    `bn_eps` holds each BatchNorm's epsilon; `attention` the attention layers, whose
    per-head linear freedom canonical form removes by a factorization (not a cell);
    `translations` the translation families (units read only through LayerNorm or
    GroupNorm)."""

    groups: tuple[UnitGroup, ...]
    cells: tuple[CellFamily, ...]
    output: CellFamily | None = None
    bias_folds: tuple[tuple[str, str], ...] = ()
    bn_eps: Mapping[str, float] = field(default_factory=dict)
    attention: tuple[AttentionHeads, ...] = ()
    translations: tuple[TranslationFamily, ...] = ()

    def binary_cells(self) -> tuple[CellFamily, ...]:
        """The `binary` cells (hidden layers, then the output layer): the +-1 weights."""
        hidden = tuple(c for c in self.cells if c.kind == "binary")
        output = (self.output,) if self.output is not None and self.output.kind == "binary" else ()
        return hidden + output

    def binary_tensors(self) -> tuple[str, ...]:
        """Names of the latent weight tensors of the binary layers (empty: not binary)."""
        return tuple(dict.fromkeys(s.tensor for c in self.binary_cells() for s in c.members))

    def group(self, name: str) -> UnitGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    def describe(self) -> str:
        """A readable listing of groups and cells (what `toroid spec` prints)."""
        lines = []
        heads = {a.group: a for a in self.attention}
        for g in self.groups:
            kind = "residual stream" if g.stream else "layer"
            sign = ", sign-symmetric" if g.odd else ""
            if g.name in heads:
                kind = f"attention heads of {heads[g.name].head_dim} channels"
                sign = ", GL per head on the query-key and value-output circuits"
            elif (
                not g.odd
                and not any(c.group == g.name for c in self.cells)
                and not any(t.group == g.name for t in self.translations)
            ):
                sign = ", permutations only"
            if g.blocks > 1:
                sign += f", permutations within and of {g.blocks} blocks"
            lines.append(f"group {g.name}: {g.size} units ({kind}{sign}), {len(g.slots)} axes")
            for cell in self.cells:
                if cell.group == g.name:
                    members = ", ".join(f"{s.tensor}[{s.axis}]" for s in cell.members)
                    span = f" (one cell per {cell.span} units)" if cell.span > 1 else ""
                    lines.append(f"  cell {cell.kind}: {members}{span}")
            for family in self.translations:
                if family.group == g.name:
                    members = ", ".join(f"{s.tensor}[{s.axis}]" for s in family.members)
                    lines.append(f"  translation: {members} (per {family.span} units)")
        if self.output is not None:
            members = ", ".join(s.tensor for s in self.output.members)
            what = "binary weights" if self.output.kind == "binary" else "one global scale"
            lines.append(f"output layer: {members} ({what})")
        return "\n".join(lines)
