"""Flatness measures of minimizers: local energy, Hessian measures, and the baselines they
are compared with (SAM sharpness, magnitude-aware PAC-Bayes flatness, product of norms)."""

from toroid.flatness.flip_energy import flip_energy
from toroid.flatness.hessian import (
    HessianEstimate,
    hessian_top_eigenvalue,
    hessian_trace,
    hessian_vector_product,
)
from toroid.flatness.local_energy import (
    CONTINUOUS_NOISES,
    ENERGY_NOISES,
    ContinuousNoise,
    EnergyNoise,
    LocalEnergy,
    local_energy,
)
from toroid.flatness.norms import log_norm_product
from toroid.flatness.pac_bayes import PacBayesFlatness, pac_bayes_flatness
from toroid.flatness.sharpness import Sharpness, sam_sharpness

__all__ = [
    "CONTINUOUS_NOISES",
    "ENERGY_NOISES",
    "ContinuousNoise",
    "EnergyNoise",
    "HessianEstimate",
    "LocalEnergy",
    "PacBayesFlatness",
    "Sharpness",
    "flip_energy",
    "hessian_top_eigenvalue",
    "hessian_trace",
    "hessian_vector_product",
    "local_energy",
    "log_norm_product",
    "pac_bayes_flatness",
    "sam_sharpness",
]
