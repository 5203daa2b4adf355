"""The DVF decoder's exact targets: a bank of every training subject's template -> subject field, and its
Gaussian-weighted neighbourhood means (the first-order minimiser of L_morph at a condition)."""

from __future__ import annotations

import torch

from diffdef.training.classical_fields import FIELD_SOURCES, demons_fields, label_fields
from diffdef.training.data import TrainingData, neighbour_weights

EXACT_TARGETS_MAX_GB = 8.0


def check_bank_size(images: torch.Tensor) -> None:
    """Refuse a field bank (one (3, D, H, W) float32 field per image of ``images`` (M, 1, D, H, W)) above
    ``EXACT_TARGETS_MAX_GB``: every DDP process holds it."""
    gb = images.shape[0] * 3 * images[0].numel() * 4 / 2**30
    if gb > EXACT_TARGETS_MAX_GB:
        raise ValueError(f"the field bank of the basis pre-fit and the decoder warm-up would hold {gb:.1f} GB for "
                         f"{images.shape[0]} images (limit {EXACT_TARGETS_MAX_GB:g} GB): train on fewer subjects or a "
                         "coarser grid, or set ldm.basis_prefit_steps=0 and ldm.decoder_warmup_steps=0")


def identity_bias(reg: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    """``reg(image, image)``: the registration network's field for an identical pair, (N, 3, D, H, W) voxels,
    with the graph (L_morph differentiates through it); ideally zero.

    Why it is subtracted (``ldm.reg_bias_correction``): the ``default`` network's field for the template against
    itself is 0.18 voxel RMS inside the brain, and that offset, not sampling noise, made the neighbourhood-mean
    target miss at young ages (docs/METHOD.md gives the figures).
    """
    return reg(image, image)


@torch.no_grad()
def registration_fields(reg: torch.nn.Module, template: torch.Tensor, images: torch.Tensor, device: torch.device,
                        chunk: int = 4, bias_correction: bool = False) -> torch.Tensor:
    """The frozen registration network's template -> subject field of every training image (less
    ``reg(template, template)`` with ``bias_correction``, :func:`identity_bias`): (M, 3, D, H, W) float32 voxels on
    the CPU (1.0 GB for 120 subjects on the 2 mm grid, held by every DDP process)."""
    check_bank_size(images)
    bias = identity_bias(reg, template).float() if bias_correction else 0.0
    out = []
    for k in range(0, len(images), chunk):
        moving = images[k:k + chunk].to(device)
        fields = reg(template.expand(len(moving), -1, -1, -1, -1), moving).float() - bias
        out.append(fields.cpu())
    return torch.cat(out)


def check_field_source(source: str, data: TrainingData) -> None:
    """``ldm.field_source`` must be known, and ``labels`` needs the training subjects' label maps."""
    if source not in FIELD_SOURCES:
        raise ValueError(f"ldm.field_source must be one of {FIELD_SOURCES}, got {source!r}")
    if source == "labels" and data.labels is None:
        raise ValueError("ldm.field_source='labels' needs the training subjects' label maps: train on a manifest "
                         "with a labels column (diffdef-prepare writes one when given segmentations)")


class FieldBank:
    """Every training subject's template -> subject field from ``source`` (``ldm.field_source``: the frozen
    registration network, demons on the images, or demons on the label maps), built on first use so that a run
    resumed past the warm-up never builds it; and its neighbourhood means.

    Args:
        template: (1, 1, D, H, W) on ``device``; conditions: (M, K) normalised, on ``device``;
        sigma: the Gaussian width on the normalised conditions (``ldm.neighbour_sigma``).
    """

    def __init__(self, source: str, data: TrainingData, reg: torch.nn.Module, template: torch.Tensor,
                 conditions: torch.Tensor, sigma: float, device: torch.device, bias_correction: bool) -> None:
        check_field_source(source, data)
        self.source, self.data, self.reg, self.template = source, data, reg, template
        self.conditions, self.sigma, self.device, self.bias_correction = conditions, sigma, device, bias_correction
        self._fields: torch.Tensor | None = None

    @property
    def fields(self) -> torch.Tensor:
        """(M, 3, D, H, W) float32 voxels on the CPU."""
        if self._fields is None:
            from diffdef.template import load_template

            if self.source == "demons":
                self._fields = demons_fields(self.template, self.data.images)
            elif self.source == "labels":
                self._fields = label_fields(load_template(self.data.grid).labels, self.data.labels,
                                            self.data.label_scheme)
            else:
                self._fields = registration_fields(self.reg, self.template, self.data.images, self.device,
                                                   bias_correction=self.bias_correction)
        return self._fields

    def weights(self, condition: torch.Tensor) -> torch.Tensor:
        """The Gaussian neighbourhood weights (M,) of ``condition`` (K,) over the training subjects, on the CPU."""
        return neighbour_weights(self.conditions, condition, self.sigma).cpu()

    def target(self, condition: torch.Tensor) -> torch.Tensor:
        """The weighted mean field around ``condition`` (K,): (1, 3, D, H, W) voxels on the device."""
        return torch.einsum("m,mcdhw->cdhw", self.weights(condition), self.fields)[None].to(self.device)
