"""``warp_gather.onnx``: trilinear warp without GridSample (TensorRT < 11.2) equals ``warp_image``/``warp.onnx``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffdef.geometry import warp_image
from diffdef_export import verify
from diffdef_export.warp_gather import gather_warp
from diffdef_runtime.bundle import Bundle


def test_gather_warp_equals_warp_image_including_border_and_asymmetric_shifts():
    g = torch.Generator().manual_seed(1)
    image = torch.randn(2, 2, 7, 9, 6, generator=g)
    dvf = 3 * torch.randn(2, 3, 7, 9, 6, generator=g)
    dvf[0, 1] += 20.0  # far outside along H: border padding
    dvf[1, 2] -= 0.5  # half-voxel shift along W only
    torch.testing.assert_close(gather_warp(image, dvf), warp_image(image, dvf), rtol=0, atol=1e-5)


def test_gather_warp_identity_and_integer_shift():
    image = torch.arange(4 * 5 * 6, dtype=torch.float32).reshape(1, 1, 4, 5, 6)
    zero = torch.zeros(1, 3, 4, 5, 6)
    assert torch.equal(gather_warp(image, zero), image)
    shift = zero.clone()
    shift[:, 0] = 1.0  # warped(d, h, w) = image(d + 1, h, w), the last slice clamped
    out = gather_warp(image, shift)
    assert torch.equal(out[:, :, :-1], image[:, :, 1:]) and torch.equal(out[:, :, -1], image[:, :, -1])


@pytest.mark.parametrize("batch,channels", [(1, 1), (3, 3)])
def test_warp_gather_onnx_matches_warp_onnx(tiny_bundle, batch, channels):
    bundle = Bundle.open(tiny_bundle)
    interface = bundle.interface("warp_gather")
    assert interface.inputs == bundle.interface("warp").inputs
    inputs = interface.sample_inputs(np.random.default_rng(batch), batch=batch, channels=channels)
    inputs["dvf"] *= 3.0
    names = [s.name for s in interface.outputs]
    got = verify.session(bundle.root / "warp_gather.onnx").run(names, inputs)[0]
    want = verify.session(bundle.model_path("warp")).run(names, inputs)[0]
    _, max_rel = verify.relative_error(got, want)
    assert max_rel <= 1e-5
    assert "GridSample" not in bundle.manifest["operators"]["warp_gather.onnx"]
    assert bundle.manifest["verification"]["warp_gather_vs_warp"]["max_rel"] <= 1e-5
