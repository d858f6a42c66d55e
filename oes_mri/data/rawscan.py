"""Scanner raw data as one in-memory volume in the fastMRI layout.

The readers of scanner formats (:mod:`oes_mri.data.ismrmrd_io`, :mod:`oes_mri.data.twix_io`)
return a :class:`RawScan`; :func:`volume_info` turns it into the :class:`VolumeInfo` that the
rest of the toolkit reads from a fastMRI file. The layout is fastMRI's: k-space
``[slices, coils, H, W]`` complex64 with ``H`` the readout as acquired (oversampled: the
recon size's readout extent is the centre of the field of view) and ``W`` the phase-encode
lines on the encoded grid; lines that were not acquired are zero.

A scan whose every line inside the encoding limits was acquired is *fully sampled*: it has a
target, the fastMRI ``reconstruction_rss`` (RSS of the coil images, centre-cropped to the
recon size), so reconstructions from a retrospective mask are scored. An undersampled scan
carries its own sampling mask (the acquired lines) and no target.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from oes_mri.data.fastmri_io import Header, VolumeInfo
from oes_mri.errors import InputError
from oes_mri.physics.fft import center_crop, ifft2c, rss
from oes_mri.physics.masks import mask_from_array


class RawScan(NamedTuple):
    """A scanner file's k-space, arranged like a fastMRI volume.

    Attributes:
        kspace: complex64 ``[slices, coils, H, W]``.
        sampled: bool ``(W,)``, the phase-encode lines acquired (the same in every slice).
        header: encoded and recon sizes, acquired columns ``[padding_left, padding_right)``.
        voxel_size: ``(readout, phase-encode, slice)`` spacing in mm on the recon grid, or ``None``.
        attrs: what the header says of the scan (vendor, protocol, ...), JSON-friendly.
    """

    kspace: np.ndarray
    sampled: np.ndarray
    header: Header
    voxel_size: tuple[float, float, float] | None
    attrs: dict


def fully_sampled(scan: RawScan) -> bool:
    """Every phase-encode line inside the encoding limits was acquired."""
    return bool(scan.sampled[scan.header.padding_left:scan.header.padding_right].all())


def check_scan(path: Path, scan: RawScan) -> None:
    """Raise :class:`InputError` for an empty scan or one that does not fit its recon size."""
    S, C, H, W = scan.kspace.shape
    if S == 0 or C == 0 or not scan.sampled.any():
        raise InputError(path, f"no imaging data (k-space shape {scan.kspace.shape})")
    rH, rW = scan.header.recon_size
    if rH > H or rW > W or min(rH, rW) < 1:
        raise InputError(path, f"recon size {scan.header.recon_size} does not fit the k-space {(H, W)}")


def volume_info(path: Path, scan: RawScan, fmt: str) -> VolumeInfo:
    """The :class:`VolumeInfo` of a scanner file (``fmt``: "ismrmrd" or "twix")."""
    check_scan(path, scan)
    S, C, H, W = scan.kspace.shape
    full = fully_sampled(scan)
    mask = None if full else mask_from_array(scan.sampled, (H, W), source=str(path))
    attrs = dict(scan.attrs, format=fmt, fully_sampled=full)
    return VolumeInfo(path, "multicoil", S, C, (H, W), scan.header, full, mask, attrs, fmt, scan.voxel_size)


def rss_target(kspace: np.ndarray, recon_size: tuple[int, int]) -> np.ndarray:
    """fastMRI's ``reconstruction_rss`` of one fully sampled slice ``[coils, H, W]``: float32 ``[rH, rW]``."""
    image = rss(ifft2c(torch.from_numpy(np.ascontiguousarray(kspace))))
    return center_crop(image, recon_size).numpy().astype(np.float32)


def centre_offset(size: int, center: int) -> int:
    """Where sample ``center`` of an acquisition lands on a grid of ``size`` (centre ``size // 2``)."""
    return size // 2 - center
