"""Symmetry removal: the symmetry spec of a model, canonical form, alignment."""

from toroid.symmetry.align import Alignment, align
from toroid.symmetry.canonical import canonicalize, is_canonical
from toroid.symmetry.compare import same_function
from toroid.symmetry.derive import (
    default_example_input,
    register_module_kind,
    spec_for,
    symmetry_spec,
)
from toroid.symmetry.transform import (
    HeadMaps,
    SymmetryTransform,
    apply_symmetry,
    random_symmetry,
)
from toroid.symmetry.types import AttentionHeads, CellFamily, Slot, SymmetrySpec, UnitGroup

__all__ = [
    "Alignment",
    "AttentionHeads",
    "CellFamily",
    "HeadMaps",
    "Slot",
    "SymmetrySpec",
    "SymmetryTransform",
    "UnitGroup",
    "align",
    "apply_symmetry",
    "canonicalize",
    "default_example_input",
    "is_canonical",
    "random_symmetry",
    "register_module_kind",
    "same_function",
    "spec_for",
    "symmetry_spec",
]
