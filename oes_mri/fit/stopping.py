"""Stopping rules of a fit, decided every ``log_every`` steps on the fit's
:class:`~oes_mri.fit.loop.Record` (one host sync per decision)."""

from __future__ import annotations

import torch

from oes_mri.fit.loop import Record


class StopRule:
    """Per-slice stopping, decided every ``log_every`` steps: when a slice stops, its chosen
    iterate is frozen in the :class:`Record` (a batch goes on until every slice has stopped).

    Attributes:
        stop_step: per slice, the step at which its rule fired (``None`` while it runs).
        reason: per slice, why it stopped.
        smoothing: the :class:`Record`'s score smoothing the rule reads (steps; 1 = raw).
    """

    smoothing: float = 1.0

    def __init__(self, slices: int) -> None:
        self.stop_step: list[int | None] = [None] * slices
        self.reason = [""] * slices

    def _stop(self, record: Record, b: int, step: int, reason: str, out: torch.Tensor | None = None) -> None:
        """Stop slice ``b`` at ``step``; with ``out`` (the step's output), that output becomes
        its chosen iterate."""
        if out is not None:
            record.take(b, out, step)
        record.frozen.view(-1)[b] = True
        self.stop_step[b], self.reason[b] = step, reason

    def all_stopped(self) -> bool:
        return all(s is not None for s in self.stop_step)


class ValidationStop(StopRule):
    """The self-validation stopping rule (one host sync per decision).

    A slice stops when its validation loss has not improved for ``patience`` steps; its
    chosen iterate is then the best-validation one. A validation set that carries no
    information (best relative error still >= ``informative``; 1 is the error of predicting
    zeros) cannot choose: the slice then runs to ``fallback_steps`` (``None``: the cap) and its
    chosen iterate is the output at that step. Reasons: ``"patience"``, ``"fallback"``, ``"cap"``.
    The validation loss is read smoothed over about ``smoothing`` steps (the record made with
    :func:`make_record`).
    """

    def __init__(self, slices: int, patience: int, informative: float = 1.0,
                 fallback_steps: int | None = None, smoothing: float = 1.0) -> None:
        if patience < 1 or smoothing < 1:
            raise ValueError(f"patience and smoothing must be >= 1 step, got {patience} and {smoothing}")
        super().__init__(slices)
        self.patience, self.informative, self.fallback_steps = patience, informative, fallback_steps
        self.smoothing = smoothing

    def __call__(self, record: Record, step: int, out: torch.Tensor, last: bool = False) -> bool:
        """Decide after ``step`` (``out``: its output); ``last``: the cap is reached.
        Returns whether every slice has stopped."""
        best = record.best_score.reshape(-1).tolist()
        best_step = record.best_step.reshape(-1).tolist()
        fallback = self.fallback_steps is not None and step >= self.fallback_steps
        for b, done in enumerate(self.stop_step):
            if done is not None:
                continue
            if best[b] < self.informative:
                if step - best_step[b] >= self.patience:
                    self._stop(record, b, step, "patience")
                elif last:
                    self._stop(record, b, step, "cap")
            elif last or fallback:
                self._stop(record, b, step, "fallback", out)
        return self.all_stopped()


def make_record(steps: int, stop: StopRule | None, ema_decay: float | None = None) -> Record:
    """The :class:`Record` a fit of ``steps`` steps keeps, with the score smoothing ``stop`` reads."""
    return Record(steps, ema_decay, stop.smoothing if stop is not None else 1.0)
