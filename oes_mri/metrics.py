"""fastMRI-exact evaluation: NMSE, PSNR, SSIM per volume (and per slice for plots).

The numbers are those of ``python -m fastmri.evaluate``: per volume ``NMSE = ||x - y||^2 / ||x||^2``, ``PSNR`` with ``data_range = max`` of the cropped
target volume and ``SSIM`` = mean over slices of skimage's ``structural_similarity`` with
the same ``data_range``. The functions are ``fastmri.evaluate``'s own, on the whole target
(the recon size: 320x320 for fastMRI knee and brain).

One deviation, said here: ``fastmri.evaluate``'s command line also crops both arrays to
``(W, W)``, ``W`` the target width, a no-op for the square fastMRI targets; for a non-square
target (the shared 230x180 brain) we score the whole target unless ``square_crop=True``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class VolumeMetrics(NamedTuple):
    """Volume-wise fastMRI metrics."""

    nmse: float
    psnr: float
    ssim: float


def fastmri_crop(target: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both ``[slices, rH, rW]`` arrays as ``fastmri.evaluate`` does: to ``(rW, rW)``.

    When the target is wider than tall (no square crop fits) nothing is cropped.
    """
    from fastmri.data.transforms import center_crop

    w = target.shape[-1]
    if target.shape[-2] < w:
        return target, pred
    return center_crop(target, (w, w)), center_crop(pred, (w, w))


def scorable(target: np.ndarray | None) -> str | None:
    """Why ``target`` cannot be scored against (non-finite values, all zero), or ``None`` if it can."""
    if target is None:
        return None
    t = np.asarray(target)
    if not np.isfinite(t).all():
        return "the target holds NaN or Inf values"
    if not np.abs(t).max() > 0:
        return "the target is all zero"
    return None


def volume_metrics(target: np.ndarray, pred: np.ndarray, square_crop: bool = False) -> VolumeMetrics:
    """NMSE, PSNR, SSIM of a volume ``[slices, rH, rW]`` with ``fastmri.evaluate``'s functions.

    Args:
        target, pred: ``[slices, rH, rW]`` (or one slice ``(rH, rW)``).
        square_crop: crop to ``(rW, rW)`` first, as ``fastmri.evaluate``'s command line does.
    """
    from fastmri.evaluate import nmse, psnr, ssim

    target = np.asarray(target, np.float32)
    pred = np.asarray(pred, np.float32)
    if target.ndim == 2:
        target, pred = target[None], pred[None]
    if target.shape != pred.shape:
        raise ValueError(f"target {target.shape} and prediction {pred.shape} differ in shape")
    t, p = fastmri_crop(target, pred) if square_crop else (target, pred)
    return VolumeMetrics(*(np.asarray(f(t, p)).item() for f in (nmse, psnr, ssim)))


def slice_metrics(target: np.ndarray, pred: np.ndarray, maxval: float | None = None) -> tuple[float, float]:
    """PSNR and SSIM of one slice ``(rH, rW)`` with ``data_range = maxval`` (default: the
    slice's target max): the per-slice values behind curves and figures."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    t, p = np.asarray(target, np.float32), np.asarray(pred, np.float32)
    rng = float(t.max()) if maxval is None else float(maxval)
    return (float(peak_signal_noise_ratio(t, p, data_range=rng)),
            float(structural_similarity(t, p, data_range=rng)))
