"""Held-out k-space for self-validation: split the measured samples into a fit set and a
validation set (ZS-SSL's hold-out, Yaman et al., ICLR 2022; ``docs/self_validation.md``).

A fit uses ``M_fit y`` only; the error of the model on ``M_val y`` tells, without ground truth,
how well it predicts samples it has not seen: when to stop, which regularisation weight wins.
``M_fit + M_val = M`` (disjoint, together the measured set). The calibration (ACS) region
always stays in the fit set: the coil maps come from it, and it holds most of the energy.

Shapes:
- ``points``: random k-space points among the measured non-ACS ones; the mask becomes 2-D
  ``(H, W)``. A held-out point keeps measured neighbours on its readout line.
- ``lines``: whole measured non-ACS phase-encode columns (what undersampling removes); the
  masks stay ``(1, W)`` for a column mask. Needs a column mask.

The share is of the measured non-ACS samples (points or lines), at least one is held out.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from oes_mri.physics.masks import find_acs

SHAPES = ("points", "lines")


class NothingToHoldOut(ValueError):
    """No measured sample outside the calibration region: nothing can be held out."""


class KspaceSplit(NamedTuple):
    """Two disjoint float32 masks whose sum is the measured mask.

    Attributes:
        fit: mask of the samples the model is fitted to, ``(1, W)`` or ``(H, W)``.
        val: mask of the held-out samples, same shape.
    """

    fit: torch.Tensor
    val: torch.Tensor


def _pick(candidates: torch.Tensor, share: float, seed: int, fold: int = 0) -> torch.Tensor:
    """``k = round(share * n)`` (at least 1) of the ``n`` flat ``candidates`` indices: block
    ``fold`` of one seeded permutation (``order[fold k : (fold + 1) k]``, wrapping past ``n``),
    so that folds 0, 1, ... hold out disjoint samples while ``(fold + 1) k <= n``."""
    n = candidates.numel()
    k = max(1, int(round(share * n)))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return candidates[order[(torch.arange(k) + fold * k) % n]]


def split_mask(mask: torch.Tensor, shape: tuple[int, int], share: float, kind: str = "points", seed: int = 0,
               acs: tuple[slice, slice] | None = None, fold: int = 0) -> KspaceSplit:
    """Hold out ``share`` of the measured non-ACS samples of ``mask``.

    Args:
        mask: binary sampling mask ``(1, W)`` or ``(H, W)`` (any device, float or bool).
        shape: k-space ``(H, W)``.
        share: held-out fraction of the measured non-ACS points or lines, in (0, 1).
        kind: ``"points"`` or ``"lines"`` (see the module docstring).
        seed: seed of the choice (same seed, same split).
        acs: the calibration region ``(rows, cols)``; found from the mask when ``None``.
        fold: which block of the seed's permutation is held out: folds of one seed are
            disjoint (K-fold averaging) as long as ``K * share <= 1``.

    Returns:
        :class:`KspaceSplit` on the mask's device; ``fit`` keeps every ACS sample.

    Raises:
        ValueError: an unknown kind, a share outside (0, 1), ``lines`` with a 2-D mask, or no
            measured sample outside the ACS region to hold out.
    """
    if kind not in SHAPES:
        raise ValueError(f"hold-out shape {kind!r}: expected one of {', '.join(SHAPES)}")
    if not 0.0 < share < 1.0:
        raise ValueError(f"hold-out share must be in (0, 1), got {share}")
    H, W = shape
    measured = (mask.detach() > 0).cpu()
    rows, cols = acs if acs is not None else find_acs(mask, shape)
    if kind == "lines":
        if measured.shape[0] != 1:
            raise ValueError("a 'lines' hold-out needs a column mask (1, W); use 'points' for a 2-D mask")
        free = measured[0].clone()
        free[cols] = False
        flat, out_shape = free, (1, W)
    else:
        free = measured.expand(H, W).clone()
        free[rows, cols] = False
        flat, out_shape = free.reshape(-1), (H, W)
    candidates = flat.nonzero().reshape(-1)
    if candidates.numel() == 0:
        raise NothingToHoldOut("no measured sample outside the calibration region to hold out")
    val = torch.zeros(flat.numel(), dtype=torch.bool)
    val[_pick(candidates, share, seed, fold)] = True
    val = val.reshape(out_shape)
    fit = measured.expand(out_shape) & ~val
    return KspaceSplit(fit.float().to(mask.device), val.float().to(mask.device))
