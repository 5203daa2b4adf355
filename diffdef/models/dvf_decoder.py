"""DVF decoder: latent (N, C, d, h, w) -> displacement field (N, 3, 8d, 8h, 8w) in voxels (DESIGN.md, part 3).

What produces the field is said by ``DVFDecoderConfig.parts``:

- ``"decoder"`` (the paper): ``post_quant_conv`` + ``decoder`` copied from the trained autoencoder, exactly as
  ``AutoencoderKL.decode`` uses them, with the last conv (features -> 1 image channel) replaced by a features -> 3
  head initialised to zero weights and bias, so an untrained decoder outputs the identity transform (u = 0).
- ``"basis"`` (the ``default`` preset): a low-rank, position-aware field read linearly from the latent
  (``diffdef.models.field_basis`` says why). No full-resolution convolution at all: on the 2 mm grid that pass was
  most of an atlas's decode time (docs/METHOD.md).
- ``"decoder+basis"``: their sum.

``diffeomorphic=True`` reads the field as a stationary velocity integrated by scaling and squaring
(``integrate_svf``), on the output grid or, with ``integration_down`` = f > 1, on a grid f times coarser (the
velocity average-pooled, the displacement upsampled trilinearly: VoxelMorph's ``int_downsize``).

Latent centring (``latent_shape`` set; decoder part only): the diffusion model works on *centred* latents
``(z - mean) * scale``. The copied decoder was trained on uncentred latents, so it holds ``mean`` as the buffer
``latent_mean`` and adds it back: ``dvf = decoder(z_centred / scale)``. The basis reads the centred latent as given.
"""

from __future__ import annotations

import dataclasses

import torch
from monai.networks.blocks import Convolution
from monai.networks.nets import AutoencoderKL
from torch import nn

from diffdef.geometry import integrate_svf
from diffdef.models._config import ConfigBase, check_int_tuple
from diffdef.models.autoencoder import AutoencoderConfig, build_autoencoder
from diffdef.models.field_basis import FieldBasis, FieldBasisConfig
from diffdef.models.registration import downsample_dvf, upsample_dvf

DVF_DECODER_PARTS = ("decoder", "basis", "decoder+basis")


@dataclasses.dataclass(frozen=True)
class DVFDecoderConfig(ConfigBase):
    autoencoder: AutoencoderConfig = dataclasses.field(default_factory=AutoencoderConfig)
    parts: str = "decoder"  # one of DVF_DECODER_PARTS: what produces the field (module docstring)
    diffeomorphic: bool = False
    integration_steps: int = 7
    integration_down: int = 1  # integrate on the output grid / this factor (diffeomorphic only)
    latent_shape: tuple[int, int, int] | None = None  # (d, h, w) of the centred latent; None = no centring
    basis: FieldBasisConfig | None = None  # the field basis, when parts includes "basis"

    @classmethod
    def from_dict(cls, data: dict) -> DVFDecoderConfig:
        """Also reads files written before ``parts`` existed: a decoder, plus the basis when one was configured."""
        if isinstance(data, dict) and "parts" not in data:
            data = {**data, "parts": "decoder+basis" if data.get("basis") else "decoder"}
        return super().from_dict(data)

    def __post_init__(self) -> None:
        self._freeze()
        if isinstance(self.basis, dict):
            object.__setattr__(self, "basis", FieldBasisConfig.from_dict(self.basis))
        if self.basis is not None and not isinstance(self.basis, FieldBasisConfig):
            raise ValueError(f"basis must be a FieldBasisConfig or None, got {type(self.basis).__name__}")
        if self.parts not in DVF_DECODER_PARTS:
            raise ValueError(f"parts must be one of {DVF_DECODER_PARTS}, got {self.parts!r}")
        if ("basis" in self.parts) != (self.basis is not None):
            raise ValueError(f"parts={self.parts!r} needs basis {'set' if 'basis' in self.parts else 'None'}")
        if self.latent_shape is not None:
            check_int_tuple("latent_shape", self.latent_shape, 3)
            if not self.has_decoder:
                raise ValueError("latent_shape (the copied decoder's latent centring) needs the decoder part")
        if isinstance(self.autoencoder, dict):
            object.__setattr__(self, "autoencoder", AutoencoderConfig.from_dict(self.autoencoder))
        if not isinstance(self.autoencoder, AutoencoderConfig):
            raise ValueError(f"autoencoder must be an AutoencoderConfig, got {type(self.autoencoder).__name__}")
        if not isinstance(self.integration_steps, int) or self.integration_steps < 0:
            raise ValueError(f"integration_steps must be an int >= 0, got {self.integration_steps!r}")
        if not isinstance(self.integration_down, int) or isinstance(self.integration_down, bool) or self.integration_down < 1:
            raise ValueError(f"integration_down must be an int >= 1, got {self.integration_down!r}")
        if self.diffeomorphic and self.integration_steps < 1:
            raise ValueError("diffeomorphic=True needs integration_steps >= 1")

    @property
    def has_decoder(self) -> bool:
        """True when the copied autoencoder decoder is part of the DVF decoder."""
        return self.parts in ("decoder", "decoder+basis")


