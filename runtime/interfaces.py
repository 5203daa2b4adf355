"""The interface of each exported model, declared once: export writes it, the runtime binds to it.

Inputs and outputs are float32 (timesteps int64) whatever the precision inside the graph: an fp16 bundle
casts at its boundaries, so callers never change with ``--fp16``. ``batch`` (and the warp's ``channels``)
are dynamic axes; every other size is fixed by the grid and the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

FORMAT_VERSION = 1


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: name, numpy dtype name, shape (ints; strings are dynamic axis names)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def concrete(self, **axes: int) -> tuple[int, ...]:
        """Shape with dynamic axes filled in, e.g. ``concrete(batch=2)``."""
        try:
            return tuple(axes[s] if isinstance(s, str) else s for s in self.shape)
        except KeyError as err:
            raise ValueError(f"{self.name}: give a size for dynamic axis {err.args[0]!r}") from None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TensorSpec":
        return cls(data["name"], data["dtype"], tuple(data["shape"]))


@dataclass(frozen=True)
class ModelInterface:
    """An exported model: its file in the bundle, inputs and outputs in order."""

    name: str
    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """``torch.onnx.export``-style: tensor name -> {axis index: axis name}."""
        table = {}
        for spec in (*self.inputs, *self.outputs):
            axes = {i: s for i, s in enumerate(spec.shape) if isinstance(s, str)}
            if axes:
                table[spec.name] = axes
        return table

    def sample_inputs(self, rng: np.random.Generator, **axes: int) -> dict[str, np.ndarray]:
        """Random inputs of the right shapes and dtypes (timesteps in [0, 1000), conditions in [0, 1])."""
        out = {}
        for spec in self.inputs:
            shape = spec.concrete(**axes)
            if spec.dtype == "int64":
                out[spec.name] = rng.integers(0, 1000, size=shape, dtype=np.int64)
            elif spec.name in ("condition", "condition_mask"):
                out[spec.name] = (rng.random(shape) if spec.name == "condition" else np.ones(shape)).astype(spec.dtype)
            else:
                out[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        return out

    def check_inputs(self, arrays) -> dict[str, int]:
        """Check numpy inputs (in ``inputs`` order) against this interface; return the dynamic axis sizes,
        e.g. ``{"batch": 2}``. Raises ValueError (TypeError for a non-array) naming the model and the tensor."""
        if len(arrays) != len(self.inputs):
            raise ValueError(f"{self.name}: expected {len(self.inputs)} inputs {[s.name for s in self.inputs]}, "
                             f"got {len(arrays)}")
        axes: dict[str, int] = {}
        for spec, array in zip(self.inputs, arrays):
            where = f"{self.name} input {spec.name!r}"
            if not isinstance(array, np.ndarray):
                raise TypeError(f"{where}: expected a numpy array, got {type(array).__name__}")
            if array.dtype != np.dtype(spec.dtype):
                raise ValueError(f"{where}: dtype {array.dtype}, expected {spec.dtype}")
            if array.ndim != len(spec.shape):
                raise ValueError(f"{where}: shape {array.shape}, expected {len(spec.shape)} dimensions "
                                 f"{tuple(spec.shape)}")
            for dim, (want, got) in enumerate(zip(spec.shape, array.shape)):
                if isinstance(want, str):
                    if axes.setdefault(want, got) != got:
                        raise ValueError(f"{where}: axis {dim} ({want}) is {got}, but an earlier input has "
                                         f"{want}={axes[want]}")
                elif want != got:
                    raise ValueError(f"{where}: shape {array.shape}, expected {tuple(spec.shape)}")
        if any(v < 1 for v in axes.values()):
            raise ValueError(f"{self.name}: empty input (sizes {axes})")
        return axes

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "file": self.file, "inputs": [s.to_dict() for s in self.inputs],
                "outputs": [s.to_dict() for s in self.outputs]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelInterface":
        return cls(data["name"], data["file"], tuple(TensorSpec.from_dict(s) for s in data["inputs"]),
                   tuple(TensorSpec.from_dict(s) for s in data["outputs"]))


def unet_interface(latent_shape: tuple[int, int, int, int], num_conditions: int) -> ModelInterface:
    """One denoiser evaluation: (latents, timesteps, condition, condition_mask) -> model_output (eps or v)."""
    c, d, h, w = latent_shape
    return ModelInterface("unet", "unet.onnx", (
        TensorSpec("latents", "float32", ("batch", c, d, h, w)),
        TensorSpec("timesteps", "int64", ("batch",)),
        TensorSpec("condition", "float32", ("batch", num_conditions)),
        TensorSpec("condition_mask", "float32", ("batch", 1)),
    ), (TensorSpec("model_output", "float32", ("batch", c, d, h, w)),))


def dvf_decoder_interface(latent_shape: tuple[int, int, int, int], grid_shape: tuple[int, int, int]) -> ModelInterface:
    """Unscaled latents -> DVF in voxels (integration included for diffeomorphic models)."""
    return ModelInterface("dvf_decoder", "dvf_decoder.onnx", (
        TensorSpec("latents", "float32", ("batch", *latent_shape)),
    ), (TensorSpec("dvf", "float32", ("batch", 3, *grid_shape)),))


def warp_interface(grid_shape: tuple[int, int, int]) -> ModelInterface:
    """Images (any number of channels) + DVF -> warped images; trilinear, border padding; float32 always."""
    return ModelInterface("warp", "warp.onnx", (
        TensorSpec("image", "float32", ("batch", "channels", *grid_shape)),
        TensorSpec("dvf", "float32", ("batch", 3, *grid_shape)),
    ), (TensorSpec("warped", "float32", ("batch", "channels", *grid_shape)),))


def all_interfaces(latent_shape, num_conditions: int, grid_shape) -> dict[str, ModelInterface]:
    return {
        "unet": unet_interface(tuple(latent_shape), num_conditions),
        "dvf_decoder": dvf_decoder_interface(tuple(latent_shape), tuple(grid_shape)),
        "warp": warp_interface(tuple(grid_shape)),
    }
