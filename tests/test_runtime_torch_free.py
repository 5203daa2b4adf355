"""The runtime layer imports and runs where torch (and monai) cannot be imported."""

from __future__ import annotations

import textwrap

from torch_blocker import run_blocked

_SNIPPET = textwrap.dedent(
    """
    import importlib.util
    import sys

    # The blocker works: torch looks uninstalled.
    assert importlib.util.find_spec("torch") is None
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("torch was importable despite the blocker")

    import numpy as np

    import diffdef_runtime.conditions as conditions
    import diffdef_runtime.grid as grid
    import diffdef_runtime.schedulers as schedulers

    config = schedulers.ScheduleConfig()
    sampler = schedulers.make_sampler("ddim", config, 10)
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((1, 3, 4, 5, 4)).astype(np.float32)
    ab = schedulers.alphas_cumprod(config)
    x = rng.standard_normal(x0.shape).astype(np.float32)
    for t in sampler.timesteps:
        eps = (x - np.sqrt(ab[t]) * x0) / np.sqrt(1.0 - ab[t])
        v = np.sqrt(ab[t]) * eps - np.sqrt(1.0 - ab[t]) * x0
        x = sampler.step(v.astype(np.float32), t, x).prev_sample
    assert x.dtype == np.float32, x.dtype
    assert np.abs(x - x0).max() < 1e-3, np.abs(x - x0).max()

    spec = conditions.ConditionSpec(names=("age",), ranges={"age": (40.0, 90.0)})
    assert spec.normalise({"age": conditions.parse_age_list("50:80:5")}).shape == (7, 1)
    assert grid.get_grid("4mm").shape == (40, 56, 40)

    leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "monai"))
    assert not leaked, leaked
    print("TORCH-FREE OK")
    """
)


def test_runtime_works_without_torch():
    proc = run_blocked(_SNIPPET, timeout=300)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "TORCH-FREE OK" in proc.stdout
