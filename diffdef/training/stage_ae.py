"""Stage ``ae``: the image autoencoder (L1 + KL + least-squares patch-adversarial loss, DESIGN.md part 1).

The perceptual term of the paper is left out: its pretrained weights cannot be had offline.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.losses import PatchAdversarialLoss

from diffdef.models.autoencoder import AutoencoderConfig, build_autoencoder, build_discriminator
from diffdef.training.data import TrainingData, sample_indices
from diffdef.training.distributed import DistContext, no_sync, wrap
from diffdef.training.loop import StageRun


def kl_divergence(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) summed over the latent, averaged over the batch (Kingma & Welling 2014)."""
    kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2).clamp_min(1e-12)) - 1)
    return kl.flatten(1).sum(1).mean()


def random_patch(images: torch.Tensor, patch: list[int] | None, generator: torch.Generator) -> torch.Tensor:
    """A random crop (same place for the whole batch) of size ``patch`` (D, H, W), or the images unchanged.

    The autoencoder is fully convolutional, so training on patches and encoding whole images is sound and
    several times cheaper on a CPU (as MONAI's generative tutorials do).
    """
    if not patch:
        return images
    starts = []
    for size, full in zip(patch, images.shape[2:]):
        if size > full or size % 8:
            raise ValueError(f"ae.patch_size {patch} must be multiples of 8 no larger than the images {tuple(images.shape[2:])}")
        starts.append(int(torch.randint(0, full - size + 1, (1,), generator=generator)))
    (d, h, w), (sd, sh, sw) = patch, starts
    return images[:, :, sd:sd + d, sh:sh + h, sw:sw + w]


def build_ae_stage(cfg: dict[str, Any], data: TrainingData, ctx: DistContext) -> tuple[StageRun, torch.nn.Module]:
    """Returns the stage and the (unwrapped) autoencoder it trains."""
    stage = cfg["ae"]
    ae_cfg = AutoencoderConfig.from_dict(cfg["models"]["autoencoder"])
    ae = build_autoencoder(ae_cfg).to(ctx.device)
    disc = build_discriminator(ae_cfg).to(ctx.device)
    ae_ddp, disc_ddp = wrap(ae, ctx), wrap(disc, ctx)
    opt_g = torch.optim.Adam(ae.parameters(), lr=stage["lr"])
    opt_d = torch.optim.Adam(disc.parameters(), lr=stage["disc_lr"])
    adversarial = PatchAdversarialLoss(criterion="least_squares")
    accumulation = int(cfg["run"]["grad_accumulation"])
    batch = int(stage["batch_size"])

    def step_fn(step: int, generator: torch.Generator) -> dict[str, float]:
        use_adv = stage["adv_weight"] > 0 and step >= stage["adv_start"]
        opt_g.zero_grad(set_to_none=True)
        opt_d.zero_grad(set_to_none=True)
        totals = {"l1": 0.0, "kl": 0.0, "adv_g": 0.0, "adv_d": 0.0}
        for micro in range(accumulation):
            images = random_patch(data.images[sample_indices(len(data), batch, generator)], stage["patch_size"],
                                  generator).contiguous().to(ctx.device)
            last = micro == accumulation - 1
            with no_sync([ae_ddp], skip=not last):
                recon, mu, sigma = ae_ddp(images)
                l1 = (recon - images).abs().mean()
                kl = kl_divergence(mu, sigma)
                loss = l1 + stage["kl_weight"] * kl
                if use_adv:
                    # The generator's adversarial term must not train the discriminator: call the unwrapped
                    # discriminator with frozen weights (no DDP hooks fire for it).
                    disc.requires_grad_(False)
                    logits = disc(recon.contiguous())[-1]
                    disc.requires_grad_(True)
                    adv_g = adversarial(logits, target_is_real=True, for_discriminator=False)
                    loss = loss + stage["adv_weight"] * adv_g
                    totals["adv_g"] += float(adv_g.detach()) / accumulation
                (loss / accumulation).backward()
            totals["l1"] += float(l1.detach()) / accumulation
            totals["kl"] += float(kl.detach()) / accumulation
            if use_adv:
                with no_sync([disc_ddp], skip=not last):
                    fake = disc_ddp(recon.detach().contiguous())[-1]
                    real = disc_ddp(images.contiguous())[-1]
                    d_loss = 0.5 * (adversarial(fake, target_is_real=False, for_discriminator=True)
                                    + adversarial(real, target_is_real=True, for_discriminator=True))
                    (d_loss / accumulation).backward()
                totals["adv_d"] += float(d_loss.detach()) / accumulation
        opt_g.step()
        if use_adv:
            opt_d.step()
        if not use_adv:
            totals.pop("adv_g"), totals.pop("adv_d")
        return totals

    run = StageRun("ae", int(stage["steps"]), {"autoencoder": ae, "discriminator": disc},
                   {"autoencoder": opt_g, "discriminator": opt_d}, step_fn)
    return run, ae
