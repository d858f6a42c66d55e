"""Classical baselines: zero-filled, CG-SENSE, L1-wavelet and total-variation CS.

Each solver is a function ``(kspace, op, ...) -> Recon`` on one slice: ``kspace``
``(C, H, W)`` complex64 (zero-filled, undersampled), ``op`` the SENSE operator
:class:`~oes_mri.physics.operator.MultiCoilOp` (its mask and maps). The output image is then
made by :func:`oes_mri.physics.combine.dc_rss` from ``Recon.coil_images``.

Regularisation weights are relative to the data scale: the k-space is divided by
``s = max |A^H y|`` before solving and the image multiplied by ``s`` after, so the same
default works on fastMRI knee data (~1e-4), the built-in sample and the tiny-scale phantom.
CG-SENSE (Tikhonov) is linear in ``y`` and needs no such scaling. L1-wavelet and TV are
sigpy's ``L1WaveletRecon`` / ``TotalVariationRecon``, run on the tensors' GPU when CuPy is
installed and on the CPU otherwise (:mod:`oes_mri.sigpy_bridge`); CG-SENSE runs in torch on
the tensors' device.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from oes_mri.physics.fft import ifft2c
from oes_mri.physics.operator import MultiCoilOp
from oes_mri.sigpy_bridge import run_app


class Recon(NamedTuple):
    """A reconstruction of one slice.

    Attributes:
        coil_images: ``(C, H, W)`` complex, fed to data consistency + RSS.
        image: SENSE-combined complex image ``(H, W)``, or ``None`` (zero-filled RSS).
    """

    coil_images: torch.Tensor
    image: torch.Tensor | None


def zero_filled(kspace: torch.Tensor, op: MultiCoilOp) -> Recon:
    """Zero-filled: coil images ``F^H y``; image ``A^H y`` when ``op`` has maps."""
    image = op.adjoint(kspace) if op.sense else None
    return Recon(ifft2c(kspace), image)


def conjugate_gradient(normal, rhs: torch.Tensor, max_iter: int, tol: float = 1e-6) -> torch.Tensor:
    """Solve ``N x = b`` for Hermitian positive-definite ``N`` by conjugate gradients from 0."""
    x = torch.zeros_like(rhs)
    r = rhs.clone()
    p = r.clone()
    rs = torch.vdot(r.flatten(), r.flatten()).real
    stop = tol**2 * rs
    for _ in range(max_iter):
        Ap = normal(p)
        alpha = rs / torch.vdot(p.flatten(), Ap.flatten()).real
        x = x + alpha * p
        r = r - alpha * Ap
        rs_new = torch.vdot(r.flatten(), r.flatten()).real
        if rs_new <= stop:
            break
        p = r + (rs_new / rs) * p
        rs = rs_new
    return x


def cg_sense(kspace: torch.Tensor, op: MultiCoilOp, lamda: float = 0.01, max_iter: int = 50) -> Recon:
    """CG-SENSE: ``argmin_x ||A x - y||^2 + lamda ||x||^2``, ``A = M F S``.

    Solves ``(A^H A + lamda I) x = A^H y`` by conjugate gradients (``max_iter`` iterations).
    With ESPIRiT maps and a unitary FFT, ``A^H A`` has eigenvalues in [0, 1], so ``lamda``
    is relative to the operator and the solution is linear in ``y`` (scale-free).
    """
    x = conjugate_gradient(lambda v: op.normal(v) + lamda * v, op.adjoint(kspace), max_iter)
    return Recon(op.coil_images(x), x)


def data_scale(kspace: torch.Tensor, op: MultiCoilOp) -> float:
    """``max |A^H y|``: the scale that regularisation weights are relative to."""
    s = float(op.adjoint(kspace).abs().max())
    return s if s > 0 else 1.0


def _sigpy_recon(app_cls, kspace: torch.Tensor, op: MultiCoilOp, lamda: float, max_iter: int) -> Recon:
    """sigpy's ``app_cls(y / s, maps, lamda, weights=mask)`` (the same ``M F S`` as ``op``), times ``s``."""
    s = data_scale(kspace, op)
    maps, weights = op.maps, op.weights(tuple(kspace.shape[-2:]))

    def app(y, mps, weights, device):
        return app_cls(y, mps, lamda, weights=weights, max_iter=max_iter, device=device, show_pbar=False)
    x = run_app(app, {"y": (kspace / s).to(torch.complex64), "mps": maps.to(torch.complex64), "weights": weights},
                kspace.device) * s
    return Recon(maps * x, x)


def l1_wavelet(kspace: torch.Tensor, op: MultiCoilOp, lamda: float = 1e-3, max_iter: int = 100) -> Recon:
    """L1-wavelet CS: ``argmin_x 1/2 ||A x - y/s||^2 + lamda ||W x||_1`` (sigpy, Daubechies-4),
    with ``s = max |A^H y|``; returns ``s x``."""
    import sigpy.mri

    return _sigpy_recon(sigpy.mri.app.L1WaveletRecon, kspace, op, lamda, max_iter)


def total_variation(kspace: torch.Tensor, op: MultiCoilOp, lamda: float = 1e-3, max_iter: int = 100) -> Recon:
    """TV CS: ``argmin_x 1/2 ||A x - y/s||^2 + lamda ||grad x||_1`` (sigpy PDHG);
    returns ``s x``."""
    import sigpy.mri

    return _sigpy_recon(sigpy.mri.app.TotalVariationRecon, kspace, op, lamda, max_iter)
