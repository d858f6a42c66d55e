"""The one fit of untrained generators, dense DIP and Sparse-DIP alike: :func:`fit_batch`.

Fit: Adam on the generators' weights (masked weights stay exactly zero), BatchNorm in training
mode, a fixed input, up to ``steps`` iterations; returns per generator the last iterate, the
chosen iterate (lowest held-out error when part of the samples is held out, else lowest data
loss; no ground truth either way) and optionally an exponential moving average of the output.
With a hold-out, a stopping rule (:mod:`oes_mri.fit.stopping`) ends each fit. No host-device
sync inside the loop except every ``log_every`` steps; on CUDA the step can be replayed as a
CUDA graph (:mod:`oes_mri.fit.loop`).

A single fit is a batch of one, run eagerly on the generator itself (a weight mask through
hooks; ``torch.compile``, bf16 autocast, input jitter and channels_last available). B > 1
generators of one architecture and output size are run as one batched network: their
parameters stacked (``torch.func.stack_module_state``) and the network run under
``torch.func.vmap`` (convolutions become grouped convolutions; BatchNorm statistics stay per
generator). The loss is the sum of the B data terms; the parameters are disjoint, so each
generator gets exactly its own gradient, and Adam is elementwise: every generator follows the
path of its own single fit up to floating-point rounding. Masks are then applied as ``w * m``
in the forward pass (pruned weights start at zero and get zero gradients). The step, the
record, the logging and the results are the same code for both.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from oes_mri.fit.loop import LOG_EVERY, FitDiverged, check_finite, run_steps
from oes_mri.fit.stopping import StopRule, make_record
from oes_mri.optim import fit_optimizer
from oes_mri.pruning.weightmask import WeightMask

LossFn = Callable[[torch.Tensor], "torch.Tensor | tuple[torch.Tensor, torch.Tensor]"]
"""A data term of one generator's output ``(K, H, W)``: a scalar fit loss, or ``(fit loss,
validation loss)`` (:meth:`~oes_mri.fit.problem.KspaceProblem.objective`)."""

__all__ = ["FitDiverged", "FitResult", "LossFn", "fit", "fit_batch", "generator_forward", "use_cuda_graph"]


@dataclass
class FitResult:
    """Outputs of one generator's fit (generator images ``(K, H, W)``, unscaled)."""

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
    """steps this fit ran: where its stopping rule fired, else every step"""
    stop: str = "cap"
    """why it stopped: the rule's reason (:data:`oes_mri.fit.stopping.REASONS`) or "cap" """
    seen: dict = field(default_factory=dict)
    """what the stopping rule saw when it decided (:attr:`ValidationStop.seen`)"""


def split_objective(value: torch.Tensor | tuple) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A loss function's value as ``(fit loss, validation loss or None)``."""
    return value if isinstance(value, tuple) else (value, None)


def stop_outcome(rule: StopRule | None, b: int, steps_run: int) -> tuple[int, str]:
    """``(steps, reason)`` of fit ``b`` after a loop of ``steps_run`` steps."""
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


@dataclass
class _Network:
    """How a batch of generators runs: ``forward() -> (B, K, H, W)``, the parameters Adam
    updates, what follows each optimiser step, the clean-input forward pass (monitoring under
    input jitter), the weights of fit ``b`` now, and what ends the fit."""

    forward: Callable[[], torch.Tensor]
    params: list[torch.Tensor]
    after_opt: Callable[[], None]
    clean: Callable[[], torch.Tensor]
    weights: Callable[[int], dict[str, torch.Tensor]]
    finish: Callable[[dict[int, dict[str, torch.Tensor]]], None]


def _single(gen: nn.Module, weight_mask: WeightMask | None, compile: bool, amp: bool, input_jitter: float,
            jitter_seed: int, channels_last: bool) -> _Network:
    """One generator, run eagerly on itself (a batch of one)."""
    if channels_last:
        gen.to(memory_format=torch.channels_last)
    handles = weight_mask.apply_(gen) if weight_mask is not None else []
    gen.train()
    clean = generator_forward(gen, compile, amp)
    forward = jittered_input(clean, gen.z, input_jitter, jitter_seed) if input_jitter else clean

    def finish(frozen: dict) -> None:
        for h in handles:
            h.remove()
    return _Network(lambda: forward()[None], list(gen.parameters()),
                    (lambda: weight_mask.reapply_(gen)) if weight_mask is not None else (lambda: None),
                    lambda: clean()[None], lambda b: {}, finish)


