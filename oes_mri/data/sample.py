"""The built-in sample: matplotlib's real MR slice simulated as a fastMRI multicoil file.

matplotlib ships ``s1045.ima.gz``, a 256x256 uint16 sagittal head slice (a real MR image).
It is resampled to 160x160 and simulated by :mod:`oes_mri.data.simulate` with 8 birdcage
coils, 2x readout oversampling and phase-encode padding (encoded 320x184, half the fastMRI
knee's 640x368 in each direction; recon 160x160) and complex noise (RSS SNR 30), at the
fastMRI knee intensity scale (max 3e-4). Generated on first use into the cache folder
(``$OES_MRI_CACHE``, default ``~/.cache/oes_mri``), deterministically.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

SAMPLE_NAME = "sample_head_8coil.h5"
SAMPLE_VERSION = 1
VOLUME_VERSION = 2        # 2: the phase changes smoothly through the volume (1: a random phase per slice)


def cache_dir() -> Path:
    """``$OES_MRI_CACHE`` or ``$XDG_CACHE_HOME/oes_mri`` or ``~/.cache/oes_mri`` (created)."""
    root = os.environ.get("OES_MRI_CACHE")
    if root:
        path = Path(root)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = Path(base) / "oes_mri"
    path.mkdir(parents=True, exist_ok=True)
    return path


def matplotlib_mr_slice() -> np.ndarray:
    """The 256x256 MR slice that matplotlib ships, as float64."""
    from matplotlib import cbook

    with cbook.get_sample_data("s1045.ima.gz") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":  # some matplotlib versions return the still-gzipped bytes
        data = gzip.decompress(data)
    return np.frombuffer(data, np.uint16).reshape(256, 256).astype(np.float64)


def sample_image(size: int = 160) -> np.ndarray:
    """The slice resampled to ``size x size`` (cubic spline), clipped at zero."""
    from scipy.ndimage import zoom

    img = zoom(matplotlib_mr_slice(), size / 256.0, order=3)
    return np.clip(img, 0, None)


def sample_path() -> Path:
    """Path of the built-in sample file, generated on first use (about a second)."""
    from oes_mri.data.simulate import write_fastmri_file

    path = cache_dir() / f"v{SAMPLE_VERSION}" / SAMPLE_NAME
    if not path.exists():
        write_fastmri_file(path, sample_image()[None], num_coils=8, snr=30.0, seed=1045,
                           scale=3e-4, acquisition="SIM_HEAD")
    return path


def volume_images(slices: int, size: int = 160, extent: float = 0.6) -> np.ndarray:
    """A deterministic volume ``(slices, size, size)`` whose anatomy changes from slice to
    slice, made from the matplotlib slice: slice ``k`` at height ``z`` in [-extent, extent]
    is the slice scaled by ``sqrt(1 - z^2)`` (the cross-section of a sphere), rotated by
    ``6 z`` degrees, shifted by ``4 z`` % of the width, with a smooth intensity tilt that
    turns with ``z``. Neighbouring slices differ little, distant ones a lot, as in a scan.
    """
    from scipy.ndimage import affine_transform

    base = sample_image(size)
    c = (size - 1) / 2.0
    yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    out = np.empty((slices, size, size))
    for k, z in enumerate(np.linspace(-extent, extent, slices) if slices > 1 else [0.0]):
        f, a = np.sqrt(1.0 - z * z), np.deg2rad(6.0 * z)
        m = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) / f     # output -> input coordinates
        shift = np.array([c, c + 0.04 * size * z]) - m @ np.array([c, c])
        img = affine_transform(base, m, offset=shift, order=3, mode="constant")
        tilt = 1.0 + 0.25 * z * (np.cos(3 * z) * xx + np.sin(3 * z) * yy)
        out[k] = np.clip(img * tilt, 0, None)
    return out


def sample_volume_path(slices: int = 7, size: int = 160, num_coils: int = 8) -> Path:
    """A simulated multi-slice volume (:func:`volume_images`, :func:`~oes_mri.data.simulate.write_fastmri_file`,
    SNR 30, fastMRI knee intensity scale, a phase that changes smoothly through the volume),
    generated on first use and cached. ``size=320,
    num_coils=15`` gives fastMRI knee geometry: 640x368 k-space with 2x readout oversampling,
    padding columns, 320x320 recon."""
    from oes_mri.data.simulate import write_fastmri_file

    path = cache_dir() / f"v{SAMPLE_VERSION}" / f"sample_volume{VOLUME_VERSION}_{slices}x{size}_{num_coils}coil.h5"
    if not path.exists():
        write_fastmri_file(path, volume_images(slices, size), num_coils=num_coils, snr=30.0, seed=1045,
                           scale=3e-4, acquisition="SIM_VOLUME", volume=True)
    return path

