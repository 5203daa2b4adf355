"""Stage ``reg``: the VoxelMorph-style registration network that L_morph later uses frozen.

It learns to register a subject (moving) to a fixed image; the fixed image is another subject or, with
probability ``template_fixed_prob``, the template itself, because at L_morph time the fixed image is the
template warped by the generated DVF. Loss: similarity (MSE or LNCC) + ``smooth_weight`` x diffusion
regulariser (mean squared gradient of the DVF, as VoxelMorph), MONAI losses.

With ``synthetic_fields`` > 0 (the ``default`` preset) the pairs are instead a training image (or the template)
and that image warped by one of a bank of known fields (:mod:`diffdef.training.synthetic_pairs`), and the
loss gains ``supervised_weight`` x the mean squared end-point error against the known field (voxels^2).

After training, :func:`check_registration` scores the network on known-field pairs it never saw and warns when it
barely registers (``diffdef-train`` calls it once the stage ends).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
from monai.losses import DiffusionLoss, LocalNormalizedCrossCorrelationLoss

from diffdef.geometry import warp_image
from diffdef.models.registration import RegistrationConfig, RegistrationNet
from diffdef.template import Template, load_template
from diffdef.training.data import TrainingData, sample_indices
from diffdef.training.distributed import DistContext, no_sync, wrap
from diffdef.training.loop import StageRun
from diffdef.training.lr_schedule import decayed_lr
from diffdef.training.synthetic_pairs import field_bank, synthetic_pairs

log = logging.getLogger(__name__)


def similarity_loss(name: str):
    """``mse`` or ``lncc`` (local normalised cross-correlation, kernel 7) as a callable (warped, fixed) -> scalar."""
    if name == "mse":
        return torch.nn.MSELoss()
    if name == "lncc":
        return LocalNormalizedCrossCorrelationLoss(spatial_dims=3, kernel_size=7)
    raise ValueError(f"reg.similarity must be 'mse' or 'lncc', got {name!r}")


def build_reg_stage(cfg: dict[str, Any], data: TrainingData, ctx: DistContext) -> tuple[StageRun, torch.nn.Module]:
    stage = cfg["reg"]
    net = RegistrationNet(RegistrationConfig.from_dict(cfg["models"]["registration"])).to(ctx.device)
    net_ddp = wrap(net, ctx)
    optimizer = torch.optim.Adam(net.parameters(), lr=stage["lr"])
    similarity = similarity_loss(stage["similarity"])
    smooth = DiffusionLoss()
    tpl = load_template(data.grid)
    template = tpl.torch("t1")
    n_fields = int(stage["synthetic_fields"])
    bank = field_bank(tpl, n_fields, int(cfg["seed"])) if n_fields > 0 else None
    moving_pool = torch.cat([data.images, template]) if bank is not None else None
    accumulation = int(cfg["run"]["grad_accumulation"])
    batch = int(stage["batch_size"])
    steps = int(stage["steps"])

    def step_fn(step: int, generator: torch.Generator) -> dict[str, float]:
        for group in optimizer.param_groups:
            group["lr"] = decayed_lr(stage["lr"], step, 0, steps, stage["lr_schedule"])
        optimizer.zero_grad(set_to_none=True)
        totals = {"similarity": 0.0, "smooth": 0.0}
        for micro in range(accumulation):
            if bank is None:
                moving = data.images[sample_indices(len(data), batch, generator)]
                fixed = data.images[sample_indices(len(data), batch, generator)]
                use_template = torch.rand(batch, generator=generator) < stage["template_fixed_prob"]
                fixed[use_template] = template
                true_dvf = None
            else:
                moving, fixed, true_dvf = synthetic_pairs(moving_pool, bank, batch, generator)
                true_dvf = true_dvf.to(ctx.device)
            moving, fixed = moving.to(ctx.device), fixed.to(ctx.device)
            with no_sync([net_ddp], skip=micro < accumulation - 1):
                dvf = net_ddp(moving, fixed)
                sim = similarity(warp_image(moving, dvf), fixed)
                reg = smooth(dvf)
                loss = sim + stage["smooth_weight"] * reg
                if true_dvf is not None:
                    epe2 = (dvf - true_dvf).pow(2).sum(1).mean()
                    loss = loss + stage["supervised_weight"] * epe2
                    totals["epe2"] = totals.get("epe2", 0.0) + float(epe2.detach()) / accumulation
                (loss / accumulation).backward()
            totals["similarity"] += float(sim.detach()) / accumulation
            totals["smooth"] += float(reg.detach()) / accumulation
        optimizer.step()
        return totals

    return StageRun("reg", steps, {"registration": net}, {"registration": optimizer}, step_fn), net


# Why this check exists: the registration stage can end with a network that barely registers (it happened with the
# default preset's seed 0 on one machine; docs/RESULTS.md), and L_morph then has almost no signal. 8 held-out known
# fields and their inverses separate such a network from a working one (0.997 vs 0.798 of the zero field's error).
# The threshold lies between.
WEAK_REGISTRATION_RATIO = 0.9
HELD_OUT_FIELD_SEED = 7919  # fixed, so that runs with different seeds are scored on the same pairs


@torch.no_grad()
def held_out_error(net: torch.nn.Module, template: Template, device: torch.device, n_fields: int = 8,
                   pairs: int = 16, seed: int = HELD_OUT_FIELD_SEED) -> tuple[float, float]:
    """The network's end-point error on known-field pairs it never trained on, and the zero field's.

    Each pair is the template (moving) and the template warped by a field of ``field_bank(template, n_fields,
    seed)`` (fixed), the direction of the L_morph targets (template -> subject).

    Returns:
        ``(mean end-point error, mean length of the true field)`` in voxels, over the template's brain
        (T1 > 0.1) and the ``pairs`` pairs.
    """
    bank = field_bank(template, n_fields, seed)
    image = template.torch("t1")
    brain = image[0, 0] > 0.1
    moving, fixed, truth = synthetic_pairs(image, bank, pairs, torch.Generator().manual_seed(seed))
    net.eval()
    error = zero = 0.0
    for k in range(pairs):
        pred = net(moving[k:k + 1].to(device), fixed[k:k + 1].to(device)).float().cpu()
        error += float((pred - truth[k:k + 1]).norm(dim=1)[0][brain].mean()) / pairs
        zero += float(truth[k:k + 1].norm(dim=1)[0][brain].mean()) / pairs
    return error, zero


def check_registration(net: torch.nn.Module, template: Template, device: torch.device, **kwargs: int) -> float:
    """Logs :func:`held_out_error` and warns when the network's error is above ``WEAK_REGISTRATION_RATIO`` of the
    zero field's; returns that ratio."""
    error, zero = held_out_error(net, template, device, **kwargs)
    ratio = error / zero
    log.info("registration network on held-out known-field pairs: end-point error %.3f voxels, zero field %.3f "
             "(ratio %.3f)", error, zero, ratio)
    if ratio > WEAK_REGISTRATION_RATIO:
        warnings.warn(f"the registration network barely registers: its end-point error on held-out known-field "
                      f"pairs is {ratio:.2f} of the zero field's (> {WEAK_REGISTRATION_RATIO}), so L_morph will "
                      f"give the DVF decoder little signal; retrain it with another seed or more steps "
                      f"(diffdef-train all --restart --set seed=N, or --set reg.steps=N)", stacklevel=2)
    return ratio
