"""The ``ldm`` stage's phase plan: which losses a step trains, and when the basis pre-fit runs."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class PhasePlan:
    """Steps ``0 .. unet_steps - 1`` train L_diff; the last ``warmup_steps`` of them also fit the DVF decoder to the
    exact targets; steps ``unet_steps .. total - 1`` are the joint phase (L_diff + L_morph). With ``prefit`` the
    field basis is fitted once, alone, at the end of the last step that trains L_diff only (:attr:`prefit_step`),
    before anything else trains the decoder."""

    unet_steps: int
    joint_steps: int
    warmup_steps: int
    prefit: bool  # ldm.basis_prefit_steps > 0

    def __post_init__(self) -> None:
        if min(self.unet_steps, self.joint_steps, self.warmup_steps) < 0:
            raise ValueError(f"ldm step counts must be >= 0, got {self}")
        if self.warmup_steps > self.unet_steps:
            raise ValueError(f"ldm.decoder_warmup_steps ({self.warmup_steps}) must be in 0..ldm.unet_steps "
                             f"({self.unet_steps})")
        if self.prefit and self.warmup_steps >= self.unet_steps:
            raise ValueError(f"ldm.basis_prefit_steps > 0 runs after the steps that train L_diff only: it needs "
                             f"ldm.unet_steps ({self.unet_steps}) > ldm.decoder_warmup_steps ({self.warmup_steps})")

    @classmethod
    def from_config(cls, stage: dict[str, Any]) -> PhasePlan:
        return cls(int(stage["unet_steps"]), int(stage["joint_steps"]), int(stage["decoder_warmup_steps"]),
                   int(stage["basis_prefit_steps"]) > 0)

    @property
    def total(self) -> int:
        return self.unet_steps + self.joint_steps

    @property
    def warmup_start(self) -> int:
        return self.unet_steps - self.warmup_steps

    @property
    def prefit_step(self) -> int | None:
        """The step at whose end the pre-fit runs (its result is in that step's checkpoint), or None."""
        return self.warmup_start - 1 if self.prefit else None

    def is_warmup(self, step: int) -> bool:
        return self.warmup_start <= step < self.unet_steps

    def is_joint(self, step: int) -> bool:
        return step >= self.unet_steps

    def prefit_after(self, step: int) -> bool:
        return step == self.prefit_step
