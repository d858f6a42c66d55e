"""Undersampling masks: fastMRI column masks (bit-identical), Poisson-disc, from a file.

Every mask is a :class:`SamplingMask`: a float tensor that broadcasts against k-space
``(..., C, H, W)`` — ``(1, W)`` for column masks, ``(H, W)`` for 2-D masks — plus its
realised acceleration and calibration (ACS) region.

fastMRI masks are made by ``fastmri.data.subsample.create_mask_for_mask_type`` itself (no
re-implementation), so they are the challenge's masks bit for bit, including the per-volume
seed ``tuple(map(ord, fname))`` (:func:`volume_seed`).
"""

from __future__ import annotations

import warnings

from typing import NamedTuple, Sequence

import numpy as np
import torch

FASTMRI_TYPES = ("random", "equispaced", "equispaced_fraction", "magic", "magic_fraction")


class SamplingMask(NamedTuple):
    """A sampling mask and what it implies.

    Attributes:
        mask: float32 tensor, ``(1, W)`` (columns) or ``(H, W)`` (2-D), values in {0, 1}.
        acceleration: realised acceleration, sampled fraction ``1 / mean(mask)`` over the grid
            (for column masks: ``W / sampled columns``).
        acs: calibration region as ``(row_slice, col_slice)`` of fully sampled k-space centre.
        kind: how it was made ("random", "equispaced", "poisson", "file", ...).
    """

    mask: torch.Tensor
    acceleration: float
    acs: tuple[slice, slice]
    kind: str

    @property
    def acs_width(self) -> int:
        """Number of fully sampled calibration columns."""
        return self.acs[1].stop - self.acs[1].start

    @property
    def acs_height(self) -> int:
        """Number of fully sampled calibration rows (``H`` for column masks)."""
        return self.acs[0].stop - self.acs[0].start

    def full(self, shape: tuple[int, int]) -> torch.Tensor:
        """The mask expanded to ``(H, W)``."""
        return self.mask.expand(shape).contiguous()


def volume_seed(fname: str) -> tuple[int, ...]:
    """fastMRI's per-volume mask seed: ``tuple(map(ord, fname))`` of the file's base name."""
    return tuple(map(ord, fname))


def default_center_fraction(acceleration: float) -> float:
    """fastMRI's centre fractions: 0.08 at 4x, 0.04 at 8x; otherwise ``0.32 / acceleration``."""
    return 0.32 / float(acceleration)


def _realised_acceleration(mask: torch.Tensor) -> float:
    frac = float(mask.float().mean())
    if frac <= 0:
        raise ValueError("sampling mask samples nothing")
    return 1.0 / frac


def _centre_run(line: np.ndarray) -> slice:
    """Largest contiguous sampled run containing the centre index ``n // 2``."""
    n = line.shape[0]
    c = n // 2
    if not line[c]:
        return slice(c, c)
    lo, hi = c, c + 1
    while lo > 0 and line[lo - 1]:
        lo -= 1
    while hi < n and line[hi]:
        hi += 1
    return slice(lo, hi)


def find_acs(mask: torch.Tensor, shape: tuple[int, int]) -> tuple[slice, slice]:
    """The fully sampled rectangle around the k-space centre.

    Args:
        mask: ``(1, W)`` or ``(H, W)`` binary mask.
        shape: k-space ``(H, W)``.

    Returns:
        ``(row_slice, col_slice)``; rows span all of ``H`` for column masks.
    """
    m = mask.detach().cpu().numpy() > 0
    H, W = shape
    if m.shape[0] == 1:
        return slice(0, H), _centre_run(m[0])
    r0, r1, c0, c1 = H // 2, H // 2 + 1, W // 2, W // 2 + 1
    if not m[r0, c0]:
        return slice(r0, r0), slice(c0, c0)
    grown = True
    while grown:  # grow each side while the new edge is fully sampled
        grown = False
        if r0 > 0 and m[r0 - 1, c0:c1].all():
            r0, grown = r0 - 1, True
        if r1 < H and m[r1, c0:c1].all():
            r1, grown = r1 + 1, True
        if c0 > 0 and m[r0:r1, c0 - 1].all():
            c0, grown = c0 - 1, True
        if c1 < W and m[r0:r1, c1].all():
            c1, grown = c1 + 1, True
    rows, cols = slice(r0, r1), slice(c0, c1)
    return rows, cols


