"""The reconstruction methods by name: one function per slice, ``(SliceInput) -> Recon``.

Names: ``zf`` (zero-filled RSS), ``sense`` (CG-SENSE), ``l1`` (L1-wavelet), ``tv`` (total
variation), ``dip`` (dense DIP), ``oes`` (Sparse-DIP with an OES mask), and the pruning
baselines at the same density ``random``, ``magnitude``, ``snip``, ``imp``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

from oes_mri.pruning.weightmask import WeightMask
from oes_mri.solvers import classical
from oes_mri.solvers.classical import Recon
from oes_mri.solvers.sparse_dip import DipConfig, DipOutput, SliceData, reconstruct_dip, reconstruct_dip_batch

CLASSICAL = ("zf", "sense", "l1", "tv")
UNTRAINED = {"oes": "oes", "dip": "dense", "random": "random", "magnitude": "magnitude",
             "snip": "snip", "imp": "imp"}
METHODS = CLASSICAL + tuple(UNTRAINED)
DEFAULT_METHODS = ("oes", "sense", "zf")


SliceInput = SliceData  # what a method sees of one slice: kspace, mask, maps, recon_size, target, source


@dataclasses.dataclass
class MethodSettings:
    """Per-method settings (CLI knobs)."""

    dip: DipConfig = dataclasses.field(default_factory=DipConfig)
    cg_lambda: float = 0.01
    cg_iters: int = 50
    l1_lambda: float = 2e-3
    tv_lambda: float = 3e-3
    cs_iters: int = 100


class MethodResult(NamedTuple):
    recon: Recon
    history: dict
    weight_mask: WeightMask | None


def parse_methods(spec: str) -> list[str]:
    """``"oes,sense,zf"`` or ``"all"`` -> method names (validated, order kept)."""
    names = list(dict.fromkeys(m.strip() for m in spec.split(",") if m.strip()))   # once each, order kept
    if names == ["all"]:
        return list(METHODS)
    bad = [m for m in names if m not in METHODS]
    if bad or not names:
        raise ValueError(f"unknown method(s) {', '.join(bad) or '(none)'}; choose from "
                         f"{', '.join(METHODS)} or 'all'")
    return names


def run_method(name: str, x: SliceInput, settings: MethodSettings, weight_mask: WeightMask | None = None,
               progress: Callable[[int, dict], None] | None = None) -> MethodResult:
    """Reconstruct one slice with method ``name``."""
    if name == "zf":
        return MethodResult(classical.zero_filled(x.kspace, x.mask, x.maps), {}, None)
    if name == "sense":
        return MethodResult(classical.cg_sense(x.kspace, x.mask, x.maps, settings.cg_lambda,
                                               settings.cg_iters), {}, None)
    if name == "l1":
        return MethodResult(classical.l1_wavelet(x.kspace, x.mask, x.maps, settings.l1_lambda,
                                                 settings.cs_iters), {}, None)
    if name == "tv":
        return MethodResult(classical.total_variation(x.kspace, x.mask, x.maps, settings.tv_lambda,
                                                      settings.cs_iters), {}, None)
    cfg = dataclasses.replace(settings.dip, pruning=UNTRAINED[name])
    out = reconstruct_dip(x.kspace, x.mask, x.maps, cfg, x.recon_size, weight_mask if name == "oes" else None,
                          x.target, x.source, progress)
    return _result(out)


def _result(out: DipOutput) -> MethodResult:
    return MethodResult(Recon(out.coil_images, out.image), out.history, out.weight_mask)


def run_batch(name: str, xs: list[SliceInput], settings: MethodSettings, weight_mask: WeightMask | None = None,
              progress: Callable[[int, dict], None] | None = None) -> list[MethodResult]:
    """Reconstruct several slices of one size with method ``name``; the untrained
    generators are fitted together (:func:`~oes_mri.solvers.sparse_dip.reconstruct_dip_batch`)."""
    if name in CLASSICAL:
        return [run_method(name, x, settings, weight_mask, progress) for x in xs]
    cfg = dataclasses.replace(settings.dip, pruning=UNTRAINED[name])
    outs = reconstruct_dip_batch(xs, cfg, weight_mask if name == "oes" else None, progress)
    return [_result(o) for o in outs]
