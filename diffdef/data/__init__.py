"""Datasets: real template-aligned images listed in a manifest CSV (see :mod:`diffdef.data.manifest`)."""

from diffdef.data.manifest import (
    AFFINE_TOLERANCE_MM,
    NORMALISE_CHOICES,
    ManifestDataset,
    ManifestError,
    ManifestTable,
    ManifestWarning,
    load_grid_image,
    normalise_intensities,
    read_manifest,
    write_manifest,
)

__all__ = [
    "AFFINE_TOLERANCE_MM",
    "NORMALISE_CHOICES",
    "ManifestDataset",
    "ManifestError",
    "ManifestTable",
    "ManifestWarning",
    "load_grid_image",
    "normalise_intensities",
    "read_manifest",
    "write_manifest",
]
