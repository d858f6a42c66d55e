"""The classical methods as reconstructors: :class:`ZeroFilled`, :class:`CGSense`,
:class:`L1Wavelet` and :class:`TV` (solvers in :mod:`oes_mri.methods.solvers`).

The regularised ones choose their weight per slice by held-out k-space when ``tune`` is on
(and ``validation`` holds samples out): a grid of ``lamda x LAMBDA_FACTORS`` is solved on the
fit set, scored on the held-out set (:func:`~oes_mri.methods.tuning.choose_lambda` on :meth:`~oes_mri.fit.config.ValidationConfig.split`,
the same split the generator fits stop on), and the winner is solved again with every sample.
Weights are relative to the data scale (:mod:`oes_mri.methods.solvers`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar

import torch

from oes_mri.methods.base import Reconstruction, Reconstructor, final_image
from oes_mri.physics.operator import MultiCoilOp
from oes_mri.errors import require
from oes_mri.methods import solvers as classical
from oes_mri.methods.solvers import Recon
from oes_mri.fit.config import ValidationConfig
from oes_mri.physics.measured import SliceData
from oes_mri.methods.tuning import LambdaChoice, choose_lambda

LAMBDA_FACTORS = (0.1, 0.3, 1.0, 3.0, 10.0)
"""Held-out lambda grid: these multiples of the method's weight."""


def _op(x: SliceData) -> MultiCoilOp:
    return MultiCoilOp(x.mask, x.maps, x.recon_size)


def _result(x: SliceData, rec: Recon, history: dict) -> Reconstruction:
    return Reconstruction(final_image(x, rec.coil_images), rec.coil_images, rec.image, history)


@dataclasses.dataclass(frozen=True)
class ZeroFilled(Reconstructor):
    """Zero-filled: the measured k-space's coil images, RSS."""

    name: ClassVar[str] = "zf"
    title: ClassVar[str] = "zero-filled"

    def uses(self, key: str) -> bool:
        """No shared setting changes a zero-filled image."""
        return False

    def _one(self, x: SliceData) -> Reconstruction:
        return _result(x, classical.zero_filled(x.kspace, _op(x)), {})


@dataclasses.dataclass(frozen=True)
class Regularised(Reconstructor):
    """A solver ``x(y, A, lamda, iters)`` with a regularisation weight.

    Attributes:
        lamda: the weight (relative to the data scale), and the centre of the held-out grid.
        iters: solver iterations.
        tune: choose the weight per slice by held-out error (off, or without a hold-out share:
            ``lamda`` is used).
        validation: the held-out split (the generators' :class:`ValidationConfig`).
        seed: the split's seed (the generators' seed).
    """

    lamda: float = 1e-3
    iters: int = 100
    tune: bool = True
    validation: ValidationConfig = ValidationConfig()
    seed: int = 0
    solver: ClassVar[Callable[..., Recon]]

    def __post_init__(self) -> None:
        require(0 < self.lamda < float("inf"), f"{self.name} lambda {self.lamda}: must be a finite number > 0")
        require(self.iters >= 1, f"{self.name} iterations {self.iters}: must be >= 1")

    @property
    def tuned(self) -> bool:
        """The weight is chosen by held-out error."""
        return self.tune and self.validation.enabled

    def fingerprint(self) -> dict:
        fp = {"lamda": self.lamda, "tune": self.tuned, "iters": self.iters}
        if self.tuned:
            fp.update(validation=dataclasses.asdict(self.validation), seed=self.seed, grid=LAMBDA_FACTORS)
        return fp

    def solve(self, kspace: torch.Tensor, op: MultiCoilOp, lamda: float) -> Recon:
        return type(self).solver(kspace, op, lamda, self.iters)

    def choose(self, x: SliceData) -> LambdaChoice:
        """The held-out choice of the weight on slice ``x``."""
        op = _op(x)
        split = self.validation.split(x.mask, tuple(x.kspace.shape[-2:]), self.seed)
        return choose_lambda(lambda k, m, lam: self.solve(k, op.with_mask(m), lam), x.kspace, split,
                             [self.lamda * f for f in LAMBDA_FACTORS], self.lamda, self.validation.informative)

    def tuned_on(self, x: SliceData) -> bool:
        """The weight is chosen by held-out error on slice ``x`` (tuning on, and samples to hold out)."""
        return self.tuned and self.validation.usable(x.mask, tuple(x.kspace.shape[-2:]), x.source)

    def heldout_start(self, x: SliceData) -> tuple[torch.Tensor, float]:
        """The complex image ``(H, W)`` solved on the fit set (the held-out split's fold 0, the
        one the generator fits stop on) at the held-out-chosen weight, and that weight: a start
        whose held-out error is honest (it has not seen the held-out samples)."""
        if not self.tuned_on(x):
            return self.solve(x.kspace, _op(x), self.lamda).image, self.lamda
        lamda = self.choose(x).lamda
        split = self.validation.split(x.mask, tuple(x.kspace.shape[-2:]), self.seed)
        return self.solve(x.kspace * split.fit + 0.0, _op(x).with_mask(split.fit), lamda).image, lamda

    def _one(self, x: SliceData) -> Reconstruction:
        lamda, history = self.lamda, {}
        if self.tuned_on(x):
            choice = self.choose(x)
            lamda, history = choice.lamda, {"lambda_grid": list(choice.grid), "lambda_errors": list(choice.errors),
                                            "lambda_evidence": choice.evidence}
        return _result(x, self.solve(x.kspace, _op(x), lamda), {**history, "lambda": lamda})


@dataclasses.dataclass(frozen=True)
class CGSense(Regularised):
    """CG-SENSE (Tikhonov): ``argmin ||A x - y||^2 + lamda ||x||^2`` by conjugate gradients."""

    name: ClassVar[str] = "sense"
    title: ClassVar[str] = "CG-SENSE"
    solver: ClassVar = staticmethod(classical.cg_sense)
    lamda: float = 0.01
    iters: int = 50


@dataclasses.dataclass(frozen=True)
class L1Wavelet(Regularised):
    """L1-wavelet compressed sensing (sigpy, Daubechies-4)."""

    name: ClassVar[str] = "l1"
    title: ClassVar[str] = "L1-wavelet"
    solver: ClassVar = staticmethod(classical.l1_wavelet)
    lamda: float = 2e-3


@dataclasses.dataclass(frozen=True)
class TV(Regularised):
    """Total-variation compressed sensing (sigpy, PDHG)."""

    name: ClassVar[str] = "tv"
    title: ClassVar[str] = "TV"
    solver: ClassVar = staticmethod(classical.total_variation)
    lamda: float = 3e-3