def _stacked(gens: Sequence[nn.Module], masks: Sequence[WeightMask | None]) -> _Network:
    """B generators as one batched network (``vmap`` over stacked parameters)."""
    for g, wm in zip(gens, masks):
        if wm is not None:
            wm.check_fits(g)
    params, buffers = stack_module_state(list(gens))
    names = sorted({n for wm in masks if wm is not None for n in wm.masks})
    stacked = {n: torch.stack([wm.masks[n].to(params[n].device, params[n].dtype)
                               if wm is not None and n in wm.masks else torch.ones_like(params[n][0])
                               for wm in masks]) for n in names}
    with torch.no_grad():
        for n, m in stacked.items():
            params[n].mul_(m)
    base = copy.deepcopy(gens[0]).to("meta")
    batched = vmap(lambda p, b: functional_call(base, (p, b), ()), randomness="error")
    for g in gens:
        g.train()
    base.train()

    def forward() -> torch.Tensor:
        return batched({n: p * stacked[n] if n in stacked else p for n, p in params.items()}, buffers)

    def finish(frozen: dict[int, dict[str, torch.Tensor]]) -> None:
        """Each generator gets its weights where its rule fired (as its single fit ends there)."""
        with torch.no_grad():
            for b, g in enumerate(gens):
                for n, p in g.named_parameters():
                    p.copy_(frozen[b][n] if b in frozen else params[n][b])
    return _Network(forward, list(params.values()), lambda: None, forward,
                    lambda b: {n: p[b].detach().clone() for n, p in params.items()}, finish)


