"""Learning-rate schedules of the training stages, stateless so a resumed run gets exactly the rates of an
uninterrupted one (torch's LR schedulers keep state in the optimizer's checkpoint; this one needs none)."""

from __future__ import annotations

import math


def decayed_lr(base: float, step: int, start: int, end: int, schedule: str, floor: float = 0.1) -> float:
    """Learning rate at ``step`` of a phase ``[start, end)``: constant, or cosine from ``base`` to
    ``floor * base`` (stateless, so a resumed run gets exactly the rate of an uninterrupted one)."""
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {schedule!r}")
    if schedule == "constant" or end <= start + 1:
        return base
    progress = min(max((step - start) / (end - start - 1), 0.0), 1.0)
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))
