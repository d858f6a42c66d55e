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
the loop except every ``log_every`` steps; on CUDA the step can be replayed as a CUDA graph
(:mod:`oes_mri.solvers.loop`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import torch
from torch import nn

from oes_mri.optim import fit_optimizer
from oes_mri.physics.sense import CoilOp, SenseOp
from oes_mri.pruning.weightmask import WeightMask
from oes_mri.solvers.loop import FitDiverged, Record, check_finite, run_steps  # noqa: F401 (FitDiverged: API)


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


def generator_forward(gen: nn.Module, compile: bool = False, amp: bool = False) -> Callable[..., torch.Tensor]:
    """``gen(*args)`` as the fit calls it: optionally compiled, optionally under bf16 autocast
    (the generator returns fp32 complex images either way; no autocast weight cache, so the
    step can be captured in a CUDA graph)."""
    run = torch.compile(gen) if compile else gen
    if not amp:
        return run
    device_type = next(gen.parameters()).device.type

    def forward(*args: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type, dtype=torch.bfloat16, cache_enabled=False):
            return run(*args)
    return forward


def jittered_input(forward: Callable[..., torch.Tensor], z: torch.Tensor, std: float,
                   seed: int) -> Callable[[], torch.Tensor]:
    """``forward(z + std * n)`` with fresh ``n ~ N(0, 1)`` at every call, drawn from a
    generator seeded with ``seed`` (DIP's input regularisation, ``reg_noise_std``)."""
    rng = torch.Generator(device=z.device).manual_seed(int(seed))

    def perturbed() -> torch.Tensor:
        return forward(z + std * torch.randn(z.shape, generator=rng, device=z.device, dtype=z.dtype))
    return perturbed


def use_cuda_graph(cuda_graph: bool, device: torch.device, compile: bool = False,
                   input_jitter: float = 0.0) -> bool:
    """Validate the ``cuda_graph`` option: CUDA only, and not together with ``torch.compile``
    or input noise."""
    if cuda_graph and input_jitter:
        raise ValueError("cuda_graph and input_jitter are exclusive (the input noise is drawn eagerly)")
    if cuda_graph and device.type != "cuda":
        raise ValueError(f"cuda_graph needs a CUDA device, not {device}")
    if cuda_graph and compile:
        raise ValueError("cuda_graph and compile are exclusive (torch.compile has its own CUDA graphs)")
    return cuda_graph


def fit(gen: nn.Module, loss_fn: Callable[[torch.Tensor], torch.Tensor], steps: int, lr: float = 1e-2,
        weight_mask: WeightMask | None = None, ema_decay: float | None = None, log_every: int = 50,
        monitor: Callable[[torch.Tensor], dict] | None = None,
        progress: Callable[[int, dict], None] | None = None, compile: bool = False,
        amp: bool = False, cuda_graph: bool = False, input_jitter: float = 0.0, jitter_seed: int = 0,
        schedule: str = "constant") -> FitResult:
    """Fit ``gen`` to minimise ``loss_fn(gen())`` with Adam (in place).

    Args:
        gen: generator (dense, or pruned by ``weight_mask``).
        loss_fn: scalar data term of the generator output.
        steps: iterations.
        lr: Adam learning rate (of the first step).
        weight_mask: kept weights; pruned ones are zeroed and stay exactly zero.
        ema_decay: if set, also return ``ema = d * ema + (1 - d) * output``.
        log_every: check for divergence, call ``monitor`` and ``progress`` every so many steps.
        monitor: ``monitor(output) -> dict`` (e.g. PSNR against a target), logged with the step.
        progress: ``progress(step, {'loss': ..., **monitor(output)})``.
        compile: run the generator through ``torch.compile`` (first steps pay the compilation).
        amp: bf16 autocast for the generator (output cast to fp32: FFTs and loss stay fp32);
            meant for CUDA.
        cuda_graph: replay the step as a CUDA graph (:mod:`oes_mri.solvers.loop`; CUDA only;
            not with ``input_jitter``).
        input_jitter: std of Gaussian noise added to the generator's fixed input ``z`` at every
            step (DIP's ``reg_noise_std``; 0 = off). Then ``last`` and the monitored outputs are
            at the clean input, while ``best`` and ``ema`` are of perturbed outputs.
        jitter_seed: seed of that noise.
        schedule: learning-rate schedule over the ``steps``, "constant" or "cosine" (decays to 0;
            :func:`oes_mri.optim.lr_schedule`).

    Raises:
        FitDiverged: a NaN/Inf loss (the caller retries with a smaller learning rate).
    """
    device = next(gen.parameters()).device
    graph = use_cuda_graph(cuda_graph, device, compile, input_jitter)
    handles = weight_mask.apply_(gen) if weight_mask is not None else []
    gen.train()
    clean = generator_forward(gen, compile, amp)
    forward = jittered_input(clean, gen.z, input_jitter, jitter_seed) if input_jitter else clean
    opt, after_step = fit_optimizer(gen.parameters(), lr, steps, schedule, capturable=graph)
    record, logs = Record(steps, ema_decay), []

    def step() -> tuple[torch.Tensor, torch.Tensor]:
        out = forward()
        loss = loss_fn(out)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if weight_mask is not None:
            weight_mask.reapply_(gen)
        return out.detach(), loss.detach()

    def on_log(i: int, out: torch.Tensor, loss: torch.Tensor) -> None:
        if monitor is not None and input_jitter:
            with torch.no_grad():
                out = clean()                            # monitor the clean-input output
        info = {"loss": check_finite(loss, i)[0], **(monitor(out) if monitor is not None else {})}
        if monitor is not None:
            logs.append({"step": i, **info})
        if progress is not None:
            progress(i, info)

    try:
        out, _ = run_steps(step, steps, record, log_every, on_log, graph, after_step)
        if input_jitter:
            with torch.no_grad():
                out = clean().detach()
    finally:
        for h in handles:
            h.remove()
    ema = record.ema.clone() if record.ema is not None else None
    return FitResult(out, record.best.clone(), float(record.best_loss), ema, record.losses.tolist(), logs)
