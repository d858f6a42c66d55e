"""How many weights each prunable tensor keeps: the layer-wise budget of a pruning mask.

Global top-k (the published OES thresholding) lets the scores decide the split over layers.
Magnitude pruning at init therefore keeps 30-60 % of the small-fan-in layers and the floor of
the 128-channel 5x5 convolutions (Kaiming init scales weights by ``1/sqrt(fan_in)``), while
short OES mask learning leaves its logits nearly uniform, so its global top-k keeps about the
target density in every tensor, like a random mask. A budget separates the two questions:
how much each tensor keeps (here) and which of its weights (the scores, per tensor).

- ``"global"``: no budget; global top-k of the scores.
- ``"uniform"``: every tensor keeps ``density``.
- ``"erk"``: Erdos-Renyi-Kernel (Evci et al., "Rigging the Lottery", ICML 2020): density of
  a ``(c_out, c_in, kh, kw)`` tensor proportional to ``(c_out + c_in + kh + kw) /
  (c_out c_in kh kw)``, capped at 1, scaled to the target.
- ``"magnitude"``: what global magnitude top-k at init keeps per tensor.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from oes_mri.pruning.weightmask import topk_masks

ALLOCATIONS = ("global", "uniform", "erk", "magnitude")


def erk_densities(shapes: dict[str, tuple[int, ...]], density: float) -> dict[str, float]:
    """ERK densities ``d_l = min(1, eps * sum(shape_l) / prod(shape_l))`` with ``eps`` such that
    ``sum_l d_l n_l = density * sum_l n_l`` (tensors that reach 1 are fixed dense and ``eps``
    is solved again for the rest)."""
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    raw = {n: sum(s) / sizes[n] for n, s in shapes.items()}
    dense: set[str] = set()
    target = density * sum(sizes.values())
    while True:
        free = [n for n in shapes if n not in dense]
        left = target - sum(sizes[n] for n in dense)
        eps = left / max(1e-30, sum(raw[n] * sizes[n] for n in free))
        over = [n for n in free if eps * raw[n] > 1]
        if not over:
            return {n: 1.0 if n in dense else eps * raw[n] for n in shapes}
        dense.update(over)


def _counts(fractions: dict[str, float], sizes: dict[str, int], total: int) -> dict[str, int]:
    """Integer counts ``<= size`` near ``fraction * size`` summing to ``total`` (largest remainder)."""
    want = {n: min(sizes[n], fractions[n] * sizes[n]) for n in sizes}
    counts = {n: math.floor(w) for n, w in want.items()}
    order = sorted(sizes, key=lambda n: counts[n] - want[n])          # largest remainder first
    left = total - sum(counts.values())
    while left > 0 and any(counts[n] < sizes[n] for n in order):
        for n in order:
            if left > 0 and counts[n] < sizes[n]:
                counts[n] += 1
                left -= 1
    return counts


def layer_budget(weights: dict[str, torch.Tensor], density: float, allocation: str = "global",
                 min_layer_density: float = 0.0) -> dict[str, int] | None:
    """Kept entries per tensor for ``allocation``; ``None`` for ``"global"``.

    Args:
        weights: the prunable tensors at init, by name.
        density: kept fraction over all of them; the counts sum to ``round(density * N)``.
        allocation: one of :data:`ALLOCATIONS`.
        min_layer_density: per-tensor floor ``ceil(min_layer_density * n)`` (the total then
            exceeds the target by what the floors add).
    """
    if allocation not in ALLOCATIONS:
        raise ValueError(f"layer allocation {allocation!r}: expected one of {', '.join(ALLOCATIONS)}")
    if allocation == "global":
        return None
    sizes = {n: w.numel() for n, w in weights.items()}
    if allocation == "uniform":
        fractions = {n: density for n in weights}
    elif allocation == "erk":
        fractions = erk_densities({n: tuple(w.shape) for n, w in weights.items()}, density)
    else:
        kept = topk_masks({n: w.detach().abs() for n, w in weights.items()}, density, min_layer_density)
        fractions = {n: float(m.float().mean()) for n, m in kept.items()}
    counts = _counts(fractions, sizes, round(density * sum(sizes.values())))
    return {n: max(c, min(sizes[n], math.ceil(min_layer_density * sizes[n]))) for n, c in counts.items()}


def module_budget(module: nn.Module, names: list[str], density: float, allocation: str = "global",
                  min_layer_density: float = 0.0) -> dict[str, int] | None:
    """:func:`layer_budget` of the parameters ``names`` of ``module`` (at init)."""
    params = dict(module.named_parameters())
    return layer_budget({n: params[n] for n in names}, density, allocation, min_layer_density)
