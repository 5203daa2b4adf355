"""benchmarks/weights_digest.py: equal weights give equal digests; one changed value changes its module's."""

import numpy as np
from file_helpers import load_benchmark
from safetensors.numpy import save_file


def test_digest_follows_the_bytes_not_the_file(tmp_path):
    digest = load_benchmark("weights_digest").tensor_digests
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    w = {"x.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "x.bias": np.ones(2, np.float32)}
    save_file(w, str(a / "denoiser.safetensors"))
    save_file(dict(reversed(list(w.items()))), str(b / "denoiser.safetensors"), metadata={"other": "layout"})
    assert digest(a) == digest(b) and list(digest(a)) == ["denoiser"]
    w["x.bias"] = np.array([1.0, np.nextafter(np.float32(1), np.float32(2))], np.float32)  # one ulp
    save_file(w, str(b / "denoiser.safetensors"))
    assert digest(a)["denoiser"] != digest(b)["denoiser"]
