"""The step loop under every fit: run a training step ``steps`` times, keep the record (loss
per step, the lowest-loss iterate, an optional output average) on the device, and look at it
(divergence, monitoring, progress) only every ``log_every`` steps.

On CUDA the step can be captured once into a CUDA graph and replayed: one fit step of the
OES hourglass is hundreds of small kernels whose launch cost, not the arithmetic, sets the
speed on a GPU (benchmarks/results/gpu.md). The first steps run eagerly on a side stream
(they initialise the optimiser state and the cuFFT/cuDNN plans), then one step, with the
record's updates, is captured and replayed. Every tensor the step touches must therefore
keep its storage between steps (parameters, optimiser state, the fixed input), which is
what a fit does; the Adam used under a graph is built with ``capturable=True``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

Step = Callable[[], tuple[torch.Tensor, torch.Tensor]]
"""One training step; returns the detached output and loss (scalar, or ``(B,)`` for a batch)."""

WARMUP = 3
"""Eager steps before a CUDA graph is captured."""


class Record:
    """Losses per step, lowest-loss iterate and output average, updated in place on the device.

    Attributes:
        losses: ``(steps, *loss.shape)``.
        best, best_loss: the output with the lowest loss so far and that loss (per slice).
        ema: ``d * ema + (1 - d) * output`` when ``ema_decay`` is set (starts at the first output).
    """

    def __init__(self, steps: int, ema_decay: float | None = None) -> None:
        self.steps, self.ema_decay = steps, ema_decay
        self.losses = self.best = self.best_loss = self.ema = self.index = None

    def update(self, out: torch.Tensor, loss: torch.Tensor) -> None:
        """Record one step (in place: safe inside a CUDA graph after the first call)."""
        if self.losses is None:
            self.losses = torch.zeros((self.steps, *loss.shape), device=loss.device)
            self.index = torch.zeros(1, dtype=torch.long, device=loss.device)
            self.best, self.best_loss = out.clone(), loss.clone()
            self.ema = out.clone() if self.ema_decay is not None else None
        self.losses.index_copy_(0, self.index, loss.unsqueeze(0))
        self.index += 1
        better = loss < self.best_loss
        self.best.copy_(torch.where(better.view(*better.shape, *[1] * (out.dim() - better.dim())), out, self.best))
        torch.minimum(self.best_loss, loss, out=self.best_loss)
        if self.ema is not None:
            self.ema.mul_(self.ema_decay).add_(out, alpha=1 - self.ema_decay)


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
              on_log: Callable[[int, torch.Tensor, torch.Tensor], None], cuda_graph: bool = False,
              after_step: Callable[[int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``step`` ``steps`` times, recording each; ``on_log(step, out, loss)`` every
    ``log_every`` steps and at the end. Returns the last output and loss.

    Args:
        cuda_graph: capture the step into a CUDA graph after :data:`WARMUP` eager steps and
            replay it (the step's tensors must live on one CUDA device).
        after_step: ``after_step(i)`` after step i (1-based), eagerly, outside any graph (a
            learning-rate schedule, :func:`oes_mri.optim.lr_schedule`).
    """
    def once() -> tuple[torch.Tensor, torch.Tensor]:
        out, loss = step()
        record.update(out, loss)
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
        if (i + 1) % log_every == 0 or i + 1 == steps:
            on_log(i + 1, out, loss)
    return out.clone(), loss.clone()
