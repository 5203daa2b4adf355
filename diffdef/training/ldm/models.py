"""The denoiser and DVF decoder configurations of a training config."""

from __future__ import annotations

from typing import Any

from diffdef.models.autoencoder import AutoencoderConfig
from diffdef.models.denoiser import DenoiserConfig
from diffdef.models.dvf_decoder import DVF_DECODER_PARTS, DVFDecoderConfig
from diffdef.models.field_basis import FieldBasisConfig


def denoiser_config(cfg: dict[str, Any], n_conditions: int) -> DenoiserConfig:
    """The preset's denoiser with the number of conditions and the autoencoder's latent channels."""
    base = DenoiserConfig.from_dict(cfg["models"]["denoiser"])
    latent_channels = AutoencoderConfig.from_dict(cfg["models"]["autoencoder"]).latent_channels
    return base.replace(num_conditions=n_conditions, latent_channels=latent_channels)


def dvf_decoder_config(cfg: dict[str, Any], latent_shape: tuple[int, int, int] | None = None) -> DVFDecoderConfig:
    """The DVF decoder of a training config (``ldm.dvf_decoder`` says its parts); ``latent_shape`` (d, h, w) is
    needed when ``ldm.latent_centre`` is on or the basis is a part."""
    stage = cfg["ldm"]
    parts, rank = stage["dvf_decoder"], int(stage["basis_rank"])
    if parts not in DVF_DECODER_PARTS:
        raise ValueError(f"ldm.dvf_decoder must be one of {DVF_DECODER_PARTS}, got {parts!r}")
    if ("basis" in parts) != (rank > 0):
        raise ValueError(f"ldm.dvf_decoder={parts!r} needs ldm.basis_rank {'> 0' if 'basis' in parts else '= 0'}, "
                         f"got {rank}")
    centre = bool(stage["latent_centre"]) and "decoder" in parts  # only the copied decoder reads uncentred latents
    if (centre or rank) and latent_shape is None:
        raise ValueError("ldm.latent_centre and ldm.basis_rank need the latent shape")
    ae_cfg = AutoencoderConfig.from_dict(cfg["models"]["autoencoder"])
    image_shape = [8 * n for n in latent_shape] if latent_shape is not None else None  # the AE's 3 up-samplings
    downs = {"basis_down": int(stage["basis_down"]), "integration_down": int(stage["integration_down"])}
    for key, on in (("basis_down", rank), ("integration_down", stage["diffeomorphic"])):
        if on and image_shape is not None and (downs[key] < 1 or any(n % downs[key] for n in image_shape)):
            raise ValueError(f"ldm.{key} ({downs[key]}) must divide the image grid {tuple(image_shape)}")
    basis = None
    if rank:
        basis = FieldBasisConfig(rank=rank, latent_channels=ae_cfg.latent_channels, latent_shape=tuple(latent_shape),
                                 basis_shape=tuple(n // downs["basis_down"] for n in image_shape))
    return DVFDecoderConfig(autoencoder=ae_cfg, parts=parts, diffeomorphic=bool(stage["diffeomorphic"]),
                            integration_steps=int(stage["integration_steps"]),
                            integration_down=downs["integration_down"],
                            latent_shape=tuple(latent_shape) if centre else None, basis=basis)
