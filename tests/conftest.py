"""Shared, session-scoped fixtures: an untrained tiny checkpoint (training layout) and its exported bundles.

Heavy imports (torch, monai, onnx) happen inside the fixtures, so test files that do not use them (e.g. the
torch-free runtime tests) never pay for them.

    tiny_checkpoint    folder as written by ``diffdef-train`` (denoiser/dvf_decoder .safetensors + .json,
                       model.json): tiny presets, conditions age + sex, 4mm grid (40x56x40, latent 3x5x7x5),
                       random weights with a non-zero DVF head (DVFs of about 1 voxel)
    tiny_bundle        ``export_bundle(tiny_checkpoint)``, fp32
    tiny_bundle_fp16   ``export_bundle(tiny_checkpoint, fp16=True)``
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # torch_blocker and other test helpers


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from diffdef_export.testing import make_untrained_checkpoint

    return make_untrained_checkpoint(tmp_path_factory.mktemp("tiny_checkpoint") / "ckpt", grid="4mm", seed=0)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_checkpoint, tmp_path_factory) -> Path:
    from diffdef_export.bundle_writer import export_bundle

    return export_bundle(tiny_checkpoint, tmp_path_factory.mktemp("tiny_bundle") / "bundle")


@pytest.fixture(scope="session")
def tiny_bundle_fp16(tiny_checkpoint, tmp_path_factory) -> Path:
    from diffdef_export.bundle_writer import export_bundle

    return export_bundle(tiny_checkpoint, tmp_path_factory.mktemp("tiny_bundle_fp16") / "bundle", fp16=True)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small 4 mm tensors: one thread is as fast, and far faster when other jobs share the CPU."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

