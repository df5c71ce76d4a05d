"""Alignment: the permutations (and sign flips) of one network's unit groups that best
match a reference network, after both are put in canonical form."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import fx, nn

from toroid.data.tensordata import DataLike, as_tensor_data
from toroid.errors import InvalidArgumentError
from toroid.symmetry.canonical import canonical_state
from toroid.symmetry.derive import symbolic_trace
from toroid.symmetry.slots import State, permute_units, scale_units, unit_rows
from toroid.symmetry.transform import SymmetryTransform, structured_randperm, with_state
from toroid.symmetry.types import Slot, SymmetrySpec, UnitGroup

AlignMethod = Literal["weight", "activation"]


@dataclass(frozen=True)
class Alignment:
    """`model`: the canonical form of the aligned network with its units permuted (and,
    for odd activations, sign-flipped) to match `reference` (the canonical reference).
    `permutations[g][i]` is the unit of the canonical model that became unit i;
    `signs[g][i]` the sign it was multiplied by. `similarity_before/after`: per group, the
    cosine between the two networks over every tensor the group touches, before and after;
    `total_before/after` the same over all grouped tensors. `iterations`: the sweeps of the
    kept descent; `start`: the weight-matching start it came from (0: the single start)."""

    model: nn.Module
    reference: nn.Module
    permutations: Mapping[str, torch.Tensor]
    signs: Mapping[str, torch.Tensor]
    similarity_before: Mapping[str, float]
    similarity_after: Mapping[str, float]
    total_before: float
    total_after: float
    iterations: int
    method: AlignMethod
    start: int = 0

    def transform(self) -> SymmetryTransform:
        """The group element that maps the canonical model onto `model`."""
        old_signs = {}
        for name, signs in self.signs.items():
            original = torch.empty_like(signs)
            original[self.permutations[name]] = signs
            old_signs[name] = original
        return SymmetryTransform(signs=old_signs, permutations=dict(self.permutations))


def assign(score: torch.Tensor, blocks: int = 1) -> torch.Tensor:
    """perm maximizing sum_i score[i, perm[i]] over the permutations of a group with
    `blocks` blocks (within blocks and of whole blocks): with blocks = 1 one exact linear
    assignment; else, for every pair (block a, block b), the exact assignment of a's units
    to b's, then the exact assignment of blocks on those optima. Exact, because once block
    a is paired with block b the best units' assignment between them does not depend on
    the other pairs."""
    matrix = score.cpu().numpy()
    if blocks == 1:
        rows, cols = linear_sum_assignment(matrix, maximize=True)
        return torch.as_tensor(cols[np.argsort(rows)], dtype=torch.long)
    span = matrix.shape[0] // blocks
    parts = matrix.reshape(blocks, span, blocks, span)
    inner = np.empty((blocks, blocks, span), dtype=np.int64)
    value = np.empty((blocks, blocks))
    for a in range(blocks):
        for b in range(blocks):
            rows, cols = linear_sum_assignment(parts[a, :, b, :], maximize=True)
            inner[a, b] = cols[np.argsort(rows)]
            value[a, b] = parts[a, :, b, :][rows, cols].sum()
    rows, cols = linear_sum_assignment(value, maximize=True)
    outer = cols[np.argsort(rows)]
    perm = np.concatenate([outer[a] * span + inner[a, outer[a]] for a in range(blocks)])
    return torch.as_tensor(perm, dtype=torch.long)


class _Matcher:
    """Applies candidate permutations/signs to B's tensors and scores them against A."""

    def __init__(self, spec: SymmetrySpec, a: State, b: State) -> None:
        self.spec, self.a, self.b = spec, a, b
        self.touching: dict[str, list[tuple[UnitGroup, Slot]]] = {}
        for group in spec.groups:
            for slot in group.slots:
                self.touching.setdefault(slot.tensor, []).append((group, slot))
        self.perms = {g.name: torch.arange(g.size) for g in spec.groups}
        self.signs = {
            g.name: torch.ones(g.size, dtype=a[g.slots[0].tensor].dtype) for g in spec.groups
        }
        self.a_rows: dict[Slot, torch.Tensor] = {}  # A never changes: its unit rows, once

    def transformed(self, tensor: str, *, skip: str | None = None) -> torch.Tensor:
        """B's tensor with every group's current permutation and signs applied, except `skip`."""
        value = self.b[tensor]
        for group, slot in self.touching[tensor]:
            if group.name == skip:
                continue
            value = permute_units(value, slot, self.perms[group.name])
            if slot in group.flip:
                value = scale_units(value, slot, self.signs[group.name])
        return value

    def scores(
        self, group: UnitGroup, usable: set[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(keep, flip): summed inner products of A's unit i and B's unit j over the group's
        slots that a sign flip leaves alone, and over those it negates."""
        keep = torch.zeros(group.size, group.size, dtype=torch.float64)
        flip = torch.zeros_like(keep)
        for slot in group.slots:
            if not slot.match or (usable is not None and slot.tensor not in usable):
                continue
            if slot not in self.a_rows:
                self.a_rows[slot] = unit_rows(self.a[slot.tensor], slot, group.size)
            a_rows = self.a_rows[slot]
            b_rows = unit_rows(self.transformed(slot.tensor, skip=group.name), slot, group.size)
            product = a_rows @ b_rows.T
            if slot in group.flip:
                flip += product
            else:
                keep += product
        return keep, flip

    def solve(self, group: UnitGroup, usable: set[str] | None = None) -> bool:
        keep, flip = self.scores(group, usable)
        score = keep + flip.abs() if group.odd else keep + flip
        perm = assign(score, group.blocks)
        signs = self.signs[group.name]
        if group.odd:
            chosen = flip[torch.arange(group.size), perm]
            signs = torch.where(chosen < 0, -1.0, 1.0).to(signs.dtype)
        changed = not torch.equal(perm, self.perms[group.name]) or not torch.equal(
            signs, self.signs[group.name]
        )
        self.perms[group.name], self.signs[group.name] = perm, signs
        return changed

    def layer_by_layer(self, *, reverse: bool = False) -> None:
        """From input to output (or, `reverse`, from output to input), each group matched on
        the tensors whose other grouped axes are already matched (its input weights first,
        as in Pittorino et al. 2022)."""
        done: set[str] = set()
        for group in reversed(self.spec.groups) if reverse else self.spec.groups:
            usable = {
                slot.tensor
                for slot in group.slots
                if all(
                    g.name in done or g.name == group.name for g, _ in self.touching[slot.tensor]
                )
            }
            self.solve(group, usable)
            done.add(group.name)

    def descend(self, *, max_iter: int, generator: torch.Generator) -> int:
        """Coordinate descent: each step an exact linear assignment for one group with all
        others fixed; stops when a sweep over all groups (random order) changes nothing.
        A group none of whose neighbours (the groups sharing a matched tensor with it) has
        changed since its last step here is skipped: its scores, hence its assignment,
        would be the same, so the result is that of solving it again."""
        groups = list(self.spec.groups)
        neighbours = {
            g.name: sorted(
                {h.name for s in g.slots if s.match for h, _ in self.touching[s.tensor]} - {g.name}
            )
            for g in groups
        }
        changes = dict.fromkeys(neighbours, 0)  # how often each group's assignment changed
        seen: dict[str, tuple[int, ...]] = {}  # neighbours' changes at a group's last step
        for iteration in range(1, max_iter + 1):
            order = torch.randperm(len(groups), generator=generator).tolist()
            changed = False
            for i in order:
                name = groups[i].name
                now = tuple(changes[n] for n in neighbours[name])
                if seen.get(name) == now:
                    continue
                if self.solve(groups[i]):
                    changes[name] += 1
                    changed = True
                seen[name] = now
            if not changed:
                return iteration
        return max_iter

    def state(self) -> State:
        out = dict(self.b)
        for tensor in self.touching:
            out[tensor] = self.transformed(tensor)
        return out

    def shuffle(self, generator: torch.Generator) -> None:
        """A random permutation of every group's units (signs kept), a start for `descend`."""
        for group in self.spec.groups:
            self.perms[group.name] = structured_randperm(group, generator=generator)

    def objective(self) -> float:
        """The summed inner products of A's and B's (transformed) grouped tensors, each
        tensor once: the numerator of the total cosine, which `descend` never decreases."""
        return sum(
            float((self.a[t] * self.transformed(t)).sum())
            for t in sorted({s.tensor for g in self.spec.groups for s in g.slots if s.match})
        )


def _cosines(spec: SymmetrySpec, a: State, b: State) -> tuple[dict[str, float], float]:
    everything = {s.tensor for g in spec.groups for s in g.slots if s.match}
    parts = {
        t: (float((a[t] * b[t]).sum()), float(a[t].pow(2).sum()), float(b[t].pow(2).sum()))
        for t in everything
    }

    def cosine(tensors: set[str]) -> float:
        # summed in a fixed order, so that the last bit does not depend on hash seeds
        dot, na, nb = (sum(parts[t][i] for t in sorted(tensors)) for i in range(3))
        return dot / max(float(np.sqrt(na * nb)), 1e-300)

    per_group = {g.name: cosine({s.tensor for s in g.slots if s.match}) for g in spec.groups}
    return per_group, cosine(everything)


def _cast(state: State, dtypes: Mapping[str, torch.dtype]) -> State:
    return {k: v.to(dtypes[k]) for k, v in state.items()}


def _moment_sums(size: int) -> dict[str, torch.Tensor]:
    zeros = {k: torch.zeros(size, dtype=torch.float64) for k in ("a", "b", "aa", "bb")}
    return {
        "n": torch.zeros((), dtype=torch.float64),
        "ab": torch.zeros(size, size, dtype=torch.float64),
        **zeros,
    }


def _activation_correlations(
    model_a: nn.Module, model_b: nn.Module, spec: SymmetrySpec, data: DataLike, batch_size: int
) -> dict[str, torch.Tensor]:
    """Per group, the correlation of A's unit i with B's unit j over data (and positions,
    tokens). Groups without activation nodes (attention heads) get none."""
    wanted = {node: g.name for g in spec.groups for node in g.activation_nodes}
    last = {node for g in spec.groups for node in g.channel_last}
    sums: dict[str, dict[str, torch.Tensor]] = {}

    class Recorder(fx.Interpreter):
        def __init__(self, module: fx.GraphModule) -> None:
            super().__init__(module)
            self.seen: dict[str, torch.Tensor] = {}

        def run_node(self, n: fx.Node) -> Any:
            result = super().run_node(n)
            if n.name in wanted:
                self.seen[n.name] = result
            return result

    graphs = [symbolic_trace(m).eval() for m in (model_a, model_b)]
    x = as_tensor_data(data).x
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            batch = x[start : start + batch_size]
            recorded = []
            for graph in graphs:
                recorder = Recorder(graph)
                recorder.run(batch)
                recorded.append(recorder.seen)
            for node, group_name in wanted.items():
                size = spec.group(group_name).size
                axis = -1 if node in last else 1
                ua, ub = (r[node].double().movedim(axis, 0).reshape(size, -1) for r in recorded)
                acc = sums.setdefault(group_name, _moment_sums(size))
                acc["n"] = acc["n"] + ua.shape[1]
                acc["a"] += ua.sum(1)
                acc["b"] += ub.sum(1)
                acc["aa"] += ua.pow(2).sum(1)
                acc["bb"] += ub.pow(2).sum(1)
                acc["ab"] += ua @ ub.T
    correlations = {}
    for name, acc in sums.items():
        n = acc["n"]
        mean_a, mean_b = acc["a"] / n, acc["b"] / n
        cov = acc["ab"] / n - mean_a[:, None] * mean_b[None, :]
        std_a = (acc["aa"] / n - mean_a**2).clamp_min(0).sqrt()
        std_b = (acc["bb"] / n - mean_b**2).clamp_min(0).sqrt()
        correlations[name] = cov / (std_a[:, None] * std_b[None, :]).clamp_min(1e-12)
    return correlations


def _weight_matching(
    spec: SymmetrySpec, a: State, b: State, *, max_iter: int, starts: int, seed: int
) -> tuple[_Matcher, int, int]:
    """Coordinate descent from `starts` starts; every random choice (sweep orders, random
    starts) drawn in turn from one generator seeded with `seed`, so the first k starts are
    the same for every `starts` >= k. Returns the matcher with the highest objective (ties:
    the earliest start), its iterations and its start's index.
    - start 0, the single-start algorithm: layer by layer from input to output, then the
      descent (from the identity instead, should that end below the identity's objective);
    - start 1: layer by layer from output to input, then the descent;
    - start 2: the descent from the identity (Git Re-Basin's start, Ainsworth et al. 2023);
    - starts 3, 4, ...: the descent from a random permutation of every group."""
    generator = torch.Generator().manual_seed(seed)
    best = _Matcher(spec, a, b)
    identity_objective = best.objective()
    best.layer_by_layer()
    iterations = best.descend(max_iter=max_iter, generator=generator)
    best_objective = best.objective()
    if best_objective < identity_objective:
        # Coordinate descent never decreases the objective, so from the identity the
        # result is at least as similar as before.
        best = _Matcher(spec, a, b)
        iterations = best.descend(max_iter=max_iter, generator=generator)
        best_objective = best.objective()
    best_start = 0
    for start in range(1, starts):
        matcher = _Matcher(spec, a, b)
        if start == 1:
            matcher.layer_by_layer(reverse=True)
        elif start >= 3:
            matcher.shuffle(generator)
        used = matcher.descend(max_iter=max_iter, generator=generator)
        objective = matcher.objective()
        if objective > best_objective:
            best, iterations, best_objective, best_start = matcher, used, objective, start
    return best, iterations, best_start


# The weight-matching algorithm's version, named so that results it computes can say which
# algorithm computed them (a study puts it into the hash of every task that aligns). Change
# it whenever a change to `align` can change its permutations: "2" is the multi-start
# descent (default 4 starts) whose objective counts every tensor once.
WEIGHT_MATCHING_VERSION = "2"


def align(
    model: nn.Module,
    reference: nn.Module,
    *,
    method: AlignMethod = "weight",
    data: DataLike | None = None,
    spec: SymmetrySpec | None = None,
    max_iter: int = 100,
    seed: int = 0,
    batch_size: int = 500,
    starts: int = 4,
) -> Alignment:
    """Align `model` to `reference` (same architecture). Both are canonicalized first (the
    output layer normalized). `weight`: layer-by-layer assignment from input to output, then
    coordinate descent over all groups with exact linear assignments maximizing the summed
    inner products of every tensor each group touches (restarted from the identity in the
    rare case that ends below it, so the similarity never decreases). With `starts` > 1 the
    descent also runs from further starts (layer by layer from output to input, the identity,
    then random permutations; all drawn from `seed`) and the most similar result is kept
    (ties: the earliest start), so it is never less similar than `starts=1`, the single
    start. `activation`: per group, the assignment maximizing the correlation of unit
    outputs on `data` (`starts` is not used); attention heads, which have no output of
    their own in the graph, are then matched on their canonical factors. Odd activations
    match on |similarity| and flip signs."""
    from toroid.symmetry.derive import spec_for

    if method not in ("weight", "activation"):
        raise InvalidArgumentError(f"method must be 'weight' or 'activation', got {method!r}")
    if max_iter < 1:
        raise InvalidArgumentError(f"max_iter must be at least 1, got {max_iter}")
    if isinstance(starts, bool) or not isinstance(starts, int) or starts < 1:
        raise InvalidArgumentError(f"starts must be an integer of at least 1, got {starts!r}")
    raw_a, raw_b = reference.state_dict(), model.state_dict()
    if raw_a.keys() != raw_b.keys() or any(raw_a[k].shape != raw_b[k].shape for k in raw_a):
        raise InvalidArgumentError(
            f"model ({type(model).__name__}) and reference ({type(reference).__name__}) have "
            "different architectures: their state dicts differ in names or shapes"
        )
    spec = spec or spec_for(reference)
    dtypes_a = {k: v.dtype for k, v in raw_a.items()}
    dtypes_b = {k: v.dtype for k, v in raw_b.items()}
    # Matching runs in float64; the returned models get back their own dtypes.
    state_a, state_b = (
        {
            k: v.double() if v.is_floating_point() else v
            for k, v in canonical_state(raw, spec, output="normalize").items()
        }
        for raw in (raw_a, raw_b)
    )
    before, total_before = _cosines(spec, state_a, state_b)
    canonical_a = with_state(reference, _cast(state_a, dtypes_a))

    if method == "weight":
        best, iterations, start = _weight_matching(
            spec, state_a, state_b, max_iter=max_iter, starts=starts, seed=seed
        )
    else:
        if data is None:
            raise InvalidArgumentError("method='activation' needs data (inputs to correlate on)")
        canonical_b = with_state(model, _cast(state_b, dtypes_b))
        correlations = _activation_correlations(canonical_a, canonical_b, spec, data, batch_size)
        best = _Matcher(spec, state_a, state_b)
        for group in spec.groups:
            if group.name not in correlations:
                continue  # no activation to correlate: matched on weights below
            corr = correlations[group.name]
            score = corr.abs() if group.odd else corr
            perm = assign(score, group.blocks)
            best.perms[group.name] = perm
            if group.odd:
                chosen = corr[torch.arange(group.size), perm]
                best.signs[group.name] = torch.where(chosen < 0, -1.0, 1.0).to(
                    best.signs[group.name].dtype
                )
        for group in spec.groups:
            if group.name not in correlations:
                # Attention heads live inside one module: matched, with every other group
                # fixed, by the exact assignment on their canonical factors.
                best.solve(group)
        iterations, start = 1, 0
    aligned = best.state()
    after, total_after = _cosines(spec, state_a, aligned)
    return Alignment(
        model=with_state(model, _cast(aligned, dtypes_b)),
        reference=canonical_a,
        permutations=dict(best.perms),
        signs={g.name: best.signs[g.name] for g in spec.groups if g.odd},
        similarity_before=before,
        similarity_after=after,
        total_before=total_before,
        total_after=total_after,
        iterations=iterations,
        method=method,
        start=start,
    )


__all__ = ["WEIGHT_MATCHING_VERSION", "Alignment", "align"]
