"""Train/eval split by patient: slices of one patient never land in both splits.

Neighbouring slices of one heart look alike, so a split by slice leaks anatomy from training into
evaluation and inflates the Dice. Every data source of the project (the generator, the Sunnybrook
reader) splits with this one function.
"""
from typing import List, Sequence, Tuple, TypeVar

import numpy as np

PatientId = TypeVar("PatientId")
_SPLIT_STREAM = 0x5EED  # separates the split's random stream from the generator's per-patient ones


def split_patients(patient_ids: Sequence[PatientId], eval_fraction: float,
                   seed: int) -> Tuple[List[PatientId], List[PatientId]]:
    """Seeded split of ``patient_ids`` into (train, eval), each sorted.

    ``round(len * eval_fraction)`` patients go to eval, but at least one when ``eval_fraction``
    is above 0 and there are two patients or more, and never all of them.
    """
    if not 0.0 <= eval_fraction <= 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1], got {eval_fraction}")
    ordered = sorted(set(patient_ids))
    num_eval = int(round(len(ordered) * eval_fraction))
    if eval_fraction > 0 and len(ordered) >= 2:
        num_eval = max(num_eval, 1)
    num_eval = min(num_eval, max(len(ordered) - 1, 0))
    order = np.random.default_rng([seed, _SPLIT_STREAM]).permutation(len(ordered))
    return (sorted(ordered[i] for i in order[num_eval:]),
            sorted(ordered[i] for i in order[:num_eval]))
