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
    """The self-validation stopping rule: stop only on evidence the held-out error can give
    (one host sync per decision).

    The held-out error ``v_t`` (relative: 1 is the error of predicting zeros) is read smoothed
    over about ``smoothing`` steps, ``s_t`` (the :class:`Record`'s score), and its step-to-step
    noise ``sigma_t`` is measured from the raw values of the last :data:`NOISE_WINDOW` steps
    (``std(v_t - v_{t-1}) / sqrt(2)``). A slice

    - whose best ``s`` stays at or above ``informative`` has a hold-out that carries no usable
      signal: it runs the fallback budget (``fallback_steps``, ``None``: the cap) and returns
      the iterate there (reason ``"uninformative"``);
    - stops on evidence of overfitting: its held-out error has stood a margin
      ``max(rise * s_best, noise * sigma)`` above its minimum ``s_best`` while ``patience``
      steps have passed since that minimum; the minimum's iterate is returned (``"overfit"``;
      at the cap with the error above the margin, the same);
    - otherwise reaches the cap on a plateau (the error within the margin of its minimum, or
      still falling): there the held-out error cannot tell the minimum's iterate from the last,
      and the last, fitted longest, is returned (``"plateau"``).

    No iterate before step ``start`` is a candidate (the first, blurred iterates and the
    transients of a learning-rate warm-up). ``rise = noise = 0`` with ``start = 1`` is the
    rule of patience alone (a plateau then stops too; reason ``"patience"``).
    """

    def __init__(self, slices: int, patience: int, informative: float = 1.0,
                 fallback_steps: int | None = None, smoothing: float = 1.0, rise: float = 0.0,
                 noise: float = 0.0, start: int = 1) -> None:
        if patience < 1 or smoothing < 1 or start < 1:
            raise ValueError(f"patience, smoothing and start must be >= 1 step, got {patience}, {smoothing}, {start}")
        if rise < 0 or noise < 0:
            raise ValueError(f"rise and noise must be >= 0, got {rise} and {noise}")
        super().__init__(slices)
        self.patience, self.informative, self.fallback_steps = patience, informative, fallback_steps
        self.smoothing, self.rise, self.noise, self.start = smoothing, rise, noise, start
        self.seen: list[dict] = [{} for _ in range(slices)]
        """per slice, what the rule saw when it decided: ``best`` (lowest smoothed held-out
        error), ``last`` (smoothed, at the stop), ``margin``, ``informative``"""

    def margins(self, record: Record, step: int, best: list[float]) -> list[float]:
        """Per slice, the rise above its minimum that counts as evidence."""
        if self.noise == 0:
            return [self.rise * b for b in best]
        raw = record.vals[max(0, step - NOISE_WINDOW):step].reshape(step - max(0, step - NOISE_WINDOW), -1)
        sigma = (raw.diff(dim=0).std(dim=0) / 2 ** 0.5).tolist() if raw.shape[0] > 2 else [0.0] * len(best)
        return [max(self.rise * b, self.noise * s) for b, s in zip(best, sigma)]

    def __call__(self, record: Record, step: int, out: torch.Tensor, last: bool = False) -> bool:
        """Decide after ``step`` (``out``: its output); ``last``: the cap is reached.
        Returns whether every slice has stopped."""
        best = record.best_score.reshape(-1).tolist()
        best_step = record.best_step.reshape(-1).tolist()
        score = record.score.reshape(-1).tolist()
        margin = self.margins(record, step, best)
        fallback = self.fallback_steps is not None and step >= self.fallback_steps
        for b, done in enumerate(self.stop_step):
            if done is not None:
                continue
            informative = best[b] < self.informative
            risen = score[b] - best[b] >= margin[b]
            self.seen[b] = {"best": best[b], "last": score[b], "margin": margin[b], "informative": informative}
            if informative and risen and (step - best_step[b] >= self.patience or last):
                self._stop(record, b, step, "overfit" if self.rise or self.noise else "patience")
            elif informative and last:
                self._stop(record, b, step, "plateau", out)
            elif not informative and (last or fallback):
                self._stop(record, b, step, "uninformative", out)
        return self.all_stopped()


NOISE_WINDOW = 100
"""Steps of raw held-out error from which its step-to-step noise is measured."""

REASONS = {"overfit": "stopped: the held-out error rose above its minimum, whose iterate is returned",
           "patience": "stopped: no lower held-out error for the patience (a warm-started slice's rule)",
           "plateau": "ran to the cap: the held-out error stayed within its noise of its minimum; the last iterate",
           "uninformative": "ran the fallback budget: the held-out error never fell below the threshold "
                            "(the held-out samples carry no usable signal); the last iterate",
           "cap": "ran to the cap without a hold-out: the lowest-data-loss iterate"}
"""What each stop reason means (metrics.json, the report)."""


def make_record(steps: int, stop: StopRule | None, ema_decay: float | None = None) -> Record:
    """The :class:`Record` a fit of ``steps`` steps keeps, with the score smoothing and the
    first candidate step (never after the last step) that ``stop`` reads."""
    if stop is None:
        return Record(steps, ema_decay)
    return Record(steps, ema_decay, stop.smoothing, min(getattr(stop, "start", 1), steps))
