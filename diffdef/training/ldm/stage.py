"""The ``ldm`` stage wired together: models, optimisers and the step function over the phase plan.

The DVF decoder's optimiser has one group per part present (``DVFDecoder.parameter_groups``): the copied AE
decoder and head (``dvf_lr``), the field basis's fields (``basis_lr``) and coefficients (``basis_coef_lr``); the
schedule scales each group's own base rate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Any

import torch

from diffdef.models.denoiser import ConditionalDenoiser
from diffdef.models.dvf_decoder import DVFDecoder
from diffdef.sampling import sample_latents
from diffdef.template import load_template
from diffdef.training.data import TrainingData, draw_neighbours, sample_indices
from diffdef.training.distributed import DistContext, broadcast_parameters, no_sync, wrap
from diffdef.training.ldm.basis_prefit import basis_grid_targets, prefit_field_basis
from diffdef.training.ldm.diffusion_loss import diffusion_loss
from diffdef.training.ldm.field_targets import FieldBank, check_field_source
from diffdef.training.ldm.latents import encode_latents, normalise_latents
from diffdef.training.ldm.models import denoiser_config, dvf_decoder_config
from diffdef.training.ldm.morphology import morphology_loss
from diffdef.training.ldm.phases import PhasePlan
from diffdef.training.loop import StageRun, step_seed
from diffdef.training.lr_schedule import decayed_lr
from diffdef_runtime.schedulers import DDIMSampler, ScheduleConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass
class LDMStage:
    run: StageRun
    denoiser: ConditionalDenoiser  # unwrapped (no DDP / compile)
    decoder: DVFDecoder
    latent_scale: float


def _autocast(ctx: DistContext, enabled: bool):
    if enabled and ctx.device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def build_ldm_stage(cfg: dict[str, Any], data: TrainingData, ae: torch.nn.Module, reg: torch.nn.Module,
                    ctx: DistContext) -> LDMStage:
    """The stage over ``data`` with the trained autoencoder ``ae`` and the registration network ``reg`` (frozen)."""
    stage = cfg["ldm"]
    check_field_source(stage["field_source"], data)  # before any work
    plan = PhasePlan.from_config(stage)
    device = ctx.device
    template = load_template(data.grid).torch("t1").to(device)
    conditions = data.conditions.to(device)
    bias_correction = bool(stage["reg_bias_correction"])
    sigma = stage["neighbour_sigma"]
    bank = FieldBank(stage["field_source"], data, reg, template, conditions, sigma, device, bias_correction)
    latents, latent_mean, latent_scale = normalise_latents(encode_latents(ae, data.images, device),
                                                           bool(stage["latent_centre"]), stage["latent_scale"])
    log.info("latents %s, centred %s, scale %.4f", tuple(latents.shape[1:]), latent_mean is not None, latent_scale)

    denoiser = ConditionalDenoiser(denoiser_config(cfg, data.conditions.shape[1])).to(device)
    decoder = DVFDecoder.from_autoencoder(ae, dvf_decoder_config(cfg, tuple(latents.shape[2:])))
    if decoder.latent_mean is not None:
        decoder.set_latent_mean(latent_mean)
    decoder = decoder.to(device)
    if plan.prefit and decoder.basis is None:
        raise ValueError("ldm.basis_prefit_steps > 0 needs ldm.basis_rank > 0 (it fits the field basis)")
    reg = reg.to(device).eval().requires_grad_(False)
    unet_ddp, decoder_ddp = wrap(denoiser, ctx), wrap(decoder, ctx)
    if cfg["run"]["compile"]:
        unet_ddp = torch.compile(unet_ddp)
    opt_unet = torch.optim.Adam(denoiser.parameters(), lr=stage["lr"])
    # Each group keeps its own base rate ("base_lr"), which the step's schedule scales.
    base_lrs = {"decoder": stage["dvf_lr"], "basis_fields": stage["basis_lr"], "basis_coefficients": stage["basis_coef_lr"]}
    opt_dvf = torch.optim.Adam([{"params": params, "lr": base_lrs[name], "base_lr": base_lrs[name]}
                                for name, params in decoder.parameter_groups().items() if params])

    schedule = ScheduleConfig.from_dict(cfg["schedule"])
    sampler = DDIMSampler(schedule)
    sampler.set_timesteps(int(stage["sample_steps"]))
    accumulation = int(cfg["run"]["grad_accumulation"])
    batch = int(stage["batch_size"])
    autocast = _autocast(ctx, bool(cfg["run"]["mixed_precision"]))

    def joint_loss(generator: torch.Generator):
        # A latent drawn by the UNet (no gradient: L_morph trains the decoder only) at a training condition, and
        # that condition's neighbours drawn with Gaussian weights.
        target = conditions[sample_indices(len(data), 1, generator)]  # (1, K)
        z_t = torch.randn((1, *latents.shape[1:]), generator=generator).to(device)
        z0 = sample_latents(denoiser, sampler, z_t, target)
        idx = draw_neighbours(conditions, target[0], sigma, int(stage["neighbours"]), generator)
        return morphology_loss(decoder_ddp, reg, template, z0 / latent_scale, data.images[idx].to(device),
                               bias_correction)

    def warmup_loss(generator: torch.Generator) -> torch.Tensor:
        # The latent of subject i against the neighbourhood-mean field of its condition (voxels^2): the atlas of
        # c_i, not subject i's own anatomy.
        i = sample_indices(len(data), 1, generator)
        target = bank.target(conditions[i[0]])
        return (decoder_ddp(latents[i].to(device) / latent_scale) - target).pow(2).sum(1).mean()

    @torch.no_grad()
    def draw_condition_latents(generator: torch.Generator) -> torch.Tensor:
        # ``basis_prefit_samples`` = K latents per training subject drawn by the current UNet at that subject's
        # condition, (K * N, C, d, h, w) scaled, on the CPU; row k * N + i is subject i.
        k = int(stage["basis_prefit_samples"])
        cond = conditions.repeat(k, 1)
        noise = torch.randn((len(cond), *latents.shape[1:]), generator=generator)
        return torch.cat([sample_latents(denoiser, sampler, noise[j:j + batch].to(device), cond[j:j + batch]).cpu()
                          for j in range(0, len(cond), batch)] or [latents[:0]])

    def prefit_basis() -> None:
        # Once, at the end of the last step that trains L_diff only (a run resumed before it redoes it with the same
        # seed; one resumed after it has it in the decoder's weights). The seed is the same on every rank; rank 0's
        # result is broadcast.
        weights = torch.stack([bank.weights(c) for c in conditions])
        velocity_steps = decoder.config.integration_steps if decoder.config.diffeomorphic else 0
        targets = basis_grid_targets(bank.fields, weights, decoder.basis.config.basis_shape, velocity_steps)
        generator = torch.Generator().manual_seed(step_seed(int(cfg["seed"]), "ldm-basis-prefit", plan.warmup_start, 0))
        drawn = draw_condition_latents(generator)
        inputs = torch.cat([latents, drawn]) / latent_scale  # row j's target is subject (j mod N)'s
        error = prefit_field_basis(decoder.basis, inputs, targets, int(stage["basis_prefit_steps"]),
                                   int(stage["basis_prefit_batch"]), stage["basis_prefit_lr"],
                                   stage["basis_prefit_coef_lr"], generator)
        broadcast_parameters(decoder.basis, ctx)
        log.info("field basis pre-fitted on %d encoded and %d sampled latents: %d steps, mean squared error %.4f "
                 "voxel^2 on the basis grid (targets %.4f)", len(latents), len(drawn), int(stage["basis_prefit_steps"]),
                 error, float(targets.pow(2).sum(1).mean()))

    def step_fn(step: int, generator: torch.Generator) -> dict[str, float]:
        joint, warmup = plan.is_joint(step), plan.is_warmup(step)
        for group in opt_unet.param_groups:
            group["lr"] = decayed_lr(stage["lr"], step, 0, plan.total, stage["lr_schedule"])
        for group in opt_dvf.param_groups:
            group["lr"] = (group["base_lr"] if warmup else
                           decayed_lr(group["base_lr"], step, plan.unet_steps, plan.total, stage["lr_schedule"]))
        opt_unet.zero_grad(set_to_none=True)
        opt_dvf.zero_grad(set_to_none=True)
        totals = {"diff": 0.0}
        for micro in range(accumulation):
            last = micro == accumulation - 1
            if warmup:
                with no_sync([decoder_ddp], skip=not last):
                    fit = warmup_loss(generator)
                    (fit / accumulation).backward()
                totals["fit"] = totals.get("fit", 0.0) + float(fit.detach()) / accumulation
            if joint:
                with no_sync([decoder_ddp], skip=not last):
                    result = joint_loss(generator)
                    loss_dvf = stage["alpha"] * result.morph + stage["beta"] * result.bending
                    (loss_dvf / accumulation).backward()
                totals["morph"] = totals.get("morph", 0.0) + float(result.morph.detach()) / accumulation
                totals["bend"] = totals.get("bend", 0.0) + float(result.bending.detach()) / accumulation
                totals["|dvf|"] = float(result.dvf.detach().abs().max())
            with no_sync([unet_ddp], skip=not last):
                loss = diffusion_loss(unet_ddp, latents, conditions, schedule, batch, stage["condition_dropout"],
                                      generator, device, autocast)
                (loss / accumulation).backward()
            totals["diff"] += float(loss.detach()) / accumulation
        opt_unet.step()
        if joint or warmup:
            opt_dvf.step()
        if plan.prefit_after(step):
            prefit_basis()
        return totals

    run = StageRun("ldm", plan.total, {"denoiser": denoiser, "dvf_decoder": decoder},
                   {"denoiser": opt_unet, "dvf_decoder": opt_dvf}, step_fn)
    return LDMStage(run, denoiser, decoder, latent_scale)
