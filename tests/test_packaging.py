"""pyproject.toml's extras: installable combinations that make sense."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _closure(project: dict, extra: str, seen: set[str] | None = None) -> set[str]:
    """Distribution names installed by ``pip install diffdef[extra]`` (base dependencies and nested extras)."""
    seen = set() if seen is None else seen
    names = {_name(r) for r in project.get("dependencies", [])}
    for requirement in project["optional-dependencies"].get(extra, []):
        nested = re.fullmatch(r"diffdef\[([\w,-]+)\]", requirement.strip())
        if nested:
            for sub in nested.group(1).split(","):
                if sub not in seen:
                    seen.add(sub)
                    names |= _closure(project, sub, seen)
        else:
            names.add(_name(requirement))
    return names


def test_no_extra_installs_both_onnxruntime_wheels():
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    for extra in project["optional-dependencies"]:
        names = _closure(project, extra)
        assert not {"onnxruntime", "onnxruntime-gpu"} <= names, extra


def test_gpu_and_tensorrt_extras_pin_what_the_gpu_paths_need():
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    assert any(r.replace(" ", "") == "onnxruntime-gpu>=1.25" for r in extras["gpu"])  # CUDA 5-D GridSample
    trt = {_name(r): r for r in extras["tensorrt"]}
    assert set(trt) == {"tensorrt-cu12", "cuda-python"}  # one CUDA major for both
    assert "<13" in trt["cuda-python"] and ">=12" in trt["cuda-python"]
