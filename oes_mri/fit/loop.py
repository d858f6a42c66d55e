"""The step loop under every fit: run a training step up to ``steps`` times, keep the record
(fit and validation loss per step, the chosen iterate, an optional output average) on the
device, and look at it (divergence, monitoring, progress, the stopping rule) only every
``log_every`` steps.

On CUDA the step can be captured once into a CUDA graph and replayed: one fit step of the
OES hourglass is hundreds of small kernels whose launch cost, not the arithmetic, sets the
speed on a GPU (benchmarks/results/gpu/gpu.md). The first steps run eagerly on a side stream
(they initialise the optimiser state and the cuFFT/cuDNN plans), then one step, with the
record's updates, is captured and replayed. Every tensor the step touches must therefore
keep its storage between steps (parameters, optimiser state, the fixed input), which is
what a fit does; the Adam used under a graph is built with ``capturable=True``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

Step = Callable[[], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]
"""One training step; returns the detached output, fit loss and validation loss (``None``
without a hold-out); losses are scalars, or ``(B,)`` for a batch."""

WARMUP = 3
"""Eager steps before a CUDA graph is captured."""

LOG_EVERY = 25
"""Steps between looks at a fit's record (logs, monitor, stopping rule): the default of
:class:`~oes_mri.fit.config.FitConfig` and of the fit loop."""


class Record:
    """Losses per step, the chosen iterate and an output average, updated in place on the device.

    The chosen iterate is the one with the lowest score: the validation loss when the step
    gives one (self-validation), else the fit loss, averaged over about ``smoothing`` steps,
    ``s_t = s_{t-1} + (v_t - s_{t-1}) / smoothing`` (``s_1 = v_1``; 1 = the raw loss): a
    one-step dip of a noisy held-out error then neither wins nor starts a stopping rule's
    patience clock. No step before ``start`` is a candidate. A slice whose stopping rule has
    fired is ``frozen``: its chosen iterate no longer changes, although a batch it belongs to
    goes on.

    Attributes:
        losses: fit losses ``(steps, *loss.shape)``; vals: validation losses, same shape, or
            ``None`` (both raw, as the step returned them).
        score: the smoothed score of the last step (per slice).
        best, best_score, best_step: the chosen output, its (smoothed) score and its 1-based
            step (per slice).
        frozen: bool, per slice.
        ema: ``d * ema + (1 - d) * output`` when ``ema_decay`` is set (starts at the first output).
    """

    def __init__(self, steps: int, ema_decay: float | None = None, smoothing: float = 1.0, start: int = 1) -> None:
        if smoothing < 1 or start < 1:
            raise ValueError(f"score smoothing and the first candidate step must be >= 1, got {smoothing}, {start}")
        self.steps, self.ema_decay, self.smoothing, self.start = steps, ema_decay, smoothing, start
        self.losses = self.vals = self.best = self.best_score = self.best_step = self.frozen = None
        self.ema = self.index = self.score = None

    def update(self, out: torch.Tensor, loss: torch.Tensor, val: torch.Tensor | None = None) -> None:
        """Record one step (in place: safe inside a CUDA graph after the first call)."""
        raw = loss if val is None else val
        if self.losses is None:
            self.losses = torch.zeros((self.steps, *loss.shape), device=loss.device)
            self.vals = torch.zeros_like(self.losses) if val is not None else None
            self.index = torch.zeros((), dtype=torch.long, device=loss.device)
            self.best, self.best_score = out.clone(), torch.full_like(raw, math.inf)
            self.best_step = torch.zeros(raw.shape, dtype=torch.long, device=loss.device)
            self.frozen = torch.zeros(raw.shape, dtype=torch.bool, device=loss.device)
            self.score = raw.detach().clone()
            self.ema = out.clone() if self.ema_decay is not None else None
        self.losses.index_copy_(0, self.index.view(1), loss.unsqueeze(0))
        if val is not None:
            self.vals.index_copy_(0, self.index.view(1), val.unsqueeze(0))
        self.index += 1
        self.score.add_((raw - self.score) / self.smoothing)
        score = self.score
        better = (score < self.best_score) & ~self.frozen
        if self.start > 1:                                   # no candidate before step ``start``
            better &= self.index >= self.start
        self.best.copy_(torch.where(better.view(*better.shape, *[1] * (out.dim() - better.dim())), out, self.best))
        self.best_score.copy_(torch.where(better, score, self.best_score))
        self.best_step.copy_(torch.where(better, self.index, self.best_step))
        if self.ema is not None:
            self.ema.mul_(self.ema_decay).add_(out, alpha=1 - self.ema_decay)

    def take(self, b: int, out: torch.Tensor, step: int) -> None:
        """Make slice ``b``'s output at ``step`` (``out``, the output of that step, the last
        recorded) its chosen iterate."""
        batched = self.best_score.dim() > 0
        (self.best[b] if batched else self.best).copy_(out[b] if batched else out)
        self.best_score.view(-1)[b] = self.score.view(-1)[b]
        self.best_step.view(-1)[b] = step

    def steps_run(self) -> int:
        """Steps recorded so far (one host sync)."""
        return int(self.index)


class FitDiverged(RuntimeError):
    """The loss became NaN or Inf."""


def check_finite(loss: torch.Tensor, step: int) -> list[float]:
    """The losses as floats (one host sync); raises :class:`FitDiverged` on NaN/Inf."""
    values = loss.reshape(-1).tolist()
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        raise FitDiverged(f"loss became {bad[0]} at step {step}")
    return values


def run_steps(step: Step, steps: int, record: Record, log_every: int,
              on_log: Callable[[int, torch.Tensor, torch.Tensor], bool | None], cuda_graph: bool = False,
              after_step: Callable[[int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``step`` up to ``steps`` times, recording each; ``on_log(step, out, loss)`` every
    ``log_every`` steps and at the end; a true return value stops the loop there (a stopping
    rule). Returns the last output and loss (``record.steps_run()`` tells how many ran).

    Args:
        cuda_graph: capture the step into a CUDA graph after :data:`WARMUP` eager steps and
            replay it (the step's tensors must live on one CUDA device).
        after_step: ``after_step(i)`` after step i (1-based), eagerly, outside any graph (a
            learning-rate schedule, :func:`oes_mri.optim.lr_schedule`).
    """
    def once() -> tuple[torch.Tensor, torch.Tensor]:
        out, loss, val = step()
        record.update(out, loss, val)
        return out, loss

    graph, eager = None, steps if not cuda_graph else min(WARMUP, steps)
    side = torch.cuda.Stream() if cuda_graph else None
    for i in range(steps):
        if i < eager and side is None:
            out, loss = once()
        elif i < eager:                                  # warm-up before capture: on a side stream
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                out, loss = once()
            torch.cuda.current_stream().wait_stream(side)
        else:
            if graph is None:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    out, loss = once()
            graph.replay()
        if after_step is not None:
            after_step(i + 1)
        if ((i + 1) % log_every == 0 or i + 1 == steps) and on_log(i + 1, out, loss):
            break
    return out.clone(), loss.clone()
