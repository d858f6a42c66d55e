"""Replay a stopping rule on a recorded held-out curve (the self-validation benchmark's
tables and the rule's tests): the experiments' tool, not the package's."""

from __future__ import annotations

from typing import Sequence

import torch

from oes_mri.fit.loop import Record
from oes_mri.fit.stopping import StopRule, make_record


def replay(vals: Sequence[float], rule: StopRule, log_every: int) -> tuple[Record, int]:
    """A stopping rule on a recorded held-out curve, decided as a fit decides it: each value
    fed to the :class:`Record` the fit keeps (:func:`make_record`), the rule asked every
    ``log_every`` steps and at the last. Each step's output is its step number (shape
    ``(1,)``), so ``record.best`` is the chosen step too.

    Returns:
        The record and the step the rule stopped at (``len(vals)`` at the cap).
    """
    record = make_record(len(vals), rule)
    for i, v in enumerate(vals, 1):
        out = torch.tensor([float(i)])
        record.update(out, torch.zeros(()), torch.tensor(float(v)))
        if (i % log_every == 0 or i == len(vals)) and rule(record, i, out, last=i == len(vals)):
            return record, i
    return record, len(vals)
