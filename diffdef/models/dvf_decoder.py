"""DVF decoder: the trained autoencoder's decoder with a 3-channel displacement head (DESIGN.md, part 3).

``post_quant_conv`` + ``decoder`` exactly as ``AutoencoderKL.decode`` uses them; the decoder's last conv (features
-> 1 image channel) is replaced by a features -> 3 conv initialised to zero weights and bias, so an untrained
DVF decoder outputs the identity transform (u = 0) whatever the latent. ``diffeomorphic=True`` makes the head a
stationary velocity field integrated by scaling and squaring (``integrate_svf``).
"""

from __future__ import annotations

import dataclasses

import torch
from monai.networks.blocks import Convolution
from monai.networks.nets import AutoencoderKL
from torch import nn

from diffdef.geometry import integrate_svf
from diffdef.models._config import ConfigBase
from diffdef.models.autoencoder import AutoencoderConfig, build_autoencoder


@dataclasses.dataclass(frozen=True)
class DVFDecoderConfig(ConfigBase):
    autoencoder: AutoencoderConfig = dataclasses.field(default_factory=AutoencoderConfig)
    diffeomorphic: bool = False
    integration_steps: int = 7

    def __post_init__(self) -> None:
        if isinstance(self.autoencoder, dict):
            object.__setattr__(self, "autoencoder", AutoencoderConfig.from_dict(self.autoencoder))
        if not isinstance(self.autoencoder, AutoencoderConfig):
            raise ValueError(f"autoencoder must be an AutoencoderConfig, got {type(self.autoencoder).__name__}")
        if not isinstance(self.integration_steps, int) or self.integration_steps < 0:
            raise ValueError(f"integration_steps must be an int >= 0, got {self.integration_steps!r}")
        if self.diffeomorphic and self.integration_steps < 1:
            raise ValueError("diffeomorphic=True needs integration_steps >= 1")


class DVFDecoder(nn.Module):
    """``forward(z) -> dvf`` (N, 3, 8d, 8h, 8w), voxels of the image grid, from a latent (N, C, d, h, w)."""

    def __init__(self, cfg: DVFDecoderConfig, post_quant_conv: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.config = cfg
        self.post_quant_conv = post_quant_conv
        self.decoder = decoder
        last = decoder.blocks[-1]
        in_ch = last.conv.in_channels if isinstance(last, Convolution) else last.in_channels
        head = Convolution(spatial_dims=3, in_channels=in_ch, out_channels=3, strides=1, kernel_size=3, padding=1,
                           conv_only=True)
        nn.init.zeros_(head.conv.weight)
        nn.init.zeros_(head.conv.bias)
        decoder.blocks[-1] = head

    @property
    def head(self) -> nn.Module:
        """The 3-channel output conv (last block of the decoder)."""
        return self.decoder.blocks[-1]

    @classmethod
    def from_config(cls, cfg: DVFDecoderConfig) -> DVFDecoder:
        """Fresh (randomly initialised decoder, zero head): for loading saved weights."""
        ae = build_autoencoder(cfg.autoencoder)
        return cls(cfg, ae.post_quant_conv, ae.decoder)

    @classmethod
    def from_autoencoder(cls, ae: AutoencoderKL, cfg: DVFDecoderConfig) -> DVFDecoder:
        """Copies (deep) a trained autoencoder's ``post_quant_conv`` and decoder; zero head.

        ``cfg.autoencoder`` must describe ``ae`` (checked: every copied weight must match by name and shape).
        """
        module = cls.from_config(cfg)
        src = {f"post_quant_conv.{k}": v for k, v in ae.post_quant_conv.state_dict().items()}
        src.update({f"decoder.{k}": v for k, v in ae.decoder.state_dict().items()})
        head_prefix = f"decoder.blocks.{len(module.decoder.blocks) - 1}."
        own = module.state_dict()
        expected = {k for k in own if not k.startswith(head_prefix)}
        given = {k for k in src if not k.startswith(head_prefix)}
        mismatched = sorted(k for k in expected & given if own[k].shape != src[k].shape)
        if expected != given or mismatched:
            raise ValueError(
                "autoencoder does not match cfg.autoencoder: "
                f"missing {sorted(expected - given)[:5]}, unexpected {sorted(given - expected)[:5]}, "
                f"shape mismatch {mismatched[:5]}"
            )
        with torch.no_grad():
            for k in expected:
                own[k].copy_(src[k])
        return module

    def raw_field(self, z: torch.Tensor) -> torch.Tensor:
        """Head output: displacement, or velocity when ``diffeomorphic`` (N, 3, D, H, W), voxels."""
        return self.decoder(self.post_quant_conv(z))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        field = self.raw_field(z)
        if self.config.diffeomorphic:
            field = integrate_svf(field, self.config.integration_steps)
        return field

