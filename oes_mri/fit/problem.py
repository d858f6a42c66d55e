"""The k-space problem an untrained generator is fitted to.

Measured k-space ``y`` ``(C, H, W)``, mask ``M``, operator ``A``
(:class:`~oes_mri.physics.operator.MultiCoilOp`: SENSE with maps, per-coil without). The data is
scaled to the generator's output at init, ``y_s = s y`` with ``s = ||G(z)|| / ||A^H y||``
(ConvDecoder's rule; without it mask learning shrinks the output and pruning removes whole
layers), and the loss is the normalised data term ``||A G(z) - y_s||^2 / ||y_s||^2``. Images are
divided by ``s`` after. With a held-out split, the fit set and the held-out set are the
operator's own mask restricted (:meth:`MultiCoilOp.with_mask`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from oes_mri.physics.holdout import KspaceSplit
from oes_mri.physics.operator import MultiCoilOp


class KspaceProblem(NamedTuple):
    """A scaled k-space fitting problem, optionally with held-out samples.

    The residual ``r = A G(z) - y_s`` is computed once over every measured sample; the fit
    loss sums ``|r|^2`` over the fit set, the validation loss over the held-out set (both
    normalised by the energy of ``y_s`` on that set: 1 is the error of predicting zeros).

    Attributes:
        y: scaled measured k-space ``s * y``, ``(C, H, W)`` (every measured sample).
        op: the operator with the measured mask: SENSE (the generator makes 1 image) or
            per coil (C coil images).
        scale: ``s``; divide generator images by it to return to the data's scale.
        y_norm2: ``||M_fit s y||^2``.
        fit_mask: ``M_fit`` (``None``: every measured sample is fitted).
        val_mask: ``M_val`` (``None``: nothing held out).
        val_norm2: ``||M_val s y||^2`` (``None`` without a hold-out).
    """

    y: torch.Tensor
    op: MultiCoilOp
    scale: float
    y_norm2: torch.Tensor
    fit_mask: torch.Tensor | None = None
    val_mask: torch.Tensor | None = None
    val_norm2: torch.Tensor | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``A`` applied to generator output ``(K, H, W)``."""
        return self.op(images[0] if self.op.sense else images)

    def _error(self, images: torch.Tensor) -> torch.Tensor:
        r = self.forward(images) - self.y
        return r.real.square() + r.imag.square()

    def data_error(self, images: torch.Tensor) -> torch.Tensor:
        """``||M (A x - y_s)||^2 / ||M y_s||^2`` over every measured sample, fit and held out
        (1: the error of predicting zeros)."""
        return self._error(images).sum() / (self.y.real.square() + self.y.imag.square()).sum()

    def loss(self, images: torch.Tensor) -> torch.Tensor:
        """The fit loss ``||M_fit (A x - y_s)||^2 / ||M_fit y_s||^2``."""
        e = self._error(images)
        return (e if self.fit_mask is None else e * self.fit_mask).sum() / self.y_norm2

    def objective(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(fit loss, validation loss)`` from one forward pass; the validation loss is
        ``||M_val (A x - y_s)||^2 / ||M_val y_s||^2``, or ``None`` without a hold-out."""
        if self.val_mask is None:
            return self.loss(images), None
        e = self._error(images)
        return (e * self.fit_mask).sum() / self.y_norm2, (e * self.val_mask).sum() / self.val_norm2

    def coil_images(self, images: torch.Tensor) -> torch.Tensor:
        """Coil images ``(C, H, W)`` on the data's scale (``S x / s`` or ``x_c / s``)."""
        return self.op.coil_images(images[0] if self.op.sense else images) / self.scale


def make_problem(kspace: torch.Tensor, op: MultiCoilOp, init_output: torch.Tensor,
                 split: KspaceSplit | None = None) -> KspaceProblem:
    """The scaled problem of the measured ``kspace`` ``(C, H, W)`` under the operator ``op``
    (its mask: every measured sample) for a generator whose output at init is ``init_output``;
    with ``split``, only ``split.fit`` is fitted (``op.with_mask(split.fit)``) and ``split.val``
    is held out (the scale ``s`` comes from the fit set)."""
    if split is None:
        s = float(init_output.detach().norm() / op.adjoint(kspace).norm().clamp_min(1e-30))
        y = kspace * s
        return KspaceProblem(y, op, s, (y.abs() ** 2).sum())
    fit_mask, val_mask = split.fit.to(kspace.device), split.val.to(kspace.device)
    zf = op.with_mask(fit_mask).adjoint(kspace)
    s = float(init_output.detach().norm() / zf.norm().clamp_min(1e-30))
    y = kspace * s
    return KspaceProblem(y, op, s, ((y * fit_mask).abs() ** 2).sum(), fit_mask, val_mask,
                         ((y * val_mask).abs() ** 2).sum())
