"""An exported bundle: ONNX files, template maps, a checkpoint copy and ``manifest.json`` with checksums.

Layout::

    manifest.json              format version, grid, conditions, schedule, latent scale, precision,
                               interfaces, tool versions, verification results, sha256 of every file
    checksums.sha256           sha256 of every file above, manifest.json included (``sha256sum -c`` format)
    unet.onnx  dvf_decoder.onnx  warp.onnx
    warp_gather.onnx  dvf_decoder_gather.onnx (diffeomorphic)   twins without GridSample (TensorRT; CPU decoder)
    unet_conv2d.onnx (fp32 bundles)                             the UNet twin ONNX Runtime's CPU provider runs
    template_t1.nii.gz  template_ventricle_prob.nii.gz  template_labels.nii.gz
    checkpoint/                denoiser / dvf_decoder weights + model.json (the torch reference)
    engines/                   TensorRT engines built on the target machine (cache, not checksummed)

Opening a bundle verifies every checksum, manifest.json's included: a missing, truncated or edited file (an
edited ``latent_scale`` or condition range too) refuses to run, naming the file. Large files that are unchanged
since they were last hashed (same size, mtime, ctime, inode) are not re-read (``diffdef_runtime.hashing``);
``verify="full"`` re-hashes everything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from diffdef_runtime.conditions import ConditionSpec
from diffdef_runtime.hashing import DigestCache, sha256_file  # noqa: F401  (sha256_file: used by the exporter)
from diffdef_runtime.interfaces import FORMAT_VERSION, ModelInterface
from diffdef_runtime.pipeline import ModelInfo, TemplateMaps, recorded_default_steps
from diffdef_runtime.schedulers import ScheduleConfig

CHECKSUMS = "checksums.sha256"
TEMPLATE_FILES = {"t1": "template_t1.nii.gz", "ventricle_prob": "template_ventricle_prob.nii.gz",
                  "labels": "template_labels.nii.gz"}


class BundleError(ValueError):
    """A bundle is missing, incomplete, corrupted or of another format version."""


def format_checksums(table: dict[str, str]) -> str:
    """``<sha256>  <relative path>`` lines, sorted (what ``sha256sum`` writes and ``sha256sum -c`` reads)."""
    return "".join(f"{digest}  {rel}\n" for rel, digest in sorted(table.items()))


def parse_checksums(path: Path) -> dict[str, str]:
    """relative path -> sha256 from a :data:`CHECKSUMS` file; BundleError naming the file when malformed."""
    table = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        digest, sep, rel = line.partition("  ")
        if not sep or len(digest) != 64 or not rel:
            raise BundleError(f"{path}, line {number}: not '<sha256>  <file>': {line[:80]!r}; re-export the bundle")
        table[rel] = digest
    return table


def _checksums(root: Path) -> dict[str, str]:
    listed = root / CHECKSUMS
    if not listed.is_file():
        raise BundleError(f"bundle file missing: {listed} (it covers manifest.json; bundles exported before it "
                          "existed must be re-exported with diffdef-export)")
    table = parse_checksums(listed)
    if "manifest.json" not in table:
        raise BundleError(f"{listed} does not cover manifest.json; re-export the bundle")
    return table


def _check_digest(path: Path, expected: str, cache: DigestCache | None = None) -> None:
    if not path.is_file():
        raise BundleError(f"bundle file missing: {path}")
    actual = cache.digest(path) if cache is not None else sha256_file(path)
    if actual != expected:
        raise BundleError(f"checksum mismatch for {path}: {CHECKSUMS} says {expected[:12]}..., file is "
                          f"{actual[:12]}...; the bundle was modified or corrupted: re-export it")


@dataclass
class Bundle:
    root: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, root: str | Path, verify: bool | str = True) -> "Bundle":
        """Read ``manifest.json`` and check every file's sha256 (``verify``: True, "full" to bypass the cache of
        large unchanged files, or False)."""
        root = Path(root)
        path = root / "manifest.json"
        if not root.is_dir():
            raise BundleError(f"bundle folder not found: {root}")
        if not path.is_file():
            raise BundleError(f"{root} is not a DiffDef bundle: no manifest.json (make one with `diffdef-export`)")
        if verify:  # before reading it: an edited manifest is named as such, whatever the edit broke
            _check_digest(path, _checksums(root)["manifest.json"])
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise BundleError(f"{path} is not valid JSON: {err}") from err
        if manifest.get("format_version") != FORMAT_VERSION:
            raise BundleError(f"{path}: bundle format version {manifest.get('format_version')!r}; this runtime "
                              f"reads version {FORMAT_VERSION}. Re-export with this version of diffdef-export.")
        bundle = cls(root, manifest)
        if verify:
            bundle.verify(full=verify == "full")
        return bundle

    def verify(self, full: bool = False) -> None:
        """Raise BundleError naming the first missing, truncated or changed file, manifest.json included.

        ``checksums.sha256`` covers manifest.json and every file the manifest lists (their digests must agree);
        it is not itself covered: it catches edits and corruption, not someone rewriting both on purpose.
        """
        table = _checksums(self.root)
        listed = self.root / CHECKSUMS
        files = self.manifest.get("files")
        if not files:
            raise BundleError(f"{self.root}/manifest.json lists no files")
        cache = DigestCache(full=full)
        try:
            for rel, expected in sorted(table.items(), key=lambda item: (item[0] != "manifest.json", item[0])):
                _check_digest(self.root / rel, expected, cache)
        finally:
            cache.save()
        for rel, expected in sorted(files.items()):
            if table.get(rel) != expected:
                raise BundleError(f"{listed} and manifest.json disagree about {rel}; the bundle was modified: "
                                  "re-export it")

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
