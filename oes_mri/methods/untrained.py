"""The untrained generators as reconstructors: :class:`DenseDIP` and :class:`SparseDIP`
(pruned by OES, or by a baseline at the same density: random, magnitude, SNIP, IMP), fitted
by :func:`~oes_mri.fit.jobs.reconstruct_dip_batch` and stopped by held-out k-space
(``config.validation``)."""

from __future__ import annotations

import dataclasses
import time
from typing import Sequence

from oes_mri.methods.base import Progress, Reconstruction, Reconstructor, Score, final_image
from oes_mri.defaults import generator_kind
from oes_mri.errors import require
from oes_mri.pruning.channels import is_channel_mask
from oes_mri.pruning.config import PRUNINGS
from oes_mri.pruning.weightmask import WeightMask
from oes_mri.fit.config import DipConfig
from oes_mri.fit.jobs import Weights, reconstruct_dip_batch
from oes_mri.physics.measured import SliceData

SPARSE = tuple(p for p in PRUNINGS if p != "dense")
TITLES = {"oes": "Sparse-DIP (OES)", "random": "Sparse-DIP (random mask)", "magnitude": "Sparse-DIP (magnitude mask)",
          "snip": "Sparse-DIP (SNIP mask)", "imp": "Sparse-DIP (IMP mask)",
          "oes-channels": "Sparse-DIP (OES channels)", "random-channels": "Sparse-DIP (random channels)"}
LEARNED_ONCE = ("oes", "oes-channels", "random-channels")
"""Prunings made once per volume (on its reference slice) and shared by its slices, so that
the slices can be chained (a random channel mask depends on the seed only: the same for
every slice)."""


class Untrained(Reconstructor):
    """An untrained generator fitted to the k-space (``config``: every setting of the fit)."""

    untrained = True
    config: DipConfig

    @property
    def steps(self) -> int:
        return self.config.steps

    @property
    def warm_startable(self) -> bool:
        return self.config.warm.enabled

    def fingerprint(self) -> dict:
        """The settings as run: a default left to the generator (``None``) is recorded as the
        value it takes, so a run resumes only with the values its slices were fitted with."""
        cfg = self.config
        d = dataclasses.asdict(cfg)
        d["pruning"].pop("method")
        d["pruning"]["density"] = cfg.pruning.kept
        d["fit"].update(steps=cfg.steps, lr=cfg.lr, lr_schedule=cfg.lr_schedule)
        return {"dip": d}

    def reconstruct_batch(self, xs: Sequence[SliceData], *, weight_mask: WeightMask | None = None,
                          progress: Progress | None = None, scores: Sequence[Score | None] | None = None,
                          inits: Sequence[Weights | None] | None = None) -> list[Reconstruction]:
        if weight_mask is not None:
            self.check_mask(weight_mask)
        scores = list(scores) if scores is not None else [None] * len(xs)
        monitors = [None if sc is None else _monitor(x, sc) for x, sc in zip(xs, scores)]
        starts = [self.start(x) for x in xs]
        cfg = self.config
        if cfg.validation.enabled and not cfg.validation.usable(xs[0].mask, tuple(xs[0].kspace.shape[-2:]),
                                                                 xs[0].source):
            cfg = cfg.updated({"validation.share": 0.0, "validation.folds": 1})      # the slices share a mask
        outs = reconstruct_dip_batch(xs, cfg, weight_mask if self.volume_mask else None, progress,
                                     monitors, inits, [s[0] if s else None for s in starts])
        return [Reconstruction(final_image(x, o.coil_images), o.coil_images, o.image,
                               {**o.history, **({"start_lambda": s[1], "start_seconds": s[2]} if s else {})},
                               o.weight_mask, o.weights) for x, o, s in zip(xs, outs, starts)]

    def uses(self, key: str) -> bool:
        """Every generator setting, but pruning for dense DIP and OES's mask learning for a
        method that does not learn a mask by OES."""
        section, pruning = key.partition(".")[0], self.config.pruning.method
        if section == "pruning":
            return pruning != "dense"
        return section != "oes" or pruning in ("oes", "oes-channels")

    def check_mask(self, wm: WeightMask) -> None:
        """A given pruning mask must be of the kind this method prunes with: a channel mask for
        the channel-pruned generators, a weight mask for the others.

        Raises:
            ValueError: the kinds differ (the mask's own method named).
        """
        channels = generator_kind(self.config.pruning.method) == "channels"
        if not self.volume_mask or is_channel_mask(wm) != channels:
            raise ValueError(f"a {'channel' if is_channel_mask(wm) else 'weight'} mask (made by "
                             f"{wm.meta.get('method', 'an unknown method')}) does not fit method {self.name!r}"
                             f"{'' if self.volume_mask else ', which makes its own mask per slice'}")

    def start(self, x: SliceData) -> tuple | None:
        """``(image, lambda, seconds)`` of the classical start (``config.fit.start``), or ``None``."""
        name = self.config.fit.start
        if name == "none":
            return None
        if x.maps is None:
            raise ValueError(f"{x.source}: a classical start needs coil maps (it is a SENSE image)")
        from oes_mri.methods import make

        t = time.perf_counter()
        image, lamda = make(name, self.config).heldout_start(x)
        return image, lamda, time.perf_counter() - t


def _monitor(x: SliceData, score: Score):
    """A fit monitor that scores the final image of each logged iterate."""
    return lambda coil_images: score(final_image(x, coil_images))


@dataclasses.dataclass(frozen=True)
class DenseDIP(Untrained):
    """Deep image prior: the whole generator fitted (``config.pruning`` is not used)."""

    config: DipConfig = DipConfig()
    name = "dip"
    title = "DIP (dense)"

    def __post_init__(self) -> None:
        if self.config.pruning.method != "dense":
            object.__setattr__(self, "config", self.config.updated({"pruning.method": "dense"}))


@dataclasses.dataclass(frozen=True)
class SparseDIP(Untrained):
    """Sparse-DIP: the generator pruned at initialisation by ``pruning`` ("oes", the default:
    Optimal Eye Surgeon; or a baseline: "random", "magnitude", "snip", "imp"; structured, the
    generator rebuilt smaller: "oes-channels", "random-channels") at ``config.pruning.kept``,
    then fitted. OES learns one mask per volume on its reference slice (:attr:`volume_mask`,
    or a given mask); the baselines make a mask per slice."""

    config: DipConfig = DipConfig()
    pruning: str = "oes"

    def __post_init__(self) -> None:
        require(self.pruning in SPARSE, f"unknown pruning {self.pruning!r}; one of {', '.join(SPARSE)}")
        if self.config.pruning.method != self.pruning:
            object.__setattr__(self, "config", self.config.updated({"pruning.method": self.pruning}))

    @property
    def name(self) -> str:
        return self.pruning

    @property
    def title(self) -> str:
        return TITLES[self.pruning]

    @property
    def volume_mask(self) -> bool:
        return self.pruning in LEARNED_ONCE

    @property
    def warm_startable(self) -> bool:
        """Chained only with one mask for every slice (OES's volume mask)."""
        return self.config.warm.enabled and self.volume_mask
