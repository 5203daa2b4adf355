"""``benchmarks/gpu_check.py`` on the CPU: the reference and ONNX Runtime CPU rows run, every GPU row is named
with its result or the reason it was skipped."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from file_helpers import load_benchmark

ROWS = ("torch-cpu", "ort-cpu", "torch-cuda", "train-amp-compile", "ort-cuda", "ort-tensorrt-ep", "trt-build",
        "trt-engine-cache", "trt-run", "trt-cuda-graph")


@pytest.fixture(scope="module")
def gpu_check():
    return load_benchmark("gpu_check")


def _rows(output: str) -> dict[str, str]:
    lines = [line for line in output.splitlines() if line.split()[:1] and line.split()[0] in ROWS]
    return {line.split()[0]: line for line in lines}


def test_cpu_run_names_every_path(gpu_check, tiny_checkpoint, tiny_bundle, tmp_path):
    result = CliRunner().invoke(gpu_check.main, ["--checkpoint", str(tiny_checkpoint), "--bundle", str(tiny_bundle),
                                                 "--ages", "60", "--steps", "2", "--work-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = _rows(result.output)
    assert list(rows) == list(ROWS)  # one row per path, in order
    assert rows["torch-cpu"].split()[1] == "ref"
    assert rows["ort-cpu"].split()[1] == "pass"  # the comparison itself works: ONNX Runtime CPU vs PyTorch CPU
    if gpu_check.cuda_reason() is not None:
        for name in ("torch-cuda", "train-amp-compile"):
            assert rows[name].split()[1] == "skip" and "torch.cuda.is_available() is False" in rows[name]
    if "CUDAExecutionProvider" not in gpu_check.ort_providers():
        assert "skip" in rows["ort-cuda"] and "onnxruntime-gpu>=1.25" in rows["ort-cuda"]
    if gpu_check.tensorrt_reason() is not None:
        for name in ("trt-build", "trt-engine-cache", "trt-run", "trt-cuda-graph"):
            assert rows[name].split()[1] == "skip" and gpu_check.tensorrt_reason() in rows[name]
    for line in rows.values():
        assert line.split()[1] in ("ref", "pass", "fail", "skip")


def test_a_failing_path_is_a_fail_row_not_a_crash(gpu_check, tiny_checkpoint, tmp_path, monkeypatch):
    def broken(check):
        raise RuntimeError("CUDA error: no kernel image is available")

    monkeypatch.setattr(gpu_check, "cuda_reason", lambda: None)
    monkeypatch.setattr(gpu_check, "run_torch_cuda", broken)
    monkeypatch.setattr(gpu_check, "run_train_amp_compile", broken)
    check = gpu_check.Check(tiny_checkpoint, None, [60.0], 1, tmp_path)
    rows = {r.path: r for r in gpu_check.run_all(check)}
    assert rows["torch-cuda"].status == "fail" and "no kernel image" in rows["torch-cuda"].note
    assert rows["ort-cpu"].status == "skip" and "no bundle" in rows["ort-cpu"].note
    table = gpu_check.format_table(list(rows.values()))
    assert "0 passed, 2 failed" in table


def test_compare_bounds(gpu_check, tiny_checkpoint, tmp_path):
    import copy

    check = gpu_check.Check(tiny_checkpoint, None, [60.0], 1, tmp_path)
    gpu_check.run_torch_cpu(check)
    same = check.compare("x", check.reference, 0.1)
    assert same.status == "pass" and same.dvf_err == 0.0
    moved = copy.deepcopy(check.reference)
    moved[0].atlas += 2 * gpu_check.TOL_ATLAS
    assert check.compare("x", moved, 0.1).status == "fail"
