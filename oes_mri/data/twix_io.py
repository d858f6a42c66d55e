"""Read Siemens twix raw files (``meas_*.dat``, VB and VD/VE) into the fastMRI layout.

Through ``twixtools`` (an optional extra: ``pip install 'oes-mri[siemens]'``): the last
measurement of the file is the imaging scan (VD/VE files keep adjustment scans before it);
its ``image`` data (imaging lines, including lines that are both reference and imaging
scans; noise, phase-correction, phase-stabilisation and feedback scans are left out by
twixtools' categories) is read with averages and segments combined by twixtools and
repetitions averaged (``repetition=N`` selects one). The readout is kept as acquired, with its
oversampling (fastMRI's convention: the recon size's readout extent is the centre of the
field of view; :func:`oes_mri.physics.fft.crop_readout` removes it); lines go on a grid
centred on the scan's centre line. Geometry from the protocol (``MeasYaps``): base
resolution, phase-encode lines, readout oversampling factor, field of view and slice
thickness, slice spacing from the slice positions.

3-D (partition-encoded) and multi-phase scans, and scans whose slices were sampled
differently, raise :class:`InputError`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from oes_mri.data.fastmri_io import Header, check_size
from oes_mri.data.rawscan import RawScan, centre_offset
from oes_mri.errors import InputError, first_line

EXTRA = "pip install 'oes-mri[siemens]'"


def looks_like_twix(path: Path) -> bool:
    """The file starts like a Siemens raw file: a VD/VE multi-raid header (``0``, then 1-64
    measurements) or a VB header (its length, then the ``Config`` buffer)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return False
    if len(head) < 16:
        return False
    first, second = np.frombuffer(head[:8], "<u4")
    return (first == 0 and 0 < second <= 64) or b"Config" in head[8:40]


def _twixtools(path: Path):
    try:
        import twixtools
    except ImportError:
        raise InputError(path, f"reading Siemens twix files needs the twixtools package: {EXTRA}")
    return twixtools


def _protocol(path: Path, hdr: dict) -> tuple[dict, dict, float]:
    try:
        yaps = hdr["MeasYaps"]
        return yaps["sKSpace"], yaps["sSliceArray"], float(hdr["Meas"].get("flReadoutOSFactor", 2.0))
    except (KeyError, TypeError):
        raise InputError(path, "twix header lacks MeasYaps sKSpace/sSliceArray (not an imaging scan?)")


def read_twix(path: str | Path, contrast: int = 0, repetition: int | None = None) -> RawScan:
    """Read the imaging scan of a Siemens twix file into a :class:`RawScan`.

    Args:
        path: ``meas_*.dat`` file.
        contrast: which echo (``Eco``) to read.
        repetition: which repetition to read; ``None`` averages all of them.

    Raises:
        InputError: without twixtools, and for every unreadable or unsupported file.
    """
    path = Path(path)
    twixtools = _twixtools(path)
    try:
        scans = twixtools.map_twix(str(path), verbose=False)
    except Exception as err:  # twixtools raises plain Exceptions, struct errors, ...
        raise InputError(path, f"not a readable Siemens twix file: {str(err).splitlines()[0][:120] or type(err).__name__}")
    if not scans or "image" not in scans[-1]:
        raise InputError(path, "twix file holds no imaging data")
    im, hdr = scans[-1]["image"], scans[-1]["hdr"]
    kspace_p, slices_p, os_factor = _protocol(path, hdr)
    im.flags["average"]["Rep"] = repetition is None
    size = dict(zip(im.dims, im.shape))
    if size["Par"] > 1 or int(kspace_p.get("ucDimension", 2)) == 4:
        raise InputError(path, "3-D (partition-encoded) scans are not supported (2-D multi-slice only)")
    for d in ("Phs", "Set", "Ida", "Idb", "Idc", "Idd", "Ide"):
        if size[d] > 1:
            raise InputError(path, f"scans with several '{d}' indices ({size[d]}) are not supported")
    if contrast >= size["Eco"] or (repetition is not None and repetition >= size["Rep"]):
        raise InputError(path, f"no contrast {contrast} / repetition {repetition} (scan has {size['Eco']} / {size['Rep']})")
    pick = {"Eco": contrast, "Rep": repetition if repetition is not None else 0}
    index = tuple(slice(None) if d in ("Sli", "Lin", "Cha", "Col") else pick.get(d, 0) for d in im.dims)
    try:
        data = np.asarray(im[:][index], np.complex64)                  # (Sli, Lin, Cha, Col)
    except Exception as err:  # noqa: BLE001 - a truncated file fails inside twixtools in many ways
        raise InputError(path, f"truncated or corrupt twix data ({type(err).__name__}: "
                               f"{first_line(err, 100)})") from None
    S, L, C, H = data.shape
    lines = int(kspace_p.get("lPhaseEncodingLines", L))
    W = max(lines, L)
    check_size(path, (S, C, H, W), 8)
    left = centre_offset(W, int(im.kspace_center_lin))
    if left < 0 or left + L > W:
        raise InputError(path, f"phase-encode lines do not fit a grid of {W} around centre line {im.kspace_center_lin}")
    kspace = np.zeros((S, C, H, W), np.complex64)
    kspace[..., left:left + L] = data.transpose(0, 2, 3, 1)
    acquired = np.abs(kspace).sum(axis=(1, 2)) > 0                    # (S, W)
    if (acquired != acquired[:1]).any():
        bad = int(np.flatnonzero((acquired != acquired[:1]).any(1))[0])
        raise InputError(path, f"slice {bad} acquired other phase-encode lines than slice 0")
    recon = (int(round(H / os_factor)), min(W, lines))
    header = Header((H, W), recon, left, min(W, left + lines))
    return RawScan(kspace, acquired[0], header, _voxel(slices_p, recon, kspace_p), _attrs(hdr))


def _voxel(slices_p: dict, recon: tuple[int, int], kspace_p: dict) -> tuple[float, float, float] | None:
    try:
        sl = slices_p["asSlice"]
        first = sl[0]
        spacing = float(first["dThickness"])
        if len(sl) > 1:
            pos = [np.array([s.get("sPosition", {}).get(k, 0.0) for k in ("dSag", "dCor", "dTra")]) for s in sl[:2]]
            spacing = float(np.linalg.norm(pos[1] - pos[0])) or spacing
        return (float(first["dReadoutFOV"]) / recon[0], float(first["dPhaseFOV"]) / recon[1], spacing)
    except (KeyError, TypeError, IndexError, ValueError):
        return None


def _attrs(hdr: dict) -> dict:
    out = {"source_format": "Siemens twix", "vendor": "SIEMENS"}
    try:
        out["acquisition"] = str(hdr["MeasYaps"]["tProtocolName"])
    except (KeyError, TypeError):
        pass
    return out
