"""Which optional extra each command needs, and a console-script wrapper that says so instead of a traceback.

``pip install "diffdef[runtime]"`` installs ``diffdef-run`` and the other commands' scripts too (one package),
but not torch: run there, ``diffdef-train`` prints the one line naming the extra to install and exits 1.
Torch-free (it only looks modules up), so the wrappers work in exactly the install that lacks them.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Sequence

# Top-level import names each extra of pyproject.toml provides (export and prepare include train).
_TRAIN = ("torch", "monai", "nilearn", "scipy", "safetensors", "einops")
EXTRAS: dict[str, tuple[str, ...]] = {
    "train": _TRAIN,
    "export": (*_TRAIN, "onnx", "onnxscript"),
    "prepare": (*_TRAIN, "SimpleITK", "matplotlib", "deepbet"),
    "runtime": ("onnxruntime",),  # or the gpu extra (onnxruntime-gpu): the same import name
}
TORCH_HINT = "install torch first, e.g. pip install torch==2.13.0 for the CPU build"


def missing_modules(extras: Sequence[str]) -> list[str]:
    """The modules of ``extras`` that cannot be imported here, in order, without importing anything."""
    names = dict.fromkeys(m for extra in extras for m in EXTRAS[extra])
    return [m for m in names if importlib.util.find_spec(m) is None]


def install_hint(command: str, extras: Sequence[str], missing: Sequence[str]) -> str:
    """One line: the command, the extras it needs, what is missing here and the pip command."""
    line = (f"{command} needs the {' and '.join(repr(e) for e in extras)} extra{'s' if len(extras) > 1 else ''}, "
            f"not installed here (no module {', '.join(missing)}): pip install \"diffdef[{','.join(extras)}]\"")
    if "runtime" in extras:
        line += " ('gpu' instead of 'runtime' on an NVIDIA GPU, never both)"
    if "torch" in missing:
        line += f"; {TORCH_HINT}"
    return line


def run_command(command: str, module: str, extras: Sequence[str]) -> Callable[[], object]:
    """A console-script entry point: check ``extras`` first, then run ``module.main``."""

    def entry() -> object:
        missing = missing_modules(extras)
        if missing:
            print(f"error: {install_hint(command, extras, missing)}", file=sys.stderr)
            raise SystemExit(1)
        try:
            return importlib.import_module(module).main()
        except ModuleNotFoundError as err:  # a module of an extra that find_spec saw but cannot be imported
            top = (err.name or "").split(".")[0]
            if top not in {m for extra in extras for m in EXTRAS[extra]}:
                raise
            print(f"error: {install_hint(command, extras, [top])}", file=sys.stderr)
            raise SystemExit(1) from None

    entry.__name__ = command.replace("-", "_")
    return entry
