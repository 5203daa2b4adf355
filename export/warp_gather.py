"""The warp written with Gather and index arithmetic (no GridSample), for TensorRT < 11.2.

TensorRT parses 5-D GridSample natively only from 11.2 (and ONNX Runtime's TensorRT EP links TensorRT 10), so a
bundle also carries ``warp_gather.onnx``: the same interface as ``warp.onnx`` and the same result as
``diffdef.geometry.warp_image`` (trilinear, border padding, ``warped(x) = image(x + u(x))``), computed as

    p = clamp(x + u(x), 0, size - 1)                  per axis (border padding = clamped coordinates)
    i0 = floor(p), i1 = min(i0 + 1, size - 1), t = p - i0
    warped = sum over the 8 corners of  w_d * w_h * w_w * image[i_d, i_h, i_w]

with the corner values fetched by GatherElements on the flattened volume (index ``(i_d * H + i_h) * W + i_w``,
the same for every channel). Exported ops: Add/Sub/Mul, Clip, Floor, Min, Cast, Reshape, Expand, GatherElements:
all parsed by TensorRT 8.6 and later. float32 always.
"""

from __future__ import annotations

import torch
from torch import nn


def _axis(size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.arange(size, dtype=dtype, device=device)


def gather_warp(image: torch.Tensor, dvf: torch.Tensor) -> torch.Tensor:
    """Trilinear warp with border padding by explicit gathering.

    Args:
        image: (N, C, D, H, W) float.
        dvf: (N, 3, D, H, W), displacement in voxels along (D, H, W).
    Returns:
        (N, C, D, H, W) float32, ``image(x + dvf(x))``.
    """
    image, dvf = image.float(), dvf.float()
    n, c = image.shape[0], image.shape[1]
    d, h, w = dvf.shape[2], dvf.shape[3], dvf.shape[4]
    dt, dev = dvf.dtype, dvf.device
    pd = (dvf[:, 0] + _axis(d, dt, dev)[None, :, None, None]).clamp(0, d - 1)
    ph = (dvf[:, 1] + _axis(h, dt, dev)[None, None, :, None]).clamp(0, h - 1)
    pw = (dvf[:, 2] + _axis(w, dt, dev)[None, None, None, :]).clamp(0, w - 1)
    fd, fh, fw = torch.floor(pd), torch.floor(ph), torch.floor(pw)
    td, th, tw = pd - fd, ph - fh, pw - fw  # weights of the upper corner, (N, D, H, W)
    d0, h0, w0 = fd.long(), fh.long(), fw.long()
    d1, h1, w1 = (d0 + 1).clamp(max=d - 1), (h0 + 1).clamp(max=h - 1), (w0 + 1).clamp(max=w - 1)

    flat = image.reshape(n, c, d * h * w)
    out = torch.zeros_like(flat)
    for dd, wd in ((d0, 1 - td), (d1, td)):
        for hh, wh in ((h0, 1 - th), (h1, th)):
            for ww, wgt_w in ((w0, 1 - tw), (w1, tw)):
                index = ((dd * h + hh) * w + ww).reshape(n, 1, d * h * w).expand(n, c, d * h * w)
                weight = (wd * wh * wgt_w).reshape(n, 1, d * h * w)
                out = out + weight * torch.gather(flat, 2, index)
    return out.reshape(n, c, d, h, w)


class GatherWarpModule(nn.Module):
    """``forward(image, dvf) -> warped`` without GridSample; the interface of ``warp.onnx``."""

    def forward(self, image: torch.Tensor, dvf: torch.Tensor) -> torch.Tensor:
        return gather_warp(image, dvf)
