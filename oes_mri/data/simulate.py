"""Turn a magnitude image into a multi-coil fastMRI-format file (deterministic).

The acquisition model, for a magnitude image ``m`` of size ``(rH, rW)``:

1. complex image ``x = m * exp(i phi)`` with a smooth (low-order polynomial) phase ``phi``;
2. placed in the centre of an encoded grid ``(2 rH, W_enc)``: 2x readout oversampling as in
   the fastMRI knee data, and a phase-encode matrix ``W_enc ~ 1.15 rW`` (knee: 368 for 320);
3. coil images ``S_c x`` with birdcage sensitivities (``sigpy.mri.birdcage_maps``);
4. k-space ``F S_c x`` plus complex Gaussian noise of standard deviation
   ``sigma = mean(|x| over the object) / snr / sqrt(C)`` per coil, so the RSS image has
   about the requested SNR; the padding columns outside ``[padding_left, padding_right)``
   are zeroed as in fastMRI;
5. ``reconstruction_rss`` = RSS of the fully sampled coil images, centre-cropped to
   ``(rH, rW)``; ``attrs`` (``acquisition``, ``max``, ``norm``, ``patient_id``) and an
   ISMRMRD header with the encoded/recon sizes and the phase-encode limits.

This is what fastMRI's ``tests/create_temp_data.py`` does for its fixtures, made physical.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from oes_mri.data.fastmri_io import atomic_h5
from oes_mri.physics.fft import center_crop, fft2c, ifft2c, rss

HEADER_TEMPLATE = """<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">
  <encoding>
    <encodedSpace><matrixSize><x>{ex}</x><y>{ey}</y><z>1</z></matrixSize></encodedSpace>
    <reconSpace><matrixSize><x>{rx}</x><y>{ry}</y><z>1</z></matrixSize></reconSpace>
    <encodingLimits>
      <kspace_encoding_step_1><minimum>0</minimum><maximum>{lmax}</maximum><center>{lcen}</center></kspace_encoding_step_1>
    </encodingLimits>
    <trajectory>cartesian</trajectory>
  </encoding>
