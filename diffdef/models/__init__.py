"""Networks: image autoencoder, registration net, conditional latent denoiser, DVF decoder; checkpoints."""

from diffdef.models.autoencoder import (
    AutoencoderConfig, autoencoder_preset, build_autoencoder, build_discriminator, to_channels_last,
)
from diffdef.models.checkpoint import CheckpointError, load_meta, load_module, save_module
from diffdef.models.denoiser import ConditionalDenoiser, DenoiserConfig, denoiser_preset, drop_conditions
from diffdef.models.dvf_decoder import DVFDecoder, DVFDecoderConfig
from diffdef.models.registration import RegistrationConfig, RegistrationNet, registration_preset, upsample_dvf

__all__ = [
    "AutoencoderConfig", "CheckpointError", "ConditionalDenoiser", "DVFDecoder", "DVFDecoderConfig",
    "DenoiserConfig", "RegistrationConfig", "RegistrationNet", "autoencoder_preset", "build_autoencoder",
    "build_discriminator", "denoiser_preset", "drop_conditions", "load_meta", "load_module",
    "registration_preset", "save_module", "to_channels_last", "upsample_dvf",
]
