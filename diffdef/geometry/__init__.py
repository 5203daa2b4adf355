"""Geometry core: warps, Jacobians, velocity fields, deformation measures (batched, CPU or GPU)."""

from diffdef.geometry.jacobian import folding_ratio, jacobian_determinant, jacobian_matrix, jacobian_smoothness
from diffdef.geometry.metrics import bending_energy, dice, mean_displacement_mm
from diffdef.geometry.svf import compose, integrate_svf, svf_log
from diffdef.geometry.warp import warp_image, warp_labels

__all__ = [
    "bending_energy", "compose", "dice", "folding_ratio", "integrate_svf", "jacobian_determinant",
    "jacobian_matrix", "jacobian_smoothness", "mean_displacement_mm", "svf_log", "warp_image",
    "warp_labels",
]
