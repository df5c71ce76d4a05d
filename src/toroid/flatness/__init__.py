"""Flatness measures of minimizers: local energy and Hessian measures."""

from toroid.flatness.flip_energy import flip_energy
from toroid.flatness.hessian import HessianEstimate, hessian_top_eigenvalue, hessian_trace
from toroid.flatness.local_energy import ENERGY_NOISES, EnergyNoise, LocalEnergy, local_energy

__all__ = [
    "ENERGY_NOISES",
    "EnergyNoise",
    "HessianEstimate",
    "LocalEnergy",
    "flip_energy",
    "hessian_top_eigenvalue",
    "hessian_trace",
    "local_energy",
]
