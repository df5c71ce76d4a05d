"""Input-layer reuse for an `AffineFamily`: the first parametric layer sees the same input
in every set and is linear in its weights, so its outputs for K sets are combinations of
its outputs for the base and for the D directions. Computing 1 + D layer outputs instead
of K is exact up to floating-point rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from toroid.evaluate.family import AffineFamily

_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class _Captured(Exception):  # noqa: N818 - control flow, not an error
    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = value


def input_layer(model: nn.Module) -> str | None:
    """The name of `model`'s input layer when it can be reused: a plain Linear or Conv
    called once, and every operation before it free of parameters and buffers (so its
    input is the same for every parameter set). None otherwise."""
    from toroid.symmetry.derive import symbolic_trace

    try:
        graph_module = symbolic_trace(model)
    except Exception:  # fx raises many kinds; reuse is only an optimization
        return None
    modules = dict(graph_module.named_modules())
    for node in graph_module.graph.nodes:
        if node.op == "get_attr":
            return None
        if node.op != "call_module":
            continue
        module = modules[str(node.target)]
        if type(module) in _LAYERS:
            calls = [n for n in graph_module.graph.nodes if n.target == node.target]
            single_input = len(node.args) == 1 and not node.kwargs
            return str(node.target) if len(calls) == 1 and single_input else None
        if any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
            return None
    return None


class _ReusedLayer(nn.Module):
    """Stands in for the input layer inside the vmapped model: returns its set's slice of
    the outputs that `InputLayerReuse` combined for all sets of the minibatch (passed as
    this module's per-set buffer), or, while capturing, hands back the layer's input."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("outputs", torch.zeros(0))
        self.capture = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.capture:
            raise _Captured(x)
        outputs: torch.Tensor = self.outputs  # type: ignore[assignment]
        return outputs


class InputLayerReuse:
    """Swaps the input layer of `functional` (an eval-mode copy) for `_ReusedLayer`; per
    minibatch, computes the layer for the base and the directions of one chunk of a family
    and combines them for every set with one matrix product."""

    def __init__(self, functional: nn.Module, name: str) -> None:
        self.name = name
        self.layer = functional.get_submodule(name)
        self.stand_in = _ReusedLayer()
        parent_name, _, child = name.rpartition(".")
        parent = functional.get_submodule(parent_name) if parent_name else functional
        setattr(parent, child, self.stand_in)
        self.functional = functional
        self.weight_name = f"{name}.weight"
        self.bias_name = f"{name}.bias"
        self.outputs_name = f"{name}.outputs"
        self._weights = torch.empty(0)
        self._biases: torch.Tensor | None = None
        self._coefficients = torch.empty(0)
        self._unit_weights: torch.Tensor | None = None
        self._unit_biases: torch.Tensor | None = None
        self._zero_base = False

    @property
    def replaced(self) -> frozenset[str]:
        return frozenset({self.weight_name, self.bias_name})

    @staticmethod
    def applies(family: AffineFamily, name: str) -> bool:
        """Whether the input layer `name` can be reused for `family`: its weight's and
        bias's coefficients are scalars or vary only along the output axis (dim 0)."""
        return all(
            all(size == 1 for size in family.unit_coefficients[tensor].shape[3:])
            for tensor in (f"{name}.weight", f"{name}.bias")
            if tensor in family.unit_coefficients
        )

    def use(self, family: AffineFamily, base: dict[str, torch.Tensor]) -> torch.Tensor:
        """Take one chunk's family (restricted to its directions); returns a placeholder
        for the stand-in's per-set outputs (replaced per minibatch by `values`)."""
        weight = base[self.weight_name]
        directions = family.directions
        count = family.coefficients.shape[1]
        stacked_weight = (
            directions[self.weight_name]
            if self.weight_name in directions
            else weight.new_zeros((count, *weight.shape))
        )
        bias = base.get(self.bias_name)
        # Paths pass their anchors as directions around a zero base: skip its pass.
        self._zero_base = not weight.any() and (bias is None or not bias.any())
        first = [] if self._zero_base else [weight.unsqueeze(0)]
        self._weights = torch.cat([*first, stacked_weight])
        per_unit = any(
            name in family.unit_coefficients for name in (self.weight_name, self.bias_name)
        )
        stacked_bias = None
        if bias is not None:
            stacked_bias = (
                directions[self.bias_name]
                if self.bias_name in directions
                else bias.new_zeros((count, *bias.shape))
            )
        self._coefficients = family.coefficients.to(dtype=weight.dtype, device=weight.device)
        self._unit_weights = self._unit_biases = None
        if per_unit:
            # Layer outputs without bias, weighed per unit; the biases of every set added
            # after (they may have weights of their own).
            self._biases = None
            self._unit_weights = self._per_unit(family, self.weight_name, weight)
            if bias is not None:
                assert stacked_bias is not None
                weights = self._per_unit(family, self.bias_name, bias)
                own = [] if self._zero_base else [bias.unsqueeze(0)]
                biases = torch.cat([*own, stacked_bias])
                self._unit_biases = (weights * biases.unsqueeze(0)).sum(dim=1)
        elif bias is None:
            self._biases = None
        else:
            assert stacked_bias is not None
            first_bias = [] if self._zero_base else [bias.unsqueeze(0)]
            self._biases = torch.cat([*first_bias, stacked_bias])
        return weight.new_zeros((len(family), 1))

    def _per_unit(self, family: AffineFamily, name: str, like: torch.Tensor) -> torch.Tensor:
        """(K, 1 + D or D, units): set k's weight of the base (1) and of each direction for
        every output unit of the layer."""
        if name in family.directions:
            weights = family.weights_of(name)
            weights = weights.reshape(*weights.shape[:3]).to(like.dtype, copy=False)
        else:
            weights = like.new_zeros((len(family), family.coefficients.shape[1], 1))
        if not self._zero_base:
            weights = torch.cat([weights.new_ones((len(family), 1, weights.shape[2])), weights], 1)
        return weights.expand(-1, -1, like.shape[0]).to(like.device)

    def _layer_input(self, x: torch.Tensor) -> torch.Tensor:
        self.stand_in.capture = True
        try:
            self.functional(x)
        except _Captured as captured:
            return captured.value
        finally:
            self.stand_in.capture = False
        raise RuntimeError(f"the model never called its input layer {self.name!r}")

    def outputs(self, x: torch.Tensor) -> torch.Tensor:
        """The input layer's output on minibatch `x` for every set of the chunk, (K, ...):
        base + sum_d c[k, d] (layer of direction d), as one (fused) matrix product."""
        inputs = self._layer_input(x)
        weights, biases = self._weights, self._biases
        sets = weights.shape[0]
        if isinstance(self.layer, nn.Linear):
            # One matmul for the base and every direction.
            out = F.linear(
                inputs,
                weights.reshape(-1, weights.shape[-1]),
                None if biases is None else biases.reshape(-1),
            )
            out = out.view(*inputs.shape[:-1], sets, weights.shape[1]).movedim(-2, 0)
        else:
            assert isinstance(self.layer, nn.modules.conv._ConvNd)
            conv = self.layer
            out = torch.stack(
                [
                    conv._conv_forward(inputs, weights[d], None if biases is None else biases[d])
                    for d in range(sets)
                ]
            )
        if self._unit_weights is not None:
            return self._combine_per_unit(out)
        shape = out.shape[1:]
        flat = out.reshape(sets, -1)
        if self._zero_base:
            combined = self._coefficients @ flat
        else:
            combined = torch.addmm(flat[0], self._coefficients, flat[1:])
        return combined.view(self._coefficients.shape[0], *shape)

    def _combine_per_unit(self, out: torch.Tensor) -> torch.Tensor:
        """sum_s w[k, s, u] out[s] (+ set k's bias) for every set k: one pass per direction,
        broadcast along the output-unit axis (last for Linear, 1 for Conv)."""
        weights = self._unit_weights
        assert weights is not None
        axis = out.dim() - 1 if isinstance(self.layer, nn.Linear) else 2
        shape = [weights.shape[0]] + [1] * (out.dim() - 1)
        shape[axis] = weights.shape[2]
        biases = self._unit_biases
        if out.shape[0] == 0:  # no direction and a zero base: every set's output is its bias
            empty = torch.zeros((weights.shape[0], *out.shape[1:]), dtype=out.dtype)
            return empty.to(out.device) + (0 if biases is None else biases.reshape(shape))
        start = (
            torch.zeros((), dtype=out.dtype, device=out.device)
            if biases is None
            else biases.reshape(shape)
        )
        combined = torch.addcmul(start, weights[:, 0].reshape(shape), out[0].unsqueeze(0))
        for s in range(1, out.shape[0]):
            combined.addcmul_(weights[:, s].reshape(shape), out[s].unsqueeze(0))
        return combined

    def values(
        self, names: list[str], values: tuple[torch.Tensor, ...], x: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """The chunk's per-set tensors with this minibatch's input-layer outputs in place."""
        index = names.index(self.outputs_name)
        outputs = self.outputs(x)
        return (*values[:index], outputs, *values[index + 1 :])
