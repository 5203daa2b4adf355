"""What TensorRT parses holds no GridSample: the Gather twins of the warp and of a diffeomorphic decoder, checked by
graph inspection and numerically against the CPU reference (ONNX Runtime CPU and PyTorch). Runs without TensorRT."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest

from diffdef_export import verify
from diffdef_export.errors import ExportError
from diffdef_export.tensorrt_build import tensorrt_onnx_file
from diffdef_export.trt_supported_ops import SUPPORTED_OPS
from diffdef_runtime.backends.ort import session_file
from diffdef_runtime.bundle import Bundle

TRT_EP = [("TensorrtExecutionProvider", {}), ("CUDAExecutionProvider", {}), "CPUExecutionProvider"]


@pytest.fixture(scope="module", params=["fp32", "fp16"])
def diffeomorphic_bundle(request, tmp_path_factory):
    """The kind of model the default preset ships: diffeomorphic, integrated on a 2x coarser grid, field basis."""
    from diffdef_export.bundle_writer import export_bundle
    from diffdef_export.testing import make_untrained_checkpoint

    root = tmp_path_factory.mktemp(f"diffeo_{request.param}")
    ckpt = make_untrained_checkpoint(root / "c", diffeomorphic=True, integration_down=2, integration_steps=5,
                                     basis_rank=2, seed=5)
    return export_bundle(ckpt, root / "b", fp16=request.param == "fp16")


def _ops(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}


def test_tensorrt_parses_no_gridsample_of_a_diffeomorphic_bundle(diffeomorphic_bundle):
    bundle = Bundle.open(diffeomorphic_bundle)
    assert "GridSample" in _ops(bundle.model_path("dvf_decoder"))  # the ORT/CPU file keeps its GridSample
    files = {name: tensorrt_onnx_file(bundle, name) for name in ("unet", "dvf_decoder", "warp")}
    assert files["dvf_decoder"].name == "dvf_decoder_gather.onnx" and files["warp"].name == "warp_gather.onnx"
    for name, path in files.items():
        ops = _ops(path)
        assert "GridSample" not in ops, name  # neither 5-D GridSample nor its "linear" spelling reaches TensorRT
        assert ops <= SUPPORTED_OPS, (name, sorted(ops - SUPPORTED_OPS))
        assert bundle.manifest["tensorrt_unsupported"][path.name] == []
    assert bundle.manifest["tensorrt_requirements"]["dvf_decoder.onnx"]["alternative"] == "dvf_decoder_gather.onnx"
    # ONNX Runtime's TensorRT provider loads the same twins; its CUDA provider the GridSample files; the CPU
    # alone the decoder's twin (faster there) and the GridSample warp
    assert session_file(bundle, "dvf_decoder", TRT_EP).name == "dvf_decoder_gather.onnx"
    assert session_file(bundle, "warp", TRT_EP).name == "warp_gather.onnx"
    cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert session_file(bundle, "dvf_decoder", cuda).name == "dvf_decoder.onnx"
    assert session_file(bundle, "warp", cuda).name == "warp.onnx"
    assert session_file(bundle, "dvf_decoder", ["CPUExecutionProvider"]).name == "dvf_decoder_gather.onnx"
    assert session_file(bundle, "warp", ["CPUExecutionProvider"]).name == "warp.onnx"


def test_gather_decoder_matches_the_reference(diffeomorphic_bundle):
    bundle = Bundle.open(diffeomorphic_bundle)
    interface = bundle.interface("dvf_decoder_gather")
    assert interface.inputs == bundle.interface("dvf_decoder").inputs
    assert interface.outputs == bundle.interface("dvf_decoder").outputs
    inputs = interface.sample_inputs(np.random.default_rng(7), batch=2)
    names = [s.name for s in interface.outputs]
    got = verify.session(bundle.root / "dvf_decoder_gather.onnx").run(names, inputs)[0]
    want = verify.session(bundle.model_path("dvf_decoder")).run(names, inputs)[0]
    tolerance = verify.TOLERANCES[bundle.precision]
    _, max_rel = verify.relative_error(got, want)
    assert max_rel <= tolerance and np.abs(want).max() > 0.1
    # against PyTorch (the original decoder with MONAI's integration), as the export recorded it
    recorded = bundle.manifest["verification"]["dvf_decoder_gather"]
    assert recorded["max_rel"] <= tolerance and recorded["tolerance"] == tolerance


def test_non_diffeomorphic_bundle_needs_no_decoder_twin(tiny_bundle):
    bundle = Bundle.open(tiny_bundle)
    assert "dvf_decoder_gather" not in bundle.manifest["interfaces"]
    assert tensorrt_onnx_file(bundle, "dvf_decoder").name == "dvf_decoder.onnx"
    assert "GridSample" not in _ops(tensorrt_onnx_file(bundle, "dvf_decoder"))
    assert tensorrt_onnx_file(bundle, "warp").name == "warp_gather.onnx"
    assert session_file(bundle, "dvf_decoder", TRT_EP).name == "dvf_decoder.onnx"


def test_a_bundle_without_the_decoder_twin_is_refused_for_tensorrt(diffeomorphic_bundle):
    bundle = Bundle.open(diffeomorphic_bundle)
    old = copy.copy(bundle)
    old.manifest = copy.deepcopy(bundle.manifest)
    del old.manifest["interfaces"]["dvf_decoder_gather"]  # as exported before the twin existed
    with pytest.raises(ExportError, match="dvf_decoder.onnx holds a GridSample.*re-export"):
        tensorrt_onnx_file(old, "dvf_decoder")


def test_a_nearest_neighbour_warp_would_fail_the_atlas_checks(tiny_bundle):
    """What a misread ``mode="linear"`` (nearest) would do to the template: far above the warped-atlas bounds of the
    TensorRT test (1e-3) and of benchmarks/gpu_check.py (1e-2), so those checks catch it where the DVF alone can't."""
    import torch
    import torch.nn.functional as F

    from diffdef_export.modules import grid_sample_warp

    t1 = torch.from_numpy(Bundle.open(tiny_bundle).template_maps().t1)[None, None]
    dvf = 0.6 * torch.randn(1, 3, *t1.shape[2:], generator=torch.Generator().manual_seed(0))
    linear = grid_sample_warp(t1, dvf)
    nearest = F.grid_sample(t1, _grid(dvf), mode="nearest", padding_mode="border", align_corners=True)
    assert float((linear - nearest).abs().max()) > 0.05


def _grid(dvf):
    """grid_sample's normalised (W, H, D) grid of ``x + dvf`` (as ``grid_sample_warp`` builds it)."""
    import torch

    axes = [torch.arange(n, dtype=dvf.dtype) for n in dvf.shape[2:]]
    mesh = torch.stack(torch.meshgrid(*axes, indexing="ij"))[None] + dvf
    norm = [mesh[:, i] * 2 / (n - 1) - 1 for i, n in enumerate(dvf.shape[2:])]
    return torch.stack(norm[::-1], dim=-1)
