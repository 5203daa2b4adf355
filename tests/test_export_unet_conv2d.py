"""``unet_conv2d.onnx``: the UNet with 3-D convolutions as 2-D convolutions over depth slices and nearest upsampling
as copies equals the UNet, in PyTorch and exported; ONNX Runtime's CPU provider alone loads it."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from diffdef_export import verify
from diffdef_export.unet_conv2d import DepthSlicedConv3d, NearestUpsampleByCopies, is_depth_sliceable, unet_for_cpu
from diffdef_runtime.backends.ort import session_file
from diffdef_runtime.bundle import Bundle


@pytest.mark.parametrize("kernel,padding,bias", [(3, 1, True), (3, 0, False), ((5, 3, 1), (2, 1, 0), True),
                                                 ((3, 1, 3), (0, 0, 1), True)])
def test_depth_sliced_conv_equals_conv3d(kernel, padding, bias):
    torch.manual_seed(0)
    conv = nn.Conv3d(5, 7, kernel, padding=padding, bias=bias)
    x = torch.randn(2, 5, 6, 9, 4)  # non-cubic, batch 2: a mixed-up axis or batch order would show
    with torch.no_grad():
        torch.testing.assert_close(DepthSlicedConv3d(conv)(x), conv(x), rtol=0, atol=2e-5)


def test_depth_sliced_conv_sees_each_kernel_slice_at_its_own_depth():
    """A kernel whose only nonzero tap is the first depth slice (k=0) reads the slice before: out[d] = x[d - 1],
    zero at d = 0. Catches a reversed or unshifted depth sum, which a symmetric random kernel could hide less."""
    conv = nn.Conv3d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 1, 1] = 1.0
        x = torch.arange(4 * 3 * 3, dtype=torch.float32).reshape(1, 1, 4, 3, 3)
        out = DepthSlicedConv3d(conv)(x)
    assert torch.equal(out[:, :, 1:], x[:, :, :-1]) and torch.equal(out[:, :, 0], torch.zeros_like(out[:, :, 0]))


def test_only_what_it_computes_is_replaced():
    assert not is_depth_sliceable(nn.Conv3d(2, 2, 3, stride=2, padding=1))  # the UNet's downsampling
    assert not is_depth_sliceable(nn.Conv3d(2, 2, 1))  # 1x1x1: nothing to slice
    assert not is_depth_sliceable(nn.Conv3d(2, 2, 3, padding=1, groups=2))
    assert not is_depth_sliceable(nn.Conv3d(2, 2, 3, padding=1, padding_mode="replicate"))
    with pytest.raises(ValueError, match="DepthSlicedConv3d"):
        DepthSlicedConv3d(nn.Conv3d(2, 2, 3, dilation=2))
    model = nn.Sequential(nn.Conv3d(2, 2, 3, padding=1), nn.Upsample(scale_factor=2, mode="nearest"),
                          nn.Upsample(scale_factor=2, mode="trilinear"), nn.Conv3d(2, 2, 3, stride=2))
    cpu = unet_for_cpu(model)
    assert [type(m) for m in cpu] == [DepthSlicedConv3d, NearestUpsampleByCopies, nn.Upsample, nn.Conv3d]
    assert type(model[0]) is nn.Conv3d  # the original is untouched
    x = torch.randn(1, 2, 4, 6, 5)
    with torch.no_grad():
        torch.testing.assert_close(cpu(x), model(x), rtol=0, atol=2e-5)


def test_nearest_copies_equal_nearest_upsampling():
    x = torch.randn(2, 3, 3, 4, 5)
    assert torch.equal(NearestUpsampleByCopies(2)(x), nn.Upsample(scale_factor=2, mode="nearest")(x))
    assert torch.equal(NearestUpsampleByCopies(3)(x), nn.Upsample(scale_factor=3.0, mode="nearest")(x))
    planar = torch.randn(1, 2, 3, 5)  # 2-D as well: the axes follow the input's rank
    assert torch.equal(NearestUpsampleByCopies(2)(planar), nn.Upsample(scale_factor=2, mode="nearest")(planar))


def test_the_denoiser_for_cpu_equals_the_denoiser(tiny_checkpoint):
    from diffdef_export.onnx_export import interfaces_for, load_checkpoint, resolve_output_grid

    checkpoint = load_checkpoint(tiny_checkpoint)
    denoiser = checkpoint.denoiser.eval()
    cpu = unet_for_cpu(denoiser)
    assert not any(is_depth_sliceable(m) for m in cpu.modules())
    assert not any(isinstance(m, nn.Upsample) and m.mode == "nearest" for m in cpu.modules())
    assert sum(isinstance(m, DepthSlicedConv3d) for m in cpu.modules()) >= 4
    interface = interfaces_for(checkpoint, resolve_output_grid(checkpoint.training_grid))["unet"]
    inputs = [torch.from_numpy(a) for a in interface.sample_inputs(np.random.default_rng(3), batch=2).values()]
    with torch.no_grad():
        want = denoiser(*inputs)
        torch.testing.assert_close(cpu(*inputs), want, rtol=0, atol=1e-5 * float(want.abs().max()))


def test_unet_conv2d_onnx_matches_unet_onnx_and_has_no_3d_conv(tiny_bundle):
    bundle = Bundle.open(tiny_bundle)
    interface = bundle.interface("unet_conv2d")
    assert interface.inputs == bundle.interface("unet").inputs and interface.outputs == bundle.interface("unet").outputs
    graph = onnx.load(str(bundle.root / interface.file)).graph
    assert "Resize" not in {n.op_type for n in graph.node}
    inits = {i.name: i for i in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    kernels = [list(inits[n.input[1]].dims[2:]) for n in convs]  # KeyError: a weight that is not a constant
    planar = sum(len(k) == 2 for k in kernels)
    assert planar >= 4
    for node, kernel in zip(convs, kernels):  # left as 3-D: only 1x1x1 and the strided downsampling
        assert len(kernel) == 2 or kernel[0] == 1 or _strides(node)[0] > 1, (node.name, kernel)
    inputs = interface.sample_inputs(np.random.default_rng(0), batch=3)
    names = [s.name for s in interface.outputs]
    got = verify.session(bundle.root / interface.file).run(names, inputs)[0]
    want = verify.session(bundle.model_path("unet")).run(names, inputs)[0]
    _, max_rel = verify.relative_error(got, want)
    assert max_rel <= 1e-5


def _strides(node) -> list[int]:
    return next((list(a.ints) for a in node.attribute if a.name == "strides"), [1, 1, 1])


def test_only_the_cpu_provider_alone_loads_the_conv2d_twin(tiny_bundle):
    bundle = Bundle.open(tiny_bundle)
    assert session_file(bundle, "unet", ["CPUExecutionProvider"]).name == "unet_conv2d.onnx"
    assert session_file(bundle, "unet", ["CUDAExecutionProvider", "CPUExecutionProvider"]).name == "unet.onnx"
    trt = [("TensorrtExecutionProvider", {}), "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert session_file(bundle, "unet", trt).name == "unet.onnx"


def test_fp16_bundles_and_bundles_without_the_twin_run_unet_onnx_on_the_cpu(tiny_bundle, tiny_bundle_fp16):
    fp16 = Bundle.open(tiny_bundle_fp16)
    assert "unet_conv2d" not in fp16.manifest["interfaces"] and not (fp16.root / "unet_conv2d.onnx").exists()
    assert session_file(fp16, "unet", ["CPUExecutionProvider"]).name == "unet.onnx"
    older = Bundle.open(tiny_bundle)  # a bundle exported before the twin existed: its manifest lacks it
    older.manifest = copy.deepcopy(older.manifest)
    del older.manifest["interfaces"]["unet_conv2d"]
    assert session_file(older, "unet", ["CPUExecutionProvider"]).name == "unet.onnx"
