"""The MNI152 2009a (symmetric) template on a DiffDef grid, with derived tissue maps.

Source: the volumes that ship inside the ``nilearn`` wheel (T1, GM and WM probability maps, 197x233x189 at
1 mm, RAS); nothing is ever downloaded. Everything is derived at 1 mm, cropped to the paper grid
(160x224x160 at ``PAPER_CROP_START``) and, for the coarse grids, block-averaged (``factor**3`` voxels).

Derived maps (DESIGN.md, "Data"):
    * brain mask: ``T1 > 0`` with holes filled;
    * CSF: ``mask * (1 - GM - WM)`` clipped to [0, 1];
    * lateral ventricles: connected components of ``CSF > 0.5`` that lie deep inside the brain (at least
      ``_VENTRICLE_MIN_DEPTH_MM`` from the mask's outside, so the large external CSF component is excluded)
      with their centroid inside a central box; about 17.8 mL;
    * sulcal CSF: CSF outside the ventricle mask dilated by ``_SULCAL_EXCLUSION_MM`` (includes the third and
      fourth ventricles and the cisterns: everything that is not a lateral ventricle).

Label map (uint8): 0 background, 1 CSF, 2 GM, 3 WM, 4 lateral ventricles. Inside the brain mask each voxel
takes the most probable of CSF/GM/WM, then the ventricle mask overrides with 4.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from diffdef_runtime.grid import MNI152_SOURCE_AFFINE, MNI152_SOURCE_SHAPE, PAPER_CROP_START, GRIDS, Grid, get_grid

log = logging.getLogger(__name__)

LABEL_NAMES = {0: "background", 1: "csf", 2: "gm", 3: "wm", 4: "ventricles"}
BACKGROUND, CSF, GM, WM, VENTRICLES = 0, 1, 2, 3, 4

_VENTRICLE_MIN_DEPTH_MM = 5.0  # a lateral ventricle never comes this close to the outside of the brain
_VENTRICLE_BOX_MM = (25.0, 45.0, 35.0)  # centroid within +- this of the brain's bounding-box centre (x, y, z)
_VENTRICLE_MIN_COMPONENT_ML = 0.5
_VENTRICLE_EXPECTED_ML = (12.0, 25.0)
_SULCAL_EXCLUSION_MM = 2
_T1_ROBUST_PERCENTILE = 99.9

_FLOAT_FIELDS = ("t1", "gm", "wm", "csf", "ventricle_prob", "sulcal_csf")


@dataclass(frozen=True, eq=False)
class Template:
    """The template on one grid. All arrays are (D, H, W) numpy arrays in RAS voxel order of ``grid``.

    Attributes:
        grid: the grid.
        affine: 4x4 voxel -> RAS mm (equals ``grid.affine``).
        t1: float32 T1 intensity in [0, 1] (divided by the 99.9th percentile inside the brain, clipped).
        gm, wm, csf: float32 tissue probability maps in [0, 1] (block averages on coarse grids).
        brain_mask: bool (block average > 0.5 on coarse grids).
        ventricles: bool lateral-ventricle mask (block average of the 1 mm mask > 0.5 on coarse grids).
        ventricle_prob: float32 soft ventricle map = block average of the 1 mm ventricle mask (use it for
            smooth volumes: ``ventricle_prob.sum() * grid.voxel_volume_ml``).
        sulcal_csf: float32 CSF outside the (dilated) lateral ventricles, in [0, 1].
        labels: uint8 label map (0 background, 1 CSF, 2 GM, 3 WM, 4 lateral ventricles).
    """

    grid: Grid
    affine: np.ndarray
    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain_mask: np.ndarray
    ventricles: np.ndarray
    ventricle_prob: np.ndarray
    sulcal_csf: np.ndarray
    labels: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        """(D, H, W) voxels."""
        return self.grid.shape

    def volume_ml(self, name: str) -> float:
        """Soft volume of a map (sum of values x voxel volume), mL."""
        return float(np.asarray(getattr(self, name), dtype=np.float64).sum() * self.grid.voxel_volume_ml)

    def torch(self, name: str, device=None, dtype=None):
        """A map as a (1, 1, D, H, W) torch tensor: float32 (or ``dtype``) for every field except ``labels``,
        which stays uint8. ``name`` is an attribute (``t1``, ``gm``, ``ventricle_prob``, ``brain_mask``, ...).
        """
        import torch

        arr = getattr(self, name)
        if not isinstance(arr, np.ndarray) or arr.ndim != 3:
            raise ValueError(f"{name!r} is not a (D, H, W) map of the template")
        if name == "labels":
            tensor = torch.from_numpy(np.array(arr, dtype=np.uint8))  # a copy: the cached arrays are read-only
        else:
            tensor = torch.from_numpy(np.array(arr, dtype=np.float32))
            if dtype is not None:
                tensor = tensor.to(dtype)
        return tensor[None, None].to(device) if device is not None else tensor[None, None]


_SOURCE_FILES = (
    "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
)


def source_paths() -> tuple[str, str, str]:
    """Paths of nilearn's MNI152 T1, GM and WM files (``nilearn.datasets.MNI152_FILE_PATH`` etc.).

    Looked up inside the installed nilearn package first, because importing ``nilearn.datasets`` costs
    seconds (pandas, scikit-learn); falls back to the official constants if the files have moved.
    """
    import importlib.util
    import os

    spec = importlib.util.find_spec("nilearn")
    if spec is not None and spec.submodule_search_locations:
        data = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data")
        paths = tuple(os.path.join(data, f) for f in _SOURCE_FILES)
        if all(os.path.isfile(p) for p in paths):
            return paths  # type: ignore[return-value]
    from nilearn import datasets

    return datasets.MNI152_FILE_PATH, datasets.GM_MNI152_FILE_PATH, datasets.WM_MNI152_FILE_PATH


def _load_source() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The nilearn volumes (T1, GM, WM) as float32 in [0, 1] on the 197x233x189 source grid."""
    import nibabel as nib

    out = []
    for path in source_paths():
        img = nib.load(path)
        if img.shape != MNI152_SOURCE_SHAPE or not np.allclose(img.affine, MNI152_SOURCE_AFFINE):
            raise RuntimeError(f"{path}: unexpected grid {img.shape} / affine {img.affine.tolist()}")
        raw = np.asarray(img.dataobj)
        scale = 255.0 if raw.dtype == np.uint8 else max(float(raw.max()), 1e-6)
        out.append(np.clip(raw.astype(np.float32) / scale, 0.0, 1.0))
    return out[0], out[1], out[2]