def fit_batch(gens: Sequence[nn.Module], loss_fns: Sequence[LossFn], steps: int, lr: float = 1e-2,
              weight_masks: Sequence[WeightMask | None] | None = None, *, ema_decay: float | None = None,
              log_every: int = LOG_EVERY, monitors: Sequence[Callable[[torch.Tensor], dict] | None] | None = None,
              progress: Callable[[int, dict], None] | None = None, compile: bool = False, amp: bool = False,
              cuda_graph: bool = False, input_jitter: float = 0.0, jitter_seed: int = 0,
              schedule: str = "constant", stop: StopRule | None = None,
              channels_last: bool = False) -> list[FitResult]:
    """Fit ``gens[b]`` to minimise ``loss_fns[b](gens[b]())`` for every b at once, with Adam (in place).

    Args:
        gens: B generators of one architecture and output size (each ends with its weights
            where its stopping rule fired).
        loss_fns: B data terms, each a scalar or ``(fit loss, validation loss)`` (all alike);
            with a validation loss, ``best`` is the lowest-validation iterate.
        steps: iterations (the cap, with ``stop``).
        lr: Adam learning rate (of the first step).
        weight_masks: B masks of kept weights (``None`` entries: dense); pruned weights stay
            exactly zero.
        ema_decay: if set, also return ``ema = d * ema + (1 - d) * output``.
        log_every: check for divergence, call ``monitors``, ``progress`` and ``stop`` every so
            many steps.
        monitors: B optional ``monitor(output) -> dict`` (e.g. PSNR against a target), logged
            with the step.
        progress: ``progress(step, {'loss': mean loss, 'val': ..., **first monitor})``.
        compile, amp, input_jitter, jitter_seed, channels_last: a single fit's options (B = 1
            only): ``torch.compile``; bf16 autocast for the generator (FFTs and loss stay fp32);
            std of Gaussian noise added to the fixed input at every step (DIP's
            ``reg_noise_std``; then ``last`` and the monitored outputs are at the clean input,
            ``best`` and ``ema`` of perturbed outputs) and its seed; channels_last memory format.
        cuda_graph: replay the step as a CUDA graph (:mod:`oes_mri.fit.loop`; CUDA only).
        schedule: learning-rate schedule (:func:`oes_mri.optim.lr_schedule`).
        stop: the stopping rule for the B fits (:mod:`oes_mri.fit.stopping`); each fit's chosen
            iterate is frozen when its rule fires, and the batch stops when every fit has.

    Raises:
        FitDiverged: a NaN/Inf loss (the caller retries with a smaller learning rate).
        ValueError: an option that does not run batched, with B > 1.
    """
    B = len(gens)
    masks = list(weight_masks) if weight_masks is not None else [None] * B
    monitors = list(monitors) if monitors is not None else [None] * B
    single_only = [n for n, on in (("compile", compile), ("amp", amp), ("input_jitter", input_jitter),
                                   ("ema_decay", ema_decay is not None), ("channels_last", channels_last)) if on]
    if B > 1 and single_only:
        raise ValueError(f"{', '.join(single_only)}: a single fit's option(s); fit the {B} generators one at a time")
    graph = use_cuda_graph(cuda_graph, next(gens[0].parameters()).device, compile, input_jitter)
    net = (_single(gens[0], masks[0], compile, amp, input_jitter, jitter_seed, channels_last) if B == 1
           else _stacked(gens, masks))
    opt, after_step = fit_optimizer(net.params, lr, steps, schedule, capturable=graph)
    record, logs = make_record(steps, stop, ema_decay), [[] for _ in range(B)]
    frozen: dict[int, dict[str, torch.Tensor]] = {}     # fit -> its weights when its rule fired

    def step() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        out = net.forward()
        pairs = [split_objective(fn(out[b])) for b, fn in enumerate(loss_fns)]
        each = torch.stack([p[0] for p in pairs])
        val = torch.stack([p[1] for p in pairs]).detach() if pairs[0][1] is not None else None
        opt.zero_grad(set_to_none=True)
        each.sum().backward()
        opt.step()
        net.after_opt()
        return out.detach(), each.detach(), val

    def on_log(i: int, out: torch.Tensor, each: torch.Tensor) -> bool:
        values = check_finite(each, i)
        vals = record.vals[i - 1].tolist() if record.vals is not None else None
        smoothed = record.score.tolist() if record.vals is not None else None
        done = stop is not None and stop(record, i, out, last=i == steps)
        for b in range(B) if stop is not None and B > 1 else ():
            if stop.stop_step[b] is not None and b not in frozen:
                frozen[b] = net.weights(b)
        if input_jitter and any(monitors):
            with torch.no_grad():
                out = net.clean()                        # monitor the clean-input output
        infos = []
        for b, mon in enumerate(monitors):
            info = {"loss": values[b], **({"val": vals[b], "val_smoothed": smoothed[b]} if vals else {})}
            info.update(mon(out[b]) if mon is not None else {})
            if mon is not None:
                logs[b].append({"step": i, **info})
            infos.append(info)
        if progress is not None:
            progress(i, {**infos[0], "loss": sum(values) / B})
        return done

    try:
        out, _ = run_steps(step, steps, record, log_every, on_log, graph, after_step)
        if input_jitter:
            with torch.no_grad():
                out = net.clean().detach()
    finally:
        net.finish(frozen)
    n = record.steps_run()
    results = []
    for b in range(B):
        steps_b, reason = stop_outcome(stop, b, n)
        results.append(FitResult(out[b], record.best[b].clone(), float(record.best_score[b]),
                                 record.ema[b].clone() if record.ema is not None else None,
                                 record.losses[:steps_b, b].tolist(), [r for r in logs[b] if r["step"] <= steps_b],
                                 record.vals[:steps_b, b].tolist() if record.vals is not None else [],
                                 int(record.best_step[b]), steps_b, reason,
                                 dict(getattr(stop, "seen", [{}] * B)[b])))
    return results


def fit(gen: nn.Module, loss_fn: LossFn, steps: int, lr: float = 1e-2, weight_mask: WeightMask | None = None, *,
        monitor: Callable[[torch.Tensor], dict] | None = None, **options) -> FitResult:
    """One generator's fit: :func:`fit_batch` with a batch of one (``options`` as there)."""
    return fit_batch([gen], [loss_fn], steps, lr, [weight_mask], monitors=[monitor], **options)[0]
