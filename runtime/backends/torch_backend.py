"""The PyTorch reference backend. Imports ``diffdef`` (and so torch) lazily: only when chosen."""

from __future__ import annotations

from pathlib import Path


def _require_torch():
    try:
        import diffdef.generate as generate  # noqa: F401  (imports torch)
    except ImportError as err:
        raise RuntimeError(f"--backend torch needs PyTorch and the training package (pip install 'diffdef[train]'): {err}") from err
    return generate


def open_checkpoint(checkpoint: str | Path, device: str = "cpu"):
    """A trained checkpoint folder (``diffdef-train`` output) as an ``OpenedModel``."""
    from diffdef_runtime.backends import OpenedModel

    generate = _require_torch()
    meta = generate.read_model_json(checkpoint)
    info = generate.model_info(checkpoint)
    return OpenedModel(engines=generate.TorchEngines.from_checkpoint(checkpoint, device), info=info,
                       template=generate.template_maps(meta["grid"]), affine=info.affine, source=str(checkpoint))


def torch_engines_for_bundle(bundle, device: str = "cpu"):
    """Torch engines from the checkpoint copy inside a bundle (same weights the ONNX files were made from)."""
    generate = _require_torch()
    return generate.TorchEngines.from_checkpoint(bundle.checkpoint_dir, device,
                                                 dvf_upsample_factor=int(bundle.manifest.get("dvf_upsample_factor", 1)))
