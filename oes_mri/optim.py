"""The optimiser every fit uses (generator weights, OES logits) and its learning-rate schedules."""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch

LR_SCHEDULES = ("constant", "cosine", "warmup")
"""``constant``: ``lr`` at every step; ``cosine``: ``lr_t = lr (1 + cos(pi t / T)) / 2`` after step t of T;
``warmup``: a linear ramp from ``lr / 10`` to ``lr`` over the first :data:`WARMUP_STEPS` steps, then
``lr`` (a higher peak rate without the first steps' shake; independent of the step cap, which
the held-out rule seldom reaches)."""

WARMUP_STEPS = 100


def adam(params: Iterable[torch.Tensor], lr: float | torch.Tensor, capturable: bool = False) -> torch.optim.Adam:
    """Adam, fused (one kernel over all tensors) where PyTorch has it (CPU, CUDA);
    ``capturable`` keeps its step count on the device (needed inside a CUDA graph)."""
    params = list(params)
    return torch.optim.Adam(params, lr=lr, fused=params[0].device.type in ("cpu", "cuda"), capturable=capturable)


def fit_optimizer(params: Iterable[torch.Tensor], lr: float, steps: int, schedule: str = "constant",
                  capturable: bool = False) -> tuple[torch.optim.Adam, Callable[[int], None] | None]:
    """Adam for a fit of ``steps`` steps and the hook of its learning-rate schedule
    (:func:`lr_schedule`). A scheduled ``capturable`` Adam gets its rate as a device tensor,
    so that the hook's writes reach a captured step."""
    params = list(params)
    rate = torch.tensor(float(lr), device=params[0].device) if capturable and schedule != "constant" else lr
    opt = adam(params, rate, capturable)
    hook = lr_schedule(opt, schedule, steps)
    if hook is not None:
        hook(0)                                  # the rate of the first step (warm-up: lr / 10)
    return opt, hook


def lr_schedule(opt: torch.optim.Optimizer, kind: str, steps: int) -> Callable[[int], None] | None:
    """``after(t)``, to call after step ``t`` (1..steps), setting the rate of step ``t + 1``
    (closed form from the initial rate, no host sync); ``None`` for ``constant``.

    Raises:
        ValueError: an unknown ``kind``.
    """
    if kind not in LR_SCHEDULES:
        raise ValueError(f"lr schedule {kind!r}: expected one of {', '.join(LR_SCHEDULES)}")
    if kind == "constant":
        return None
    initial = [float(g["lr"]) for g in opt.param_groups]

    def factor_after(t: int) -> float:
        if kind == "warmup":
            return 0.1 + 0.9 * min(1.0, t / WARMUP_STEPS)
        return 0.5 * (1.0 + math.cos(math.pi * min(t, steps) / steps))

    def after(t: int) -> None:
        factor = factor_after(t)
        for group, lr in zip(opt.param_groups, initial):
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr * factor)
            else:
                group["lr"] = lr * factor
    return after
