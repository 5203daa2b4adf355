"""The torch modules that are exported: export-friendly twins of ``warp_image``/``integrate_svf`` and wrappers.

Why twins: ``diffdef.geometry.warp_image`` wraps MONAI's ``Warp``, whose reference grid is built as
``torch.stack([grid] * ddf.shape[0])`` (a Python list as long as the batch: ``torch.export`` freezes the batch
size there) and cached on the module, and whose coordinate normalisation is an in-place loop (exported as
ScatterElements). ``grid_sample_warp`` computes the same thing, ``image(x + u(x))`` with trilinear
interpolation and border padding (``F.grid_sample(..., align_corners=True)``, MONAI's call), from per-axis
coordinate vectors broadcast against the DVF, so batch and channels stay dynamic. Equality with
``warp_image`` / ``integrate_svf`` is tested (tests/test_export_onnx.py), and every exported file is checked
against the original modules (``diffdef_export.verify``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from diffdef.models.dvf_decoder import DVFDecoder, integrate_on_coarse_grid
from diffdef.models.registration import downsample_dvf, upsample_dvf


def _axis(size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.arange(size, dtype=dtype, device=device)


def grid_sample_warp(image: torch.Tensor, dvf: torch.Tensor) -> torch.Tensor:
    """``warped(x) = image(x + dvf(x))``: trilinear, border padding (equals ``diffdef.geometry.warp_image``).

    Coordinates are normalised with MONAI's arithmetic, ``(i + u) * 2 / (size - 1) - 1`` (align_corners=True),
    so the result matches ``warp_image`` to float32 rounding.

    Args:
        image: (N, C, D, H, W) float.
        dvf: (N, 3, D, H, W), displacement in voxels along (D, H, W).
    Returns:
        (N, C, D, H, W).
    """
    d, h, w = dvf.shape[2], dvf.shape[3], dvf.shape[4]
    dt, dev = dvf.dtype, dvf.device
    gd = (dvf[:, 0] + _axis(d, dt, dev)[None, :, None, None]) * 2 / max(d - 1, 1) - 1
    gh = (dvf[:, 1] + _axis(h, dt, dev)[None, None, :, None]) * 2 / max(h - 1, 1) - 1
    gw = (dvf[:, 2] + _axis(w, dt, dev)[None, None, None, :]) * 2 / max(w - 1, 1) - 1
    grid = torch.stack([gw, gh, gd], dim=-1)  # (N, D, H, W, 3); grid_sample's (x, y, z) = (W, H, D)
    return F.grid_sample(image.to(dt), grid, mode="bilinear", padding_mode="border", align_corners=True)


#: ``warp(image (N, C, D, H, W), dvf (N, 3, D, H, W)) -> warped``: ``grid_sample_warp`` or the Gather-based
#: ``diffdef_export.warp_gather.gather_warp`` (no GridSample, for TensorRT).
WarpFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def integrate_svf_traceable(velocity: torch.Tensor, steps: int, warp: WarpFn = grid_sample_warp) -> torch.Tensor:
    """Scaling and squaring exactly as MONAI's ``DVF2DDF`` (Arsigny et al. 2006): ``u = v / 2**steps``, then
    ``steps`` times ``u <- u + u o (x + u)``. (N, 3, D, H, W) velocity, voxels -> displacement, voxels.
    ``warp`` computes ``u o (x + u)`` (trilinear, border); swappable so TensorRT gets a graph without GridSample."""
    ddf = velocity / (2**steps)
    for _ in range(steps):
        ddf = ddf + warp(ddf, ddf)
    return ddf


def _hierarchical_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over the last three axes, one axis at a time (keepdim): (N, G, A, H, W) -> (N, G, 1, 1, 1)."""
    return t.mean(-1, keepdim=True).mean(-2, keepdim=True).mean(-3, keepdim=True)


