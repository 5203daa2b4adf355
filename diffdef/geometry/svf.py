"""Stationary velocity fields (diffeomorphic option) and composition of displacement fields."""

from __future__ import annotations

import torch
from monai.networks.blocks import DVF2DDF

from diffdef.geometry.warp import warp_image


def integrate_svf(velocity: torch.Tensor, steps: int = 7) -> torch.Tensor:
    """Scaling and squaring: ``phi = exp(v)`` (Arsigny et al. 2006), via MONAI's ``DVF2DDF``.

    Args:
        velocity: (N, 3, D, H, W) stationary velocity, voxels.
        steps: number of squarings; the field is first scaled by ``2**-steps``.
    Returns:
        (N, 3, D, H, W) displacement of ``exp(v)``, voxels.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if steps == 0:
        return velocity
    return DVF2DDF(num_steps=steps, mode="bilinear", padding_mode="border")(velocity)


def compose(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """Displacement of ``phi_outer o phi_inner``: ``u(x) = u_inner(x) + u_outer(x + u_inner(x))``.

    Args:
        outer, inner: (N, 3, D, H, W), voxels (batch 1 broadcasts).
    """
    return inner + warp_image(outer, inner)


def svf_log(displacement: torch.Tensor, steps: int = 7, iterations: int = 4) -> torch.Tensor:
    """A stationary velocity ``v`` with ``integrate_svf(v, steps) ~ displacement`` (the group logarithm).

    Fixed-point iteration ``v <- v + (u - exp(v))`` from ``v = u`` (exact to first order; each iteration
    removes the leading error term for smooth, fold-free fields). No maintained library offers a differentiable
    SVF logarithm in PyTorch; this is only used to make regression targets, under no_grad.

    Args:
        displacement: (N, 3, D, H, W), voxels. steps: squarings of the exponential it inverts.
        iterations: fixed-point corrections after the first-order guess (0: ``v = u``).
    Returns:
        (N, 3, D, H, W) velocity, voxels.
    """
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    velocity = displacement.clone()
    for _ in range(iterations):
        velocity = velocity + (displacement - integrate_svf(velocity, steps))
    return velocity
