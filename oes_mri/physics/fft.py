"""Centred, orthonormal 2-D Fourier transforms on complex tensors.

The fastMRI convention: ``image = fftshift(ifft2(ifftshift(k), norm="ortho"))`` over the last
two dimensions. These functions act on ``torch.complex64`` tensors of shape ``(..., H, W)``
(fastMRI's own ``fastmri.fft2c`` acts on the real view ``(..., H, W, 2)``; the results are
equal to float precision, see ``tests/physics/test_fft.py``).
"""

from __future__ import annotations

import torch

_DIMS = (-2, -1)


def fft2c(image: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2-D FFT.

    ``k = fftshift(F(ifftshift(x)))`` with ``F`` the unitary DFT, so ``||k|| = ||x||``.

    Args:
        image: complex tensor ``(..., H, W)``.

    Returns:
        k-space, complex tensor ``(..., H, W)``.
    """
    x = torch.fft.ifftshift(image, dim=_DIMS)
    x = torch.fft.fft2(x, dim=_DIMS, norm="ortho")
    return torch.fft.fftshift(x, dim=_DIMS)


def ifft2c(kspace: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2-D inverse FFT, the adjoint (and inverse) of :func:`fft2c`.

    Args:
        kspace: complex tensor ``(..., H, W)``.

    Returns:
        image, complex tensor ``(..., H, W)``.
    """
    x = torch.fft.ifftshift(kspace, dim=_DIMS)
    x = torch.fft.ifft2(x, dim=_DIMS, norm="ortho")
    return torch.fft.fftshift(x, dim=_DIMS)


def rss(coil_images: torch.Tensor, dim: int = -3) -> torch.Tensor:
    """Root-sum-of-squares coil combination ``sqrt(sum_c |x_c|^2)``.

    Args:
        coil_images: complex or real tensor ``(..., C, H, W)``.
        dim: the coil dimension.

    Returns:
        real tensor with ``dim`` removed.
    """
    return torch.sqrt((coil_images.abs() ** 2).sum(dim=dim))


def center_crop(x: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Crop the last two dimensions of ``x`` to ``shape`` around the centre (fastMRI rule).

    Args:
        x: tensor ``(..., H, W)`` with ``H >= shape[0]`` and ``W >= shape[1]``.
        shape: ``(h, w)``.

    Returns:
        tensor ``(..., h, w)`` (a view).
    """
    h, w = shape
    H, W = x.shape[-2], x.shape[-1]
    if h > H or w > W:
        raise ValueError(f"cannot crop {(H, W)} to {(h, w)}")
    top = (H - h) // 2
    left = (W - w) // 2
    return x[..., top : top + h, left : left + w]


def crop_readout(kspace: torch.Tensor, size: int) -> torch.Tensor:
    """Remove readout oversampling: keep the central ``size`` pixels of the field of view
    along the readout (dimension ``-2``) and return to k-space.

    ``k' = F_1 C F_1^{-1} k`` with ``F_1`` the centred orthonormal 1-D DFT along the readout
    and ``C`` the centre crop (the :func:`center_crop` rule), so the image of ``k'`` under
    :func:`ifft2c` is the centre ``size`` rows of the image of ``k``, with the same values.
    (twixtools' ``remove_os`` uses unnormalised transforms: its k-space is this one times
    ``sqrt(size / H)``.)

    Args:
        kspace: complex tensor ``(..., H, W)``, fully sampled along ``H``.
        size: rows kept, ``size <= H``.

    Returns:
        complex tensor ``(..., size, W)``.
    """
    H = kspace.shape[-2]
    if not 0 < size <= H:
        raise ValueError(f"cannot crop a readout of {H} to {size}")
    x = torch.fft.fftshift(torch.fft.ifft(torch.fft.ifftshift(kspace, dim=-2), dim=-2, norm="ortho"), dim=-2)
    top = (H - size) // 2
    x = x[..., top:top + size, :]
    return torch.fft.fftshift(torch.fft.fft(torch.fft.ifftshift(x, dim=-2), dim=-2, norm="ortho"), dim=-2)
