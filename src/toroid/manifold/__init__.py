"""The toroid: cells as coordinates, distances between networks, the geodesic path,
random perturbations."""

from toroid.manifold.cells import cell_families, cell_matrix, cell_tensors, set_cell_matrix_
from toroid.manifold.distance import Distance, distance, distances
from toroid.manifold.geodesic import (
    geodesic_midpoint,
    slerp,
    slerp_coefficients,
    slerp_state,
    slerp_weights,
)
from toroid.manifold.perturb import Noise, perturb, perturbed_state

__all__ = [
    "Distance",
    "Noise",
    "cell_families",
    "cell_matrix",
    "cell_tensors",
    "distance",
    "distances",
    "geodesic_midpoint",
    "perturb",
    "perturbed_state",
    "set_cell_matrix_",
    "slerp",
    "slerp_coefficients",
    "slerp_state",
    "slerp_weights",
]