class DVFDecoder(nn.Module):
    """``forward(z) -> dvf`` (N, 3, 8d, 8h, 8w), voxels of the image grid, from a latent (N, C, d, h, w).

    With ``config.latent_shape`` set, ``z`` is a centred latent (the buffer ``latent_mean``, (1, C, d, h, w), is
    added before the copied decoder; see the module docstring).
    """

    def __init__(self, cfg: DVFDecoderConfig, post_quant_conv: nn.Module | None = None,
                 decoder: nn.Module | None = None) -> None:
        super().__init__()
        if cfg.has_decoder != (decoder is not None and post_quant_conv is not None):
            raise ValueError(f"parts={cfg.parts!r}: the autoencoder's post_quant_conv and decoder must be given "
                             f"{'' if cfg.has_decoder else 'only '}when the decoder is a part")
        self.config = cfg
        self.post_quant_conv = post_quant_conv
        self.decoder = decoder
        if decoder is not None:
            last = decoder.blocks[-1]
            in_ch = last.conv.in_channels if isinstance(last, Convolution) else last.in_channels
            head = Convolution(spatial_dims=3, in_channels=in_ch, out_channels=3, strides=1, kernel_size=3,
                               padding=1, conv_only=True)
            nn.init.zeros_(head.conv.weight)
            nn.init.zeros_(head.conv.bias)
            decoder.blocks[-1] = head
        if cfg.latent_shape is not None:
            self.register_buffer("latent_mean", torch.zeros(1, cfg.autoencoder.latent_channels, *cfg.latent_shape))
        else:
            self.latent_mean = None
        self.basis = FieldBasis(cfg.basis) if cfg.basis is not None else None

    def set_latent_mean(self, mean: torch.Tensor) -> None:
        """Store the population-mean latent (1, C, d, h, w) that centred latents are relative to."""
        if self.latent_mean is None:
            raise ValueError("this DVF decoder was configured without latent centring (latent_shape=None)")
        if tuple(mean.shape) != tuple(self.latent_mean.shape):
            raise ValueError(f"latent mean must have shape {tuple(self.latent_mean.shape)}, got {tuple(mean.shape)}")
        with torch.no_grad():
            self.latent_mean.copy_(mean)

    @property
    def head(self) -> nn.Module:
        """The 3-channel output conv (last block of the copied decoder)."""
        if self.decoder is None:  # nn.Module reports this as "object has no attribute 'head'"
            raise AttributeError("head")
        return self.decoder.blocks[-1]

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``{"decoder": ..., "basis_fields": ..., "basis_coefficients": ...}`` (empty where a part is absent):
        the groups the training stage gives their own learning rates."""
        basis_fields = [self.basis.fields] if self.basis is not None else []
        basis_coef = list(self.basis.coefficients.parameters()) if self.basis is not None else []
        in_basis = {id(p) for p in basis_fields + basis_coef}
        rest = [p for p in self.parameters() if id(p) not in in_basis]
        return {"decoder": rest, "basis_fields": basis_fields, "basis_coefficients": basis_coef}

    @classmethod
    def from_config(cls, cfg: DVFDecoderConfig) -> DVFDecoder:
        """Fresh (randomly initialised decoder part, zero head, zero basis fields): for loading saved weights."""
        if not cfg.has_decoder:
            return cls(cfg)
        ae = build_autoencoder(cfg.autoencoder)
        return cls(cfg, ae.post_quant_conv, ae.decoder)

    @classmethod
    def from_autoencoder(cls, ae: AutoencoderKL, cfg: DVFDecoderConfig) -> DVFDecoder:
        """A DVF decoder for a trained autoencoder: the decoder part (when configured) deep-copies ``ae``'s
        ``post_quant_conv`` and decoder; zero head.

        ``cfg.autoencoder`` must describe ``ae`` (checked: every copied weight must match by name and shape).
        """
        module = cls.from_config(cfg)
        if not cfg.has_decoder:
            if ae.post_quant_conv.in_channels != cfg.autoencoder.latent_channels:
                raise ValueError(f"autoencoder does not match cfg.autoencoder: {ae.post_quant_conv.in_channels} "
                                 f"latent channels, config {cfg.autoencoder.latent_channels}")
            return module
        src = {f"post_quant_conv.{k}": v for k, v in ae.post_quant_conv.state_dict().items()}
        src.update({f"decoder.{k}": v for k, v in ae.decoder.state_dict().items()})
        head_prefix = f"decoder.blocks.{len(module.decoder.blocks) - 1}."
        own = module.state_dict()
        expected = {k for k in own if not k.startswith((head_prefix, "basis.")) and k != "latent_mean"}
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
        """The parts' summed output before integration: displacement, or velocity when ``diffeomorphic``,
        (N, 3, D, H, W) voxels with (D, H, W) = ``downsample_factor`` x the latent's grid."""
        size = tuple(n * self.config.autoencoder.downsample_factor for n in z.shape[2:])
        field = None
        if self.decoder is not None:
            field = self.decoder(self.post_quant_conv(z if self.latent_mean is None else z + self.latent_mean))
        if self.basis is not None:
            basis = self.basis(z, size)
            field = basis if field is None else field + basis
        return field

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        field = self.raw_field(z)
        if self.config.diffeomorphic:
            field = integrate_on_coarse_grid(field, self.config.integration_steps, self.config.integration_down)
        return field


def integrate_on_coarse_grid(velocity: torch.Tensor, steps: int, factor: int, integrate=integrate_svf) -> torch.Tensor:
    """``integrate(velocity, steps)`` on the grid ``factor`` times coarser: (N, 3, D, H, W) velocity, voxels ->
    displacement, voxels of the same grid. ``downsample_dvf`` down (values / factor) and ``upsample_dvf`` up
    (values x factor) use the same half-voxel convention. ``integrate`` is swappable (the export's traceable twin).

    Raises:
        ValueError: a spatial size not divisible by ``factor``.
    """
    if factor == 1:
        return integrate(velocity, steps)
    if any(n % factor for n in velocity.shape[2:]):
        raise ValueError(f"integration_down {factor} must divide the field's grid {tuple(velocity.shape[2:])}")
    return upsample_dvf(integrate(downsample_dvf(velocity, factor), steps), factor)

