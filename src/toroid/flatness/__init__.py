"""Flatness measures of minimizers: Hessian measures (and local energy)."""

from toroid.flatness.hessian import HessianEstimate, hessian_top_eigenvalue, hessian_trace

__all__ = ["HessianEstimate", "hessian_top_eigenvalue", "hessian_trace"]