def fastmri_mask(
    shape: tuple[int, int],
    acceleration: float,
    center_fraction: float | None = None,
    mask_type: str = "random",
    seed: int | Sequence[int] | None = None,
) -> SamplingMask:
    """A fastMRI column mask, made by ``fastmri``'s own ``MaskFunc``.

    Args:
        shape: k-space ``(H, W)``; columns (``W``, phase encodes) are sampled.
        acceleration: nominal acceleration (4, 8, ...).
        center_fraction: fully sampled centre fraction (default :func:`default_center_fraction`).
        mask_type: a fastMRI mask type ("random", "equispaced", "equispaced_fraction", ...).
        seed: an int or fastMRI's ``tuple(map(ord, fname))`` (see :func:`volume_seed`).

    Returns:
        a :class:`SamplingMask` with ``mask`` of shape ``(1, W)``.
    """
    from fastmri.data.subsample import create_mask_for_mask_type

    if mask_type not in FASTMRI_TYPES:
        raise ValueError(f"unknown fastMRI mask type {mask_type!r}; one of {FASTMRI_TYPES}")
    if center_fraction is None:
        center_fraction = default_center_fraction(acceleration)
    accel = int(acceleration) if float(acceleration).is_integer() else float(acceleration)
    func = create_mask_for_mask_type(mask_type, [center_fraction], [accel])
    H, W = shape
    mask, num_low = func((1, H, W, 2), seed=seed)
    mask = mask.reshape(1, W).to(torch.float32)
    pad = (W - num_low + 1) // 2
    acs = (slice(0, H), slice(pad, pad + num_low))
    return SamplingMask(mask, _realised_acceleration(mask), acs, mask_type)


def poisson_mask(
    shape: tuple[int, int],
    acceleration: float,
    calib: tuple[int, int] = (24, 24),
    seed: int = 0,
) -> SamplingMask:
    """A variable-density Poisson-disc 2-D mask from ``sigpy.mri.poisson``.

    Args:
        shape: k-space ``(H, W)``.
        acceleration: target acceleration (sigpy's realised one is within its tolerance).
        calib: fully sampled calibration size ``(rows, cols)``.
        seed: random seed.
    """
    import sigpy.mri

    m = sigpy.mri.poisson(tuple(shape), float(acceleration), calib=tuple(calib), seed=seed,
                          dtype=np.float32, crop_corner=True)
    mask = torch.from_numpy(np.ascontiguousarray(m.real > 0).astype(np.float32))
    return SamplingMask(mask, _realised_acceleration(mask), find_acs(mask, shape), "poisson")


def mask_from_array(array: np.ndarray | torch.Tensor, shape: tuple[int, int],
                    source: str = "array") -> SamplingMask:
    """A mask given as data: 1-D ``(W,)`` (fastMRI test files) or 2-D ``(H, W)``.

    Args:
        array: boolean or numeric mask.
        shape: the k-space ``(H, W)`` it must fit.
        source: where it came from, for the error message.

    Raises:
        ValueError: when its shape does not fit the k-space.
    """
    arr = np.asarray(array)
    if arr.dtype.kind not in "biuf" or (arr.dtype.kind == "f" and not np.isfinite(arr).all()):
        raise ValueError(f"{source}: mask must be boolean or numeric without NaN/Inf (dtype {arr.dtype})")
    m = torch.as_tensor(arr).to(torch.float32)
    H, W = shape
    if m.ndim == 1:
        if m.shape[0] != W:
            raise ValueError(f"{source}: mask has width {m.shape[0]} but k-space has width {W}")
        m = m.reshape(1, W)
    elif m.ndim == 2:
        if tuple(m.shape) != (H, W):
            raise ValueError(f"{source}: mask has shape {tuple(m.shape)} but k-space is {(H, W)}")
        if bool((m == m[:1]).all()):
            m = m[:1]
    else:
        raise ValueError(f"{source}: mask must be 1-D (W,) or 2-D (H, W), got {m.ndim}-D")
    m = (m != 0).to(torch.float32)
    return SamplingMask(m, _realised_acceleration(m), find_acs(m, shape), "file")


def make_sampling_mask(
    kind: str,
    shape: tuple[int, int],
    acceleration: float,
    center_fraction: float | None = None,
    seed: int | Sequence[int] | None = None,
) -> SamplingMask:
    """One entry point for the CLI: "random", "equispaced" (fastMRI) or "poisson".

    For "poisson" the calibration size is ``round(center_fraction * W)`` square and an
    integer seed is derived from a tuple seed.
    """
    if kind == "poisson":
        H, W = shape
        cf = default_center_fraction(acceleration) if center_fraction is None else center_fraction
        c = max(2, int(round(cf * W)))
        if isinstance(seed, (tuple, list)):
            seed = int(np.random.SeedSequence(list(seed)).generate_state(1)[0])
        with warnings.catch_warnings():          # sigpy warns (divide by zero) before it refuses
            warnings.simplefilter("ignore", RuntimeWarning)
            return poisson_mask(shape, acceleration, calib=(c, c), seed=int(seed or 0))
    return fastmri_mask(shape, acceleration, center_fraction, kind, seed)
