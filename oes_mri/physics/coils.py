"""Coil sensitivity maps: ESPIRiT (sigpy) with failure detection, fallbacks and a disk cache.

ESPIRiT (Uecker et al., MRM 2014) is computed by ``sigpy.mri.app.EspiritCalib`` from the
fully sampled calibration (ACS) region of the undersampled k-space. A calibration that
failed (non-finite maps, or maps that vanish over most of the object) is detected and the
estimate falls back, with a logged warning, to a smaller ESPIRiT kernel and then to the
low-resolution estimate ``S_c = x_c^lr / RSS(x^lr)`` (coil images of the ACS region,
smoothed by a Hann window; the classic sum-of-squares sensitivity estimate).

sigpy runs ESPIRiT on the k-space's CUDA device when CuPy is installed (see
:mod:`oes_mri.sigpy_bridge`), else on the CPU. On the CPU at fastMRI knee size (15 coils,
640x368) the image-space covariance costs about 0.4 s per calibration kernel kept (2 cores;
185 s for noise-like k-space, where all 361 kernels are kept), plus about 9 s of power iterations.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from oes_mri.atomic import atomic_path
from oes_mri.fileid import file_identity
from oes_mri.physics.fft import ifft2c, rss
from oes_mri.physics.masks import SamplingMask
from oes_mri.sigpy_bridge import run_app

log = logging.getLogger("oes_mri")

CACHE_VERSION = 2
MAX_MAP = 10.0
"""Largest plausible sensitivity magnitude in a cached map (ESPIRiT's and the fallback's are at most about 1)."""


class CoilMaps(NamedTuple):
    """Sensitivity maps ``(C, H, W)`` complex64 and how they were obtained."""

    maps: torch.Tensor
    method: str  # "espirit-k6", "espirit-k4", "lowres", ...


def acs_kspace(kspace: torch.Tensor, acs: tuple[slice, slice]) -> torch.Tensor:
    """k-space ``(C, H, W)`` zeroed outside the calibration rectangle."""
    out = torch.zeros_like(kspace)
    out[..., acs[0], acs[1]] = kspace[..., acs[0], acs[1]]
    return out


def lowres_image(kspace: torch.Tensor, acs: tuple[slice, slice]) -> torch.Tensor:
    """Coil images ``(C, H, W)`` of the ACS region apodised by a separable Hann window."""
    k = torch.zeros_like(kspace)
    r, c = acs
    hr = torch.hann_window(r.stop - r.start + 2, periodic=False, dtype=torch.float32)[1:-1]
    hc = torch.hann_window(c.stop - c.start + 2, periodic=False, dtype=torch.float32)[1:-1]
    win = (hr[:, None] * hc[None, :]).to(kspace.device)
    k[..., r, c] = kspace[..., r, c] * win
    return ifft2c(k)


def lowres_maps(kspace: torch.Tensor, acs: tuple[slice, slice]) -> torch.Tensor:
    """``S_c = x_c / RSS(x)`` from low-resolution coil images; zero where RSS < 5 % of max."""
    x = lowres_image(kspace, acs)
    r = rss(x, dim=0)
    keep = r > 0.05 * r.max()
    return torch.where(keep, x / torch.clamp(r, min=torch.finfo(r.dtype).tiny), torch.zeros_like(x))


def map_coverage(maps: torch.Tensor, kspace: torch.Tensor, acs: tuple[slice, slice]) -> float:
    """Fraction of the object (low-res RSS > 10 % of max) where ``RSS(maps) > 0.5``."""
    r = rss(lowres_image(kspace, acs), dim=0)
    obj = r > 0.1 * r.max()
    if not bool(obj.any()):
        return 0.0
    return float((rss(maps, dim=0)[obj] > 0.5).float().mean())


def maps_ok(maps: torch.Tensor, kspace: torch.Tensor, acs: tuple[slice, slice],
            min_coverage: float = 0.8) -> bool:
    """True when the maps are finite and cover at least ``min_coverage`` of the object."""
    return bool(torch.isfinite(maps).all()) and map_coverage(maps, kspace, acs) >= min_coverage


def espirit_maps(kspace: torch.Tensor, calib_width: int, kernel_width: int = 6,
                 thresh: float = 0.02, crop: float = 0.95) -> torch.Tensor:
    """``sigpy.mri.app.EspiritCalib`` on the k-space's device (see :mod:`oes_mri.sigpy_bridge`);
    ``kspace`` ``(C, H, W)``, returns ``(C, H, W)`` complex64 on its device."""
    import sigpy.mri

    def app(ksp, device):
        return sigpy.mri.app.EspiritCalib(ksp, calib_width=calib_width, thresh=thresh, kernel_width=kernel_width,
                                          crop=crop, device=device, show_pbar=False)
    return run_app(app, {"ksp": kspace.to(torch.complex64)}, kspace.device)


def estimate_maps(kspace: torch.Tensor, mask: SamplingMask, kernel_width: int = 6,
                  thresh: float = 0.02, crop: float = 0.95, source: str = "k-space") -> CoilMaps:
    """ESPIRiT maps from the ACS region, with detection of failure and fallbacks.

    Args:
        kspace: undersampled k-space ``(C, H, W)``.
        mask: its :class:`SamplingMask` (gives the calibration region).
        kernel_width, thresh, crop: ESPIRiT settings (sigpy's defaults).
        source: a name for the warnings (file and slice).

    Returns:
        :class:`CoilMaps`; ``method`` says which estimate was used.
    """
    acs = mask.acs
    calib = min(mask.acs_height, mask.acs_width)
    for kw in (kernel_width, 4, 3):
        if kw > kernel_width or calib < kw + 1:
            continue
        maps = espirit_maps(acs_kspace(kspace, acs), calib, kw, thresh, crop)
        if maps_ok(maps, kspace, acs):
            if kw != kernel_width:
                log.warning("%s: ESPIRiT with kernel %d failed on %d calibration lines; "
                            "used kernel %d", source, kernel_width, calib, kw)
            return CoilMaps(maps, f"espirit-k{kw}")
    log.warning("%s: ESPIRiT failed on %d calibration lines (all-zero or NaN maps); falling back to "
                "low-resolution (RSS-normalised) sensitivity maps: %s", source, calib, LOWRES_CAVEAT)
    return CoilMaps(lowres_maps(kspace, acs), "lowres")


LOWRES_CAVEAT = ("with so little calibration they cannot unfold aliasing, so CG-SENSE and L1 (weakly "
                 "regularised) may fall below zero-filling; use more calibration lines (--center-fraction)")
"""What low-resolution fallback maps cost: on a 4-coil 64x36 phantom with 3 calibration lines at
4x, the least-squares SENSE image scored 13.2 dB (L1 15.7, TV 25.4, true maps with L1 29.0)."""


def map_cache_key(source: str | os.PathLike, slice_index: int, mask: SamplingMask, **settings) -> str:
    """Cache key from the file's content, slice, calibration region and settings."""
    ident = file_identity(source)
    desc = {
        "v": CACHE_VERSION, "sha256": ident["sha256"], "size": ident["size"],
        "slice": int(slice_index),
        "acs": [mask.acs[0].start, mask.acs[0].stop, mask.acs[1].start, mask.acs[1].stop],
        "settings": settings,
    }
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:32]


