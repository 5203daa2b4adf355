"""Image autoencoder (MONAI ``AutoencoderKL``, 3-D, 1 -> 1 channel, 8x down) and its patch discriminator.

Non-local (self-)attention is off by default, at the latent and at every level: its memory is O(N^2) in the
number of voxels of the level (a 20x28x20 latent is 11,200 tokens, i.e. a 11,200^2 attention matrix per head
unless SDPA/flash attention is used; 40x56x40 is out of reach), and the DVF decoder built from this decoder
must stay cheap on a CPU.
"""

from __future__ import annotations

import dataclasses

import torch
from monai.networks.nets import AutoencoderKL, PatchDiscriminator

from diffdef.models._config import ConfigBase, check_bool_tuple, check_int_tuple

#: Spatial downsampling factor of the latent (4 levels = 3 downsamplings).
DOWNSAMPLE_FACTOR = 8
NUM_LEVELS = 4


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig(ConfigBase):
    """Sizes of the ``AutoencoderKL`` (and of its discriminator).

    Attributes:
        channels: feature channels per level; 4 levels (8x down); each a multiple of ``norm_num_groups``.
        num_res_blocks: residual blocks per level (int, or one per level).
        latent_channels: channels of the latent (the paper: 3).
        norm_num_groups: GroupNorm groups.
        attention_levels: spatial self-attention per level (O(N^2) memory: keep off at fine levels).
        latent_attention: the non-local attention block at the latent, encoder and decoder (O(N^2) memory).
        use_flash_attention: use PyTorch SDPA in the attention blocks (memory-efficient kernels).
        discriminator_channels: first-layer channels of the ``PatchDiscriminator``.
        discriminator_layers: its number of strided layers.
    """

    channels: tuple[int, ...] = (8, 16, 16, 32)
    num_res_blocks: int | tuple[int, ...] = 1
    latent_channels: int = 3
    norm_num_groups: int = 4
    attention_levels: tuple[bool, ...] = (False, False, False, False)
    latent_attention: bool = False
    use_flash_attention: bool = False
    discriminator_channels: int = 16
    discriminator_layers: int = 3

    def __post_init__(self) -> None:
        self._freeze()
        check_int_tuple("channels", self.channels, NUM_LEVELS)
        if isinstance(self.num_res_blocks, tuple):
            check_int_tuple("num_res_blocks", self.num_res_blocks, NUM_LEVELS)
        elif not isinstance(self.num_res_blocks, int) or self.num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be a positive int or a tuple of {NUM_LEVELS}, got {self.num_res_blocks!r}")
        if self.norm_num_groups < 1 or any(c % self.norm_num_groups for c in self.channels):
            raise ValueError(f"every channel count {self.channels} must be a multiple of norm_num_groups={self.norm_num_groups}")
        check_bool_tuple("attention_levels", self.attention_levels, NUM_LEVELS)
        if self.latent_channels < 1 or self.discriminator_channels < 1 or self.discriminator_layers < 1:
            raise ValueError("latent_channels, discriminator_channels and discriminator_layers must be >= 1")

    @property
    def downsample_factor(self) -> int:
        return DOWNSAMPLE_FACTOR

    def latent_shape(self, image_shape: tuple[int, int, int]) -> tuple[int, int, int, int]:
        """(C, d, h, w) of the latent of an image of spatial shape ``image_shape`` (each divisible by 8)."""
        if any(s % DOWNSAMPLE_FACTOR for s in image_shape):
            raise ValueError(f"image shape {tuple(image_shape)} must be divisible by {DOWNSAMPLE_FACTOR}")
        return (self.latent_channels, *(s // DOWNSAMPLE_FACTOR for s in image_shape))


_AE_PRESETS: dict[str, AutoencoderConfig] = {
    # unit tests: a few thousand parameters
    "tiny": AutoencoderConfig(channels=(4, 8, 8, 8), num_res_blocks=1, norm_num_groups=4,
                              discriminator_channels=8, discriminator_layers=2),
    # 2 mm grid (80x112x80) on a 2-core CPU
    "default": AutoencoderConfig(channels=(8, 16, 16, 32), num_res_blocks=1, norm_num_groups=4,
                                 discriminator_channels=16, discriminator_layers=3),
    # the paper's AE (generative_brain-style AutoencoderKL: 64,128,128,128; 2 res blocks; no attention)
    "paper": AutoencoderConfig(channels=(64, 128, 128, 128), num_res_blocks=2, norm_num_groups=32,
                               discriminator_channels=64, discriminator_layers=3),
}


def autoencoder_preset(name: str) -> AutoencoderConfig:
    """``"tiny"`` (tests), ``"default"`` (2 mm grid on a CPU) or ``"paper"``."""
    try:
        return _AE_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown autoencoder preset {name!r}; choose from {sorted(_AE_PRESETS)}") from None


def build_autoencoder(cfg: AutoencoderConfig) -> AutoencoderKL:
    """MONAI ``AutoencoderKL``: (N, 1, D, H, W) -> latent (N, latent_channels, D/8, H/8, W/8) -> (N, 1, D, H, W)."""
    return AutoencoderKL(
        spatial_dims=3,
        in_channels=1,
        out_channels=1,
        channels=cfg.channels,
        num_res_blocks=cfg.num_res_blocks,
        attention_levels=cfg.attention_levels,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        with_encoder_nonlocal_attn=cfg.latent_attention,
        with_decoder_nonlocal_attn=cfg.latent_attention,
        use_flash_attention=cfg.use_flash_attention,
    )


def to_channels_last(module: torch.nn.Module) -> torch.nn.Module:
    """Store conv weights as ``channels_last_3d`` (in place; returns the module). Same outputs; on a 2-core CPU
    the AE's fwd+bwd at 80x112x80 drops from ~2.6 s to ~1.7 s (oneDNN's 3-D conv backward is much faster in
    that layout). Inputs may stay contiguous. ``save_module`` writes contiguous copies, so checkpoints are
    unaffected."""
    return module.to(memory_format=torch.channels_last_3d)


def build_discriminator(cfg: AutoencoderConfig) -> PatchDiscriminator:
    """MONAI ``PatchDiscriminator`` (3-D, 1 channel, instance norm); ``forward`` returns a list whose last
    element is the patch logits map."""
    return PatchDiscriminator(
        spatial_dims=3,
        channels=cfg.discriminator_channels,
        in_channels=1,
        out_channels=1,
        num_layers_d=cfg.discriminator_layers,
        norm="INSTANCE",
    )
