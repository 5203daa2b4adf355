"""An exported bundle: ONNX files, template maps, a checkpoint copy and ``manifest.json`` with checksums.

Layout::

    manifest.json              format version, grid, conditions, schedule, latent scale, precision,
                               interfaces, tool versions, verification results, sha256 of every file
    unet.onnx  dvf_decoder.onnx  warp.onnx
    template_t1.nii.gz  template_ventricle_prob.nii.gz  template_labels.nii.gz
    checkpoint/                denoiser / dvf_decoder weights + model.json (the torch reference)
    engines/                   TensorRT engines built on the target machine (cache, not checksummed)

Opening a bundle verifies every checksum; a missing or changed file refuses to run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from diffdef_runtime.conditions import ConditionSpec
from diffdef_runtime.interfaces import FORMAT_VERSION, ModelInterface
from diffdef_runtime.pipeline import ModelInfo, TemplateMaps, recorded_default_steps
from diffdef_runtime.schedulers import ScheduleConfig

TEMPLATE_FILES = {"t1": "template_t1.nii.gz", "ventricle_prob": "template_ventricle_prob.nii.gz",
                  "labels": "template_labels.nii.gz"}


class BundleError(ValueError):
    """A bundle is missing, incomplete, corrupted or of another format version."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Bundle:
    root: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, root: str | Path, verify: bool = True) -> "Bundle":
        """Read ``manifest.json`` and (by default) check every file's sha256."""
        root = Path(root)
        path = root / "manifest.json"
        if not root.is_dir():
            raise BundleError(f"bundle folder not found: {root}")
        if not path.is_file():
            raise BundleError(f"{root} is not a DiffDef bundle: no manifest.json (make one with `diffdef-export`)")
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise BundleError(f"{path} is not valid JSON: {err}") from err
        if manifest.get("format_version") != FORMAT_VERSION:
            raise BundleError(f"{path}: bundle format version {manifest.get('format_version')!r}; this runtime "
                              f"reads version {FORMAT_VERSION}. Re-export with this version of diffdef-export.")
        bundle = cls(root, manifest)
        if verify:
            bundle.verify()
        return bundle

    def verify(self) -> None:
        """Raise BundleError naming the first missing file or checksum mismatch."""
        files = self.manifest.get("files")
        if not files:
            raise BundleError(f"{self.root}/manifest.json lists no files")
        for rel, expected in sorted(files.items()):
            path = self.root / rel
            if not path.is_file():
                raise BundleError(f"bundle file missing: {path}")
            actual = sha256_file(path)
            if actual != expected:
                raise BundleError(f"checksum mismatch for {path}: manifest says {expected[:12]}..., file is "
                                  f"{actual[:12]}...; the bundle was modified or corrupted: re-export it")

    # ----------------------------------------------------------------------------------------- contents
    def interface(self, name: str) -> ModelInterface:
        try:
            return ModelInterface.from_dict(self.manifest["interfaces"][name])
        except KeyError:
            raise BundleError(f"{self.root}: manifest has no interface {name!r}") from None

    def model_path(self, name: str) -> Path:
        return self.root / self.interface(name).file

    @property
    def precision(self) -> str:
        return self.manifest["precision"]

    @property
    def affine(self) -> np.ndarray:
        return np.asarray(self.manifest["grid"]["affine"], dtype=np.float64)

    @property
    def checkpoint_dir(self) -> Path:
        return self.root / "checkpoint"

    def model_info(self) -> ModelInfo:
        m = self.manifest
        return ModelInfo(conditions=ConditionSpec.from_dict(m["conditions"]),
                         schedule=ScheduleConfig.from_dict(m["schedule"]),
                         latent_shape=tuple(m["latent_shape"]), latent_scale=float(m["latent_scale"]),
                         affine=self.affine, voxel_volume_ml=float(m["grid"]["spacing_mm"]) ** 3 / 1000.0,
                         default_steps=recorded_default_steps(m))

    def template_maps(self) -> TemplateMaps:
        def load(key):
            return np.asarray(nib.load(str(self.root / TEMPLATE_FILES[key])).dataobj, dtype=np.float32)

        return TemplateMaps(t1=load("t1"), ventricle_prob=load("ventricle_prob"))

    def template_labels(self) -> np.ndarray:
        return np.asarray(nib.load(str(self.root / TEMPLATE_FILES["labels"])).dataobj, dtype=np.uint8)
