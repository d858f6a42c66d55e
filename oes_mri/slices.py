"""A measured slice: the volume's sampling mask (the file's own or a new one), the
undersampled k-space with its readout oversampling removed, the coil maps and the target:
everything a method sees of one slice (:class:`~oes_mri.solvers.sparse_dip.SliceData`), and
the target it is scored against (never handed to a method)."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from oes_mri.data.fastmri_io import VolumeInfo
from oes_mri.data.volumes import load_slice
from oes_mri.errors import InputError
from oes_mri.methods import SliceInput
from oes_mri.physics.coils import MapCache, estimate_maps, map_cache_key
from oes_mri.physics.fft import center_crop, crop_readout
from oes_mri.physics.masks import SamplingMask, default_center_fraction, make_mask, volume_seed

if TYPE_CHECKING:
    from oes_mri.pipeline import RunConfig


def sampling_kind(cfg: RunConfig, info: VolumeInfo) -> str:
    """The mask kind a volume gets: ``auto`` is the file's own mask when it has one
    (prospectively undersampled data, fastMRI test files), else fastMRI's random mask."""
    if cfg.mask_kind == "auto":
        return "file" if info.mask is not None else "random"
    return cfg.mask_kind


def center_fraction(cfg: RunConfig, info: VolumeInfo, smask: SamplingMask | None) -> float:
    """The centre fraction a run used: the given one, fastMRI's default, or (``file`` masks)
    the calibration width over the k-space width."""
    if sampling_kind(cfg, info) == "file":
        return smask.acs_width / info.shape[1]
    return default_center_fraction(cfg.accel) if cfg.center_fraction is None else cfg.center_fraction


def volume_sampling_mask(info: VolumeInfo, cfg: RunConfig) -> SamplingMask:
    """The volume's mask: the file's own (``file``) or a new one (fastMRI per-volume seed)."""
    kind = sampling_kind(cfg, info)
    if kind == "file":
        if info.mask is None:
            raise InputError(info.path, "--sampling file given but the file holds no 'mask' dataset "
                                        "(it is fully sampled)")
        return info.mask
    seed = volume_seed(info.path.name) if cfg.seed is None else cfg.seed
    return make_mask(kind, info.shape, cfg.accel, center_fraction(cfg, info, None), seed)


READOUTS = ("crop", "full", "crop-maps")
"""``crop``: remove readout oversampling before the fits (when the readout is fully sampled,
i.e. a column mask); coil maps are estimated on the acquired readout and cropped;
``full``: fit the acquired readout; ``crop-maps``: as ``crop`` with the maps estimated on the
cropped k-space (measured in ``docs/self_validation.md``)."""


class MeasuredSlice(NamedTuple):
    """A slice as measured, and its target."""
    x: SliceInput
    """what a method sees"""
    target: np.ndarray | None
    """the file's ``reconstruction_rss`` slice ``(rH, rW)``, ``None`` when it has none"""


def prepare_slice(info: VolumeInfo, smask: SamplingMask, index: int, device: torch.device,
                  maps_cache: MapCache, readout: str = "crop", **key: object) -> MeasuredSlice:
    """One slice ready for the methods: ``y = M k`` on ``device``, ESPIRiT maps (from
    ``maps_cache`` under a key of the file, slice, mask, readout and ``key``) and the target.

    With ``readout="crop"`` and a column mask, the readout is cut to the recon size's field
    of view first (:func:`~oes_mri.physics.fft.crop_readout`: the image on the recon grid is
    unchanged, the fit has fewer pixels: half for fastMRI's 2x oversampling)."""
    if readout not in READOUTS:
        raise ValueError(f"readout {readout!r}: expected one of {', '.join(READOUTS)}")
    kspace, target = load_slice(info, index)
    rows = info.header.recon_size[0]
    crop = readout in ("crop", "crop-maps") and smask.mask.shape[0] == 1 and kspace.shape[-2] > rows
    mask = smask.mask.to(device)
    y = kspace.to(device) * mask + 0.0
    source = f"{info.path.name}:{index}"
    ckey = map_cache_key(info.path, index, smask, mask_kind=smask.kind, **key,
                         maps_on="cropped" if crop and readout == "crop-maps" else "acquired")
    if readout == "crop-maps" and crop:               # ESPIRiT on the cropped k-space (measured: not the default)
        y = crop_readout(y, rows)
        cropped = smask._replace(acs=(slice(0, rows), smask.acs[1]))
        maps = maps_cache.get_or_compute(ckey, lambda: estimate_maps(y, cropped, source=source)).maps
    else:                                             # ESPIRiT on the acquired readout, maps cropped
        maps = maps_cache.get_or_compute(ckey, lambda: estimate_maps(y, smask, source=source)).maps
        if crop:
            y, maps = crop_readout(y, rows), center_crop(maps, (rows, maps.shape[-1]))
    return MeasuredSlice(SliceInput(y, mask, maps.to(device), info.header.recon_size, source), target)
