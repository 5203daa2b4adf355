"""Untrained checkpoints in the training layout, for tests and export benchmarks (no training involved).

``make_untrained_checkpoint`` writes exactly what ``diffdef.training.train`` writes for generation
(``denoiser.{safetensors,json}``, ``dvf_decoder.{safetensors,json}``, ``model.json``) with randomly initialised
modules. Zero-initialised layers would make parity tests trivially pass, so they are re-initialised:
the layers MONAI's UNet zero-initialises (it outputs exactly 0 when fresh) get their default random
initialisation, and the DVF head of the ``DVFDecoder`` (zero = identity transform) gets small seeded random
weights. The decoder's field basis (on by default, rank 2, as in the ``tiny`` training preset) first gets seeded
random fields of standard deviation ``basis_std_voxels``; the head is then scaled so that the whole raw field
(head + basis) of a standard-normal latent has a standard deviation of ``dvf_std_voxels`` (0.75 voxel by
default; maxima of several voxels).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from diffdef.models.autoencoder import autoencoder_preset, build_autoencoder
from diffdef.models.checkpoint import save_module, write_model_json
from diffdef.models.denoiser import ConditionalDenoiser, denoiser_preset
from diffdef.models.dvf_decoder import DVFDecoder, DVFDecoderConfig
from diffdef.models.field_basis import FieldBasisConfig
from diffdef_runtime.conditions import ConditionSpec
from diffdef_runtime.grid import get_grid
from diffdef_runtime.schedulers import ScheduleConfig

#: Conditions of the untrained checkpoints (those of the ``tiny`` training preset): age and sex.
TEST_CONDITIONS = ConditionSpec(names=("age", "sex"), ranges={"age": (20.0, 90.0), "sex": (0.0, 1.0)},
                                trained={"age": (45.0, 85.0), "sex": (0.0, 1.0)})


def _randomise_head(decoder: DVFDecoder, latent_shape: tuple[int, ...], generator: torch.Generator,
                    dvf_std_voxels: float) -> None:
    """Give the (zero) DVF head seeded random weights scaled so that std(raw field, head + basis) = ``dvf_std_voxels``."""
    conv = decoder.head.conv
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator))
        conv.bias.copy_(0.1 * torch.randn(conv.bias.shape, generator=generator))
        z = torch.randn((1, *latent_shape), generator=generator)
        std = float(decoder.raw_field(z).std())
        conv.weight.mul_(dvf_std_voxels / max(std, 1e-12))
        conv.bias.mul_(dvf_std_voxels / max(std, 1e-12))


def _randomise_zero_layers(module: nn.Module) -> None:
    """MONAI's ``DiffusionModelUNet`` zero-initialises its output conv, the second conv of every residual block
    and the transformers' output projections (a fresh UNet outputs exactly 0). Give those layers their default
    random initialisation (from the global, seeded RNG) so that the denoiser output depends on every input."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv3d, nn.Linear)) and not layer.weight.detach().any():
            layer.reset_parameters()


def make_untrained_checkpoint(out_dir: str | Path, grid: str = "4mm", seed: int = 0, preset: str = "tiny", *,
                              diffeomorphic: bool = False, integration_steps: int = 7, integration_down: int = 1,
                              dvf_std_voxels: float = 0.75, latent_scale: float = 0.3,
                              sample_steps: int = 3, centred: bool = True, basis_rank: int = 2,
                              basis_std_voxels: float = 0.25, parts: str | None = None) -> Path:
    """Write a randomly initialised checkpoint folder in the layout of ``diffdef-train``.

    Args:
        out_dir: folder to write (created).
        grid: training grid name (``4mm`` for tests; ``2mm``/``paper`` for benchmarks).
        seed: seeds every weight (same seed, same files).
        preset: model preset for the denoiser and the autoencoder: ``tiny``, ``default`` or ``paper``.
        diffeomorphic: the decoder head is a velocity integrated with ``integration_steps`` squarings, on the
            grid ``integration_down`` times coarser.
        dvf_std_voxels: standard deviation of the (raw) head output for a standard-normal latent, voxels.
        centred: the decoder holds a (seeded random) population-mean latent, as ``diffdef-train`` writes by
            default (``ldm.latent_centre``), so exports and runtimes are checked with it.
        basis_rank: rank of the decoder's field basis (0 = none); its fields are on the image grid / 2.
        basis_std_voxels: standard deviation of the basis's random fields, voxels.
        parts: the DVF decoder's parts (``DVFDecoderConfig.parts``); None = ``decoder+basis`` with a basis, else
            ``decoder``. Without the decoder part there is no head to randomise and no latent mean to hold.
    Returns:
        ``out_dir`` as a Path.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    g = get_grid(grid)
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ae_cfg = autoencoder_preset(preset)
        den_cfg = denoiser_preset(preset, num_conditions=TEST_CONDITIONS.num_conditions).replace(
            latent_channels=ae_cfg.latent_channels)
        denoiser = ConditionalDenoiser(den_cfg).eval()
        _randomise_zero_layers(denoiser)
        parts = parts or ("decoder+basis" if basis_rank else "decoder")
        centred = centred and "decoder" in parts
        dec_cfg = DVFDecoderConfig(autoencoder=ae_cfg, parts=parts, diffeomorphic=diffeomorphic,
                                   integration_steps=integration_steps, integration_down=integration_down,
                                   latent_shape=tuple(g.latent_shape) if centred else None,
                                   basis=FieldBasisConfig(rank=basis_rank, latent_channels=ae_cfg.latent_channels,
                                                          latent_shape=tuple(g.latent_shape),
                                                          basis_shape=tuple(n // 2 for n in g.shape))
                                   if basis_rank else None)
        decoder = DVFDecoder.from_autoencoder(build_autoencoder(ae_cfg), dec_cfg).eval()
        if decoder.basis is not None:
            with torch.no_grad():
                decoder.basis.fields.copy_(basis_std_voxels * torch.randn(decoder.basis.fields.shape,
                                                                          generator=generator))
        if centred:
            decoder.set_latent_mean(torch.randn((1, ae_cfg.latent_channels, *g.latent_shape), generator=generator))
    if dec_cfg.has_decoder:
        _randomise_head(decoder, (ae_cfg.latent_channels, *g.latent_shape), generator, dvf_std_voxels)

    save_module(out_dir, "denoiser", denoiser, den_cfg.to_dict())
    save_module(out_dir, "dvf_decoder", decoder, dec_cfg.to_dict())
    write_model_json(out_dir, grid=g.name, conditions=TEST_CONDITIONS.to_dict(), schedule=ScheduleConfig().to_dict(),
                     latent_scale=latent_scale, sample_steps=sample_steps, default_steps=None, preset=preset)
    return out_dir
