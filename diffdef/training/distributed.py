"""Data-parallel plumbing: the same command runs alone or under ``torchrun`` (gloo on CPU, NCCL on GPU)."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: rank 0 of 1 when not launched by torchrun."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available")
    return device


def init_distributed(device_name: str) -> DistContext:
    """Join the process group torchrun describes (env ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``), if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if world_size <= 1:
        return DistContext(0, 1, device)
    rank = int(os.environ["RANK"])
    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    log.info("rank %d of %d on %s", rank, world_size, device)
    return DistContext(rank, world_size, device)


def wrap(module: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """DDP-wrap a trainable module when distributed (gradients are averaged across ranks)."""
    if not ctx.distributed:
        return module
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids)


def unwrap_compiled(module: torch.nn.Module) -> torch.nn.Module:
    """The module ``torch.compile`` wrapped (its ``OptimizedModule`` keeps it as ``_orig_mod``), else ``module``."""
    while isinstance(module, torch._dynamo.eval_frame.OptimizedModule):
        module = module._orig_mod
    return module


def no_sync(modules: list[torch.nn.Module], skip: bool):
    """Skip DDP's gradient all-reduce for a micro-batch that is not the last of an accumulation.

    A compiled DDP model (``torch.compile(DistributedDataParallel(m))``) is an ``OptimizedModule``, not a DDP
    instance: it is unwrapped first, since the flag ``no_sync`` clears lives on the DDP module that the compiled
    graph calls (otherwise every micro-batch would all-reduce).
    """
    stack = contextlib.ExitStack()
    if skip:
        for module in modules:
            module = unwrap_compiled(module)
            if isinstance(module, DistributedDataParallel):
                stack.enter_context(module.no_sync())
    return stack


def broadcast_parameters(module: torch.nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's parameters of ``module`` to every rank (after a step taken outside DDP)."""
    if ctx.distributed:
        with torch.no_grad():
            for parameter in module.parameters():
                dist.broadcast(parameter.data, src=0)


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def shutdown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()
