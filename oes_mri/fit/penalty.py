"""The hybrid prior: a wavelet sparsity penalty on the generator's image.

The generator is fitted to ``||M_fit (A G(z) - y_s)||^2 / ||M_fit y_s||^2 + mu ||W G(z)||_1``
with ``W`` the orthonormal Daubechies-4 transform that sigpy's L1-wavelet baseline uses (all
levels pywt allows, zero padding, every coefficient; complex coefficients by their modulus).
``mu`` is set from a weight ``lamda`` in the L1-wavelet baseline's units
(:func:`~oes_mri.methods.solvers.l1_wavelet`: ``1/2 ||A x - y/m||^2 + lamda ||W x||_1`` with
``m = max |A^H y|``), so ``lamda`` means the same thing for both methods and the penalised
fit is L1-wavelet's objective with the image parametrised by the pruned generator:
``mu = 2 lamda max|A^H M_fit y_s| / ||M_fit y_s||^2`` (:func:`penalty_weight`).
"""

from __future__ import annotations

from typing import Callable

import torch

WAVELET = "db4"
"""sigpy's ``L1WaveletRecon`` default."""


Filters = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
"""A wavelet's filter bank ``(dec_lo, dec_hi, rec_lo, rec_hi)`` as tensors on the images' device."""


def filter_bank(wavelet: str, device: torch.device, dtype: torch.dtype) -> Filters:
    """The filters of ``wavelet`` (pywt's) as tensors: made once, so that a step replayed as a
    CUDA graph makes no host-to-device copy."""
    import pywt

    return tuple(torch.tensor(f, device=device, dtype=dtype) for f in pywt.Wavelet(wavelet).filter_bank)


def wavelet_l1(images: torch.Tensor, wavelet: str = WAVELET, eps: float = 1e-12,
               filters: Filters | None = None) -> torch.Tensor:
    """``sum_k ||W x_k||_1`` over complex images ``(..., H, W)``: the sum of the moduli of
    every wavelet coefficient (``sqrt(re^2 + im^2 + eps)``, smooth at 0), as
    ``sigpy.linop.Wavelet(..., wave_name=wavelet)`` computes them (an odd size is first
    zero-padded by one in front, as ``sigpy.wavelet.fwt`` does; ``pywt`` levels, zero mode).

    ``filters``: ``wavelet``'s :func:`filter_bank` on the images' device (made here if ``None``).

    Returns:
        a real scalar, differentiable in ``images``.
    """
    import ptwt
    import pywt

    parts = torch.stack([images.real, images.imag])                     # (2, ..., H, W)
    h, w = parts.shape[-2:]
    parts = torch.nn.functional.pad(parts, (w % 2, 0, h % 2, 0))
    level = pywt.dwtn_max_level(tuple(parts.shape[-2:]), wavelet)
    bank = filters if filters is not None else filter_bank(wavelet, images.device, parts.dtype)
    coeffs = ptwt.wavedec2(parts, bank, mode="zero", level=level)
    bands = [coeffs[0], *(band for level in coeffs[1:] for band in level)]
    return sum(torch.sqrt(b[0].square() + b[1].square() + eps).sum() for b in bands)


def penalty_weight(lamda: float, adjoint_max: float, y_norm2: float) -> float:
    """``mu = 2 lamda m / ||y||^2``: the weight of ``||W x||_1`` in a loss normalised by
    ``||y||^2`` that matches ``1/2 ||A x - y/m||^2 + lamda ||W (x/m)||_1`` (``m = max|A^H y|``)
    up to the factor ``2 / ||y/m||^2``."""
    return 2.0 * lamda * adjoint_max / max(y_norm2, 1e-30)


def penalised(loss_fn: Callable[[torch.Tensor], torch.Tensor | tuple], mu: float,
              wavelet: str = WAVELET) -> Callable[[torch.Tensor], torch.Tensor | tuple]:
    """``loss_fn`` plus ``mu ||W x||_1`` on the fit loss (the validation loss, when
    ``loss_fn`` returns ``(fit, validation)``, stays the data error alone)."""
    filters: dict[tuple, Filters] = {}

    def loss(images: torch.Tensor) -> torch.Tensor | tuple:
        value = loss_fn(images)
        key = (images.device, images.real.dtype)
        if key not in filters:
            filters[key] = filter_bank(wavelet, *key)
        reg = mu * wavelet_l1(images, wavelet, filters=filters[key])
        return (value[0] + reg, value[1]) if isinstance(value, tuple) else value + reg
    return loss
