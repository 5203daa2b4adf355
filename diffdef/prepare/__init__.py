"""``diffdef-prepare``: raw T1 scans -> a template-aligned, QC-checked, training-ready cohort.

Steps per subject (see ``docs/PREPARE.md``): load and validate the NIfTI (:mod:`.load`), reorient to RAS,
N4 bias correction, brain extraction, rigid + affine registration to the MNI152 template and resampling onto
a template grid (:mod:`.register`), QC figures and bounds (:mod:`.qc`), tissue volumes. The cohort-level
parts are the participants table (:mod:`.table`), the seeded age-stratified split (:mod:`.split`) and the
resumable, sharded orchestration (:mod:`.run`); :mod:`.cli` is the click command.
"""

from diffdef.prepare.load import SubjectError

__all__ = ["SubjectError"]
