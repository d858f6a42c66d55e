"""``oes_mri.reconstruct``: one slice, any method, in one call.

    import oes_mri
    out = oes_mri.reconstruct(kspace, mask, method="oes", steps=300)
    out.image            # (rH, rW) float32: data consistency + RSS, cropped
    out.steps, out.history["best_step"]

The same path as the command line (:func:`oes_mri.app.slices.measure`: the mask applied, ESPIRiT
maps on the acquired readout, readout oversampling removed) and the same method objects
(:mod:`oes_mri.methods`), so the image equals the CLI's for that slice with the same settings.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
from typing import Any

import numpy as np
import torch

from oes_mri.errors import first_line
from oes_mri.methods import Reconstruction, Reconstructor, UnknownSetting, default_methods, make
from oes_mri.nets.generator import ArchConfig
from oes_mri.physics.masks import SamplingMask, mask_from_array
from oes_mri.physics.operator import MultiCoilOp
from oes_mri.pruning import bank
from oes_mri.pruning.weightmask import WeightMask
from oes_mri.physics.measured import measure
from oes_mri.fit.config import DipConfig

ALIASES = {"steps": "fit.steps", "lr": "fit.lr", "penalty": "fit.penalty", "density": "pruning.density",
           "holdout": "validation.share", "patience": "validation.patience"}
"""Short names of the generator settings most often changed (any ``section.field`` of
:class:`~oes_mri.fit.config.DipConfig` works too)."""


def _dip_settings(settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``settings`` split into :meth:`DipConfig.updated` changes and the method's own fields."""
    top = {f.name for f in dataclasses.fields(DipConfig)}
    dip, own = {}, {}
    for key, value in settings.items():
        key = ALIASES.get(key, key)
        if "." in key or key in top:
            dip[key] = ArchConfig(value) if key == "arch" and isinstance(value, str) else value
        else:
            own[key] = value
    return dip, own