class HierarchicalGroupNorm(nn.Module):
    """``nn.GroupNorm`` of 5-D inputs written as two-pass statistics with axis-by-axis means.

    Why: ONNX Runtime's float32 reductions behind InstanceNormalization (the exporter's form of GroupNorm),
    GroupNormalization-21 and a single ReduceMean over a whole group lose precision on large volumes: on the
    paper grid (a group is 5.7 M values) the normalised output is off by ~2.5e-3 (measured; PyTorch: 1e-6). Mean
    over W, then H, then the rest, and variance from the centred values, brings that to 2e-6. Same parameters
    and result as the wrapped ``nn.GroupNorm`` (N, C, D, H, W) -> (N, C, D, H, W).
    """

    def __init__(self, norm: nn.GroupNorm) -> None:
        super().__init__()
        self.num_groups, self.num_channels, self.eps = norm.num_groups, norm.num_channels, norm.eps
        self.weight, self.bias = norm.weight, norm.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"HierarchicalGroupNorm expects (N, C, D, H, W), got {tuple(x.shape)}")
        c, d, h, w = x.shape[1], x.shape[2], x.shape[3], x.shape[4]
        g = self.num_groups
        xg = x.reshape(-1, g, (c // g) * d, h, w)
        centred = xg - _hierarchical_mean(xg)
        var = _hierarchical_mean(centred * centred)
        y = (centred * torch.rsqrt(var + self.eps)).reshape(-1, c, d, h, w)
        if self.weight is not None:
            y = y * self.weight.reshape(1, c, 1, 1, 1)
        if self.bias is not None:
            y = y + self.bias.reshape(1, c, 1, 1, 1)
        return y


def with_hierarchical_group_norms(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose ``nn.GroupNorm`` layers are ``HierarchicalGroupNorm`` (same weights)."""
    module = copy.deepcopy(module)
    for child in list(module.modules()):
        for attr, sub in list(child.named_children()):
            if isinstance(sub, nn.GroupNorm):
                setattr(child, attr, HierarchicalGroupNorm(sub))
    return module


class WarpModule(nn.Module):
    """``forward(image, dvf) -> warped``; float32 always (the warp is never exported in fp16)."""

    def forward(self, image: torch.Tensor, dvf: torch.Tensor) -> torch.Tensor:
        return grid_sample_warp(image.float(), dvf.float())


def folded_basis_velocities(decoder: DVFDecoder) -> torch.Tensor | None:
    """For a basis-only diffeomorphic decoder whose basis grid is its integration grid: the basis fields taken
    up to the output grid and back down to the integration grid, (K + 1, 3, d', h', w') in integration-grid
    voxels; else None.

    Why: ``raw_field`` upsamples ``sum_k a_k B_k`` to the output grid and the integration averages it back down.
    Both maps are linear and act on each field alone, so applying them to the K + 1 fields once, here, gives the
    same coarse velocity ``sum_k a_k F_k`` (to float rounding) without the full-grid resize and pooling in
    ``dvf_decoder.onnx``.
    """
    cfg = decoder.config
    if decoder.decoder is not None or decoder.basis is None or not cfg.diffeomorphic:
        return None
    factor = cfg.integration_down
    size = tuple(n * cfg.autoencoder.downsample_factor for n in cfg.basis.latent_shape)
    if tuple(n * factor for n in cfg.basis.basis_shape) != size:
        return None
    with torch.no_grad():
        fields = decoder.basis.fields.detach()
        up = F.interpolate(fields, size=size, mode="trilinear", align_corners=False)
        return downsample_dvf(up, factor).contiguous()


class DVFDecoderForExport(nn.Module):
    """A trained ``DVFDecoder`` (integration included when diffeomorphic), then an optional exact upsampling of
    the DVF to a finer output grid: trilinear resize by ``factor`` and displacement values x ``factor``
    (``diffdef.models.registration.upsample_dvf``), so the DVF is in voxels of the output grid.

    The decoder runs at image resolution, so its GroupNorms are exported as ``HierarchicalGroupNorm`` (a copy
    of the decoder is made; the original is untouched). A basis-only decoder integrated on its basis grid reads
    its coarse velocity from folded fields (:func:`folded_basis_velocities`).

    ``warp``: the warp of the scaling-and-squaring integration (default ``grid_sample_warp``;
    ``gather_warp`` writes ``dvf_decoder_gather.onnx``, which TensorRT parses without 5-D GridSample).

    ``forward(latents (N, C, d, h, w)) -> dvf (N, 3, factor*8d, factor*8h, factor*8w)``, voxels.
    """

    def __init__(self, decoder: DVFDecoder, upsample_factor: int = 1, warp: WarpFn = grid_sample_warp) -> None:
        super().__init__()
        if upsample_factor < 1:
            raise ValueError(f"upsample_factor must be >= 1, got {upsample_factor}")
        self.decoder = with_hierarchical_group_norms(decoder)
        self.upsample_factor = int(upsample_factor)
        self.warp = warp
        folded = folded_basis_velocities(self.decoder)
        self.register_buffer("folded", folded if folded is not None else torch.zeros(0), persistent=False)

    def _integrate(self, velocity: torch.Tensor, factor: int) -> torch.Tensor:
        steps = self.decoder.config.integration_steps
        return integrate_on_coarse_grid(velocity, steps, factor, lambda v, n: integrate_svf_traceable(v, n, self.warp))

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        cfg = self.decoder.config
        if self.folded.numel():
            a = self.decoder.basis.coefficients(latents.flatten(1))
            a = torch.cat([torch.ones_like(a[:, :1]), a], dim=1)  # (N, K + 1): F_0 always on
            velocity = (a @ self.folded.flatten(1)).view(latents.shape[0], *self.folded.shape[1:])
            field = upsample_dvf(self._integrate(velocity, 1), cfg.integration_down)
        else:
            field = self.decoder.raw_field(latents)
            if cfg.diffeomorphic:
                field = self._integrate(field, cfg.integration_down)
        return upsample_dvf(field, self.upsample_factor)


class DVFDecoderReference(nn.Module):
    """The reference the exported decoder is verified against: the original modules, unchanged
    (``DVFDecoder.forward`` with MONAI's integration), then ``upsample_dvf``."""

    def __init__(self, decoder: DVFDecoder, upsample_factor: int = 1) -> None:
        super().__init__()
        self.decoder = decoder
        self.upsample_factor = int(upsample_factor)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return upsample_dvf(self.decoder(latents), self.upsample_factor)