</ismrmrdHeader>
"""


def smooth_phase(shape: tuple[int, int], rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """A smooth random phase map: a random quadratic polynomial in normalised coordinates."""
    y, x = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    c = rng.normal(size=6) * strength
    return c[0] + c[1] * x + c[2] * y + 0.5 * (c[3] * x * x + c[4] * y * y + c[5] * x * y)


def coil_maps(num_coils: int, shape: tuple[int, int]) -> np.ndarray:
    """Birdcage coil sensitivities ``(C, H, W)`` (sigpy), normalised to RSS max 1."""
    import sigpy.mri

    maps = sigpy.mri.birdcage_maps((num_coils, *shape), r=1.2, nzz=num_coils).astype(np.complex64)
    return maps / np.sqrt((np.abs(maps) ** 2).sum(0)).max()


def encoded_geometry(recon: tuple[int, int]) -> tuple[tuple[int, int], int, int]:
    """Encoded size ``(2 rH, W_enc)`` and acquired phase-encode columns ``[left, right)``."""
    rH, rW = recon
    w_enc = int(2 * round(1.15 * rW / 2))
    n_pe = w_enc - 2 * max(1, w_enc // 40)
    center = n_pe // 2
    left = w_enc // 2 - center
    return (2 * rH, w_enc), left, left + n_pe


def volume_phase(shape: tuple[int, int], slices: int, rng: np.random.Generator) -> np.ndarray:
    """Phase maps ``(slices, H, W)`` that change smoothly through a volume, as in a scan (B0
    and the coils vary slowly): one smooth map plus a smaller one times the slice position."""
    base, drift = smooth_phase(shape, rng), smooth_phase(shape, rng, 0.3)
    return np.stack([base + t * drift for t in np.linspace(-1, 1, slices)])


def simulate_kspace(
    images: np.ndarray, num_coils: int = 8, snr: float = 30.0, seed: int = 0, scale: float = 1.0,
    volume: bool = False,
) -> dict:
    """Simulate fully sampled multi-coil k-space from magnitude images.

    Args:
        images: magnitude images ``[slices, rH, rW]`` (non-negative).
        num_coils: number of receive coils.
        snr: target SNR of the RSS image (mean object signal / noise std).
        seed: seed of every random draw (phase and noise).
        scale: the intensity of the image maximum (fastMRI knee images peak near 3e-4).
        volume: the slices are neighbours in one volume: their phase changes smoothly from
            slice to slice (:func:`volume_phase`); otherwise each slice draws its own phase.

    Returns:
        dict with ``kspace`` ``[slices, C, H, W]`` complex64, ``reconstruction_rss``
        ``[slices, rH, rW]`` float32, ``maps`` ``[C, H, W]`` and the header geometry.
    """
    images = np.asarray(images, dtype=np.float64)
    if images.ndim == 2:
        images = images[None]
    images = images / images.max() * scale
    S, rH, rW = images.shape
    (H, W), left, right = encoded_geometry((rH, rW))
    rng = np.random.default_rng(seed)
    maps = coil_maps(num_coils, (H, W))
    top, lft = (H - rH) // 2, (W - rW) // 2
    ksp = np.zeros((S, num_coils, H, W), np.complex64)
    phases = volume_phase((rH, rW), S, rng) if volume else None
    for s in range(S):
        x = np.zeros((H, W), np.complex128)
        phase = phases[s] if volume else smooth_phase((rH, rW), rng)
        x[top:top + rH, lft:lft + rW] = images[s] * np.exp(1j * phase)
        obj = images[s][images[s] > 0.1 * images[s].max()].mean()
        sigma = obj / snr / np.sqrt(num_coils)
        k = fft2c(torch.from_numpy((maps * x).astype(np.complex64))).numpy()
        noise = (rng.normal(size=k.shape) + 1j * rng.normal(size=k.shape)) * sigma / np.sqrt(2)
        k = k + noise.astype(np.complex64)
        k[..., :left] = 0
        k[..., right:] = 0
        ksp[s] = k
    target = center_crop(rss(ifft2c(torch.from_numpy(ksp))), (rH, rW)).numpy().astype(np.float32)
    return {"kspace": ksp, "reconstruction_rss": target, "maps": maps,
            "encoded": (H, W), "recon": (rH, rW), "limits": (left, right)}


def write_fastmri_file(
    path: str | os.PathLike,
    images: np.ndarray,
    num_coils: int = 8,
    snr: float = 30.0,
    seed: int = 0,
    scale: float = 1.0,
    acquisition: str = "SIMULATED",
    with_target: bool = True,
    volume: bool = False,
) -> Path:
    """Simulate (see :func:`simulate_kspace`; ``volume``: slices of one volume) and write a
    fastMRI multicoil file atomically.

    Returns:
        the path written.
    """
    sim = simulate_kspace(images, num_coils, snr, seed, scale, volume)
    (H, W), (rH, rW), (left, right) = sim["encoded"], sim["recon"], sim["limits"]
    header = HEADER_TEMPLATE.format(ex=H, ey=W, rx=rH, ry=rW, lmax=right - left - 1,
                                    lcen=W // 2 - left)
    target = sim["reconstruction_rss"]
    datasets = {"kspace": sim["kspace"], "ismrmrd_header": np.bytes_(header.encode())}
    if with_target:
        datasets["reconstruction_rss"] = target
    attrs = {"acquisition": acquisition, "max": float(target.max()),
             "norm": float(np.linalg.norm(target)), "patient_id": f"sim-{seed}",
             "source": "simulated by oes_mri.data.simulate", "num_coils": num_coils, "snr": snr}
    atomic_h5(path, datasets, attrs)
    return Path(path)
