"""Multi-coil MRI forward operators as ``nn.Module`` objects with registered buffers.

``SenseOp``: ``A = M F S`` (coil sensitivities ``S``, centred unitary FFT ``F``, sampling
mask ``M``), maps a complex image ``(..., H, W)`` to k-space ``(..., C, H, W)``.
``CoilOp``: ``A = M F`` applied per coil, maps coil images ``(..., C, H, W)`` to k-space of
the same shape, for methods that fit coil images directly without sensitivity maps.

Both follow sigpy's ``Linop`` idea: each implements ``forward`` and ``adjoint``; ``normal``
is ``adjoint(forward(x))``. Masks broadcast against k-space: ``(1, W)`` column masks or
``(H, W)`` 2-D masks, float or bool; ``masked = kspace * mask + 0.0`` (fastMRI's guard
against ``-0.0`` revealing the mask).
"""

from __future__ import annotations

import torch
from torch import nn

from oes_mri.physics.fft import fft2c, ifft2c


def _as_mask(mask: torch.Tensor) -> torch.Tensor:
    """Real float mask broadcastable to ``(..., H, W)``."""
    return mask.to(torch.float32)


class CoilOp(nn.Module):
    """Per-coil undersampled Fourier operator ``A = M F``.

    Args:
        mask: sampling mask broadcastable to ``(..., C, H, W)`` k-space, e.g. ``(1, W)``,
            ``(H, W)`` or batched ``(B, 1, H, W)``.
    """

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", _as_mask(mask))

    def forward(self, coil_images: torch.Tensor) -> torch.Tensor:
        """``y = M F x`` for complex ``x`` of shape ``(..., C, H, W)``."""
        return fft2c(coil_images) * self.mask + 0.0

    def adjoint(self, kspace: torch.Tensor) -> torch.Tensor:
        """``x = F^H M y`` for complex ``y`` of shape ``(..., C, H, W)``."""
        return ifft2c(kspace * self.mask + 0.0)

    def normal(self, coil_images: torch.Tensor) -> torch.Tensor:
        """``A^H A x``."""
        return self.adjoint(self.forward(coil_images))


class SenseOp(nn.Module):
    """SENSE forward operator ``A = M F S``.

    ``(A x)_c = M F (S_c x)`` and ``A^H y = sum_c conj(S_c) F^H M y_c``.

    Args:
        maps: complex coil sensitivities ``(C, H, W)`` or batched ``(B, C, H, W)``.
        mask: sampling mask broadcastable to the k-space ``(..., C, H, W)``.
    """

    def __init__(self, maps: torch.Tensor, mask: torch.Tensor) -> None:
        super().__init__()
        if not maps.is_complex():
            raise TypeError("SenseOp: maps must be a complex tensor (..., C, H, W)")
        self.register_buffer("maps", maps)
        self.register_buffer("mask", _as_mask(mask))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``y = M F S x`` for a complex image ``(..., H, W)``; returns ``(..., C, H, W)``."""
        return fft2c(self.maps * image.unsqueeze(-3)) * self.mask + 0.0

    def adjoint(self, kspace: torch.Tensor) -> torch.Tensor:
        """``x = S^H F^H M y`` for k-space ``(..., C, H, W)``; returns ``(..., H, W)``."""
        coil_images = ifft2c(kspace * self.mask + 0.0)
        return (self.maps.conj() * coil_images).sum(dim=-3)

    def normal(self, image: torch.Tensor) -> torch.Tensor:
        """``A^H A x``."""
        return self.adjoint(self.forward(image))

    def coil_images(self, image: torch.Tensor) -> torch.Tensor:
        """Coil images ``S x``, ``(..., C, H, W)``, without the sampling."""
        return self.maps * image.unsqueeze(-3)


def data_consistency(
    coil_kspace: torch.Tensor, measured: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Replace the model's k-space by the measured one where sampled.

    ``k = M y + (1 - M) k_model``; ``mask`` is binary.

    Args:
        coil_kspace: model k-space ``(..., C, H, W)``.
        measured: measured (zero-filled) k-space of the same shape.
        mask: binary mask broadcastable to both.
    """
    m = _as_mask(mask)
    return measured * m + coil_kspace * (1.0 - m)
