"""``diffdef-eval``: conditional atlases scored against held-out real subjects and honest baselines
(the template, the linear age-window average, other models). See :mod:`diffdef.evaluate.cli`."""
