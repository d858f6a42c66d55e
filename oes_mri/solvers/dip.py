"""The fit loop shared by dense DIP and Sparse-DIP, and the k-space problem it fits.

Problem: measured k-space ``y`` ``(C, H, W)``, mask ``M``, operator ``A`` (``SenseOp`` with
maps, or ``CoilOp`` for sensitivity-free fitting). The data is scaled to the generator's
output at init, ``y_s = s y`` with ``s = ||G(z)|| / ||A^H y||`` (ConvDecoder's rule; without
it mask learning shrinks the output and pruning removes whole layers), and the loss is the
normalised data term ``||A G(z) - y_s||^2 / ||y_s||^2``. Images are divided by ``s`` after.

Fit: Adam on the generator's weights (masked weights stay exactly zero), BatchNorm in
training mode, a fixed input, ``steps`` iterations; returns the last iterate, the iterate
with the lowest data loss (no ground truth needed: robust to the loss spikes of long DIP
runs) and optionally an exponential moving average of the output. No host-device sync inside
the loop except every ``log_every`` steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import torch
from torch import nn

from oes_mri.optim import adam
from oes_mri.physics.sense import CoilOp, SenseOp
from oes_mri.pruning.weightmask import WeightMask


class FitDiverged(RuntimeError):
    """The loss became NaN or Inf."""


class KspaceProblem(NamedTuple):
    """A scaled k-space fitting problem.

    Attributes:
        y: scaled measured k-space ``s * y``, ``(C, H, W)``.
        op: ``SenseOp`` (generator makes 1 image) or ``CoilOp`` (C coil images).
        scale: ``s``; divide generator images by it to return to the data's scale.
        y_norm2: ``||s y||^2``.
    """

    y: torch.Tensor
    op: nn.Module
    scale: float
    y_norm2: torch.Tensor

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``A`` applied to generator output ``(K, H, W)``."""
        return self.op(images[0]) if isinstance(self.op, SenseOp) else self.op(images)

    def loss(self, images: torch.Tensor) -> torch.Tensor:
        """``||A x - y_s||^2 / ||y_s||^2``."""
        r = self.forward(images) - self.y
        return (r.real.square() + r.imag.square()).sum() / self.y_norm2

    def coil_images(self, images: torch.Tensor) -> torch.Tensor:
        """Coil images ``(C, H, W)`` on the data's scale (``S x / s`` or ``x_c / s``)."""
        coils = self.op.coil_images(images[0]) if isinstance(self.op, SenseOp) else images
        return coils / self.scale


def make_problem(kspace: torch.Tensor, mask: torch.Tensor, maps: torch.Tensor | None,
                 init_output: torch.Tensor) -> KspaceProblem:
    """Build the scaled problem for a generator whose output at init is ``init_output``."""
    op = SenseOp(maps, mask) if maps is not None else CoilOp(mask)
    op = op.to(kspace.device)
    zf = op.adjoint(kspace)
    s = float(init_output.detach().norm() / zf.norm().clamp_min(1e-30))
    y = kspace * s
    return KspaceProblem(y, op, s, (y.abs() ** 2).sum())


@dataclass
class FitResult:
    """Outputs of :func:`fit` (generator images ``(K, H, W)``, unscaled)."""

    last: torch.Tensor
    best: torch.Tensor
    best_loss: float
    ema: torch.Tensor | None
    losses: list[float]
    monitor: list[dict] = field(default_factory=list)


def generator_forward(gen: nn.Module, compile: bool = False, amp: bool = False) -> Callable[[], torch.Tensor]:
    """``gen()`` as the fit calls it: optionally compiled, optionally under bf16 autocast
    (the generator returns fp32 complex images either way)."""
    run = torch.compile(gen) if compile else gen
    if not amp:
        return run
    device_type = next(gen.parameters()).device.type

    def forward() -> torch.Tensor:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            return run()
    return forward


def fit(gen: nn.Module, loss_fn: Callable[[torch.Tensor], torch.Tensor], steps: int, lr: float = 1e-2,
        weight_mask: WeightMask | None = None, ema_decay: float | None = None, log_every: int = 50,
        monitor: Callable[[torch.Tensor], dict] | None = None,
        progress: Callable[[int, dict], None] | None = None, compile: bool = False,
        amp: bool = False) -> FitResult:
    """Fit ``gen`` to minimise ``loss_fn(gen())`` with Adam (in place).

    Args:
        gen: generator (dense, or pruned by ``weight_mask``).
        loss_fn: scalar data term of the generator output.
        steps: iterations.
        lr: Adam learning rate.
        weight_mask: kept weights; pruned ones are zeroed and stay exactly zero.
        ema_decay: if set, also return ``ema = d * ema + (1 - d) * output``.
        log_every: check for divergence, call ``monitor`` and ``progress`` every so many steps.
        monitor: ``monitor(output) -> dict`` (e.g. PSNR against a target), logged with the step.
        progress: ``progress(step, {'loss': ..., **monitor(output)})``.
        compile: run the generator through ``torch.compile`` (first steps pay the compilation).
        amp: bf16 autocast for the generator (output cast to fp32: FFTs and loss stay fp32);
            meant for CUDA.

    Raises:
        FitDiverged: a NaN/Inf loss (the caller retries with a smaller learning rate).
    """
    handles = weight_mask.apply_(gen) if weight_mask is not None else []
    gen.train()
    forward = generator_forward(gen, compile, amp)
    opt = adam(gen.parameters(), lr)
    device = next(gen.parameters()).device
    losses = torch.zeros(steps, device=device)
    best_loss = torch.tensor(float("inf"), device=device)
    best = ema = None
    logs: list[dict] = []
    try:
        for step in range(steps):
            out = forward()
            loss = loss_fn(out)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if weight_mask is not None:
                weight_mask.reapply_(gen)
            out = out.detach()
            losses[step] = loss.detach()
            better = loss.detach() < best_loss
            best = out if best is None else torch.where(better, out, best)
            best_loss = torch.minimum(best_loss, loss.detach())
            if ema_decay is not None:
                ema = out if ema is None else ema_decay * ema + (1 - ema_decay) * out
            if (step + 1) % log_every == 0 or step + 1 == steps:
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise FitDiverged(f"loss became {value} at step {step + 1}")
                info = {"loss": value, **(monitor(out) if monitor is not None else {})}
                if monitor is not None:
                    logs.append({"step": step + 1, **info})
                if progress is not None:
                    progress(step + 1, info)
    finally:
        for h in handles:
            h.remove()
    return FitResult(out, best, float(best_loss), ema, losses.tolist(), logs)
