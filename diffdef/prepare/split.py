"""The train/test split: a fixed, seeded, age-stratified held-out fraction, from the table alone.

It is computed from the whole table's (id, age) pairs before any processing, so it does not depend on which
subjects fail QC, on worker order or on shards, nor on the table's row order: sort by (age, id), cut into
consecutive blocks of ``round(1 / fraction)`` subjects, and pick one subject of each block as ``test`` with
``numpy.random.default_rng([seed, block])``. A last, shorter block gets a test subject with probability
``len(block) / block_size`` (same generator), so the expected fraction stays ``1 / block_size``. Subjects
without an age get no split (they fail anyway).
"""

from __future__ import annotations

import numpy as np


def block_size(fraction: float) -> int:
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the test fraction must be in (0, 1), got {fraction}")
    return max(2, int(round(1.0 / fraction)))


def assign_split(pairs, fraction: float = 0.2, seed: int = 0) -> dict[str, str]:
    """``{id: "train" | "test"}`` for every ``(id, age)`` pair whose age is a number (others are left out)."""
    size = block_size(fraction)
    ordered = sorted(((float(age), str(sid)) for sid, age in pairs if age is not None))
    split = {sid: "train" for _, sid in ordered}
    for block, start in enumerate(range(0, len(ordered), size)):
        members = ordered[start:start + size]
        rng = np.random.default_rng([int(seed), block])
        pick = int(rng.integers(size))
        if pick < len(members):  # a full block always picks; a short last block picks with p = len/size
            split[members[pick][1]] = "test"
    return split
