"""Drawing latents with the conditional denoiser in PyTorch (training's L_morph and the reference generator).

The scheduler arithmetic is the runtime's (``diffdef_runtime.schedulers``), shared with the ONNX/TensorRT
path; only the model call differs.
"""

from __future__ import annotations

import torch

from diffdef_runtime.schedulers import guided


def denoiser_call(denoiser: torch.nn.Module, latents: torch.Tensor, t: int, condition: torch.Tensor,
                  guidance: float) -> torch.Tensor:
    """One model evaluation at timestep ``t``, with classifier-free guidance when ``guidance != 1``.

    Args:
        latents: (N, C, d, h, w) noisy latents; condition: (N, K) normalised.
        guidance: CFG scale w: ``uncond + w (cond - uncond)``; 1 = purely conditional, one evaluation.
    """
    n = latents.shape[0]
    if guidance == 1.0:
        timesteps = torch.full((n,), t, device=latents.device, dtype=torch.long)
        mask = torch.ones(n, 1, device=latents.device, dtype=latents.dtype)
        return denoiser(latents, timesteps, condition, mask)
    both = torch.cat([latents, latents])
    timesteps = torch.full((2 * n,), t, device=latents.device, dtype=torch.long)
    mask = torch.cat([torch.ones(n, 1), torch.zeros(n, 1)]).to(latents)
    out = denoiser(both, timesteps, torch.cat([condition, condition]), mask)
    return guided(out[:n], out[n:], guidance)


def sample_latents(denoiser: torch.nn.Module, sampler, initial_noise: torch.Tensor, condition: torch.Tensor,
                   guidance: float = 1.0, step_noise=None) -> torch.Tensor:
    """Run the reverse process from ``initial_noise`` over ``sampler.timesteps``.

    Args:
        denoiser: ``ConditionalDenoiser``.
        sampler: a ``diffdef_runtime.schedulers`` sampler with ``set_timesteps`` already called.
        initial_noise: (N, C, d, h, w) z_T.
        condition: (N, K) normalised conditions.
        step_noise: ``i -> tensor`` giving the noise of step i for stochastic samplers (DDPM), else None.
    Returns:
        (N, C, d, h, w) z_0 in the scaled latent space the denoiser was trained on.
    """
    latents = initial_noise
    steps = list(sampler.timesteps)
    for i, t in enumerate(steps):
        with torch.no_grad():
            out = denoiser_call(denoiser, latents, int(t), condition, guidance)
            noise = step_noise(i) if step_noise is not None else None
            latents = sampler.step(out, int(t), latents, noise=noise).prev_sample
    return latents
