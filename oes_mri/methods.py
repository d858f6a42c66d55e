"""The reconstruction methods, one registry entry each (:data:`REGISTRY`): what runs a slice,
which settings its output depends on (the resume fingerprint) and its display name.

Names: ``zf`` (zero-filled RSS), ``sense`` (CG-SENSE), ``l1`` (L1-wavelet), ``tv`` (total
variation), ``dip`` (dense DIP), ``oes`` (Sparse-DIP with an OES mask), and the pruning
baselines at the same density ``random``, ``magnitude``, ``snip``, ``imp``.

Every method is tuned the same honest way, by held-out k-space (``MethodSettings.dip.validation``):
the untrained generators stop on it (:class:`~oes_mri.solvers.sparse_dip.ValidationConfig`),
and the regularised baselines choose their weight from a grid by it
(:func:`~oes_mri.solvers.tuning.choose_lambda`) before a final solve with every sample.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch

from oes_mri.pruning.weightmask import WeightMask
from oes_mri.solvers import classical
from oes_mri.solvers.classical import Recon
from oes_mri.solvers.combine import dc_rss
from oes_mri.solvers.config import DipConfig
from oes_mri.solvers.sparse_dip import SliceData, Weights, reconstruct_dip_batch
from oes_mri.solvers.tuning import choose_lambda

SliceInput = SliceData  # what a method sees of one slice: kspace, mask, maps, recon_size, source
Score = Callable[[np.ndarray], dict]
"""``score(image) -> dict`` of a final image ``(rH, rW)`` (e.g. PSNR/SSIM against a target)."""

LAMBDA_FACTORS = (0.1, 0.3, 1.0, 3.0, 10.0)
"""Held-out lambda grid: these multiples of the method's fixed weight."""


@dataclasses.dataclass
class MethodSettings:
    """Per-method settings (CLI knobs).

    Attributes:
        dip: the untrained generators' settings (its ``validation`` is every method's hold-out).
        cg_lambda, l1_lambda, tv_lambda: fixed regularisation weights (relative to the data
            scale), and the centre of the held-out grid.
        cg_iters, cs_iters: iterations of CG-SENSE and of the L1/TV solvers.
        tune: choose the baselines' weights by held-out error (``lambda x LAMBDA_FACTORS``);
            off, or without a hold-out share, the fixed weights are used.
    """

    dip: DipConfig = dataclasses.field(default_factory=DipConfig)
    cg_lambda: float = 0.01
    cg_iters: int = 50
    l1_lambda: float = 2e-3
    tv_lambda: float = 3e-3
    cs_iters: int = 100
    tune: bool = True

    def tuned(self) -> bool:
        """The baselines' weights are chosen by held-out error."""
        return self.tune and self.dip.validation.enabled


def final_image(x: SliceInput, coil_images: torch.Tensor) -> np.ndarray:
    """The output image of every method: data consistency with every measured sample, then
    RSS, centre-cropped to the recon size (:func:`~oes_mri.solvers.combine.dc_rss`), as
    ``(rH, rW)`` float32 on the host."""
    return dc_rss(coil_images, x.kspace, x.mask, x.recon_size).cpu().numpy().astype(np.float32)


class MethodResult(NamedTuple):
    """A method's reconstruction of one slice."""
    image: np.ndarray
    """the final image ``(rH, rW)`` (:func:`final_image`)"""
    recon: Recon
    """coil images and the combined image of the solver"""
    history: dict
    """losses, curves, steps, the chosen lambda ... (empty for zero-filling)"""
    weight_mask: WeightMask | None
    """the pruning mask of an untrained generator"""
    weights: Weights | None = None
    """the fitted generator's state (a neighbour's warm start)"""


