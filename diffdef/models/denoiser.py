"""Conditional latent denoiser: MONAI ``DiffusionModelUNet`` (3-D) with numeric conditions.

Conditioning, both ways (DESIGN.md, part 2):
  (a) condition (N, K) -> MLP -> context (N, 1, E) for the UNet's cross-attention;
  (b) condition broadcast to K constant channels concatenated with the latent (UNet in_channels = C + K).
Classifier-free guidance: rows whose ``condition_mask`` is 0 use a learned ``null_condition`` (K,) instead of the
condition, in both paths: ``c_eff = mask * c + (1 - mask) * null``. The signature is fixed (no optional inputs),
so the module exports to ONNX as one graph that serves the conditional and the unconditional pass.

The UNet halves the grid ``len(channels) - 1`` times; a latent whose size is not a multiple of that
(e.g. 10x14x10 for the 2 mm grid with 3 levels) is zero-padded (split evenly between both ends) and the output cropped back.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from monai.networks.nets import DiffusionModelUNet
from torch import nn

from diffdef.models._config import ConfigBase, check_bool_tuple, check_int_tuple


@dataclasses.dataclass(frozen=True)
class DenoiserConfig(ConfigBase):
    """Sizes of the conditional denoiser.

    Attributes:
        channels: UNet channels per level; multiples of ``norm_num_groups``.
        attention_levels: cross-attention (spatial transformer) per level.
        num_res_blocks: residual blocks per level (int, or one per level).
        num_head_channels: channels per attention head (int, or one per level; ignored where no attention).
        latent_channels: C, channels of the latent (in and out).
        num_conditions: K, numeric conditions (normalised to [0, 1]).
        condition_embed_dim: E, width of the condition MLP and of the cross-attention context.
        norm_num_groups: GroupNorm groups.
        use_flash_attention: PyTorch SDPA in the attention blocks.
    """

    channels: tuple[int, ...] = (64, 128, 256)
    attention_levels: tuple[bool, ...] = (False, True, True)
    num_res_blocks: int | tuple[int, ...] = 2
    num_head_channels: int | tuple[int, ...] = 32
    latent_channels: int = 3
    num_conditions: int = 1
    condition_embed_dim: int = 64
    norm_num_groups: int = 32
    use_flash_attention: bool = False

    def __post_init__(self) -> None:
        self._freeze()
        check_int_tuple("channels", self.channels)
        n = len(self.channels)
        check_bool_tuple("attention_levels", self.attention_levels, n)
        for name in ("num_res_blocks", "num_head_channels"):
            value = getattr(self, name)
            if isinstance(value, tuple):
                check_int_tuple(name, value, n, minimum=0)
            elif not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int or a tuple of {n} ints, got {value!r}")
        if self.norm_num_groups < 1 or any(c % self.norm_num_groups for c in self.channels):
            raise ValueError(f"every channel count {self.channels} must be a multiple of norm_num_groups={self.norm_num_groups}")
        heads = self.num_head_channels if isinstance(self.num_head_channels, tuple) else (self.num_head_channels,) * n
        for level, (c, h, att) in enumerate(zip(self.channels, heads, self.attention_levels)):
            if att and (h < 1 or c % h):
                raise ValueError(f"level {level}: channels {c} must be a multiple of num_head_channels {h}")
        for name in ("latent_channels", "num_conditions", "condition_embed_dim"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an int >= 1, got {getattr(self, name)!r}")

    @property
    def size_multiple(self) -> int:
        """The UNet needs latent sizes divisible by this; others are padded internally."""
        return 2 ** (len(self.channels) - 1)


def denoiser_preset(name: str, num_conditions: int = 1) -> DenoiserConfig:
    """``"tiny"`` (tests), ``"default"`` (CPU-trainable on the 2 mm latent) or ``"paper"`` (the paper's code)."""
    presets = {
        "tiny": DenoiserConfig(channels=(8, 16), attention_levels=(False, True), num_res_blocks=1,
                               num_head_channels=8, condition_embed_dim=16, norm_num_groups=8),
        # sized for a 2-core CPU: 0.8 M parameters on the 10x14x10 latent of the 2 mm grid
        "default": DenoiserConfig(channels=(16, 32, 32), attention_levels=(False, False, True), num_res_blocks=1,
                                  num_head_channels=8, condition_embed_dim=32, norm_num_groups=8),
        # the paper's code: (256, 512, 768), attention at levels 2-3, heads (0, 512, 768), context width 1024
        "paper": DenoiserConfig(channels=(256, 512, 768), attention_levels=(False, True, True), num_res_blocks=2,
                                num_head_channels=(0, 512, 768), condition_embed_dim=1024, norm_num_groups=32),
    }
    try:
        cfg = presets[name]
    except KeyError:
        raise ValueError(f"unknown denoiser preset {name!r}; choose from {sorted(presets)}") from None
    return cfg.replace(num_conditions=num_conditions)


class ConditionalDenoiser(nn.Module):
    """``forward(x, t, condition, condition_mask) -> (N, C, d, h, w)`` (noise, or v, per the training target)."""

    def __init__(self, cfg: DenoiserConfig) -> None:
        super().__init__()
        self.config = cfg
        k, e = cfg.num_conditions, cfg.condition_embed_dim
        self.unet = DiffusionModelUNet(
            spatial_dims=3,
            in_channels=cfg.latent_channels + k,
            out_channels=cfg.latent_channels,
            num_res_blocks=cfg.num_res_blocks,
            channels=cfg.channels,
            attention_levels=cfg.attention_levels,
            norm_num_groups=cfg.norm_num_groups,
            num_head_channels=cfg.num_head_channels,
            with_conditioning=True,
            cross_attention_dim=e,
            use_flash_attention=cfg.use_flash_attention,
        )
        self.condition_mlp = nn.Sequential(nn.Linear(k, e), nn.SiLU(), nn.Linear(e, e))
        # Outside the normalised range [0, 1], so "no condition" never coincides with a real value at init.
        self.null_condition = nn.Parameter(torch.full((k,), -1.0))

    @classmethod
    def from_config(cls, cfg: DenoiserConfig) -> ConditionalDenoiser:
        return cls(cfg)

    def effective_condition(self, condition: torch.Tensor, condition_mask: torch.Tensor) -> torch.Tensor:
        """``mask * c + (1 - mask) * null``: (N, K)."""
        mask = condition_mask.to(condition.dtype)
        return mask * condition + (1.0 - mask) * self.null_condition.to(condition.dtype)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, condition: torch.Tensor, condition_mask: torch.Tensor
    ) -> torch.Tensor:
        """
        Args:
            x: (N, C, d, h, w) noisy latent.
            t: (N,) timesteps, integer or float.
            condition: (N, K) float, normalised to [0, 1].
            condition_mask: (N, 1) float; 1 = use the condition, 0 = dropped (learned null condition).
        Returns:
            (N, C, d, h, w).
        """
        c = self.effective_condition(condition, condition_mask)
        context = self.condition_mlp(c).unsqueeze(1)  # (N, 1, E)
        d, h, w = x.shape[2], x.shape[3], x.shape[4]
        channels = c[:, :, None, None, None].expand(-1, -1, d, h, w).to(x.dtype)
        inp = torch.cat([x, channels], dim=1)
        m = self.config.size_multiple
        pads = [(-s) % m for s in (d, h, w)]  # shape arithmetic only (static at export)
        lo = [p // 2 for p in pads]
        if any(pads):
            inp = F.pad(inp, (lo[2], pads[2] - lo[2], lo[1], pads[1] - lo[1], lo[0], pads[0] - lo[0]))
        out = self.unet(inp, timesteps=t, context=context)
        if any(pads):
            out = out[:, :, lo[0]:lo[0] + d, lo[1]:lo[1] + h, lo[2]:lo[2] + w]
        return out


def drop_conditions(
    n: int, p: float, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """Classifier-free-guidance dropout mask for training: (n, 1) float, 0 with probability ``p`` (dropped)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    gen_device = generator.device if generator is not None else (device or "cpu")
    u = torch.rand((n, 1), generator=generator, device=gen_device)
    return (u >= p).to(dtype=torch.float32, device=device if device is not None else gen_device)
