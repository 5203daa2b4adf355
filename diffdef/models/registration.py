"""VoxelMorph-style pairwise registration network (MONAI ``VoxelMorphUNet`` backbone).

``RegistrationNet(moving, fixed)`` returns the DVF ``u`` (N, 3, D, H, W), in voxels, such that
``warp_image(moving, u) ~ fixed`` with the project convention ``warped(x) = moving(x + u(x))``. MONAI's
``VoxelMorph`` warps with ``monai.networks.blocks.Warp``, which is exactly this convention (and exactly what
``diffdef.geometry.warp_image`` wraps), so the head below is a drop-in for MONAI's ``VoxelMorph`` minus its
warp: the DVF is the only output; warp with ``warp_image`` where needed.

Used frozen, as the morphology-preservation loss of the DVF decoder (mean squared displacement of neighbourhood
images registered to the generated atlas).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from monai.networks.nets import VoxelMorphUNet
from torch import nn

from diffdef.geometry import integrate_svf
from diffdef.models._config import ConfigBase, check_int_tuple


@dataclasses.dataclass(frozen=True)
class RegistrationConfig(ConfigBase):
    """Sizes of the registration network.

    Attributes:
        channels: ``VoxelMorphUNet`` channels, in (down, up) pairs per level (MONAI's convention); ``k`` pairs
            mean ``k`` max-poolings, so the (downsampled) input must be divisible by ``2**k``.
        final_conv_channels: channels of the convolutions after the UNet (before the 3-channel output conv).
        integration_steps: 0 = the output is a displacement; > 0 = a stationary velocity integrated by scaling
            and squaring (diffeomorphic).
        input_downsample: run the network on ``input_downsample``-times average-pooled images and upsample the
            DVF trilinearly (size and value x ``input_downsample``); 1 = full resolution.
    """

    channels: tuple[int, ...] = (16, 32, 32, 32, 32, 32)
    final_conv_channels: tuple[int, ...] = (16, 16)
    integration_steps: int = 0
    input_downsample: int = 1

    def __post_init__(self) -> None:
        self._freeze()
        check_int_tuple("channels", self.channels)
        if len(self.channels) < 2 or len(self.channels) % 2:
            raise ValueError(f"channels must come in (down, up) pairs, got {self.channels}")
        check_int_tuple("final_conv_channels", self.final_conv_channels, minimum=1)
        if not isinstance(self.integration_steps, int) or self.integration_steps < 0:
            raise ValueError(f"integration_steps must be an int >= 0, got {self.integration_steps!r}")
        if not isinstance(self.input_downsample, int) or self.input_downsample < 1:
            raise ValueError(f"input_downsample must be an int >= 1, got {self.input_downsample!r}")

    @property
    def shape_multiple(self) -> int:
        """Each spatial size of the input must be divisible by this."""
        return self.input_downsample * 2 ** (len(self.channels) // 2)


_REG_PRESETS: dict[str, RegistrationConfig] = {
    "tiny": RegistrationConfig(channels=(4, 8, 8, 8), final_conv_channels=(4,)),
    # 2 mm grid on a 2-core CPU: the UNet runs at 8 mm (20x28x20, two poolings), DVF upsampled to 2 mm. Measured
    # against the 4 mm, three-pooling network: 3x cheaper per step, and within the same CPU budget its
    # template -> subject fields are far closer to the truth (docs/RESULTS.md, registration).
    "default": RegistrationConfig(channels=(16, 32, 32, 32), final_conv_channels=(16, 16), input_downsample=4),
    # the paper's code: encoder (16, 32, 32, 32, 32), decoder (32, 32, 32, 32), head (16, 16), dense DVF
    "paper": RegistrationConfig(channels=(16, 32, 32, 32, 32, 32, 32, 32), final_conv_channels=(16, 16)),
}


def registration_preset(name: str) -> RegistrationConfig:
    """``"tiny"`` (tests), ``"default"`` (2 mm grid on a CPU) or ``"paper"``."""
    try:
        return _REG_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown registration preset {name!r}; choose from {sorted(_REG_PRESETS)}") from None


class RegistrationNet(nn.Module):
    """``forward(moving, fixed) -> dvf`` (N, 3, D, H, W) in voxels; ``warp_image(moving, dvf) ~ fixed``."""

    def __init__(self, cfg: RegistrationConfig) -> None:
        super().__init__()
        self.config = cfg
        self.backbone = VoxelMorphUNet(
            spatial_dims=3,
            in_channels=2,
            unet_out_channels=cfg.channels[1],
            channels=cfg.channels,
            final_conv_channels=cfg.final_conv_channels,
        )
        # VoxelMorph's initialisation of the flow layer: N(0, 1e-5), zero bias -> near-identity at the start.
        out_conv = self.backbone.net[1].final_conv_out.conv
        nn.init.normal_(out_conv.weight, mean=0.0, std=1e-5)
        nn.init.zeros_(out_conv.bias)

    @classmethod
    def from_config(cls, cfg: RegistrationConfig) -> RegistrationNet:
        return cls(cfg)

    def raw_field(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """Backbone output at the network's resolution (displacement or velocity, voxels of that grid)."""
        f = self.config.input_downsample
        if f > 1:
            moving = F.avg_pool3d(moving, kernel_size=f, stride=f)
            fixed = F.avg_pool3d(fixed, kernel_size=f, stride=f)
        return self.backbone(torch.cat([moving, fixed], dim=1))

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """
        Args:
            moving, fixed: (N, 1, D, H, W); each of D, H, W divisible by ``config.shape_multiple``.
        Returns:
            (N, 3, D, H, W) displacement in voxels of the input grid.
        """
        if moving.shape != fixed.shape or moving.ndim != 5 or moving.shape[1] != 1:
            raise ValueError(f"moving and fixed must both be (N, 1, D, H, W); got {tuple(moving.shape)} and {tuple(fixed.shape)}")
        m = self.config.shape_multiple
        if any(s % m for s in moving.shape[2:]):
            raise ValueError(f"spatial shape {tuple(moving.shape[2:])} must be divisible by {m}")
        field = self.raw_field(moving, fixed)
        if self.config.integration_steps > 0:
            field = integrate_svf(field, self.config.integration_steps)
        return upsample_dvf(field, self.config.input_downsample)


def downsample_dvf(dvf: torch.Tensor, factor: int) -> torch.Tensor:
    """Average pooling of a voxel-unit DVF by an integer factor: size / factor and value / factor (the inverse
    convention of :func:`upsample_dvf`)."""
    if factor == 1:
        return dvf
    return F.avg_pool3d(dvf, factor) / float(factor)


def upsample_dvf(dvf: torch.Tensor, factor: int) -> torch.Tensor:
    """Trilinear upsampling of a voxel-unit DVF by an integer factor: size x factor and value x factor.

    ``align_corners=False``: coarse voxel ``i`` is the average of fine voxels ``factor*i ... factor*i+factor-1``
    (``avg_pool3d``), whose centre is at fine coordinate ``factor*i + (factor-1)/2`` - exactly the half-voxel
    convention of ``align_corners=False``.
    """
    if factor == 1:
        return dvf
    return F.interpolate(dvf, scale_factor=factor, mode="trilinear", align_corners=False) * float(factor)