@dataclasses.dataclass(frozen=True)
class Method:
    """One reconstruction method.

    Attributes:
        name: the CLI name; title: the display name.
        pruning: the untrained generator's pruning (``DipConfig.pruning``), ``None`` for a classical method.
        lambda_field: the ``MethodSettings`` field of its regularisation weight (``None``: none).
        iters_field: the ``MethodSettings`` field of its iteration count.
        solve: ``solve(kspace, mask, maps, lamda, iters) -> Recon`` of a classical method.
    """

    name: str
    title: str
    pruning: str | None = None
    lambda_field: str | None = None
    iters_field: str | None = None
    solve: Callable[..., Recon] | None = None

    @property
    def untrained(self) -> bool:
        return self.pruning is not None

    def fingerprint(self, settings: MethodSettings) -> dict:
        """The settings its output depends on."""
        if self.untrained:
            d = dataclasses.asdict(settings.dip)
            d["pruning"].pop("method")
            return {"dip": d}
        fp = {}
        if self.lambda_field:
            fp.update(lamda=getattr(settings, self.lambda_field), tune=settings.tuned())
            if settings.tuned():
                fp.update(validation=dataclasses.asdict(settings.dip.validation), seed=settings.dip.seed,
                          grid=LAMBDA_FACTORS)
        if self.iters_field:
            fp["iters"] = getattr(settings, self.iters_field)
        return fp

    def config(self, settings: MethodSettings) -> DipConfig:
        """The untrained generator's settings of this method."""
        return settings.dip.updated({"pruning.method": self.pruning})

    def warm_starts(self, settings: MethodSettings, shared_mask: bool) -> bool:
        """Its slices are chained within a volume: an untrained generator with warm starts on,
        dense, or OES with one pruning mask for every slice (``shared_mask``: the volume's
        mask or a given one). The pruning baselines make a mask per slice: not chained."""
        return (self.untrained and settings.dip.warm.enabled
                and (self.pruning == "dense" or (self.name == "oes" and shared_mask)))

    def run(self, x: SliceInput, settings: MethodSettings, weight_mask: WeightMask | None = None,
            progress: Callable[[int, dict], None] | None = None, score: Score | None = None,
            init: Weights | None = None) -> MethodResult:
        """Reconstruct one slice (:meth:`run_batch`)."""
        return self.run_batch([x], settings, weight_mask, progress, [score], [init])[0]

    def run_batch(self, xs: list[SliceInput], settings: MethodSettings, weight_mask: WeightMask | None = None,
                  progress: Callable[[int, dict], None] | None = None, scores: Sequence[Score | None] | None = None,
                  inits: Sequence[Weights | None] | None = None) -> list[MethodResult]:
        """Reconstruct several slices of one size; untrained generators are fitted together
        (:func:`~oes_mri.solvers.sparse_dip.reconstruct_dip_batch`).

        Args:
            weight_mask: the pruning mask of ``oes`` (ignored by the other methods).
            progress: ``progress(step, {...})`` of the fits.
            scores: per slice, ``score(image) -> dict`` of the final image of an iterate, logged
                in the history's curves every ``log_every`` fit steps (the method never sees a target).
            inits: per slice, a warm start for an untrained generator (``None``: random init).
        """
        if not self.untrained:
            return [self._classical(x, settings) for x in xs]
        scores = list(scores) if scores is not None else [None] * len(xs)
        monitors = [None if sc is None else _monitor(x, sc) for x, sc in zip(xs, scores)]
        outs = reconstruct_dip_batch(xs, self.config(settings), weight_mask if self.name == "oes" else None,
                                     progress, monitors, inits)
        return [MethodResult(final_image(x, o.coil_images), Recon(o.coil_images, o.image), o.history,
                             o.weight_mask, o.weights) for x, o in zip(xs, outs)]

    def _classical(self, x: SliceInput, settings: MethodSettings) -> MethodResult:
        if self.solve is None:
            rec = classical.zero_filled(x.kspace, x.mask, x.maps)
            return MethodResult(final_image(x, rec.coil_images), rec, {}, None)
        iters = getattr(settings, self.iters_field)
        lamda, history = getattr(settings, self.lambda_field), {}
        if settings.tuned():
            choice = self.choose(x, settings)
            lamda, history = choice.lamda, {"lambda_grid": list(choice.grid), "lambda_errors": list(choice.errors)}
        rec = self.solve(x.kspace, x.mask, x.maps, lamda, iters)
        return MethodResult(final_image(x, rec.coil_images), rec, {**history, "lambda": lamda}, None)

    def choose(self, x: SliceInput, settings: MethodSettings):
        """The held-out choice of this method's weight on slice ``x`` (:func:`choose_lambda`)."""
        val = settings.dip.validation
        split = val.split(x.mask, tuple(x.kspace.shape[-2:]), settings.dip.seed)
        iters, centre = getattr(settings, self.iters_field), getattr(settings, self.lambda_field)

        def solve(k: torch.Tensor, m: torch.Tensor, lam: float) -> Recon:
            return self.solve(k, m, x.maps, lam, iters)
        return choose_lambda(solve, x.kspace, split, [centre * f for f in LAMBDA_FACTORS])


def _monitor(x: SliceInput, score: Score) -> Callable[[torch.Tensor], dict]:
    """A fit monitor that scores the final image of each logged iterate."""
    return lambda coil_images: score(final_image(x, coil_images))


REGISTRY: dict[str, Method] = {m.name: m for m in (
    Method("zf", "zero-filled"),
    Method("sense", "CG-SENSE", lambda_field="cg_lambda", iters_field="cg_iters", solve=classical.cg_sense),
    Method("l1", "L1-wavelet", lambda_field="l1_lambda", iters_field="cs_iters", solve=classical.l1_wavelet),
    Method("tv", "TV", lambda_field="tv_lambda", iters_field="cs_iters", solve=classical.total_variation),
    Method("oes", "Sparse-DIP (OES)", pruning="oes"),
    Method("dip", "DIP (dense)", pruning="dense"),
    Method("random", "Sparse-DIP (random mask)", pruning="random"),
    Method("magnitude", "Sparse-DIP (magnitude mask)", pruning="magnitude"),
    Method("snip", "Sparse-DIP (SNIP mask)", pruning="snip"),
    Method("imp", "Sparse-DIP (IMP mask)", pruning="imp"),
)}
METHODS = tuple(REGISTRY)
CLASSICAL = tuple(n for n, m in REGISTRY.items() if not m.untrained)
UNTRAINED = tuple(n for n, m in REGISTRY.items() if m.untrained)
DEFAULT_METHODS = ("oes", "sense", "zf")


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
               progress: Callable[[int, dict], None] | None = None, score: Score | None = None,
               init: Weights | None = None) -> MethodResult:
    """Reconstruct one slice with method ``name`` (:data:`REGISTRY`, :meth:`Method.run`)."""
    return REGISTRY[name].run(x, settings, weight_mask, progress, score, init)


def run_batch(name: str, xs: list[SliceInput], settings: MethodSettings, weight_mask: WeightMask | None = None,
              progress: Callable[[int, dict], None] | None = None, scores: Sequence[Score | None] | None = None,
              inits: Sequence[Weights | None] | None = None) -> list[MethodResult]:
    """Reconstruct several slices of one size with method ``name`` (:meth:`Method.run_batch`)."""
    return REGISTRY[name].run_batch(xs, settings, weight_mask, progress, scores, inits)
