"""The application's slices: a volume's sampling mask (the file's own or a new one,
:class:`Sampling`), and each slice read, measured (:func:`~oes_mri.physics.measured.measure`,
with the map cache) and paired with the target it is scored against (never handed to a
method)."""

from __future__ import annotations

import dataclasses
import logging
from typing import NamedTuple

import numpy as np
import torch

from oes_mri.data.fastmri_io import VolumeInfo
from oes_mri.data.volumes import load_slice
from oes_mri.errors import InputError
from oes_mri.physics.coils import CoilMaps, MapCache, estimate_maps, map_cache_key
from oes_mri.physics.masks import SamplingMask, default_center_fraction, make_sampling_mask, volume_seed
from oes_mri.physics.measured import SliceData, measure

log = logging.getLogger("oes_mri")

MIN_ACS = 2
"""Fewest calibration lines a new sampling mask may leave: with 0 or 1 the coil maps cannot be
estimated (CG-SENSE then made a non-finite image); from 2 to 3 the low-resolution fallback maps
are used (with their warning), from 4 ESPIRiT."""

@dataclasses.dataclass(frozen=True)
class Sampling:
    """How a volume is undersampled (the CLI's ``--sampling``, ``--accel``,
    ``--center-fraction``, ``--seed``).

    Attributes:
        kind: "auto" (the file's own mask when it has one, else "random"), "random",
            "equispaced", "poisson" or "file".
        accel: acceleration; center_fraction: ``None`` for fastMRI's default.
        seed: mask seed (``None``: fastMRI's per-volume seed from the file name).
    """

    kind: str = "auto"
    accel: float = 4.0
    center_fraction: float | None = None
    seed: int | None = None

    def resolved_kind(self, info: VolumeInfo) -> str:
        """The mask kind a volume gets: ``auto`` is the file's own mask when it has one
        (prospectively undersampled data, fastMRI test files), else fastMRI's random mask."""
        if self.kind == "auto":
            return "file" if info.mask is not None else "random"
        return self.kind

    def center_fraction_of(self, info: VolumeInfo, smask: SamplingMask | None) -> float:
        """The centre fraction used: the given one, fastMRI's default, or (``file`` masks) the
        calibration width over the k-space width."""
        if self.resolved_kind(info) == "file":
            return smask.acs_width / info.shape[1]
        return default_center_fraction(self.accel) if self.center_fraction is None else self.center_fraction

    def mask(self, info: VolumeInfo) -> SamplingMask:
        """The volume's mask: the file's own (``file``) or a new one (fastMRI per-volume seed)."""
        kind = self.resolved_kind(info)
        if kind == "file":
            if info.mask is None:
                raise InputError(info.path, "--sampling file given but the file holds no 'mask' dataset "
                                            "(it is fully sampled)")
            if self.center_fraction is not None or self.accel != Sampling.accel:
                log.warning("%s: the file's own sampling is used (%.2fx); --accel and --center-fraction do not "
                            "apply to it", info.path, info.mask.acceleration)
            return info.mask
        seed = volume_seed(info.path.name) if self.seed is None else self.seed
        try:
            smask = make_sampling_mask(kind, info.shape, self.accel, self.center_fraction_of(info, None), seed)
        except ValueError as err:
            raise InputError(info.path, f"--sampling {kind} --accel {self.accel:g}: {err}") from None
        if min(smask.acs_width, smask.acs_height) < MIN_ACS and self.accel > 1:
            raise InputError(info.path, f"--sampling {kind} --accel {self.accel:g} --center-fraction "
                                        f"{self.center_fraction_of(info, None):g} leaves {smask.acs_width} calibration "
                                        f"line(s) of {info.shape[1]}; the coil maps need at least {MIN_ACS}: raise "
                                        "--center-fraction")
        return smask


class MeasuredSlice(NamedTuple):
    """A slice as measured, and its target."""
    x: SliceData
    """what a method sees"""
    target: np.ndarray | None
    """the file's ``reconstruction_rss`` slice ``(rH, rW)``, ``None`` when it has none"""


def prepare_slice(info: VolumeInfo, smask: SamplingMask, index: int, device: torch.device,
                  maps_cache: MapCache, readout: str = "crop", **key: object) -> MeasuredSlice:
    """One slice of a file ready for the methods (:func:`measure`), its ESPIRiT maps from
    ``maps_cache`` under a key of the file, slice, mask, readout and ``key``, and the target."""
    kspace, target = load_slice(info, index)
    source = f"{info.path.name}:{index}"
    ckey = map_cache_key(info.path, index, smask, mask_kind=smask.kind, **key, maps_on="acquired")

    def maps(y: torch.Tensor) -> CoilMaps:
        return maps_cache.get_or_compute(ckey, lambda: estimate_maps(y, smask, source=source), tuple(y.shape))
    return MeasuredSlice(measure(kspace.to(device), smask, info.header.recon_size, readout, maps, source), target)
