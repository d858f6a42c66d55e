"""How a generator is pruned at initialisation: :class:`PruningConfig` (which mask, how dense,
where), :class:`OesConfig` (OES mask learning), and :func:`make_pruning_mask`, the one place that turns
them into a :class:`~oes_mri.pruning.weightmask.WeightMask`."""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch
from torch import nn

from oes_mri.defaults import generator_defaults
from oes_mri.errors import require
from oes_mri.pruning.allocation import ALLOCATIONS
from oes_mri.pruning.channels import channel_oes_mask, random_channel_mask
from oes_mri.pruning.baselines import baseline_mask, imp_mask
from oes_mri.pruning.oes import ESTIMATORS, LOGIT_INITS, oes_mask
from oes_mri.pruning.weightmask import SCOPES, WeightMask

PRUNINGS = ("oes", "dense", "random", "magnitude", "snip", "imp", "oes-channels", "random-channels")
@dataclasses.dataclass(frozen=True)
class PruningConfig:
    """Which weights of the generator are kept.

    Attributes:
        method: "oes" (Sparse-DIP), "dense" (no pruning: DIP), "random", "magnitude", "snip", "imp";
            structured: "oes-channels" (OES over whole channels, the generator rebuilt smaller;
            :mod:`oes_mri.pruning.channels`) and "random-channels".
        density: kept fraction of the prunable weights, in (0, 1) (of the channels of every
            feature map for the structured methods); ``None``: the method's default
            (:data:`oes_mri.defaults.GENERATORS`: 5 % of the weights, a quarter of the channels). The
            fraction used is :attr:`kept`.
        steps: OES mask-learning steps (IMP: training steps per round).
        scope: which weights are prunable (:data:`~oes_mri.pruning.weightmask.SCOPES`).
        min_layer_density: per-tensor density floor.
        allocation: how the density is split over the prunable tensors: "erk" (default, a
            measured choice: Erdos-Renyi-Kernel, the scores pick weights within each tensor),
            "global" (top-k over all tensors, as published), "uniform" or "magnitude"
            (:mod:`oes_mri.pruning.allocation`). IMP is always global.
        imp_rounds: IMP rounds.
    """

    method: str = "oes"
    density: float | None = None
    steps: int = 100
    scope: str = "conv"
    min_layer_density: float = 0.01
    allocation: str = "erk"
    imp_rounds: int = 3

    def __post_init__(self) -> None:
        require(self.method in PRUNINGS, f"unknown pruning {self.method!r}; one of {', '.join(PRUNINGS)}")
        require(self.density is None or 0 < self.density < 1, f"pruning density {self.density}: must be in (0, 1) "
                                                               "(a dense generator: the method 'dip')")
        require(self.steps >= 1 and self.imp_rounds >= 1, "pruning steps and imp_rounds must be >= 1")
        require(self.scope in SCOPES, f"pruning scope {self.scope!r}: one of {', '.join(SCOPES)}")
        require(0 <= self.min_layer_density <= 1, f"min_layer_density {self.min_layer_density}: must be in [0, 1]")
        require(self.allocation in ALLOCATIONS, f"allocation {self.allocation!r}: one of {', '.join(ALLOCATIONS)}")

    @property
    def kept(self) -> float:
        """The kept fraction: ``density``, or the method's default."""
        return self.density if self.density is not None else generator_defaults(self.method).kept


@dataclasses.dataclass(frozen=True)
class OesConfig:
    """OES mask learning (:func:`~oes_mri.pruning.oes.oes_mask`): Gumbel-softmax relaxation of
    a Bernoulli mask with a KL penalty toward the density, then top-k.

    Attributes:
        lr: Adam learning rate of the mask logits.
        tau: relaxation temperature.
        kl_weight: weight of the KL term (summed over all entries).
        init: starting logits (:data:`~oes_mri.pruning.oes.LOGIT_INITS`; "zero" as published).
        estimator: the mask in each step, "relaxed" (published) or "topk" (straight-through).
    """

    lr: float = 1e-2
    tau: float = 0.2
    kl_weight: float = 1e-9
    init: str = "zero"
    estimator: str = "relaxed"

    def __post_init__(self) -> None:
        require(0 < self.lr < math.inf and 0 < self.tau < math.inf, "OES lr and tau must be finite and > 0")
        require(0 <= self.kl_weight < math.inf, f"OES kl_weight {self.kl_weight}: must be finite and >= 0")
        require(self.init in LOGIT_INITS, f"OES init {self.init!r}: one of {', '.join(LOGIT_INITS)}")
        require(self.estimator in ESTIMATORS, f"OES estimator {self.estimator!r}: one of {', '.join(ESTIMATORS)}")


def make_pruning_mask(pruning: PruningConfig, oes: OesConfig, gen: nn.Module, loss_fn: Callable[[torch.Tensor], torch.Tensor],
              train: Callable[[nn.Module, WeightMask | None], None], seed: int,
              meta: dict, snapshots: dict[int, WeightMask] | None = None) -> tuple[WeightMask | None, list[float]]:
    """The pruning mask of ``gen`` at its initialisation.

    Args:
        loss_fn: the data term of the generator's output (OES, SNIP).
        train: ``train(gen, mask)`` fits the masked generator in place (IMP's rounds).
        seed: of the OES Gumbel noise and the random scores; meta: recorded in the mask.
        snapshots: OES over channels: steps whose masks are kept too (filled in place).

    Returns:
        the mask (``None`` for "dense") and the OES mask-learning losses (empty otherwise).
    """
    p = pruning
    if p.method == "dense":
        return None, []
    if p.method == "oes":
        return oes_mask(gen, loss_fn, density=p.kept, steps=p.steps, scope=p.scope,
                        min_layer_density=p.min_layer_density, tau=oes.tau, kl_weight=oes.kl_weight, lr=oes.lr,
                        seed=seed, meta=meta, init=oes.init, estimator=oes.estimator, allocation=p.allocation)
    if p.method == "oes-channels":
        return channel_oes_mask(gen, loss_fn, p.kept, steps=p.steps, tau=oes.tau, lr=oes.lr, seed=seed, meta=meta,
                                snapshots=snapshots)
    if p.method == "random-channels":
        return random_channel_mask(gen, p.kept, seed=seed, meta=meta), []
    if p.method == "imp":
        return imp_mask(gen, p.kept, train, rounds=p.imp_rounds, scope=p.scope,
                        min_layer_density=p.min_layer_density, meta=meta), []
    return baseline_mask(p.method, gen, p.kept, loss_fn=loss_fn, scope=p.scope,
                         min_layer_density=p.min_layer_density, seed=seed, meta=meta, allocation=p.allocation), []
