"""Console scripts of the training side, torch-free until the needed extra is known to be installed
(``diffdef_runtime.extras``): in a runtime-only install they name the extra instead of a traceback."""

from diffdef_runtime.extras import run_command

synth = run_command("diffdef-synth", "diffdef.synth.cli", ("train",))
train = run_command("diffdef-train", "diffdef.training.cli", ("train",))
prepare = run_command("diffdef-prepare", "diffdef.prepare.cli", ("prepare",))
evaluate = run_command("diffdef-eval", "diffdef.evaluate.cli", ("prepare",))
