"""PyTorch latent sampling: no graph kept, and guidance."""

import torch

from diffdef.models.denoiser import ConditionalDenoiser, denoiser_preset
from diffdef.sampling import sample_latents
from diffdef_runtime.schedulers import DDIMSampler, ScheduleConfig


def _setup():
    torch.manual_seed(0)
    model = ConditionalDenoiser(denoiser_preset("tiny", num_conditions=1))
    with torch.no_grad():  # MONAI zero-initialises the output conv: randomise so the output depends on inputs
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    sampler = DDIMSampler(ScheduleConfig())
    sampler.set_timesteps(3)
    noise = torch.randn(1, 3, 4, 6, 4, generator=torch.Generator().manual_seed(1))
    return model, sampler, noise, torch.tensor([[0.7]])


def test_sampling_keeps_no_graph():
    model, sampler, noise, c = _setup()
    z0 = sample_latents(model, sampler, noise, c)
    assert not z0.requires_grad


def test_guidance_changes_the_sample():
    model, sampler, noise, c = _setup()
    with torch.no_grad():
        a = sample_latents(model, sampler, noise, c, guidance=1.0)
        b = sample_latents(model, sampler, noise, c, guidance=3.0)
    assert float((a - b).abs().max()) > 1e-4
