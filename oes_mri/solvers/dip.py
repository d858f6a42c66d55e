"""The fit loop shared by dense DIP and Sparse-DIP, and the k-space problem it fits.

Problem: measured k-space ``y`` ``(C, H, W)``, mask ``M``, operator ``A``
(:class:`~oes_mri.physics.operator.MultiCoilOp`: SENSE with maps, per-coil without). The data is scaled to the generator's
output at init, ``y_s = s y`` with ``s = ||G(z)|| / ||A^H y||`` (ConvDecoder's rule; without
it mask learning shrinks the output and pruning removes whole layers), and the loss is the
normalised data term ``||A G(z) - y_s||^2 / ||y_s||^2``. Images are divided by ``s`` after.

Fit: Adam on the generator's weights (masked weights stay exactly zero), BatchNorm in
training mode, a fixed input, up to ``steps`` iterations; returns the last iterate, the
chosen iterate (lowest held-out error when part of the samples is held out, else lowest data
loss; no ground truth either way) and optionally an exponential moving average of the output.
With a hold-out, a stopping rule (:class:`~oes_mri.solvers.loop.ValidationStop`) ends the
fit. No host-device sync inside the loop except every ``log_every`` steps; on CUDA the step can be replayed as a CUDA graph
(:mod:`oes_mri.solvers.loop`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import torch
from torch import nn

from oes_mri.optim import fit_optimizer
from oes_mri.physics.holdout import KspaceSplit
from oes_mri.physics.operator import MultiCoilOp
from oes_mri.pruning.weightmask import WeightMask
from oes_mri.solvers.loop import (LOG_EVERY, FitDiverged, StopRule, check_finite, make_record,  # noqa: F401
                                  run_steps)  # FitDiverged: API


class KspaceProblem(NamedTuple):
    """A scaled k-space fitting problem, optionally with held-out samples.

    The residual ``r = A G(z) - y_s`` is computed once over every measured sample; the fit
    loss sums ``|r|^2`` over the fit set, the validation loss over the held-out set (both
    normalised by the energy of ``y_s`` on that set: 1 is the error of predicting zeros).

    Attributes:
        y: scaled measured k-space ``s * y``, ``(C, H, W)`` (every measured sample).
        op: the operator with the measured mask: SENSE (the generator makes 1 image) or
            per coil (C coil images).
        scale: ``s``; divide generator images by it to return to the data's scale.
        y_norm2: ``||M_fit s y||^2``.
        fit_mask: ``M_fit`` (``None``: every measured sample is fitted).
        val_mask: ``M_val`` (``None``: nothing held out).
        val_norm2: ``||M_val s y||^2`` (``None`` without a hold-out).
    """

    y: torch.Tensor
    op: MultiCoilOp
    scale: float
    y_norm2: torch.Tensor
    fit_mask: torch.Tensor | None = None
    val_mask: torch.Tensor | None = None
    val_norm2: torch.Tensor | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``A`` applied to generator output ``(K, H, W)``."""
        return self.op(images[0] if self.op.sense else images)

    def _error(self, images: torch.Tensor) -> torch.Tensor:
        r = self.forward(images) - self.y
        return r.real.square() + r.imag.square()

    def data_error(self, images: torch.Tensor) -> torch.Tensor:
        """``||M (A x - y_s)||^2 / ||M y_s||^2`` over every measured sample, fit and held out
        (1: the error of predicting zeros)."""
        return self._error(images).sum() / (self.y.real.square() + self.y.imag.square()).sum()

    def loss(self, images: torch.Tensor) -> torch.Tensor:
        """The fit loss ``||M_fit (A x - y_s)||^2 / ||M_fit y_s||^2``."""
        e = self._error(images)
        return (e if self.fit_mask is None else e * self.fit_mask).sum() / self.y_norm2

    def objective(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(fit loss, validation loss)`` from one forward pass; the validation loss is
        ``||M_val (A x - y_s)||^2 / ||M_val y_s||^2``, or ``None`` without a hold-out."""
        if self.val_mask is None:
            return self.loss(images), None
        e = self._error(images)
        return (e * self.fit_mask).sum() / self.y_norm2, (e * self.val_mask).sum() / self.val_norm2

    def coil_images(self, images: torch.Tensor) -> torch.Tensor:
        """Coil images ``(C, H, W)`` on the data's scale (``S x / s`` or ``x_c / s``)."""
        return self.op.coil_images(images[0] if self.op.sense else images) / self.scale


def make_problem(kspace: torch.Tensor, mask: torch.Tensor, maps: torch.Tensor | None,
                 init_output: torch.Tensor, split: KspaceSplit | None = None) -> KspaceProblem:
    """Build the scaled problem for a generator whose output at init is ``init_output``;
    with ``split``, only ``split.fit`` is fitted and ``split.val`` is held out (the scale
    ``s`` comes from the fit set)."""
    def operator(m: torch.Tensor) -> MultiCoilOp:
        return MultiCoilOp(m, maps).to(kspace.device)

    fit_mask = split.fit.to(kspace.device) if split is not None else mask
    op = operator(mask)
    zf = (op if split is None else operator(fit_mask)).adjoint(kspace)
    s = float(init_output.detach().norm() / zf.norm().clamp_min(1e-30))
    y = kspace * s
    if split is None:
        return KspaceProblem(y, op, s, (y.abs() ** 2).sum())
    val_mask = split.val.to(kspace.device)
    return KspaceProblem(y, op, s, ((y * fit_mask).abs() ** 2).sum(), fit_mask, val_mask,
                         ((y * val_mask).abs() ** 2).sum())


@dataclass
class FitResult:
    """Outputs of :func:`fit` (generator images ``(K, H, W)``, unscaled)."""

    last: torch.Tensor
    best: torch.Tensor
    best_loss: float
    ema: torch.Tensor | None
    losses: list[float]
    monitor: list[dict] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    """validation loss per step (empty without a hold-out)"""
    best_step: int = 0
    """1-based step of ``best`` (lowest validation loss, or fit loss without a hold-out)"""
    steps: int = 0
    """steps this slice ran: where its stopping rule fired, else every step"""
    stop: str = "cap"
    """why it stopped: "patience", "fallback" (uninformative hold-out) or "cap" """


def split_objective(value: torch.Tensor | tuple) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A loss function's value as ``(fit loss, validation loss or None)``: loss functions
    return a scalar, or a pair (:meth:`KspaceProblem.objective`)."""
    return value if isinstance(value, tuple) else (value, None)


def stop_outcome(rule: StopRule | None, b: int, steps_run: int) -> tuple[int, str]:
    """``(steps, reason)`` of slice ``b`` after a loop of ``steps_run`` steps."""
    if rule is None or rule.stop_step[b] is None:
        return steps_run, "cap"
    return rule.stop_step[b], rule.reason[b]


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
        weight_mask: WeightMask | None = None, *, ema_decay: float | None = None, log_every: int = LOG_EVERY,
        monitor: Callable[[torch.Tensor], dict] | None = None,
        progress: Callable[[int, dict], None] | None = None, compile: bool = False,
        amp: bool = False, cuda_graph: bool = False, input_jitter: float = 0.0, jitter_seed: int = 0,
        schedule: str = "constant", stop: StopRule | None = None, channels_last: bool = False) -> FitResult:
    """Fit ``gen`` to minimise ``loss_fn(gen())`` with Adam (in place).

    Args:
        gen: generator (dense, or pruned by ``weight_mask``).
        loss_fn: data term of the generator output: a scalar, or ``(fit loss, validation
            loss)`` (:meth:`KspaceProblem.objective`); with a validation loss, ``best`` is the
            lowest-validation iterate.
        steps: iterations (the cap, with ``stop``).
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
        channels_last: run the generator in channels_last memory format (a CPU fast path,
            :mod:`oes_mri.solvers.fastpath`).
        stop: a stopping rule for the one slice (:class:`~oes_mri.solvers.loop.ValidationStop`
            or another :class:`~oes_mri.solvers.loop.StopRule`), checked every ``log_every`` steps.

    Raises:
        FitDiverged: a NaN/Inf loss (the caller retries with a smaller learning rate).
    """
    device = next(gen.parameters()).device
    graph = use_cuda_graph(cuda_graph, device, compile, input_jitter)
    if channels_last:
        gen.to(memory_format=torch.channels_last)
    handles = weight_mask.apply_(gen) if weight_mask is not None else []
    gen.train()
    clean = generator_forward(gen, compile, amp)
    forward = jittered_input(clean, gen.z, input_jitter, jitter_seed) if input_jitter else clean
    opt, after_step = fit_optimizer(gen.parameters(), lr, steps, schedule, capturable=graph)
    record, logs = make_record(steps, stop, ema_decay), []

    def step() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        out = forward()
        loss, val = split_objective(loss_fn(out))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if weight_mask is not None:
            weight_mask.reapply_(gen)
        return out.detach(), loss.detach(), None if val is None else val.detach()

    def on_log(i: int, out: torch.Tensor, loss: torch.Tensor) -> bool:
        info = {"loss": check_finite(loss, i)[0]}
        if record.vals is not None:
            info["val"] = float(record.vals[i - 1])
            info["val_smoothed"] = float(record.score)      # what the stopping rule reads
        done = stop is not None and stop(record, i, out, last=i == steps)
        if monitor is not None and input_jitter:
            with torch.no_grad():
                out = clean()                            # monitor the clean-input output
        info.update(monitor(out) if monitor is not None else {})
        if monitor is not None:
            logs.append({"step": i, **info})
        if progress is not None:
            progress(i, info)
        return done

    try:
        out, _ = run_steps(step, steps, record, log_every, on_log, graph, after_step)
        if input_jitter:
            with torch.no_grad():
                out = clean().detach()
    finally:
        for h in handles:
            h.remove()
    ema = record.ema.clone() if record.ema is not None else None
    n = record.steps_run()
    vals = record.vals[:n].tolist() if record.vals is not None else []
    return FitResult(out, record.best.clone(), float(record.best_score), ema, record.losses[:n].tolist(), logs,
                     vals, int(record.best_step), *stop_outcome(stop, 0, n))
