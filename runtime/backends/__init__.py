"""Backends that implement ``diffdef_runtime.pipeline.Engines``.

``ort`` and ``tensorrt`` run an exported bundle (no torch); ``torch`` runs the trained PyTorch modules (the
reference) and imports ``diffdef`` only when chosen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffdef_runtime.pipeline import Engines, ModelInfo, TemplateMaps

BACKENDS = ("ort", "tensorrt", "torch")


@dataclass
class OpenedModel:
    """Everything ``pipeline.generate`` needs, plus the template affine for writing outputs."""

    engines: Engines
    info: ModelInfo
    template: TemplateMaps
    affine: np.ndarray
    source: str


def open_model(backend: str, bundle: str | Path | None = None, checkpoint: str | Path | None = None,
               device: str = "cpu", verify: bool | str = True) -> OpenedModel:
    """Open a bundle (``ort``, ``tensorrt``, ``torch``) or a training checkpoint (``torch`` only).

    ``verify``: checksums of the bundle (``Bundle.open``): True, or "full" to re-hash large unchanged files."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if checkpoint is not None:
        if backend != "torch":
            raise ValueError("--checkpoint runs the PyTorch modules: use --backend torch, or export a bundle "
                             "with `diffdef-export` for the ort/tensorrt backends")
        from diffdef_runtime.backends.torch_backend import open_checkpoint

        return open_checkpoint(checkpoint, device)
    if bundle is None:
        raise ValueError("no bundle or checkpoint given")
    from diffdef_runtime.bundle import Bundle

    opened = Bundle.open(bundle, verify=verify)  # verifies checksums
    if backend == "ort":
        from diffdef_runtime.backends.ort import OrtEngines

        engines = OrtEngines(opened, device=device)
    elif backend == "tensorrt":
        from diffdef_runtime.backends.tensorrt import TensorRTEngines

        engines = TensorRTEngines(opened, device=device)
    else:
        from diffdef_runtime.backends.torch_backend import torch_engines_for_bundle

        engines = torch_engines_for_bundle(opened, device)
    return OpenedModel(engines=engines, info=opened.model_info(), template=opened.template_maps(),
                       affine=opened.affine, source=str(opened.root))
