"""DiffDef's torch-free runtime: ``diffdef-run`` and ``AtlasGenerator`` (``diffdef_runtime.api``).

Submodules are imported on demand, so ``import diffdef_runtime.schedulers`` stays light.
"""


def __getattr__(name):
    if name == "AtlasGenerator":
        from diffdef_runtime.api import AtlasGenerator

        return AtlasGenerator
    raise AttributeError(f"module 'diffdef_runtime' has no attribute {name!r}")
