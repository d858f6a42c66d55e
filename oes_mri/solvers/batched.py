"""Fit B slices at once: B independent generators (same architecture and output size),
each with its own weights, weight mask, BatchNorm statistics and data term, evaluated as one
batched network.

The B networks' parameters are stacked (``torch.func.stack_module_state``) and the network is
run under ``torch.func.vmap`` (convolutions become grouped convolutions; BatchNorm statistics
stay per slice, as in B separate runs). The loss is the sum of the B normalised data terms;
because the parameters are disjoint, each slice gets exactly its own gradient, and Adam is
elementwise, so every slice follows the same path as a one-slice :func:`~oes_mri.solvers.dip.fit`
up to floating-point rounding. Masks are applied as ``w * m`` in the forward pass (pruned
weights are zero at the start and get zero gradients, so they stay exactly zero).
"""

from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from oes_mri.optim import fit_optimizer
from oes_mri.pruning.weightmask import WeightMask
from oes_mri.solvers.dip import FitResult, use_cuda_graph
from oes_mri.solvers.loop import Record, check_finite, run_steps


def _stacked_masks(params: dict[str, torch.Tensor], masks: Sequence[WeightMask | None]) -> dict[str, torch.Tensor]:
    """Per-name ``(B, ...)`` float masks for the names any slice prunes (ones where a slice doesn't)."""
    names = sorted({n for wm in masks if wm is not None for n in wm.masks})
    out = {}
    for n in names:
        p = params[n]
        out[n] = torch.stack([wm.masks[n].to(p.device, p.dtype) if wm is not None and n in wm.masks
                              else torch.ones_like(p[0]) for wm in masks])
    return out


def fit_batched(gens: Sequence[nn.Module], loss_fns: Sequence[Callable[[torch.Tensor], torch.Tensor]], steps: int,
                lr: float = 1e-2, weight_masks: Sequence[WeightMask | None] | None = None, log_every: int = 50,
                monitors: Sequence[Callable[[torch.Tensor], dict] | None] | None = None,
                progress: Callable[[int, dict], None] | None = None, cuda_graph: bool = False,
                schedule: str = "constant") -> list[FitResult]:
    """Fit ``gens[b]`` to minimise ``loss_fns[b](gens[b]())`` for every b at once (Adam).

    Args:
        gens: B generators of one architecture and output size (their weights are updated
            in place at the end).
        loss_fns: B scalar data terms.
        steps, lr, log_every, cuda_graph, schedule: as in :func:`~oes_mri.solvers.dip.fit`.
        weight_masks: B masks (``None`` entries: dense).
        monitors: B optional ``monitor(output) -> dict`` called every ``log_every`` steps.
        progress: ``progress(step, {'loss': mean loss, **monitor of the first slice})``.

    Returns:
        B :class:`~oes_mri.solvers.dip.FitResult` (outputs ``(K, H, W)``).

    Raises:
        FitDiverged: any slice's loss became NaN/Inf.
    """
    B = len(gens)
    masks = list(weight_masks) if weight_masks is not None else [None] * B
    monitors = list(monitors) if monitors is not None else [None] * B
    for g, wm in zip(gens, masks):
        if wm is not None:
            wm.check_fits(g)
    params, buffers = stack_module_state(list(gens))
    graph = use_cuda_graph(cuda_graph, next(iter(params.values())).device)
    stacked = _stacked_masks(params, masks)
    with torch.no_grad():
        for n, m in stacked.items():
            params[n].mul_(m)
    base = copy.deepcopy(gens[0]).to("meta")
    batched = vmap(lambda p, b: functional_call(base, (p, b), ()), randomness="error")
    for g in gens:
        g.train()
    base.train()
    opt, after_step = fit_optimizer(params.values(), lr, steps, schedule, capturable=graph)
    record, logs = Record(steps), [[] for _ in range(B)]

    def step() -> tuple[torch.Tensor, torch.Tensor]:
        eff = {n: p * stacked[n] if n in stacked else p for n, p in params.items()}
        out = batched(eff, buffers)
        each = torch.stack([fn(out[b]) for b, fn in enumerate(loss_fns)])
        opt.zero_grad(set_to_none=True)
        each.sum().backward()
        opt.step()
        return out.detach(), each.detach()

    def on_log(i: int, out: torch.Tensor, each: torch.Tensor) -> None:
        values = check_finite(each, i)
        for b, mon in enumerate(monitors):
            if mon is not None:
                logs[b].append({"step": i, "loss": values[b], **mon(out[b])})
        if progress is not None:
            progress(i, {**(logs[0][-1] if logs[0] else {}), "loss": sum(values) / B})

    out, _ = run_steps(step, steps, record, log_every, on_log, graph, after_step)
    with torch.no_grad():
        for b, g in enumerate(gens):
            for n, p in g.named_parameters():
                p.copy_(params[n][b])
    per_slice = record.losses.T.tolist()
    return [FitResult(out[b], record.best[b].clone(), float(record.best_loss[b]), None, per_slice[b], logs[b])
            for b in range(B)]
