"""``--fp16``: fp16 weights inside, float32 I/O, fp32 islands, and a measured accuracy bound on the DVF."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from diffdef.generate import load_generation_modules
from diffdef_export import verify
from diffdef_export.fp16 import convert_to_fp16
from diffdef_export.modules import integrate_svf_traceable
from diffdef_export.onnx_export import export_module
from diffdef_runtime.bundle import Bundle
from diffdef_runtime.interfaces import ModelInterface, TensorSpec

FP16_BOUND = verify.TOLERANCES["fp16"]  # 1e-2 relative; measured 1-5e-3 (verify.py docstring)
FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


def _types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)  # the real thing (the models here are small)
    types = {v.name: v.type.tensor_type.elem_type
             for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    return types


def test_fp16_bundle_is_valid_and_mixed_precision(tiny_bundle_fp16):
    bundle = Bundle.open(tiny_bundle_fp16)
    assert bundle.precision == "fp16"
    for name in ("unet", "dvf_decoder"):
        model = onnx.load(str(bundle.model_path(name)))
        onnx.checker.check_model(model)
        weights = [i.data_type for i in model.graph.initializer if np.prod(i.dims) > 16]
        assert weights and all(t == FLOAT16 for t in weights), name  # weights are fp16
        interface = bundle.interface(name)
        io = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)}
        for spec in (*interface.inputs, *interface.outputs):
            assert io[spec.name] == (FLOAT if spec.dtype == "float32" else onnx.TensorProto.INT64)
        types = _types(model)
        for node in model.graph.node:  # the fp32 islands
            if node.op_type in ("InstanceNormalization", "LayerNormalization", "ReduceMean", "Softmax", "Sin", "Cos",
                                "GridSample"):
                assert types[node.input[0]] == FLOAT, (name, node.op_type)
                assert types[node.output[0]] == FLOAT, (name, node.op_type)
    for name in ("warp", "warp_gather"):  # the warp stays float32
        model = onnx.load(str(bundle.root / bundle.interface(name).file))
        assert not any(i.data_type == FLOAT16 for i in model.graph.initializer)
        assert not any(v.type.tensor_type.elem_type == FLOAT16 for v in model.graph.value_info)


def test_fp16_dvf_and_unet_error_is_within_the_documented_bound(tiny_bundle_fp16):
    bundle = Bundle.open(tiny_bundle_fp16)
    denoiser, decoder = load_generation_modules(bundle.checkpoint_dir)
    rng = np.random.default_rng(4242)
    for name, module in (("unet", denoiser), ("dvf_decoder", decoder)):
        inputs = bundle.interface(name).sample_inputs(rng, batch=2)
        got = verify.session(bundle.model_path(name)).run(None, inputs)[0]
        with torch.no_grad():
            want = module(*(torch.from_numpy(v) for v in inputs.values())).numpy()
        max_abs, max_rel = verify.relative_error(got, want)
        print(f"fp16 {name}: max abs {max_abs:.2e}, max rel {max_rel:.2e} (bound {FP16_BOUND:g})")
        assert 1e-6 < max_rel <= FP16_BOUND  # really fp16 (not bit-equal), and within the bound
        recorded = bundle.manifest["verification"][name]
        assert recorded["tolerance"] == FP16_BOUND and recorded["max_rel"] <= FP16_BOUND
    assert bundle.manifest["verification"]["warp"]["tolerance"] == 1e-4


class _Integrator(torch.nn.Module):
    """conv -> scaling and squaring: the coordinate arithmetic must stay fp32 in the fp16 graph."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(3, 3, 3, padding=1)

    def forward(self, x):
        return integrate_svf_traceable(self.conv(x), 5)


def test_warp_coordinates_stay_fp32_in_an_fp16_graph(tmp_path):
    interface = ModelInterface("svf", "svf.onnx", (TensorSpec("latents", "float32", ("batch", 3, 24, 28, 20)),),
                               (TensorSpec("dvf", "float32", ("batch", 3, 24, 28, 20)),))
    module = _Integrator().eval()
    export_module(module, interface, tmp_path / "svf.onnx")
    # fp32 first: the traced integration (scaling and squaring with GridSample) matches torch
    fp32 = verify.parity("svf", tmp_path / "svf.onnx", module, interface, 1e-4)
    assert fp32.max_rel <= 1e-4
    model = convert_to_fp16(onnx.load(str(tmp_path / "svf.onnx")))
    onnx.checker.check_model(model)
    types = _types(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type == "GridSample":
            # no fp16 round trip on the grid: it is computed in fp32 from fp32 inputs
            assert types[node.input[1]] == FLOAT
            assert producer[node.input[1]].op_type != "Cast"
    onnx.save(model, str(tmp_path / "svf16.onnx"))
    inputs = interface.sample_inputs(np.random.default_rng(0), batch=1)
    inputs["latents"] *= 4  # displacements of several voxels
    got = verify.session(tmp_path / "svf16.onnx").run(None, inputs)[0]
    with torch.no_grad():
        want = module(torch.from_numpy(inputs["latents"])).numpy()
    _, max_rel = verify.relative_error(got, want)
    assert max_rel <= 2e-3  # only the conv runs in fp16


@pytest.mark.parametrize("op", ["Sin", "Cos"])
def test_timestep_embedding_stays_fp32(tiny_bundle_fp16, op):
    model = onnx.load(str(Bundle.open(tiny_bundle_fp16).model_path("unet")))
    types = _types(model)
    nodes = [n for n in model.graph.node if n.op_type == op]
    assert nodes and all(types[n.input[0]] == FLOAT for n in nodes)