def _crop(arr: np.ndarray) -> np.ndarray:
    """Source grid -> paper grid (160x224x160) at ``PAPER_CROP_START``."""
    shape = GRIDS["paper"].shape
    sl = tuple(slice(s, s + n) for s, n in zip(PAPER_CROP_START, shape))
    out = arr[sl]
    if out.shape != shape:
        raise RuntimeError(f"crop at {PAPER_CROP_START} gives {out.shape}, expected {shape}")
    return out


def _ventricle_mask(csf: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Lateral ventricles at 1 mm (bool), see the module docstring. Raises if the volume is implausible."""
    comps, _ = ndi.label(csf > 0.5)
    sizes = np.bincount(comps.ravel())
    sizes[0] = 0
    candidates = np.flatnonzero(sizes >= _VENTRICLE_MIN_COMPONENT_ML * 1000.0)
    depth = ndi.distance_transform_edt(mask)
    bbox = np.argwhere(mask)
    centre = (bbox.min(0) + bbox.max(0)) / 2.0
    keep = []
    for label in candidates:
        comp = comps == label
        com = np.asarray(ndi.center_of_mass(comp))
        if depth[comp].min() >= _VENTRICLE_MIN_DEPTH_MM and np.all(np.abs(com - centre) <= _VENTRICLE_BOX_MM):
            keep.append(label)
    vent = np.isin(comps, keep)
    volume = vent.sum() / 1000.0
    log.info("lateral ventricles: %d component(s), %.2f mL at 1 mm", len(keep), volume)
    lo, hi = _VENTRICLE_EXPECTED_ML
    if not lo <= volume <= hi:
        raise RuntimeError(f"ventricle mask of {volume:.1f} mL is outside the expected {lo}-{hi} mL")
    return vent


@functools.lru_cache(maxsize=1)
def _paper_maps() -> dict[str, np.ndarray]:
    """All maps on the paper grid (1 mm), float32 / bool."""
    t1, gm, wm = _load_source()
    mask = ndi.binary_fill_holes(t1 > 0)
    if not _crop(mask).sum() == mask.sum():
        raise RuntimeError(f"brain mask does not fit the paper crop at {PAPER_CROP_START}")
    csf = np.clip(mask * (1.0 - gm - wm), 0.0, 1.0).astype(np.float32)
    vent = _ventricle_mask(csf, mask)
    near_vent = ndi.binary_dilation(vent, iterations=_SULCAL_EXCLUSION_MM)
    sulcal = (csf * ~near_vent).astype(np.float32)
    robust_max = float(np.percentile(t1[mask], _T1_ROBUST_PERCENTILE))
    t1n = np.clip(t1 / robust_max, 0.0, 1.0).astype(np.float32)
    maps = dict(t1=t1n, gm=gm * mask, wm=wm * mask, csf=csf, ventricle_prob=vent.astype(np.float32),
                sulcal_csf=sulcal, brain_mask=mask.astype(np.float32))
    return {k: np.ascontiguousarray(_crop(v), dtype=np.float32) for k, v in maps.items()}


def block_average(arr: np.ndarray, factor: int) -> np.ndarray:
    """Mean over non-overlapping ``factor**3`` blocks: (D, H, W) -> (D/f, H/f, W/f), float32."""
    if factor == 1:
        return arr.astype(np.float32, copy=True)
    d, h, w = (s // factor for s in arr.shape)
    blocks = arr[: d * factor, : h * factor, : w * factor].reshape(d, factor, h, factor, w, factor)
    return blocks.mean(axis=(1, 3, 5), dtype=np.float64).astype(np.float32)


def _block_affine(factor: int) -> np.ndarray:
    """Affine of the block-averaged crop, derived from the source affine (a check on ``Grid.affine``)."""
    crop = MNI152_SOURCE_AFFINE.copy()
    crop[:3, 3] = MNI152_SOURCE_AFFINE[:3, :3] @ np.asarray(PAPER_CROP_START, float) + MNI152_SOURCE_AFFINE[:3, 3]
    block = np.diag([factor, factor, factor, 1.0])
    block[:3, 3] = 0.5 * (factor - 1)  # a block's centre, in paper voxels
    return crop @ block


def _labels(csf: np.ndarray, gm: np.ndarray, wm: np.ndarray, mask: np.ndarray, vent: np.ndarray) -> np.ndarray:
    tissue = np.argmax(np.stack([csf, gm, wm]), axis=0).astype(np.uint8) + 1  # 1 CSF, 2 GM, 3 WM
    labels = np.where(mask, tissue, BACKGROUND).astype(np.uint8)
    labels[vent] = VENTRICLES
    return labels


@functools.lru_cache(maxsize=4)
def _load_template(grid: Grid) -> Template:
    maps = {k: block_average(v, grid.factor) for k, v in _paper_maps().items()}
    if maps["t1"].shape != grid.shape:
        raise RuntimeError(f"template on {grid.name} has shape {maps['t1'].shape}, expected {grid.shape}")
    if not np.allclose(_block_affine(grid.factor), grid.affine):
        raise RuntimeError(f"block-average affine of {grid.name} differs from Grid.affine")
    mask = maps.pop("brain_mask") > 0.5
    vent = maps["ventricle_prob"] > 0.5
    labels = _labels(maps["csf"], maps["gm"], maps["wm"], mask, vent)
    for k in _FLOAT_FIELDS:
        maps[k].setflags(write=False)
    for arr in (mask, vent, labels):
        arr.setflags(write=False)
    template = Template(grid=grid, affine=grid.affine, brain_mask=mask, ventricles=vent, labels=labels, **maps)
    log.info("template on %s: %s voxels, ventricles %.2f mL (soft), GM %.0f mL, CSF %.0f mL",
             grid.name, grid.shape, template.volume_ml("ventricle_prob"), template.volume_ml("gm"),
             template.volume_ml("csf"))
    return template


def load_template(grid: str | Grid = "2mm") -> Template:
    """The template on ``grid`` (``"paper"``/``"1mm"``, ``"2mm"``, ``"4mm"`` or a :class:`Grid`).

    Computed once per process and grid (in-memory cache); the arrays are read-only, copy before editing.
    """
    return _load_template(get_grid(grid))
