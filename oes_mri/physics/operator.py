"""The one multi-coil forward model of every method, as an ``nn.Module`` with registered buffers.

``MultiCoilOp(mask, maps)``: SENSE, ``A = M F S`` (coil sensitivities ``S``, centred unitary
FFT ``F``, sampling mask ``M``), maps a complex image ``(..., H, W)`` to k-space
``(..., C, H, W)``. ``MultiCoilOp(mask)`` (no maps): ``A = M F`` per coil, maps coil images
``(..., C, H, W)`` to k-space of the same shape, for fits of coil images without
sensitivity maps. ``recon_size`` is the centre crop of the output image (the readout
oversampling is removed from the data before the operator is built:
:func:`oes_mri.physics.fft.crop_readout`).

Like sigpy's ``Linop``: ``forward`` and ``adjoint``, ``normal = adjoint o forward``. The
classical solvers use it too: CG-SENSE through :meth:`normal`, sigpy's L1-wavelet and TV apps
from its ``maps`` and :meth:`weights` (sigpy builds the same ``M F S`` from them). Masks
broadcast against k-space: ``(1, W)`` column masks or ``(H, W)`` 2-D masks, float or bool;
``masked = kspace * mask + 0.0`` (fastMRI's guard against ``-0.0`` revealing the mask).
"""

from __future__ import annotations

import torch
from torch import nn

from oes_mri.physics.fft import fft2c, ifft2c


def _as_mask(mask: torch.Tensor) -> torch.Tensor:
    """Real float mask broadcastable to ``(..., H, W)``."""
    return mask.to(torch.float32)


class MultiCoilOp(nn.Module):
    """Multi-coil undersampled Fourier operator.

    With maps (SENSE): ``(A x)_c = M F (S_c x)`` and ``A^H y = sum_c conj(S_c) F^H M y_c``.
    Without: ``(A x)_c = M F x_c`` and ``A^H y = F^H M y`` (coil images in and out).

    Args:
        mask: sampling mask broadcastable to the k-space ``(..., C, H, W)``, e.g. ``(1, W)``,
            ``(H, W)`` or batched ``(B, 1, H, W)``.
        maps: complex coil sensitivities ``(C, H, W)`` or batched ``(B, C, H, W)``; ``None``
            for the per-coil operator.
        recon_size: ``(rH, rW)`` of the output image (``None``: the k-space grid).
    """

    def __init__(self, mask: torch.Tensor, maps: torch.Tensor | None = None,
                 recon_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        if maps is not None and not maps.is_complex():
            raise TypeError("MultiCoilOp: maps must be a complex tensor (..., C, H, W)")
        self.register_buffer("mask", _as_mask(mask))
        self.register_buffer("maps", maps)
        self.recon_size = None if recon_size is None else tuple(int(s) for s in recon_size)

    @property
    def sense(self) -> bool:
        """The operator takes one image (SENSE), not coil images."""
        return self.maps is not None

    def with_mask(self, mask: torch.Tensor) -> "MultiCoilOp":
        """The same operator under another sampling mask (a fit or held-out set)."""
        return MultiCoilOp(mask, self.maps, self.recon_size)

    def output_size(self, shape: tuple[int, int]) -> tuple[int, int]:
        """``recon_size``, or the k-space grid ``shape`` when none is set."""
        return self.recon_size if self.recon_size is not None else tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``y = M F S x`` for a complex image ``(..., H, W)`` (or ``M F x`` for coil images
        ``(..., C, H, W)``); returns ``(..., C, H, W)``."""
        return fft2c(self.coil_images(x)) * self.mask + 0.0

    def adjoint(self, kspace: torch.Tensor) -> torch.Tensor:
        """``x = S^H F^H M y`` for k-space ``(..., C, H, W)``: ``(..., H, W)`` (coil images
        ``F^H M y`` without maps)."""
        coil_images = ifft2c(kspace * self.mask + 0.0)
        return (self.maps.conj() * coil_images).sum(dim=-3) if self.sense else coil_images

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """``A^H A x``."""
        return self.adjoint(self.forward(x))

    def coil_images(self, x: torch.Tensor) -> torch.Tensor:
        """Coil images ``S x`` ``(..., C, H, W)`` without the sampling (coil images as they are
        without maps)."""
        return self.maps * x.unsqueeze(-3) if self.sense else x

    def weights(self, shape: tuple[int, int]) -> torch.Tensor:
        """The mask as a dense ``(H, W)`` float tensor (sigpy's ``weights``)."""
        return torch.broadcast_to(self.mask, shape).contiguous()


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
