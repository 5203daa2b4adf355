"""DDP plumbing on the CPU: a gloo process group of world size 1 (no torchrun needed)."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from diffdef.training.distributed import no_sync, unwrap_compiled


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def gloo_group():
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("compiled", [False, True])
def test_no_sync_reaches_ddp_through_torch_compile(gloo_group, compiled):
    ddp = DistributedDataParallel(torch.nn.Linear(3, 2))
    model = torch.compile(ddp) if compiled else ddp  # compiling is lazy: nothing is traced here
    assert unwrap_compiled(model) is ddp
    assert ddp.require_backward_grad_sync
    with no_sync([model], skip=True):
        assert not ddp.require_backward_grad_sync  # the all-reduce of this micro-batch is skipped
    assert ddp.require_backward_grad_sync
    with no_sync([model], skip=False):  # the last micro-batch synchronises
        assert ddp.require_backward_grad_sync


def test_no_sync_ignores_plain_modules():
    module = torch.compile(torch.nn.Linear(2, 2))
    with no_sync([module], skip=True):
        pass
    assert unwrap_compiled(module) is module._orig_mod
