"""Jacobian determinant of a DVF in numpy, for the torch-free runtime.

Same definition as ``diffdef.geometry.jacobian`` (``det(I + grad u)``, central differences per voxel,
one-sided at the border: ``numpy.gradient`` with edge_order 1); the test suite checks the two agree. It is a
second implementation only because this layer cannot import torch.
"""

from __future__ import annotations

import numpy as np


def jacobian_determinant(dvf: np.ndarray) -> np.ndarray:
    """Args: dvf (3, D, H, W) in voxels. Returns: (D, H, W) float32 determinant."""
    if dvf.ndim != 4 or dvf.shape[0] != 3:
        raise ValueError(f"dvf must be (3, D, H, W); got {dvf.shape}")
    u = dvf.astype(np.float32, copy=False)  # float32 throughout: within 1e-6 of float64, half the memory traffic
    m = [[None] * 3 for _ in range(3)]
    for i in range(3):
        grads = np.gradient(u[i], axis=(0, 1, 2))
        for j in range(3):
            m[i][j] = grads[j] + np.float32(1.0) if i == j else grads[j]
    det = (
        m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
    )
    return det.astype(np.float32, copy=False)
