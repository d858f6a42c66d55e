"""Every oes-mri method as a ``deepinv.models.Reconstructor`` (``pip install 'oes-mri[deepinv]'``).

    from oes_mri.interop.deepinv import DeepinvReconstructor
    model = DeepinvReconstructor("oes", steps=300)
    x_hat = model(y, physics)          # physics: deepinv.physics.MultiCoilMRI

``y`` is deepinv's multi-coil k-space ``(B, 2, N, H, W)`` (real and imaginary channels),
``physics`` a 2-D ``MultiCoilMRI`` whose mask and coil maps are this toolkit's
:class:`~oes_mri.physics.operator.MultiCoilOp` (the same centred orthonormal FFT; tested).
Each batch item is reconstructed by :func:`oes_mri.reconstruct` with the physics' maps, and the
output is the toolkit's image (data consistency, RSS, centre crop to ``recon_size``) as
``(B, 1, rH, rW)``, the layout of deepinv's own fastMRI convention
(``A_adjoint(y, rss=True, crop=True)``).

Readout: the adapter fits the physics' whole grid (``readout="full"``, deepinv's operator),
while the command line and :func:`oes_mri.reconstruct` first remove readout oversampling when
``recon_size`` is smaller than the grid (``"crop"``: fewer pixels to fit; the images differ by
a few per cent, measured up to 5.8 %). Pass ``readout="crop"`` for the CLI's image.
"""

from __future__ import annotations

from typing import Any

import torch
from deepinv.models import Reconstructor as _DeepinvReconstructor
from deepinv.physics import MultiCoilMRI

from oes_mri.api import reconstruct
from oes_mri.methods import Reconstructor
from oes_mri.physics.measured import READOUTS


def physics_tensors(physics: MultiCoilMRI, b: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch item ``b``'s sampling mask ``(H, W)`` and complex coil maps ``(N, H, W)`` (a mask or
    maps of batch 1 serve every item).

    Raises:
        ValueError: a single-coil physics, or masks or maps for another batch size than ``batch``.
    """
    if not hasattr(physics, "coil_maps"):
        raise ValueError(f"physics: {type(physics).__name__} has no coil maps; use deepinv.physics.MultiCoilMRI")
    mask, maps = physics.mask, physics.coil_maps
    for name, t in (("mask", mask), ("coil_maps", maps)):
        if t.shape[0] not in (1, batch):
            raise ValueError(f"physics.{name} has batch {t.shape[0]}, y has {batch}: give one per item or one for all")
    return mask[b if mask.shape[0] > 1 else 0, 0], maps[b if maps.shape[0] > 1 else 0]


class DeepinvReconstructor(_DeepinvReconstructor):
    """An oes-mri method as a deepinv reconstructor.

    Args:
        method: a method name ("oes", "dip", "sense", "l1", "tv", "zf", ...) or object
            (``None``: the default Sparse-DIP on the k-space's device, as :func:`oes_mri.reconstruct`).
        recon_size: ``(rH, rW)`` of the output (default: the k-space grid).
        readout: "full" (default: fit the physics' grid, as deepinv does) or "crop" (remove
            readout oversampling first, as the command line and :func:`oes_mri.reconstruct` do).
        **settings: the method's settings, as :func:`oes_mri.reconstruct` takes them.
    """

    def __init__(self, method: str | Reconstructor | None = None, recon_size: tuple[int, int] | None = None,
                 readout: str = "full", **settings: Any) -> None:
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"readout {readout!r}: one of {', '.join(READOUTS)}")
        self.method, self.recon_size, self.readout, self.settings = method, recon_size, readout, settings

    def forward(self, y: torch.Tensor, physics: MultiCoilMRI, **kwargs: Any) -> torch.Tensor:
        """``(B, 2, N, H, W)`` k-space -> ``(B, 1, rH, rW)`` magnitude images."""
        if y.ndim != 5 or y.shape[1] != 2 or not y.is_floating_point():
            raise ValueError(f"y must be deepinv's 2-D multi-coil k-space (B, 2, N, H, W), real and imaginary "
                             f"parts as floats, got {tuple(y.shape)} {y.dtype}")
        y = y.detach()                       # a fit of its own: no gradient flows through the reconstruction
        images = []
        for b in range(y.shape[0]):
            mask, maps = physics_tensors(physics, b, y.shape[0])
            out = reconstruct(torch.complex(y[b, 0], y[b, 1]), mask, self.method, maps, recon_size=self.recon_size,
                              readout=self.readout, **self.settings)
            images.append(torch.from_numpy(out.image))
        return torch.stack(images)[:, None].to(y.device)
