"""A measured slice as every method sees it (:class:`SliceData`: no target), and
:func:`measure`, the one path from k-space and a sampling mask to it, for the CLI and the
Python API alike."""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from oes_mri.errors import InputError
from oes_mri.physics.coils import CoilMaps, estimate_maps
from oes_mri.physics.fft import center_crop, crop_readout
from oes_mri.physics.masks import SamplingMask

READOUTS = ("crop", "full")
"""``crop``: remove readout oversampling before the fits (when the readout is fully sampled,
i.e. a column mask); coil maps are estimated on the acquired readout and cropped;
``full``: fit the acquired readout."""


class SliceData(NamedTuple):
    """One measured slice, as the untrained generators (and every method) see it: no target."""

    kspace: torch.Tensor
    """undersampled k-space ``(C, H, W)`` (its device is used)"""
    mask: torch.Tensor
    """sampling mask broadcastable to it"""
    maps: torch.Tensor | None
    """coil maps ``(C, H, W)``, or ``None`` to fit coil images (:class:`~oes_mri.physics.operator.MultiCoilOp` per coil)"""
    recon_size: tuple[int, int]
    """``(rH, rW)`` of the output image"""
    source: str = ""
    """file/slice name for logs and the mask metadata"""


def measure(kspace: torch.Tensor, smask: SamplingMask, recon_size: tuple[int, int], readout: str = "crop",
            maps: Callable[[torch.Tensor], CoilMaps] | torch.Tensor | None = None, source: str = "") -> SliceData:
    """What a method sees of one slice: ``y = M k`` on ``kspace``'s device and the coil maps.

    With ``readout="crop"`` and a column mask, the readout is cut to the recon size's field
    of view after the maps are estimated on the acquired readout
    (:func:`~oes_mri.physics.fft.crop_readout`: the image on the recon grid is unchanged, the
    fit has fewer pixels: half for fastMRI's 2x oversampling).

    Args:
        kspace: k-space ``(C, H, W)`` complex (fully sampled or already undersampled).
        smask: the sampling mask.
        recon_size: ``(rH, rW)`` of the output image.
        readout: "crop" or "full".
        maps: maps ``(C, H, W)`` on the acquired grid, or ``maps(y) -> CoilMaps`` (a cache),
            or ``None`` for ESPIRiT (:func:`~oes_mri.physics.coils.estimate_maps`).
        source: file and slice for warnings.
    """
    if readout not in READOUTS:
        raise ValueError(f"readout {readout!r}: expected one of {', '.join(READOUTS)}")
    rows = recon_size[0]
    check_measurement(kspace, smask, source)
    if recon_size[0] > kspace.shape[-2] or recon_size[1] > kspace.shape[-1]:
        _refuse(source, f"recon_size {tuple(recon_size)} is larger than the k-space grid {tuple(kspace.shape[-2:])}")
    crop = readout == "crop" and smask.mask.shape[0] == 1 and kspace.shape[-2] > rows
    mask = smask.mask.to(kspace.device)
    y = kspace * mask + 0.0
    if (maps is None or callable(maps)) and min(smask.acs_width, smask.acs_height) < 2:
        _refuse(source, f"mask has {min(smask.acs_width, smask.acs_height)} calibration line(s): ESPIRiT needs a "
                        "fully sampled centre of at least 2 (give maps, or a mask with centre lines)")
    if maps is None:
        maps = estimate_maps(y, smask, source=source).maps
    elif callable(maps):
        maps = maps(y).maps
    else:
        check_maps(maps, kspace, source)
    if crop:
        y, maps = crop_readout(y, rows), center_crop(maps, (rows, maps.shape[-1]))
    return SliceData(y, mask, maps.to(kspace.device), tuple(recon_size), source)


def _refuse(source: str, problem: str) -> None:
    raise InputError(source or None, problem)


PEAK = (1e-15, 1e15)
"""The range of the measured k-space's largest magnitude that float32 arithmetic handles: its
squares and their sums over a slice stay far from overflow (3e38) and underflow (1e-38)."""


def check_measurement(kspace: torch.Tensor, smask: SamplingMask, source: str = "") -> None:
    """The gate every entry passes (a file read by the CLI, arrays given to
    :func:`oes_mri.reconstruct`, the deepinv adapter's physics): k-space ``(C, H, W)`` complex,
    finite and not all zero where it is measured; a sampling mask made for the same grid.

    Raises:
        InputError: naming the argument and what is wrong (``source``: the file and slice).
    """
    if kspace.ndim != 3 or not kspace.is_complex():
        _refuse(source, f"kspace must be complex (coils, H, W), got {tuple(kspace.shape)} {kspace.dtype}")
    H, W = kspace.shape[-2:]
    m = smask.mask
    if m.ndim != 2 or m.shape[-1] != W or m.shape[0] not in (1, H) or (m.shape[0] == 1 and smask.acs[0].stop != H):
        grid = (smask.acs[0].stop, m.shape[-1]) if m.shape[0] == 1 else tuple(m.shape)
        _refuse(source, f"mask was made for a {grid[0]}x{grid[1]} grid, the k-space is {H}x{W}")
    measured = kspace * m.to(kspace.device).bool()
    if not torch.isfinite(kspace).all():
        where = "measured" if not torch.isfinite(measured).all() else "unmeasured"
        _refuse(source, f"kspace holds NaN or Inf values (at {where} samples)")
    peak = float(measured.abs().amax())
    if not peak > 0:
        _refuse(source, "kspace is zero at every measured sample")
    if not PEAK[0] <= peak <= PEAK[1]:
        _refuse(source, f"kspace peaks at {peak:.1e}: outside [{PEAK[0]:.0e}, {PEAK[1]:.0e}], where float32 "
                        "arithmetic (squares and their sums) stays finite and exact enough; multiply the "
                        "k-space by a constant (every method is scale-free)")


def check_maps(maps: torch.Tensor, kspace: torch.Tensor, source: str = "") -> None:
    """Given coil maps: complex ``(C, H, W)`` on the k-space's grid, finite, not all zero.

    Raises:
        InputError: naming ``maps`` and what is wrong.
    """
    if tuple(maps.shape) != tuple(kspace.shape):
        _refuse(source, f"maps must be (coils, H, W) = {tuple(kspace.shape)} like the k-space, got {tuple(maps.shape)}")
    if not torch.isfinite(maps).all():
        _refuse(source, "maps hold NaN or Inf values")
    if not bool(maps.abs().amax() > 0):
        _refuse(source, "maps are zero everywhere")
