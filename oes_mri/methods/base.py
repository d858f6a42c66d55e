"""What every reconstruction method is: a :class:`Reconstructor` that carries its own
validated settings and turns measured k-space and the forward model into a
:class:`Reconstruction`.

``method.reconstruct(y, physics)``: ``y`` undersampled k-space ``(C, H, W)`` complex,
``physics`` the :class:`~oes_mri.physics.operator.MultiCoilOp` (mask, maps, recon size). The
returned image is the output of every method alike: data consistency with every measured
sample, then RSS, centre-cropped to the recon size (:func:`final_image`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch

from oes_mri.physics.operator import MultiCoilOp
from oes_mri.pruning.weightmask import WeightMask
from oes_mri.physics.combine import dc_rss
from oes_mri.fit.jobs import Weights
from oes_mri.physics.measured import SliceData

Score = Callable[[np.ndarray], dict]
"""``score(image) -> dict`` of a final image ``(rH, rW)`` (e.g. PSNR/SSIM against a target)."""
Progress = Callable[[int, dict], None]
"""``progress(step, info)`` of a generator fit, every ``log_every`` steps."""


def final_image(x: SliceData, coil_images: torch.Tensor) -> np.ndarray:
    """The output image of every method: data consistency with every measured sample, then
    RSS, centre-cropped to the recon size (:func:`~oes_mri.physics.combine.dc_rss`), as
    ``(rH, rW)`` float32 on the host."""
    return dc_rss(coil_images, x.kspace, x.mask, x.recon_size).cpu().numpy().astype(np.float32)


def slice_data(y: torch.Tensor, physics: MultiCoilOp, source: str = "") -> SliceData:
    """A measured slice as the solvers see it (no target)."""
    return SliceData(y, physics.mask, physics.maps, physics.output_size(tuple(y.shape[-2:])), source)


class Reconstruction(NamedTuple):
    """A method's reconstruction of one slice."""
    image: np.ndarray
    """the final image ``(rH, rW)`` float32: data consistency, RSS, cropped (:func:`final_image`)"""
    coil_images: torch.Tensor
    """the model's coil images ``(C, H, W)`` before data consistency"""
    complex_image: torch.Tensor | None
    """the SENSE-combined complex image ``(H, W)`` (``None``: zero-filled, or coil images fitted)"""
    history: dict
    """losses, curves, ``steps``, ``best_step``, ``stop``, the chosen ``lambda`` ... (empty for zero-filling)"""
    weight_mask: WeightMask | None = None
    """the pruning mask of a sparse generator"""
    weights: Weights | None = None
    """the fitted generator's parameters (a neighbour's warm start)"""

    @property
    def steps(self) -> int | None:
        """Fit steps run (an untrained generator), else ``None``."""
        return self.history.get("steps")

    @property
    def lamda(self) -> float | None:
        """The regularisation weight used (chosen by held-out k-space when tuned), else ``None``."""
        return self.history.get("lambda")


class Reconstructor:
    """A reconstruction method with its settings (a frozen dataclass in every subclass).

    Capabilities, read by the pipeline instead of method names:
        untrained: fits an untrained generator (has ``config``; progress bars, curves).
        volume_mask: learns one pruning mask per volume, on its reference slice, and shares it.
        warm_startable: a volume's slices can be chained, each starting from its neighbour's
            fitted weights (:mod:`oes_mri.app.chain`).
    """

    name: str = ""
    title: str = ""
    untrained: bool = False
    volume_mask: bool = False

    @property
    def warm_startable(self) -> bool:
        return False

    @property
    def steps(self) -> int | None:
        """The step cap of a generator fit (progress bars), ``None`` for a solver."""
        return None

    def chains(self, shared_mask: bool) -> bool:
        """A volume's slices are fitted as a chain: warm-startable, and where the method learns
        a pruning mask per volume, one mask is shared by every slice (``shared_mask``)."""
        return self.warm_startable and (shared_mask or not self.volume_mask)

    def uses(self, key: str) -> bool:
        """Whether the shared generator setting ``key`` (``"fit.steps"``, ``"seed"``) changes
        this method's output: a solver reads only the held-out split (``validation.*``, ``seed``)."""
        return key.partition(".")[0] in ("validation", "seed")

    def fingerprint(self) -> dict:
        """The settings its output depends on (checked when a run resumes)."""
        return json_safe(dataclasses.asdict(self)) if dataclasses.is_dataclass(self) else {}

    def reconstruct(self, y: torch.Tensor, physics: MultiCoilOp, *, init: Weights | None = None,
                    progress: Progress | None = None, score: Score | None = None, source: str = "",
                    weight_mask: WeightMask | None = None) -> Reconstruction:
        """Reconstruct one slice.

        Args:
            y: undersampled k-space ``(C, H, W)`` complex (zero where not measured).
            physics: the forward model (mask, maps, recon size).
            init: a warm start: a fitted neighbour's ``weights`` (untrained generators).
            progress: ``progress(step, info)`` of a generator fit.
            score: ``score(image) -> dict`` of the final image of logged iterates (curves; the
                method never sees a target).
            source: file and slice, for logs and mask metadata.
            weight_mask: a pruning mask to use instead of learning one (:attr:`volume_mask`).

        Raises:
            RuntimeError: the image is not finite (:func:`check_image`).
        """
        out = self.reconstruct_batch([slice_data(y, physics, source)], weight_mask=weight_mask,
                                     progress=progress, scores=[score], inits=[init])[0]
        check_image(out.image, self.name, source)
        return out

    def reconstruct_batch(self, xs: Sequence[SliceData], *, weight_mask: WeightMask | None = None,
                          progress: Progress | None = None, scores: Sequence[Score | None] | None = None,
                          inits: Sequence[Weights | None] | None = None) -> list[Reconstruction]:
        """Reconstruct several slices of one size (untrained generators fit them together)."""
        if weight_mask is not None:
            self.check_mask(weight_mask)
        return [self._one(x) for x in xs]

    def check_mask(self, wm: WeightMask) -> None:
        """A given pruning mask fits this method (a method without a generator takes none).

        Raises:
            ValueError: it does not (naming the method).
        """
        raise ValueError(f"method {self.name!r} does not take a pruning mask (oes, oes-channels and "
                         "random-channels do)")

    def _one(self, x: SliceData) -> Reconstruction:
        raise NotImplementedError


def check_image(image: np.ndarray, method: str, source: str = "") -> None:
    """A method's final image is finite.

    Raises:
        RuntimeError: it is not, naming ``source`` (file and slice) and ``method``.
    """
    if not np.isfinite(image).all():
        raise RuntimeError(f"{source + ': ' if source else ''}{method} produced a non-finite image; not written")


def json_safe(d: dict) -> dict:
    """``d`` as plain JSON types (tuples as lists, paths and other objects as strings)."""
    import json

    return json.loads(json.dumps(d, default=str))
