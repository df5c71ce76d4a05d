"""Flatness measures of minimizers: local energy and Hessian measures."""

from toroid.flatness.hessian import HessianEstimate, hessian_top_eigenvalue, hessian_trace
from toroid.flatness.local_energy import LocalEnergy, local_energy

__all__ = [
    "HessianEstimate",
    "LocalEnergy",
    "hessian_top_eigenvalue",
    "hessian_trace",
    "local_energy",
]
