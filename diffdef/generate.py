"""Atlas generation in PyTorch: the reference path that the exported engines are checked against.

``TorchEngines`` implements the runtime's ``Engines`` protocol with the trained modules, so the loop,
noise and measurements are exactly the runtime's (``diffdef_runtime.pipeline.generate``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from diffdef.geometry import warp_image
from diffdef.models.checkpoint import load_module, read_model_json
from diffdef.models.denoiser import ConditionalDenoiser, DenoiserConfig
from diffdef.models.dvf_decoder import DVFDecoder, DVFDecoderConfig
from diffdef_runtime.conditions import ConditionSpec
from diffdef_runtime.grid import get_grid
from diffdef_runtime.pipeline import AtlasResult, ModelInfo, TemplateMaps, generate, recorded_default_steps
from diffdef_runtime.schedulers import ScheduleConfig

def load_generation_modules(checkpoint_dir: str | Path, device: str | torch.device = "cpu"
                            ) -> tuple[ConditionalDenoiser, DVFDecoder]:
    """The trained denoiser and DVF decoder, strictly loaded, in eval mode."""
    denoiser = load_module(checkpoint_dir, "denoiser", lambda c: ConditionalDenoiser(DenoiserConfig.from_dict(c)))
    decoder = load_module(checkpoint_dir, "dvf_decoder", lambda c: DVFDecoder.from_config(DVFDecoderConfig.from_dict(c)))
    return denoiser.to(device).eval(), decoder.to(device).eval()


def model_info(checkpoint_dir: str | Path) -> ModelInfo:
    """ModelInfo from ``model.json`` (conditions, schedule, latent scale) and the denoiser's config."""
    meta = read_model_json(checkpoint_dir)
    grid = get_grid(meta["grid"])
    denoiser_cfg = json.loads((Path(checkpoint_dir) / "denoiser.json").read_text())["config"]
    latent_shape = (int(denoiser_cfg["latent_channels"]), *grid.latent_shape)
    return ModelInfo(conditions=ConditionSpec.from_dict(meta["conditions"]),
                     schedule=ScheduleConfig.from_dict(meta["schedule"]), latent_shape=latent_shape,
                     latent_scale=float(meta["latent_scale"]), affine=grid.affine,
                     voxel_volume_ml=grid.voxel_volume_ml, default_steps=recorded_default_steps(meta))


def template_maps(grid_name: str) -> TemplateMaps:
    from diffdef.template import load_template

    template = load_template(grid_name)
    return TemplateMaps(t1=template.t1.astype(np.float32), ventricle_prob=template.ventricle_prob.astype(np.float32))


class TorchEngines:
    """The runtime's ``Engines`` on the trained PyTorch modules (float32, no autocast). ``dvf_upsample_factor``
    f > 1: the DVF is upsampled exactly to a grid f times finer (``upsample_dvf``), as a bundle exported with
    ``--grid`` finer than the training grid does inside its ``dvf_decoder.onnx``."""

    name = "torch"

    def __init__(self, denoiser: torch.nn.Module, decoder: torch.nn.Module, device: str | torch.device = "cpu",
                 dvf_upsample_factor: int = 1):
        self.device = torch.device(device)
        self.denoiser, self.decoder = denoiser.to(self.device), decoder.to(self.device)
        self.dvf_upsample_factor = int(dvf_upsample_factor)

    @classmethod
    def from_checkpoint(cls, checkpoint_dir: str | Path, device: str | torch.device = "cpu",
                        dvf_upsample_factor: int = 1) -> "TorchEngines":
        return cls(*load_generation_modules(checkpoint_dir, device), device=device,
                   dvf_upsample_factor=dvf_upsample_factor)

    def _t(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    @torch.no_grad()
    def denoise(self, latents, timesteps, condition, condition_mask):
        out = self.denoiser(self._t(latents), self._t(timesteps), self._t(condition), self._t(condition_mask))
        return out.float().cpu().numpy()

    @torch.no_grad()
    def decode_dvf(self, latents):
        from diffdef.models.registration import upsample_dvf

        return upsample_dvf(self.decoder(self._t(latents)), self.dvf_upsample_factor).float().cpu().numpy()

    @torch.no_grad()
    def warp(self, image, dvf):
        return warp_image(self._t(image), self._t(dvf)).float().cpu().numpy()


def generate_atlases(checkpoint_dir: str | Path, conditions, *, device: str = "cpu", **kwargs) -> list[AtlasResult]:
    """Python API of the reference path: ``generate_atlases("runs/default", {"age": [60, 70]}, steps=20)``.

    Keyword arguments are those of ``diffdef_runtime.pipeline.generate`` (steps, sampler, seed, samples,
    guidance, progress).
    """
    meta = read_model_json(checkpoint_dir)
    engines = TorchEngines.from_checkpoint(checkpoint_dir, device)
    return generate(engines, model_info(checkpoint_dir), template_maps(meta["grid"]), conditions, **kwargs)
