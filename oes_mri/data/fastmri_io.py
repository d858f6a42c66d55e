"""Read and write fastMRI-format HDF5 files.

Layout (fastMRI multicoil train/val/test files):

- ``kspace``: complex64 ``[slices, coils, H, W]`` (single-coil: ``[slices, H, W]``), centred.
- ``reconstruction_rss`` (multicoil) / ``reconstruction_esc`` (single-coil): float32
  ``[slices, rH, rW]`` target, absent in test files.
- ``mask``: optional sampling mask, 1-D ``(W,)`` in fastMRI test files, 2-D ``(H, W)`` allowed.
- ``ismrmrd_header``: XML with the encoded and recon matrix sizes and
  ``kspace_encoding_step_1`` limits (padding columns), parsed with ``fastmri``'s ``et_query``.

Every problem with a file raises :class:`oes_mri.errors.InputError` with a one-line message
naming the file; h5py/numpy tracebacks never reach the user.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as etree
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np
import torch

from oes_mri.atomic import atomic_path
from oes_mri.errors import InputError
from oes_mri.physics.masks import SamplingMask, mask_from_array

MIN_GRID = 4                 # a k-space side below this cannot be undersampled
MAX_SLICE_BYTES = 4 * 2**30  # a fastMRI knee slice is 28 MB; more is a corrupt header
MAX_VOLUME_BYTES = 16 * 2**30
"""A scanner file's whole k-space in memory at most (a fastMRI knee volume is about 1 GB)."""


def check_size(path: Path | str, shape: tuple[int, int, int, int], itemsize: int) -> None:
    """Refuse k-space of ``shape`` ``(slices, coils, H, W)`` whose slices claim more than
    :data:`MAX_SLICE_BYTES` each or :data:`MAX_VOLUME_BYTES` in all (a corrupt or hostile header),
    before anything is allocated.

    Raises:
        InputError: naming the file and the claimed size.
    """
    S, C, H, W = (int(n) for n in shape)
    slice_bytes = C * H * W * itemsize
    if min(shape) <= 0 or slice_bytes > MAX_SLICE_BYTES or S * slice_bytes > MAX_VOLUME_BYTES:
        raise InputError(path, f"the header claims k-space {tuple(shape)} ({S * slice_bytes / 2**30:.1f} GiB): "
                               "a corrupt header or not a scan this toolkit reads")


TARGET_KEYS = {"multicoil": "reconstruction_rss", "singlecoil": "reconstruction_esc"}


class Header(NamedTuple):
    """Geometry from the ISMRMRD header (fastMRI's ``_retrieve_metadata``).

    Attributes:
        encoded_size: ``(H, W)`` of the encoded matrix (k-space grid).
        recon_size: ``(rH, rW)`` of the reconstruction (the centre crop scored by fastMRI).
        padding_left, padding_right: phase-encode columns ``[padding_left, padding_right)``
            that were acquired; columns outside are zero padding.
    """

    encoded_size: tuple[int, int]
    recon_size: tuple[int, int]
    padding_left: int
    padding_right: int


class VolumeInfo(NamedTuple):
    """What a file holds, read without loading k-space.

    ``format`` is the file's kind ("fastmri", "ismrmrd", "twix"); ``voxel_size`` the
    ``(readout, phase-encode, slice)`` spacing in mm on the recon grid when the header says it.
    """

    path: Path
    challenge: str
    num_slices: int
    num_coils: int
    shape: tuple[int, int]
    header: Header
    has_target: bool
    mask: SamplingMask | None
    attrs: dict
    format: str = "fastmri"
    voxel_size: tuple[float, float, float] | None = None


class Volume(NamedTuple):
    """A loaded volume (or a slice range of it).

    Attributes:
        kspace: complex64 tensor ``[slices, coils, H, W]`` (single-coil: ``coils == 1``).
        target: float32 array ``[slices, rH, rW]`` or ``None``.
        mask: the file's own :class:`SamplingMask` or ``None``.
        recon_size: ``(rH, rW)``.
        attrs: the file's HDF5 attributes.
        info: the full :class:`VolumeInfo`.
    """

    kspace: torch.Tensor
    target: np.ndarray | None
    mask: SamplingMask | None
    recon_size: tuple[int, int]
    attrs: dict
    info: VolumeInfo


def _open(path: Path) -> h5py.File:
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, "is a folder, not an HDF5 file")
    if not h5py.is_hdf5(path):
        raise InputError(path, "not an HDF5 file")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise InputError(path, f"cannot be opened as HDF5 (truncated or corrupt): {_short(err)}")


