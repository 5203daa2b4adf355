"""DVF decoder: the trained autoencoder's decoder with a 3-channel displacement head (DESIGN.md, part 3).

``post_quant_conv`` + ``decoder`` exactly as ``AutoencoderKL.decode`` uses them; the decoder's last conv (features
-> 1 image channel) is replaced by a features -> 3 conv initialised to zero weights and bias, so an untrained
DVF decoder outputs the identity transform (u = 0) whatever the latent. ``diffeomorphic=True`` makes the head a
stationary velocity field integrated by scaling and squaring (``integrate_svf``), on the output grid or, with
``integration_down`` = f > 1, on a grid f times coarser (the velocity average-pooled, the displacement upsampled
trilinearly: VoxelMorph's ``int_downsize``); with f = 2 the integration's forward and backward run on 8x fewer
voxels (on the default preset's CPU, full-grid integration had made a joint step 3.4 s instead of 2.1 s).

Latent centring (``latent_shape`` set): the diffusion model is trained on *centred* latents
``(z - mean) * scale``, where ``mean`` is the population-mean latent of the training images (C, d, h, w). Without
it the shared template dominates every latent and the between-subject (age) signal is a few percent of it, which
the diffusion model learns poorly. The decoder holds ``mean`` as the buffer ``latent_mean`` and adds it back, so
``dvf = decoder(z_centred / scale)``: the runtime and the exported ONNX graph stay unchanged.

Field basis (``basis`` set, not in the paper): the head's output plus a low-rank, position-aware field read
linearly from the latent (``diffdef.models.field_basis``, which says why). Zero at initialisation.
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


@dataclasses.dataclass(frozen=True)
class DVFDecoderConfig(ConfigBase):
    autoencoder: AutoencoderConfig = dataclasses.field(default_factory=AutoencoderConfig)
    diffeomorphic: bool = False
    integration_steps: int = 7
    integration_down: int = 1  # integrate on the output grid / this factor (diffeomorphic only)
    latent_shape: tuple[int, int, int] | None = None  # (d, h, w) of the centred latent; None = no centring
    basis: FieldBasisConfig | None = None  # low-rank field basis added to the head's output; None = off

    def __post_init__(self) -> None:
        self._freeze()
        if isinstance(self.basis, dict):
            object.__setattr__(self, "basis", FieldBasisConfig.from_dict(self.basis))
        if self.basis is not None and not isinstance(self.basis, FieldBasisConfig):
            raise ValueError(f"basis must be a FieldBasisConfig or None, got {type(self.basis).__name__}")
        if self.latent_shape is not None:
            check_int_tuple("latent_shape", self.latent_shape, 3)
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


class DVFDecoder(nn.Module):
    """``forward(z) -> dvf`` (N, 3, 8d, 8h, 8w), voxels of the image grid, from a latent (N, C, d, h, w).

    With ``config.latent_shape`` set, ``z`` is a centred latent (the buffer ``latent_mean``, (1, C, d, h, w), is
    added before decoding; see the module docstring).
    """

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
        """The 3-channel output conv (last block of the decoder)."""
        return self.decoder.blocks[-1]

    def freeze_decoder(self) -> None:
        """Freeze the copied AE decoder and its head (the ``"decoder"`` group of :meth:`parameter_groups`): no
        gradient is computed for them. While the head is frozen at its zero initialisation (the ``default``
        preset's ``ldm.dvf_lr=0``) the decoder's output is exactly zero whatever the latent, and
        :meth:`raw_field` skips its full-resolution pass (:meth:`head_is_frozen_at_zero`): the same field, with
        no pass to run forward or backward. Measured on a 2-core Xeon (2026-12-01; 2 mm grid, one latent):
        decoder forward + backward 2.3 s with the decoder trainable, 0.8 s frozen, 0 s skipped (its forward alone
        was 0.56 s)."""
        for param in self.parameter_groups()["decoder"]:
            param.requires_grad_(False)

    def head_is_frozen_at_zero(self) -> bool:
        """True when no head parameter needs a gradient and all are zero (checked per call, so loading trained
        weights or unfreezing turns the decoder's pass back on; ``requires_grad`` is tested first, so a module
        being traced for export, whose parameters require gradients, never evaluates the data-dependent test)."""
        return all(not p.requires_grad for p in self.head.parameters()) and not any(
            bool(p.any()) for p in self.head.parameters())

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``{"decoder": ..., "basis_fields": ..., "basis_coefficients": ...}`` (the last two empty without a
        basis): the groups the training stage gives their own learning rates."""
        basis_fields = [self.basis.fields] if self.basis is not None else []
        basis_coef = list(self.basis.coefficients.parameters()) if self.basis is not None else []
        in_basis = {id(p) for p in basis_fields + basis_coef}
        rest = [p for p in self.parameters() if id(p) not in in_basis]
        return {"decoder": rest, "basis_fields": basis_fields, "basis_coefficients": basis_coef}

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
        """Head output (+ the field basis): displacement, or velocity when ``diffeomorphic`` (N, 3, D, H, W), voxels.

        The basis reads ``z`` as given (centred when centring is on)."""
        if self.head_is_frozen_at_zero():  # its output is exactly zero: skip the full-resolution pass
            size = tuple(n * self.config.autoencoder.downsample_factor for n in z.shape[2:])
            if self.basis is None:
                return z.new_zeros((z.shape[0], 3, *size))
            return self.basis(z, size)
        field = self.decoder(self.post_quant_conv(z if self.latent_mean is None else z + self.latent_mean))
        if self.basis is not None:
            field = field + self.basis(z, tuple(field.shape[2:]))
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

