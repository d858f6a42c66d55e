"""Regularisation weights chosen by held-out k-space, with no ground truth.

For a solver ``x(y, M, lamda)`` (CG-SENSE, L1-wavelet, TV) and a split ``M = M_fit + M_val``
(:mod:`oes_mri.physics.holdout`): solve on the fit set for each ``lamda`` of a grid, score
each by the relative held-out error ``||M_val (F S x - y)||^2 / ||M_val y||^2``, and keep the
lowest; the caller then solves once more with every measured sample at that weight.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch

from oes_mri.physics.fft import fft2c
from oes_mri.physics.holdout import KspaceSplit
from oes_mri.methods.solvers import Recon

Solver = Callable[[torch.Tensor, torch.Tensor, float], Recon]
"""``solve(kspace, mask, lamda) -> Recon`` on one slice."""


class LambdaChoice(NamedTuple):
    """The grid, each weight's held-out error and the chosen weight."""

    lamda: float
    grid: tuple[float, ...]
    errors: tuple[float, ...]


def heldout_error(coil_images: torch.Tensor, kspace: torch.Tensor, val_mask: torch.Tensor) -> float:
    """``||M_val (F x_c - y)||^2 / ||M_val y||^2`` for coil images ``(C, H, W)`` and measured
    k-space ``y`` ``(C, H, W)`` (1: the error of predicting zeros)."""
    r = (fft2c(coil_images) - kspace) * val_mask
    return float(r.abs().square().sum() / (kspace * val_mask).abs().square().sum().clamp_min(1e-30))


def choose_lambda(solve: Solver, kspace: torch.Tensor, split: KspaceSplit, grid: Sequence[float]) -> LambdaChoice:
    """The weight of ``grid`` whose fit-set solution best predicts the held-out samples.

    Args:
        solve: the solver, called ``len(grid)`` times on ``(M_fit y, M_fit, lamda)``.
        kspace: measured k-space ``(C, H, W)`` (zero where not sampled).
        split: fit and held-out masks.
        grid: candidate weights (ties go to the first).
    """
    if not grid:
        raise ValueError("empty lambda grid")
    fit_y = kspace * split.fit + 0.0
    errors = tuple(heldout_error(solve(fit_y, split.fit, lam).coil_images, kspace, split.val) for lam in grid)
    best = min(range(len(grid)), key=lambda i: errors[i])
    return LambdaChoice(float(grid[best]), tuple(float(g) for g in grid), errors)
