"""The one training loop every stage runs: resume, per-step seeding, progress, atomic checkpoints."""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from diffdef.training.distributed import DistContext, barrier
from diffdef.training.state import load_state, save_state, state_path

log = logging.getLogger(__name__)

StepFn = Callable[[int, torch.Generator], dict[str, float]]


@dataclass
class StageRun:
    """One stage's trainable parts.

    Attributes:
        name: stage name (``ae``, ``reg``, ``ldm``); names the state file.
        total_steps: optimiser steps in the stage.
        modules: unwrapped modules whose weights go into the training state.
        optimizers: their optimisers.
        step_fn: ``(step, generator) -> losses``; does one full optimiser step (all micro-batches).
    """

    name: str
    total_steps: int
    modules: dict[str, torch.nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    step_fn: StepFn


def step_seed(seed: int, stage: str, step: int, rank: int) -> int:
    """A 63-bit seed derived from (seed, stage, step, rank): the only source of randomness in a step."""
    digest = hashlib.sha256(f"{seed}/{stage}/{step}/{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def run_stage(run: StageRun, out_dir: Path, seed: int, config_hash: str, checkpoint_every: int,
              ctx: DistContext) -> int:
    """Run (or resume) a stage to ``total_steps``; returns the number of steps done in this call."""
    path = state_path(out_dir, run.name)
    start = 0
    if path.exists():
        start = load_state(path, config_hash, run.modules, run.optimizers).step
        if ctx.is_main:
            log.info("resuming stage %s at step %d of %d from %s", run.name, start, run.total_steps, path)
    bar = tqdm(total=run.total_steps, initial=start, desc=f"train {run.name}", disable=not ctx.is_main,
               dynamic_ncols=True)
    for step in range(start, run.total_steps):
        torch.manual_seed(step_seed(seed, run.name, step, ctx.rank))
        generator = torch.Generator().manual_seed(step_seed(seed, run.name + "/data", step, ctx.rank))
        losses = run.step_fn(step, generator)
        bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
        if bad:
            raise FloatingPointError(f"stage {run.name}, step {step}: non-finite loss {bad}; last good state is {path}")
        bar.set_postfix({k: f"{v:.4g}" for k, v in losses.items()}, refresh=False)
        bar.update(1)
        done = step + 1
        if ctx.is_main and (done % checkpoint_every == 0 or done == run.total_steps):
            save_state(path, done, config_hash, run.modules, run.optimizers)
        if done == run.total_steps:
            barrier(ctx)
    bar.close()
    return run.total_steps - start
