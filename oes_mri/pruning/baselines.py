"""Pruning-at-initialisation baselines at a matched density, scored then global top-k.

- random: uniform random scores (seeded);
- magnitude: ``|w|`` at init;
- SNIP (Lee et al. 2019): ``|w * dL/dw|`` at init for the data term;
- IMP / lottery ticket (Frankle & Carbin 2019): train, prune the smallest-magnitude
  remaining weights globally, rewind to init, repeat. The per-round pruning rate is
  ``1 - density ** (1 / rounds)`` (20 % per round needs 13 rounds to reach 5 %; we allow
  fewer rounds and say so in the metadata).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from oes_mri.pruning.allocation import module_budget
from oes_mri.pruning.oes import check_pruned
from oes_mri.pruning.weightmask import WeightMask, prunable_names, topk_masks

Scores = dict[str, torch.Tensor]


def random_scores(gen: nn.Module, names: list[str], seed: int = 0) -> Scores:
    g = torch.Generator().manual_seed(int(seed))
    params = dict(gen.named_parameters())
    return {n: torch.rand(params[n].shape, generator=g).to(params[n].device) for n in names}


def magnitude_scores(gen: nn.Module, names: list[str]) -> Scores:
    params = dict(gen.named_parameters())
    return {n: params[n].detach().abs() for n in names}


def snip_scores(gen: nn.Module, names: list[str], loss_fn: Callable[[torch.Tensor], torch.Tensor]) -> Scores:
    params = dict(gen.named_parameters())
    gen.zero_grad(set_to_none=True)
    loss_fn(gen()).backward()
    scores = {n: (params[n].detach() * params[n].grad).abs() for n in names}
    gen.zero_grad(set_to_none=True)
    return scores


def baseline_mask(method: str, gen: nn.Module, density: float, *, loss_fn=None, scope: str = "conv",
                  min_layer_density: float = 0.0, seed: int = 0, meta: dict | None = None,
                  allocation: str = "global") -> WeightMask:
    """A random / magnitude / SNIP mask at ``density`` (checked for collapse): global top-k of
    the scores, or top-k per tensor under the ``allocation``'s layer budget."""
    names = prunable_names(gen, scope)
    budget = module_budget(gen, names, density, allocation, min_layer_density)
    if method == "random":
        scores = random_scores(gen, names, seed)
    elif method == "magnitude":
        scores = magnitude_scores(gen, names)
    elif method == "snip":
        scores = snip_scores(gen, names, loss_fn)
    else:
        raise ValueError(f"unknown pruning baseline {method!r}")
    mask = WeightMask(topk_masks(scores, density, min_layer_density, budget),
                      {**(meta or {}), "method": method, "density": density, "scope": scope,
                       "min_layer_density": min_layer_density, "mask_seed": seed, "allocation": allocation})
    check_pruned(gen, mask)
    return mask


def imp_mask(gen: nn.Module, density: float, train: Callable[[nn.Module, WeightMask | None], None],
             *, rounds: int = 3, scope: str = "conv", min_layer_density: float = 0.0,
             meta: dict | None = None) -> WeightMask:
    """Iterative magnitude pruning with rewinding to init.

    Args:
        gen: the generator at init (restored to its init weights on return).
        density: final density.
        train: ``train(gen, mask)`` fits the (masked) generator in place.
        rounds: pruning rounds; the rate per round is ``1 - density ** (1 / rounds)``.
    """
    init = {n: p.detach().clone() for n, p in gen.state_dict().items()}
    names = prunable_names(gen, scope)
    mask: WeightMask | None = None
    for r in range(1, rounds + 1):
        train(gen, mask)
        scores = magnitude_scores(gen, names)
        if mask is not None:
            scores = {n: s.masked_fill(~mask.masks[n], -1.0) for n, s in scores.items()}
        mask = WeightMask(topk_masks(scores, density ** (r / rounds), min_layer_density))
        gen.load_state_dict(init)
    mask.meta = {**(meta or {}), "method": "imp", "density": density, "rounds": rounds,
                 "rate_per_round": 1 - density ** (1 / rounds), "scope": scope,
                 "min_layer_density": min_layer_density}
    check_pruned(gen, mask)
    return mask