def _short(err: BaseException) -> str:
    return str(err).splitlines()[0][:160] if str(err) else type(err).__name__


def _parse_header(path: Path, hf: h5py.File, shape: tuple[int, int],
                  target_shape: tuple[int, int] | None) -> tuple[Header, tuple[float, float, float] | None]:
    """Header geometry and voxel size (mm, from the recon space's field of view and matrix);
    without an ISMRMRD header: encoded = k-space, recon = target or k-space, no voxel size."""
    from fastmri.data.mri_data import et_query

    if "ismrmrd_header" not in hf:
        recon = target_shape or shape
        return Header(shape, recon, 0, shape[1]), None
    try:
        root = etree.fromstring(dataset(hf, "ismrmrd_header", path)[()])
        enc = ["encoding", "encodedSpace", "matrixSize"]
        rec = ["encoding", "reconSpace", "matrixSize"]
        lims = ["encoding", "encodingLimits", "kspace_encoding_step_1"]
        enc_size = (int(et_query(root, enc + ["x"])), int(et_query(root, enc + ["y"])))
        recon = (int(et_query(root, rec + ["x"])), int(et_query(root, rec + ["y"])))
        center = int(et_query(root, lims + ["center"]))
        maximum = int(et_query(root, lims + ["maximum"])) + 1
    except (etree.ParseError, RuntimeError, ValueError, TypeError) as err:
        raise InputError(path, f"unreadable ismrmrd_header: {_short(err)}")
    padding_left = enc_size[1] // 2 - center
    recon = target_shape or recon
    if recon[0] > shape[0] or recon[1] > shape[1]:
        raise InputError(path, f"recon size {recon} is larger than the k-space {shape}")
    return Header(shape, recon, padding_left, padding_left + maximum), _voxel_size(root, recon)


def _voxel_size(root: etree.Element, recon: tuple[int, int]) -> tuple[float, float, float] | None:
    """``(fov_x / rH, fov_y / rW, fov_z)`` in mm from the recon space, ``None`` if absent."""
    from fastmri.data.mri_data import et_query

    fov = ["encoding", "reconSpace", "fieldOfView_mm"]
    try:
        x, y, z = (float(et_query(root, fov + [a])) for a in "xyz")
    except (RuntimeError, ValueError, TypeError):
        return None
    return (x / recon[0], y / recon[1], z) if min(x, y, z) > 0 else None


def dataset(hf: h5py.File, key: str, path: Path) -> h5py.Dataset:
    """``hf[key]`` when it is an array (a dataset).

    Raises:
        InputError: it is an HDF5 group (or another kind of object), naming ``path`` and ``key``.
    """
    obj = hf[key]
    if not isinstance(obj, h5py.Dataset):
        raise InputError(path, f"'{key}' is an HDF5 {'group' if isinstance(obj, h5py.Group) else type(obj).__name__}, "
                               "not an array")
    return obj


