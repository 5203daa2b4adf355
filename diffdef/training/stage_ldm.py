"""Stage ``ldm``: the conditional latent diffusion model and the DVF decoder (DESIGN.md parts 2 and 3).

Two phases in one stage (one step counter, so a killed run resumes in either):
1. ``unet_steps`` steps of L_diff only (the UNet learns the latents of the training images, conditioned);
2. ``joint_steps`` steps of L_diff on the UNet plus ``alpha * L_morph + beta * bending`` on the DVF decoder:
   a latent is sampled at a target condition c with the full DDIM loop (no gradient, as the paper's code),
   decoded to a DVF, the template is warped by it, and the frozen registration network registers N
   neighbourhood subjects (drawn with Gaussian weights around c) to that atlas; L_morph is their mean
   squared displacement (voxels^2). The ``default`` preset has no joint phase (``joint_steps = 0``;
   docs/METHOD.md says why).

With ``decoder_warmup_steps`` = W > 0 (not in the paper), the last W steps of phase 1 also fit the DVF decoder,
from a training image's latent, to the Gaussian-weighted mean of the frozen registration network's template ->
subject fields over that image's neighbourhood (mean squared end-point error, voxels^2), computed exactly from a
bank of every training subject's field. That is the neighbourhood-mean field, the first-order minimiser of L_morph,
so the joint phase starts nearer its optimum (docs/METHOD.md says what it measured).

With ``reg_bias_correction`` (not in the paper), every registration field the stage uses is taken relative to what
the frozen network returns for an identical pair: warm-up targets ``reg(T, S) - reg(T, T)``, L_morph residuals
``reg(S, A) - reg(A, A)``. A perfect network returns zero there; the ``default`` network does not, and that
offset, not sampling noise, is what made the L_morph target miss at young ages (:func:`identity_bias` says how much).

With ``basis_prefit_steps`` > 0 (not in the paper), the first warm-up step first fits the
decoder's field basis alone to the same targets on its own coarse grid, many cheap batched steps at its own rates
(:mod:`diffdef.training.basis_prefit` says why and what it measured). With ``basis_prefit_samples`` = K > 0 the fit
also sees K latents per training subject drawn by the UNet (as trained so far) at that subject's condition, with the
subject's target: the decoder is later fed sampled latents, not encoded ones, and a basis fitted to encoded latents
alone read the sampler's latents wrongly (measured in :mod:`diffdef.training.basis_prefit`).

The DVF decoder's optimiser has one group per part present (``DVFDecoder.parameter_groups``): the copied AE
decoder and head (``dvf_lr``), the field basis's fields (``basis_lr``) and coefficients (``basis_coef_lr``); the
schedule scales each group's own base rate. ``ldm.dvf_decoder`` says which parts there are.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch

from diffdef.geometry import bending_energy, warp_image
from diffdef.models.autoencoder import AutoencoderConfig
from diffdef.models.denoiser import ConditionalDenoiser, DenoiserConfig, drop_conditions
from diffdef.models.dvf_decoder import DVF_DECODER_PARTS, DVFDecoder, DVFDecoderConfig
from diffdef.models.field_basis import FieldBasisConfig
from diffdef.sampling import sample_latents
from diffdef.template import load_template
from diffdef.training.data import TrainingData, draw_neighbours, neighbour_weights, sample_indices
from diffdef.training.classical_fields import FIELD_SOURCES, demons_fields, label_fields
from diffdef.training.basis_prefit import basis_grid_targets, prefit_field_basis
from diffdef.training.distributed import DistContext, broadcast_parameters, no_sync, wrap
from diffdef.training.loop import StageRun, step_seed
from diffdef.training.lr_schedule import decayed_lr
from diffdef_runtime.schedulers import DDIMSampler, ScheduleConfig, add_noise, noise_coefficients, training_target

log = logging.getLogger(__name__)


@torch.no_grad()
def encode_latents(ae: torch.nn.Module, images: torch.Tensor, device: torch.device, chunk: int = 4) -> torch.Tensor:
    """Posterior means of the autoencoder for every training image: (M, C, d, h, w) on the CPU."""
    ae.eval()
    out = [ae.encode(images[i:i + chunk].to(device))[0].cpu() for i in range(0, len(images), chunk)]
    return torch.cat(out)


def denoiser_config(cfg: dict[str, Any], n_conditions: int) -> DenoiserConfig:
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


def normalise_latents(latents: torch.Tensor, centre: bool, scale: float | None
                      ) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """The diffusion model's training latents from the autoencoder's.

    Args:
        latents: (M, C, d, h, w) posterior means of the training images.
        centre: subtract the population-mean latent (per voxel and channel) first.
        scale: multiply by this; None = 1 / std of the (centred) latents, so they have unit variance.
    Returns:
        ``(latents_for_diffusion, mean (1, C, d, h, w) or None, scale)``.
    """
    mean = latents.mean(0, keepdim=True) if centre else None
    centred = latents - mean if centre else latents
    scale = float(scale or 1.0 / centred.std().item())
    return centred * scale, mean, scale


EXACT_TARGETS_MAX_GB = 8.0


def check_bank_size(images: torch.Tensor) -> None:
    """Refuse a field bank (one (3, D, H, W) float32 field per image of ``images`` (M, 1, D, H, W)) above
    ``EXACT_TARGETS_MAX_GB``: every DDP process holds it."""
    gb = images.shape[0] * 3 * images[0].numel() * 4 / 2**30
    if gb > EXACT_TARGETS_MAX_GB:
        raise ValueError(f"the decoder warm-up's field bank would hold {gb:.1f} GB for {images.shape[0]} images "
                         f"(limit {EXACT_TARGETS_MAX_GB:g} GB): train on fewer subjects or a coarser grid, or set "
                         "ldm.decoder_warmup_steps=0")


def identity_bias(reg: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    """``reg(image, image)``: the registration network's field for an identical pair, (N, 3, D, H, W) voxels,
    with the graph (L_morph differentiates through it); ideally zero.

    Why it is subtracted (``ldm.reg_bias_correction``; measured with the ``default`` preset's network on its 120
    training subjects, 2 mm grid): the template registered to itself gave a field of 0.18 voxel RMS inside the
    brain (max 0.82); the neighbourhood-mean field at age 30 was 0.223 voxel RMS from the true atlas field, where
    the mean of the subjects' *true* fields was 0.078 from it, so the offset dominated; subtracting ``reg(T, T)``
    brought it to 0.144, and the target's ventricle / CSF Dice at 30 from 0.934 / 0.921 to 0.968 / 0.950 (the
    plain template: 0.942 / 0.942), at every age 30..85 above the template's (without it: 11/12 on each).
    """
    return reg(image, image)


def morphology_residual(reg: torch.nn.Module, moving: torch.Tensor, atlas: torch.Tensor,
                        bias_correction: bool) -> torch.Tensor:
    """The L_morph residual: the neighbours ``moving`` (N, 1, D, H, W) registered to the generated ``atlas``
    (1, 1, D, H, W), (N, 3, D, H, W) voxels, less :func:`identity_bias` of the atlas with ``bias_correction``;
    differentiable in ``atlas``."""
    residual = reg(moving, atlas.expand(len(moving), -1, -1, -1, -1))
    return residual - identity_bias(reg, atlas) if bias_correction else residual


@torch.no_grad()
def registration_fields(reg: torch.nn.Module, template: torch.Tensor, images: torch.Tensor, device: torch.device,
                        chunk: int = 4, bias_correction: bool = False) -> torch.Tensor:
    """The frozen registration network's template -> subject field of every training image (less
    ``reg(template, template)`` with ``bias_correction``, :func:`identity_bias`): (M, 3, D, H, W) float32 voxels on
    the CPU (1.0 GB for 120 subjects on the 2 mm grid, held by every DDP process). The stage builds it at its first
    warm-up step, so a run resumed past the warm-up never does.
    """
    check_bank_size(images)
    bias = identity_bias(reg, template).float() if bias_correction else 0.0
    out = []
    for k in range(0, len(images), chunk):
        moving = images[k:k + chunk].to(device)
        fields = reg(template.expand(len(moving), -1, -1, -1, -1), moving).float() - bias
        out.append(fields.cpu())
    return torch.cat(out)


def _autocast(ctx: DistContext, enabled: bool):
    if enabled and ctx.device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def build_ldm_stage(cfg: dict[str, Any], data: TrainingData, ae: torch.nn.Module, reg: torch.nn.Module,
                    ctx: DistContext) -> tuple[StageRun, ConditionalDenoiser, DVFDecoder, float]:
    """Returns the stage, the (unwrapped) denoiser and DVF decoder it trains, and the latent scale."""
    stage = cfg["ldm"]
    field_source = stage["field_source"]
    if field_source not in FIELD_SOURCES:
        raise ValueError(f"ldm.field_source must be one of {FIELD_SOURCES}, got {field_source!r}")
    if field_source == "labels" and data.labels is None:
        raise ValueError("ldm.field_source='labels' needs the training subjects' label maps: train on a manifest "
                         "with a labels column (diffdef-prepare writes one when given segmentations)")

    device = ctx.device
    latents, latent_mean, latent_scale = normalise_latents(encode_latents(ae, data.images, device),
                                                           bool(stage["latent_centre"]), stage["latent_scale"])
    log.info("latents %s, centred %s, scale %.4f", tuple(latents.shape[1:]), latent_mean is not None, latent_scale)

    denoiser = ConditionalDenoiser(denoiser_config(cfg, data.conditions.shape[1])).to(device)
    decoder = DVFDecoder.from_autoencoder(ae, dvf_decoder_config(cfg, tuple(latents.shape[2:])))
    if decoder.latent_mean is not None:
        decoder.set_latent_mean(latent_mean)
    decoder = decoder.to(device)
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
    template = load_template(data.grid).torch("t1").to(device)
    conditions = data.conditions.to(device)
    accumulation = int(cfg["run"]["grad_accumulation"])
    batch = int(stage["batch_size"])
    amp = bool(cfg["run"]["mixed_precision"])
    bias_correction = bool(stage["reg_bias_correction"])

    def diffusion_loss(generator: torch.Generator) -> torch.Tensor:
        idx = sample_indices(len(data), batch, generator)
        x0 = latents[idx].to(device)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        t = torch.randint(0, schedule.num_train_timesteps, (batch,), generator=generator)
        sqrt_ab, sqrt_1mab = (torch.as_tensor(c, dtype=x0.dtype, device=device).view(-1, 1, 1, 1, 1)
                              for c in noise_coefficients(schedule, t.numpy()))
        mask = drop_conditions(batch, stage["condition_dropout"], generator).to(device)
        with _autocast(ctx, amp):
            pred = unet_ddp(add_noise(x0, noise, sqrt_ab, sqrt_1mab), t.to(device), conditions[idx], mask)
        target = training_target(x0, noise, sqrt_ab, sqrt_1mab, schedule.prediction_type)
        return torch.nn.functional.mse_loss(pred.float(), target)

    def morphology_loss(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # (L_morph, bending, the DVF)
        target = conditions[sample_indices(len(data), 1, generator)]  # (1, K)
        z_t = torch.randn((1, *latents.shape[1:]), generator=generator).to(device)
        z0 = sample_latents(denoiser, sampler, z_t, target)  # no gradient: L_morph trains the decoder only
        dvf = decoder_ddp(z0 / latent_scale)  # (1, 3, D, H, W) voxels
        atlas = warp_image(template, dvf)
        idx = draw_neighbours(conditions, target[0], stage["neighbour_sigma"], int(stage["neighbours"]), generator)
        moving = data.images[idx].to(device)
        residual = morphology_residual(reg, moving, atlas, bias_correction)
        morph = residual.pow(2).sum(1).mean()  # mean squared displacement, voxels^2
        return morph, bending_energy(dvf), dvf

    bank: list[torch.Tensor] = []  # the exact targets' field bank, built at the first warm-up step

    def exact_bank() -> torch.Tensor:
        if not bank and field_source == "demons":
            bank.append(demons_fields(template, data.images))
        elif not bank and field_source == "labels":
            bank.append(label_fields(load_template(data.grid).labels, data.labels, data.label_scheme))
        if not bank:
            bank.append(registration_fields(reg, template, data.images, device, bias_correction=bias_correction))
        return bank[0]

    def exact_target(condition: torch.Tensor) -> torch.Tensor:
        # The Gaussian-weighted mean over the training subjects around ``condition`` (K,) of the bank's fields:
        # (1, 3, D, H, W) voxels, on the device.
        weights = neighbour_weights(conditions, condition, stage["neighbour_sigma"]).cpu()
        return torch.einsum("m,mcdhw->cdhw", weights, exact_bank())[None].to(device)

    def warmup_loss(generator: torch.Generator) -> torch.Tensor:
        # The latent of subject i; the target is the Gaussian-weighted mean, over the neighbourhood of i's
        # condition, of the bank's template -> subject fields: (to first order) the minimiser of L_morph, the
        # atlas of c_i, not subject i's own anatomy.
        i = sample_indices(len(data), 1, generator)
        target = exact_target(conditions[i[0]])
        return (decoder_ddp(latents[i].to(device) / latent_scale) - target).pow(2).sum(1).mean()

    unet_steps = int(stage["unet_steps"])
    total = unet_steps + int(stage["joint_steps"])
    warmup_start = unet_steps - int(stage["decoder_warmup_steps"])
    if not 0 <= warmup_start <= unet_steps:
        raise ValueError(f"ldm.decoder_warmup_steps ({stage['decoder_warmup_steps']}) must be in 0..ldm.unet_steps "
                         f"({unet_steps})")
    prefit_steps = int(stage["basis_prefit_steps"])
    if prefit_steps and (decoder.basis is None or warmup_start == unet_steps):
        raise ValueError("ldm.basis_prefit_steps > 0 needs ldm.basis_rank > 0 and ldm.decoder_warmup_steps > 0")

    def prefit_basis() -> None:
        # Once, at the first warm-up step (a run resumed before it redoes it with the same seed; one resumed after
        # it has it in the decoder's weights). The seed is the same on every rank; rank 0's result is broadcast.
        weights = torch.stack([neighbour_weights(conditions, c, stage["neighbour_sigma"]).cpu() for c in conditions])
        velocity_steps = decoder.config.integration_steps if decoder.config.diffeomorphic else 0
        targets = basis_grid_targets(exact_bank(), weights, decoder.basis.config.basis_shape, velocity_steps)
        generator = torch.Generator().manual_seed(step_seed(int(cfg["seed"]), "ldm-basis-prefit", warmup_start, 0))
        drawn = draw_condition_latents(generator)
        inputs = torch.cat([latents, drawn]) / latent_scale  # row j's target is subject (j mod N)'s
        error = prefit_field_basis(decoder.basis, inputs, targets, prefit_steps,
                                   int(stage["basis_prefit_batch"]), stage["basis_prefit_lr"],
                                   stage["basis_prefit_coef_lr"], generator)
        broadcast_parameters(decoder.basis, ctx)
        log.info("field basis pre-fitted on %d encoded and %d sampled latents: %d steps, mean squared error %.4f "
                 "voxel^2 on the basis grid (targets %.4f)", len(latents), len(drawn), prefit_steps, error,
                 float(targets.pow(2).sum(1).mean()))

    @torch.no_grad()
    def draw_condition_latents(generator: torch.Generator) -> torch.Tensor:
        # ``basis_prefit_samples`` = K latents per training subject drawn by the current UNet at that subject's
        # condition (the DDIM loop of L_morph), (K * N, C, d, h, w) scaled, on the CPU; row k * N + i is subject i.
        k = int(stage["basis_prefit_samples"])
        cond = conditions.repeat(k, 1)
        noise = torch.randn((len(cond), *latents.shape[1:]), generator=generator)
        return torch.cat([sample_latents(denoiser, sampler, noise[j:j + batch].to(device), cond[j:j + batch]).cpu()
                          for j in range(0, len(cond), batch)] or [latents[:0]])

    def step_fn(step: int, generator: torch.Generator) -> dict[str, float]:
        joint = step >= unet_steps
        warmup = warmup_start <= step < unet_steps
        for group in opt_unet.param_groups:
            group["lr"] = decayed_lr(stage["lr"], step, 0, total, stage["lr_schedule"])
        for group in opt_dvf.param_groups:
            group["lr"] = (group["base_lr"] if warmup else
                           decayed_lr(group["base_lr"], step, unet_steps, total, stage["lr_schedule"]))
        opt_unet.zero_grad(set_to_none=True)
        opt_dvf.zero_grad(set_to_none=True)
        totals = {"diff": 0.0}
        for micro in range(accumulation):
            last = micro == accumulation - 1
            if warmup:
                if prefit_steps and step == warmup_start and micro == 0:
                    prefit_basis()
                with no_sync([decoder_ddp], skip=not last):
                    fit = warmup_loss(generator)
                    (fit / accumulation).backward()
                totals["fit"] = totals.get("fit", 0.0) + float(fit.detach()) / accumulation
            if joint:
                with no_sync([decoder_ddp], skip=not last):
                    morph, bend, dvf = morphology_loss(generator)
                    loss_dvf = stage["alpha"] * morph + stage["beta"] * bend
                    (loss_dvf / accumulation).backward()
                totals["morph"] = totals.get("morph", 0.0) + float(morph.detach()) / accumulation
                totals["bend"] = totals.get("bend", 0.0) + float(bend.detach()) / accumulation
                totals["|dvf|"] = float(dvf.detach().abs().max())
            with no_sync([unet_ddp], skip=not last):
                loss = diffusion_loss(generator)
                (loss / accumulation).backward()
            totals["diff"] += float(loss.detach()) / accumulation
        opt_unet.step()
        if joint or warmup:
            opt_dvf.step()
        return totals

    run = StageRun("ldm", total, {"denoiser": denoiser, "dvf_decoder": decoder},
                   {"denoiser": opt_unet, "dvf_decoder": opt_dvf}, step_fn)
    return run, denoiser, decoder, latent_scale