def _as_tensor(a: np.ndarray | torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    t = torch.as_tensor(a)
    return t.to(device) if device is not None else t


def _sampling_mask(mask: np.ndarray | torch.Tensor, shape: tuple[int, int]) -> SamplingMask:
    """An array mask ``(W,)``, ``(1, W)`` or ``(H, W)`` as a :class:`SamplingMask`."""
    arr = np.asarray(torch.as_tensor(mask).detach().cpu())
    return mask_from_array(arr[0] if arr.ndim == 2 and arr.shape[0] == 1 else arr, shape, "mask")


def resolve(method: str | Reconstructor | None, device: torch.device | str, tune: bool = True,
            **settings: Any) -> Reconstructor:
    """The method object :func:`reconstruct` runs on ``device``: ``method`` by name (``None``:
    the device's default Sparse-DIP) with ``settings``, and the device's defaults where they
    are left open (:meth:`~oes_mri.fit.config.DipConfig.on_device`: the CUDA step cap and CUDA
    graphs), as the command line resolves them; a method object as given.

    Raises:
        ValueError: an unknown method or setting, or settings beside a method object.
    """
    if isinstance(method, Reconstructor):
        if settings:
            raise ValueError("settings go into the method object; pass either a method object or a name with settings")
        return method
    dip, own = _dip_settings(settings)
    graph = dip.pop("speed.cuda_graph", None)
    cfg = DipConfig().updated(dip).on_device(device, graph)
    try:
        rec = make(default_methods(device, cfg.arch.name)[0] if method is None else method, cfg, tune, **own)
    except UnknownSetting as err:
        raise ValueError(f"{err}; the generator settings: {', '.join(ALIASES)}, 'seed', 'arch' or "
                         "'section.field' keys of DipConfig") from None
    unused = sorted(k for k in dip if not rec.uses(k))
    if unused:
        raise ValueError(f"method {rec.name!r} does not use the setting(s) {', '.join(unused)}")
    return rec


def reconstruct(kspace: np.ndarray | torch.Tensor, mask: SamplingMask | np.ndarray | torch.Tensor,
                method: str | Reconstructor | None = None, maps: np.ndarray | torch.Tensor | None = None, *,
                recon_size: tuple[int, int] | None = None, readout: str = "crop", tune: bool = True,
                device: torch.device | str | None = None, progress=None,
                pruning_mask: str | os.PathLike | WeightMask | None = None, **settings: Any) -> Reconstruction:
    """Reconstruct one slice.

    Args:
        kspace: complex k-space ``(C, H, W)``, fully sampled or undersampled (numpy or torch).
        mask: the sampling mask: a :class:`~oes_mri.physics.masks.SamplingMask` (what
            ``fastmri_mask`` returns), or an array ``(W,)``, ``(1, W)`` or ``(H, W)`` (its
            calibration region is then the centred run of sampled lines).
        method: a name of :data:`oes_mri.methods.REGISTRY` ("oes", "dip", "sense", "l1", "tv",
            "zf", ...) or a method object; ``None``: the CLI's default Sparse-DIP on the
            device (:func:`oes_mri.methods.default_methods`: "random-channels" on the CPU),
            with the device's defaults where the settings leave them open (:func:`resolve`).
        maps: coil maps ``(C, H, W)`` on the k-space grid; ``None``: ESPIRiT from the
            calibration region.
        recon_size: ``(rH, rW)`` of the output (default ``(H, W)``; fastMRI knee: 320x320, with
            the 2x readout oversampling then removed before the fit).
        readout: "crop" (remove readout oversampling when ``recon_size`` is smaller than the
            grid, as the CLI) or "full" (fit the whole grid, as the deepinv adapter by default;
            the images differ by a few per cent).
        tune: choose the classical methods' lambda by held-out k-space.
        device: where to compute (default: ``kspace``'s device).
        progress: ``progress(step, info)`` of a generator fit.
        pruning_mask: a pruning mask to fit with instead of making one (the CLI's
            ``--pruning-mask``): ``"bank:channels25"`` (a shipped mask,
            :mod:`oes_mri.pruning.bank`), a mask file, or a ``WeightMask``; only for a method
            that takes one (``oes``, ``oes-channels``, ``random-channels``).
        **settings: the method's settings: generator settings by short name (``steps``, ``lr``,
            ``density``, ``holdout``, ``patience``, ``penalty``, ``seed``, ``arch``) or as
            ``"section.field"`` keys of :class:`~oes_mri.fit.config.DipConfig` (pass them
            with ``**{"fit.lr_schedule": "cosine"}``); a classical method's own fields
            (``lamda``, ``iters``).

    Raises:
        ValueError: an unknown method or setting, or a mask that does not fit the k-space.
    """
    if device is not None:
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"device {device!r}: not a torch device ({first_line(err)[:80]})") from None
    k = _as_tensor(kspace, device)
    if not k.is_complex() or k.ndim != 3:
        raise ValueError(f"kspace must be complex (coils, H, W), got {tuple(k.shape)} {k.dtype}")
    k = k.to(torch.complex64)
    shape = tuple(k.shape[-2:])
    if recon_size is not None and not (isinstance(recon_size, (tuple, list)) and len(recon_size) == 2
                                       and all(isinstance(n, numbers.Integral) and not isinstance(n, bool) and n > 0
                                               for n in recon_size)):
        raise ValueError(f"recon_size must be a pair of positive ints (rH, rW), got {recon_size!r}")
    smask = mask if isinstance(mask, SamplingMask) else _sampling_mask(mask, shape)
    rec = resolve(method, k.device, tune, **settings)
    fixed = bank.unused_with_mask(_dip_settings(settings)[0]) if pruning_mask is not None else []
    if fixed:
        raise ValueError(f"pruning_mask fixes what is kept; the setting(s) {', '.join(fixed)} would not be used: "
                         "drop them or the mask")
    given = None if maps is None else _as_tensor(maps, k.device).to(torch.complex64)
    x = measure(k, smask, tuple(recon_size or shape), readout, given)
    wm = pruning_mask if pruning_mask is None or isinstance(pruning_mask, WeightMask) else bank.load_file(pruning_mask)
    return rec.reconstruct(x.kspace, MultiCoilOp(x.mask, x.maps, x.recon_size), progress=progress, weight_mask=wm)


__all__ = ["reconstruct", "resolve"]
