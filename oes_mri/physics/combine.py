"""From a model's image to the output magnitude image (the output convention of the
fastMRI's ``reconstruction_rss`` convention: data consistency, then RSS).

``dc_rss``: data consistency then RSS: the model's coil k-space ``F S x`` (or ``F x_c``)
keeps the measured samples, ``k = M y + (1 - M) F S x``; then ``RSS(F^H k)``, centre-cropped
to the recon size: the same convention as the target ``reconstruction_rss``.
"""

from __future__ import annotations

import torch

from oes_mri.physics.fft import center_crop, fft2c, ifft2c, rss
from oes_mri.physics.operator import data_consistency


def dc_rss(coil_images: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor,
           recon_size: tuple[int, int]) -> torch.Tensor:
    """Data consistency + RSS, cropped.

    Args:
        coil_images: model coil images ``(..., C, H, W)`` (``S x`` for a SENSE model).
        kspace: measured zero-filled k-space ``(..., C, H, W)``.
        mask: binary mask broadcastable to it.
        recon_size: ``(rH, rW)``.

    Returns:
        real tensor ``(..., rH, rW)``.
    """
    k = data_consistency(fft2c(coil_images), kspace, mask)
    return center_crop(rss(ifft2c(k)), recon_size)


def zero_filled_rss(kspace: torch.Tensor, recon_size: tuple[int, int]) -> torch.Tensor:
    """The zero-filled RSS image of undersampled k-space ``(..., C, H, W)``, cropped."""
    return center_crop(rss(ifft2c(kspace)), recon_size)