def read_fastmri_info(path: str | os.PathLike, challenge: str | None = None) -> VolumeInfo:
    """Read a fastMRI file's layout, header and mask without loading k-space.

    Args:
        path: fastMRI HDF5 file.
        challenge: "multicoil" or "singlecoil"; default: from the rank of ``kspace``.

    Raises:
        InputError: for every problem, with a one-line message naming the file.
    """
    path = Path(path)
    with _open(path) as hf:
        if "kspace" not in hf:
            raise InputError(path, f"no 'kspace' dataset (found: {', '.join(hf.keys()) or 'none'})")
        ds = dataset(hf, "kspace", path)
        if not np.issubdtype(ds.dtype, np.complexfloating):
            raise InputError(path, f"'kspace' has real dtype {ds.dtype}; complex k-space is required")
        rank = {"multicoil": 4, "singlecoil": 3}
        if challenge is None:
            challenge = {4: "multicoil", 3: "singlecoil"}.get(ds.ndim)
            if challenge is None:
                raise InputError(path, f"'kspace' has rank {ds.ndim}; expected 4 [slices, coils, H, W] "
                                       "(multicoil) or 3 [slices, H, W] (singlecoil)")
        elif challenge not in rank:
            raise InputError(path, f"unknown challenge {challenge!r}")
        elif ds.ndim != rank[challenge]:
            raise InputError(path, f"'kspace' has rank {ds.ndim}; {challenge} needs rank {rank[challenge]}")
        num_slices = ds.shape[0]
        num_coils = ds.shape[1] if challenge == "multicoil" else 1
        shape = (int(ds.shape[-2]), int(ds.shape[-1]))
        if num_slices == 0 or num_coils == 0 or min(shape) == 0:
            what = "0 coils" if num_coils == 0 else "0 slices" if num_slices == 0 else "an empty grid"
            raise InputError(path, f"'kspace' has {what} (shape {ds.shape})")
        if min(shape) < MIN_GRID:
            raise InputError(path, f"'kspace' grid {shape} is too small to undersample (each side >= {MIN_GRID})")
        slice_bytes = int(np.prod(ds.shape[1:], dtype=np.float64)) * ds.dtype.itemsize
        if slice_bytes > MAX_SLICE_BYTES:
            raise InputError(path, f"'kspace' claims {slice_bytes / 2**30:.1f} GiB per slice (shape {ds.shape}); "
                                   "corrupt header?")
        tkey = TARGET_KEYS[challenge]
        target_shape = None
        if tkey in hf:
            tshape = dataset(hf, tkey, path).shape
            if len(tshape) != 3 or tshape[0] != num_slices:
                raise InputError(path, f"'{tkey}' has shape {tshape}; expected [{num_slices}, rH, rW]")
            target_shape = (int(tshape[1]), int(tshape[2]))
        mask = None
        if "mask" in hf:
            try:
                mask = mask_from_array(dataset(hf, "mask", path)[()], shape, source="mask")
            except ValueError as err:
                raise InputError(path, str(err))
        header, voxel = _parse_header(path, hf, shape, target_shape)
        attrs = {k: _plain(v) for k, v in hf.attrs.items()}
    return VolumeInfo(path, challenge, num_slices, num_coils, shape, header,
                      target_shape is not None, mask, attrs, "fastmri", voxel)


def _plain(value):
    """HDF5 attribute -> JSON-friendly Python value."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def check_kspace(path: Path, kspace: np.ndarray, index: int) -> None:
    """Raise :class:`InputError` for NaN/Inf or all-zero k-space of slice ``index``."""
    if not np.isfinite(kspace).all():
        raise InputError(path, f"'kspace' slice {index} contains NaN or Inf values")
    if not np.any(kspace):
        raise InputError(path, f"'kspace' slice {index} is all zero")


def _read(path: Path, key: str, sel) -> np.ndarray:
    try:
        with _open(path) as hf:
            return hf[key][sel]
    except (OSError, KeyError) as err:
        raise InputError(path, f"cannot read '{key}' (truncated or corrupt file?): {_short(err)}")


def load_fastmri_slice(info: VolumeInfo, index: int) -> tuple[torch.Tensor, np.ndarray | None]:
    """One slice of a fastMRI file: k-space ``[coils, H, W]`` complex64 and target ``[rH, rW]`` or ``None``.

    Raises:
        InputError: for NaN/Inf or all-zero k-space, or an unreadable dataset.
    """
    if not 0 <= index < info.num_slices:
        raise InputError(info.path, f"slice {index} out of range (0..{info.num_slices - 1})")
    k = np.asarray(_read(info.path, "kspace", index), dtype=np.complex64)
    check_kspace(info.path, k, index)
    if info.challenge == "singlecoil":
        k = k[None]
    target = None
    if info.has_target:
        target = np.asarray(_read(info.path, TARGET_KEYS[info.challenge], index), np.float32)
    return torch.from_numpy(np.ascontiguousarray(k)), target


def atomic_h5(path: str | os.PathLike, datasets: dict[str, np.ndarray], attrs: dict | None = None) -> None:
    """Write an HDF5 file atomically: a temporary file beside it, then ``os.replace``.

    Args:
        path: final file name.
        datasets: name -> array (``bytes`` for string scalars).
        attrs: file attributes.
    """
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as hf:
            for name, data in datasets.items():
                hf.create_dataset(name, data=data)
            for k, v in (attrs or {}).items():
                hf.attrs[k] = v


def write_reconstruction(path: str | os.PathLike, reconstruction: np.ndarray) -> None:
    """fastMRI submission format: dataset ``reconstruction`` float32 ``[slices, rH, rW]``.

    ``fastmri.evaluate`` reads these files unchanged. The write is atomic.
    """
    rec = np.asarray(reconstruction, dtype=np.float32)
    if rec.ndim != 3:
        raise ValueError(f"reconstruction must be [slices, rH, rW], got shape {rec.shape}")
    atomic_h5(path, {"reconstruction": rec})
