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
from oes_mri.solvers.dip import FitResult, split_objective, stop_outcome, use_cuda_graph
from oes_mri.solvers.loop import LOG_EVERY, StopRule, check_finite, make_record, run_steps


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
                lr: float = 1e-2, weight_masks: Sequence[WeightMask | None] | None = None, log_every: int = LOG_EVERY,
                monitors: Sequence[Callable[[torch.Tensor], dict] | None] | None = None,
                progress: Callable[[int, dict], None] | None = None, cuda_graph: bool = False,
                schedule: str = "constant", stop: StopRule | None = None) -> list[FitResult]:
    """Fit ``gens[b]`` to minimise ``loss_fns[b](gens[b]())`` for every b at once (Adam).

    Args:
        gens: B generators of one architecture and output size (their weights are updated
            in place at the end: each to its weights when its stopping rule fired, as a
            one-slice fit ends there).
        loss_fns: B data terms, each a scalar or ``(fit loss, validation loss)`` (all alike).
        steps, lr, log_every, cuda_graph, schedule: as in :func:`~oes_mri.solvers.dip.fit`.
        weight_masks: B masks (``None`` entries: dense).
        monitors: B optional ``monitor(output) -> dict`` called every ``log_every`` steps.
        progress: ``progress(step, {'loss': mean loss, **monitor of the first slice})``.
        stop: the stopping rule for the B slices; each slice's chosen iterate is frozen when its
            rule fires (as in a one-slice fit), and the batch stops when every slice has.

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
    record, logs = make_record(steps, stop), [[] for _ in range(B)]

    def step() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        eff = {n: p * stacked[n] if n in stacked else p for n, p in params.items()}
        out = batched(eff, buffers)
        pairs = [split_objective(fn(out[b])) for b, fn in enumerate(loss_fns)]
        each = torch.stack([p[0] for p in pairs])
        val = torch.stack([p[1] for p in pairs]).detach() if pairs[0][1] is not None else None
        opt.zero_grad(set_to_none=True)
        each.sum().backward()
        opt.step()
        return out.detach(), each.detach(), val

    frozen: dict[int, dict[str, torch.Tensor]] = {}     # slice -> its weights when its rule fired

    def on_log(i: int, out: torch.Tensor, each: torch.Tensor) -> bool:
        values = check_finite(each, i)
        vals = record.vals[i - 1].tolist() if record.vals is not None else None
        done = stop is not None and stop(record, i, out, last=i == steps)
        for b in range(B) if stop is not None else ():
            if stop.stop_step[b] is not None and b not in frozen:
                frozen[b] = {n: p[b].detach().clone() for n, p in params.items()}
        for b, mon in enumerate(monitors):
            if mon is not None:
                logs[b].append({"step": i, "loss": values[b], **({"val": vals[b]} if vals else {}), **mon(out[b])})
        if progress is not None:
            progress(i, {**(logs[0][-1] if logs[0] else {}), "loss": sum(values) / B})
        return done

    out, _ = run_steps(step, steps, record, log_every, on_log, graph, after_step)
    with torch.no_grad():
        for b, g in enumerate(gens):
            for n, p in g.named_parameters():
                p.copy_(frozen[b][n] if b in frozen else params[n][b])
    n = record.steps_run()
    results = []
    for b in range(B):
        steps_b, reason = stop_outcome(stop, b, n)
        vals = record.vals[:steps_b, b].tolist() if record.vals is not None else []
        results.append(FitResult(out[b], record.best[b].clone(), float(record.best_score[b]), None,
                                 record.losses[:steps_b, b].tolist(), [r for r in logs[b] if r["step"] <= steps_b],
                                 vals, int(record.best_step[b]),
                                 steps_b, reason))
    return results
