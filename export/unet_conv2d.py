"""The UNet for ONNX Runtime's CPU provider: every stride-1 3-D convolution with a kernel deeper than one slice
written as one 2-D convolution over depth slices (the strided downsampling stays 3-D), and nearest 2x upsampling
written as copies. Exported as ``unet_conv2d.onnx`` into fp32 bundles,
a twin of ``unet.onnx`` (same interface, verified against the same PyTorch module) that the runtime loads when
the CPU is its only provider (``diffdef_runtime.backends.ort.session_file``).

Why: ONNX Runtime's CPU provider runs a 3-D Conv through im2col and a GEMM, while its 2-D Conv has direct
AVX2/AVX-512 kernels (the NCHWc layout). On the 2 mm default UNet (10x14x10 latents, 16/32 channels, 2-core AMD
EPYC) a denoising step took 9.5-11.8 ms as exported and 6.0-7.7 ms in this form (``benchmarks/latency.py``,
four processes each, interleaved); its 5-D nearest Resize alone took 0.7 ms, the copies 0.04 ms. GPU providers
and TensorRT keep ``unet.onnx``: their 3-D convolutions are native, and this form was never timed there.

A convolution with kernel (kd, kh, kw), depth padding p and stride 1 is, for each output slice d,

    out[d] = bias + sum_k conv2d(x[d + k - p], W[:, :, k])

so one 2-D convolution of every input slice with the kd kernels stacked as output channels, ``Y[d, k] =
conv2d(x[d], W[:, :, k])``, followed by a shifted sum over k, ``out[d] = sum_k Y[d + k - p, k]`` (slices outside
the volume are zero), gives the same result up to float32 summation order.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


class DepthSlicedConv3d(nn.Module):
    """An ``nn.Conv3d`` with stride 1, dilation 1, one group and zero padding, computed as one 2-D convolution
    over its input's depth slices. (N, C_in, D, H, W) -> (N, C_out, D', H', W'), the wrapped convolution's result.
    The weights are copied (frozen) from the convolution at construction."""

    def __init__(self, conv: nn.Conv3d) -> None:
        super().__init__()
        if not is_depth_sliceable(conv):
            raise ValueError(f"DepthSlicedConv3d needs a stride-1, dilation-1, ungrouped, zero-padded Conv3d with a "
                             f"kernel deeper than 1, got {conv}")
        out_channels, in_channels, kd, kh, kw = conv.weight.shape
        self.kernel_depth, self.out_channels = kd, out_channels
        self.depth_padding = int(conv.padding[0])
        self.plane_padding = (int(conv.padding[1]), int(conv.padding[2]))
        # (kd * C_out, C_in, kh, kw): row k * C_out + o is the kernel slice W[o, :, k]
        weight = conv.weight.detach().permute(2, 0, 1, 3, 4).reshape(kd * out_channels, in_channels, kh, kw)
        self.register_buffer("weight2d", weight.clone())
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, d, h, w = x.shape
        slices = x.transpose(1, 2).reshape(n * d, c, h, w)
        y = F.conv2d(slices, self.weight2d, padding=self.plane_padding)  # (N * D, kd * C_out, H', W')
        y = y.reshape(n, d, self.kernel_depth, self.out_channels, y.shape[-2], y.shape[-1])
        p = self.depth_padding
        if p:
            y = F.pad(y, (0, 0, 0, 0, 0, 0, 0, 0, p, p))  # zero slices before and after the volume
        depth = d + 2 * p - self.kernel_depth + 1
        out = y[:, 0:depth, 0]
        for k in range(1, self.kernel_depth):
            out = out + y[:, k:k + depth, k]
        out = out.transpose(1, 2)  # (N, C_out, D', H', W')
        if self.bias is not None:
            out = out + self.bias.reshape(1, -1, 1, 1, 1)
        return out


class NearestUpsampleByCopies(nn.Module):
    """``nn.Upsample(scale_factor=s, mode="nearest")`` with an integer s, written as s copies interleaved along
    each spatial axis (exported as Unsqueeze/Concat/Reshape, not a Resize). (N, C, *spatial) -> (N, C, *s*spatial)."""

    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = int(factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for axis in range(x.dim() - 1, 1, -1):  # last spatial axis first
            x = torch.stack([x] * self.factor, dim=axis + 1).flatten(axis, axis + 1)
        return x


def is_depth_sliceable(conv: nn.Module) -> bool:
    """Whether ``conv`` is an ``nn.Conv3d`` that :class:`DepthSlicedConv3d` computes: kernel depth > 1, stride 1,
    dilation 1, one group, numeric zero padding."""
    return (isinstance(conv, nn.Conv3d) and conv.kernel_size[0] > 1 and conv.stride == (1, 1, 1)
            and conv.dilation == (1, 1, 1) and conv.groups == 1 and conv.padding_mode == "zeros"
            and isinstance(conv.padding, tuple))


def _integer_nearest_factor(module: nn.Module) -> int | None:
    """The integer factor of a nearest ``nn.Upsample`` with one scale factor on every axis, else None."""
    if not isinstance(module, nn.Upsample) or module.mode != "nearest" or module.size is not None:
        return None
    factors = module.scale_factor if isinstance(module.scale_factor, tuple) else (module.scale_factor,)
    if len(set(factors)) != 1 or float(factors[0]) != int(factors[0]) or int(factors[0]) < 1:
        return None
    return int(factors[0])


def unet_for_cpu(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with every depth-sliceable ``nn.Conv3d`` replaced by :class:`DepthSlicedConv3d`
    and every integer nearest ``nn.Upsample`` by :class:`NearestUpsampleByCopies` (same weights, same result up to
    float32 rounding); ``module`` is untouched."""
    module = copy.deepcopy(module)
    for parent in list(module.modules()):
        for attr, child in list(parent.named_children()):
            if is_depth_sliceable(child):
                setattr(parent, attr, DepthSlicedConv3d(child))
            elif (factor := _integer_nearest_factor(child)) is not None:
                setattr(parent, attr, NearestUpsampleByCopies(factor))
    return module.eval()
