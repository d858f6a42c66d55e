"""A measured slice as every method sees it (:class:`SliceData`: no target), and
:func:`measure`, the one path from k-space and a sampling mask to it, for the CLI and the
Python API alike."""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

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
    crop = readout == "crop" and smask.mask.shape[0] == 1 and kspace.shape[-2] > rows
    mask = smask.mask.to(kspace.device)
    y = kspace * mask + 0.0
    if maps is None:
        maps = estimate_maps(y, smask, source=source).maps
    elif callable(maps):
        maps = maps(y).maps
    if crop:
        y, maps = crop_readout(y, rows), center_crop(maps, (rows, maps.shape[-1]))
    return SliceData(y, mask, maps.to(kspace.device), tuple(recon_size), source)
