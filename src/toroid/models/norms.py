"""The normalization after each hidden layer of an MLP or LeNet-5: which one, how it agrees
with the older `batchnorm` flag, the config keys it adds, and the layer it builds."""

from __future__ import annotations

from typing import Any, Literal

from torch import nn

from toroid.errors import InvalidArgumentError
from toroid.models.config import check_choice

Norm = Literal["batchnorm", "layernorm", "rmsnorm", "groupnorm", "none"]
MLP_NORMS: tuple[Norm, ...] = ("batchnorm", "layernorm", "rmsnorm", "none")
LENET_NORMS: tuple[Norm, ...] = ("batchnorm", "groupnorm", "none")
# The two norms the `batchnorm` flag always expressed: configs that use them keep exactly
# the keys they had before `norm` existed (old checkpoints and study hashes match them).
_FLAG_NORMS = ("batchnorm", "none")


def resolve_norm(
    norm: Norm | None, *, batchnorm: bool | None, valid: tuple[Norm, ...], binary: bool
) -> Norm:
    """The norm a model uses: `norm` when given, else what `batchnorm` says (True, the
    default, is 'batchnorm'; False is 'none'). Both given must agree; binary networks need
    BatchNorm, the threshold in front of every sign unit."""
    if batchnorm is not None and not isinstance(batchnorm, bool):
        raise InvalidArgumentError(f"batchnorm must be true or false, got {batchnorm!r}")
    if norm is None:
        resolved: Norm = "none" if batchnorm is False else "batchnorm"
    else:
        check_choice("norm", norm, valid)
        resolved = norm
        if batchnorm is not None and batchnorm != (norm == "batchnorm"):
            raise InvalidArgumentError(
                f"batchnorm={batchnorm!r} contradicts norm={norm!r}; pass norm alone "
                f"(one of {', '.join(map(repr, valid))})"
            )
    if binary is True and resolved != "batchnorm":
        raise InvalidArgumentError(
            f"binary networks need batchnorm=True (norm='batchnorm'), got norm={resolved!r}: "
            "BatchNorm is the threshold of each sign unit"
        )
    return resolved


def norm_keys(norm: Norm, groups: int | None = None) -> dict[str, Any]:
    """The config keys beyond `batchnorm` that `norm` needs: none for the two norms the
    flag expresses, so those configs stay as they always were."""
    if norm in _FLAG_NORMS:
        return {}
    return {"norm": norm, **({} if groups is None else {"groups": groups})}


def resolve_groups(norm: Norm, groups: int | None, widths: tuple[int, ...]) -> int | None:
    """GroupNorm's number of groups (default 2): a divisor of every normalized width; None
    for every other norm, which takes no `groups`."""
    if norm != "groupnorm":
        if groups is not None:
            raise InvalidArgumentError(
                f"groups applies only to norm='groupnorm', got groups={groups!r} with norm={norm!r}"
            )
        return None
    chosen = 2 if groups is None else groups
    valid = [g for g in range(1, min(widths) + 1) if all(w % g == 0 for w in widths)]
    if isinstance(chosen, bool) or not isinstance(chosen, int) or chosen not in valid:
        raise InvalidArgumentError(
            f"groups must divide every normalized width {widths}: one of "
            f"{', '.join(map(str, valid))}, got {chosen!r}"
        )
    return chosen


def norm_layer(norm: Norm, width: int, *, spatial: bool, groups: int | None = None) -> nn.Module:
    """The layer that normalizes `width` features (channels when `spatial`)."""
    if norm == "batchnorm":
        return nn.BatchNorm2d(width) if spatial else nn.BatchNorm1d(width)
    if norm == "layernorm" and not spatial:
        return nn.LayerNorm(width)
    if norm == "rmsnorm" and not spatial:
        return nn.RMSNorm(width)
    if norm == "groupnorm" and groups is not None:
        return nn.GroupNorm(groups, width)
    raise InvalidArgumentError(
        f"no {'spatial ' if spatial else ''}layer for norm={norm!r} (groups={groups!r})"
    )
