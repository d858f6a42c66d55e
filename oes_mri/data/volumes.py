"""Every input the toolkit reads, as one kind of volume: fastMRI HDF5, ISMRMRD HDF5, Siemens twix.

The kind is detected from the file's content, not its name (:func:`detect`), so ``--data``
takes any of them and a folder may mix them. fastMRI files are read slice by slice
(:mod:`oes_mri.data.fastmri_io`); a scanner file is converted once to the fastMRI layout
(:mod:`oes_mri.data.ismrmrd_io`, :mod:`oes_mri.data.twix_io`, :mod:`oes_mri.data.rawscan`)
and kept in memory while its slices are read (the last file only).
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import torch

from oes_mri.data import fastmri_io
from oes_mri.data.fastmri_io import Volume, VolumeInfo, check_kspace
from oes_mri.data.rawscan import RawScan, rss_target, volume_info
from oes_mri.errors import InputError

log = logging.getLogger("oes_mri")

SUFFIXES = (".h5", ".hdf5", ".mrd", ".dat")


def detect(path: str | os.PathLike) -> str:
    """The kind of a file: "fastmri" (HDF5 with ``kspace``), "ismrmrd" (HDF5 with
    ``/dataset/xml`` and ``/dataset/data``) or "twix" (a Siemens raw file).

    Raises:
        InputError: for a missing file, a folder, or a file of none of these kinds.
    """
    from oes_mri.data.ismrmrd_io import is_ismrmrd
    from oes_mri.data.twix_io import looks_like_twix

    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, "is a folder, not a raw data file")
    if h5py.is_hdf5(path):
        try:
            with h5py.File(path, "r") as hf:
                return "ismrmrd" if "kspace" not in hf and is_ismrmrd(hf) else "fastmri"
        except OSError:
            return "fastmri"          # its reader names what is wrong
    if looks_like_twix(path):
        return "twix"
    raise InputError(path, "neither an HDF5 file (fastMRI or ISMRMRD) nor a Siemens twix raw file")


def _stamp(path: Path) -> tuple[str, int, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns      # ctime: any rewrite


@functools.lru_cache(maxsize=1)
def _scan(stamp: tuple[str, int, int, int], fmt: str) -> RawScan:
    """A scanner file converted to the fastMRI layout, cached by path, size, mtime and ctime."""
    path = Path(stamp[0])
    if fmt == "ismrmrd":
        from oes_mri.data.ismrmrd_io import read_ismrmrd

        scan = read_ismrmrd(path)
    else:
        from oes_mri.data.twix_io import read_twix

        scan = read_twix(path)
    check_scale(scan.kspace, path)
    return scan


MAX_DYNAMIC_RANGE = 1e7
"""Largest plausible ratio of a scan's largest k-space magnitude to its median measured one
(measured on the real files of ../shared/data and the sample: 500-930)."""


def check_scale(kspace: np.ndarray, path: Path) -> None:
    """Warn when the k-space's largest value is implausibly far above its median (a corrupt,
    e.g. bit-flipped, sample): the reconstruction is then made but likely wrong."""
    a = np.abs(kspace[kspace != 0])
    if not a.size:
        return
    ratio = float(a.max()) / float(np.median(a))
    if ratio > MAX_DYNAMIC_RANGE:
        log.warning("%s: implausible k-space values (the largest is %.2g times the median): corrupt data?", path,
                    ratio)


def read_info(path: str | os.PathLike, challenge: str | None = None) -> VolumeInfo:
    """What a file holds (layout, header, own mask, target or not), any supported kind.

    Args:
        path: a fastMRI, ISMRMRD or Siemens twix file.
        challenge: "multicoil" or "singlecoil" for fastMRI files (default: from the data).

    Raises:
        InputError: for every problem, one line naming the file.
    """
    path = Path(path)
    fmt = detect(path)
    if fmt == "fastmri":
        return fastmri_io.read_fastmri_info(path, challenge)
    if challenge == "singlecoil":
        raise InputError(path, f"{fmt} files are read as multicoil data")
    return volume_info(path, _scan(_stamp(path), fmt), fmt)


def load_slice(info: VolumeInfo, index: int) -> tuple[torch.Tensor, np.ndarray | None]:
    """One slice: k-space ``[coils, H, W]`` complex64 and target ``[rH, rW]`` or ``None``.

    Raises:
        InputError: for a slice out of range, NaN/Inf or all-zero k-space, an unreadable file.
    """
    if info.format == "fastmri":
        return fastmri_io.load_fastmri_slice(info, index)
    if not 0 <= index < info.num_slices:
        raise InputError(info.path, f"slice {index} out of range (0..{info.num_slices - 1})")
    k = _scan(_stamp(info.path), info.format).kspace[index]
    check_kspace(info.path, k, index)
    target = rss_target(k, info.header.recon_size) if info.has_target else None
    return torch.from_numpy(np.ascontiguousarray(k)), target


def parse_slices(spec: str | None, num_slices: int) -> list[int]:
    """``"10:20"``, ``"3"``, ``"0,4,7"`` or ``None`` (all) -> slice indices.

    Raises:
        ValueError: for a malformed spec, an empty range (``"2:0"``) or an index outside the volume.
    """
    if spec is None or spec in ("", "all", ":"):
        return list(range(num_slices))

    def index(text: str, default: int | None = None) -> int:
        try:
            return int(text) if text.strip() or default is None else default
        except ValueError:
            raise ValueError(f"slices {spec!r}: use e.g. '10:20', '3' or '0,5,9'") from None

    out: list[int] = []
    for part in spec.split(","):
        if ":" not in part:
            out.append(index(part))
            continue
        a, b = part.split(":", 1)
        start, stop = index(a, 0), index(b, num_slices)
        if stop <= start:
            raise ValueError(f"slices {spec!r}: the range {part!r} is empty (a:b selects a to b-1; "
                             f"{start}:{start + 1} is slice {start})")
        out.extend(range(start, min(stop, num_slices)))
    outside = [i for i in out if not 0 <= i < num_slices]
    if not out or outside:
        raise ValueError(f"slices {spec!r}: the volume has slices 0 to {num_slices - 1}"
                         + (f" (asked for {outside[0]})" if outside else " (none selected)"))
    return sorted(set(out))


def load_volume(path: str | os.PathLike, slices: Sequence[int] | None = None,
                challenge: str | None = None) -> Volume:
    """Load a volume of any supported kind.

    Args:
        path: fastMRI, ISMRMRD or Siemens twix file.
        slices: slice indices (default all).
        challenge: "multicoil" / "singlecoil" (fastMRI files; default: from the file).

    Returns:
        a :class:`Volume`; ``kspace`` is ``[slices, coils, H, W]`` complex64.
    """
    info = read_info(path, challenge)
    idx = list(range(info.num_slices)) if slices is None else list(slices)
    pairs = [load_slice(info, i) for i in idx]
    kspace = torch.stack([k for k, _ in pairs])
    target = np.stack([t for _, t in pairs]) if info.has_target else None
    return Volume(kspace, target, info.mask, info.header.recon_size, info.attrs, info)


def list_volumes(path: str | os.PathLike) -> list[Path]:
    """A file, or the sorted raw data files of a folder (``.h5``, ``.hdf5``, ``.mrd``, ``.dat``),
    each path once.

    Raises:
        InputError: when the path does not exist or the folder holds no such file.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
        if not files:
            raise InputError(path, f"folder holds no raw data files ({', '.join(SUFFIXES)})")
        return files
    return [path]
