"""The ``diffdef-export`` console script: names the extras to install when torch, onnx or ONNX Runtime is
missing (``diffdef_runtime.extras``) instead of a traceback."""

from diffdef_runtime.extras import run_command

main = run_command("diffdef-export", "diffdef_export.cli", ("export", "runtime"))