class MapCache:
    """Sensitivity maps on disk, one ``.npz`` per key, written atomically."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    def get_or_compute(self, key: str, compute, shape: tuple[int, ...] | None = None) -> CoilMaps:
        """The cached maps for ``key``, or ``compute()`` stored under it. A cached entry is used
        only when it is complex, finite, of ``shape`` ``(C, H, W)`` (when given), not all zero and
        of sensitivity-map size (magnitudes at most :data:`MAX_MAP`); else it is recomputed."""
        path = self.folder / f"{key}.npz"
        if path.exists():
            try:
                with np.load(path, allow_pickle=False) as z:
                    maps = z["maps"]
                    if (np.iscomplexobj(maps) and maps.ndim == 3 and np.isfinite(maps).all()
                            and (shape is None or tuple(maps.shape) == tuple(shape))
                            and 0 < np.abs(maps).max() <= MAX_MAP):
                        method = str(z["method"])
                        if method == "lowres":           # the caveat of the first run, again
                            log.warning("%s: cached low-resolution fallback maps: %s", path, LOWRES_CAVEAT)
                        return CoilMaps(torch.from_numpy(maps), method)
                log.warning("%s: invalid map cache entry (shape, dtype or values), recomputing", path)
            except Exception as err:  # a truncated npz raises BadZipFile, EOFError, OSError, ...
                log.warning("%s: unreadable map cache entry (%s), recomputing", path, type(err).__name__)
        result = compute()
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, maps=result.maps.cpu().numpy(), method=np.str_(result.method))
        return result
