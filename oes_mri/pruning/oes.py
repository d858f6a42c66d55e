"""Optimal Eye Surgeon: learn a Bernoulli mask over a generator's weights at initialisation.

For logits ``p`` over the prunable weights ``w`` (frozen at their random init), each step
draws a relaxed Bernoulli (Gumbel-softmax / binary concrete) mask

    m = sigmoid((p + log u - log(1 - u)) / tau),   u ~ U(0, 1),

and minimises ``L(G_{w * m}(z)) + kl_weight * sum KL(Bern(sigmoid(p)) || Bern(density))``
with Adam on ``p`` only (Ghosh et al., ICML 2024). ``L`` is the normalised k-space data term.
The binary mask is the global top-k of ``p`` at the target density
(:func:`oes_mri.pruning.weightmask.topk_masks`), or the top-k of ``p`` within each tensor
under a layer-wise budget (:mod:`oes_mri.pruning.allocation`). The mask is applied functionally
(``torch.func.functional_call``): no copy of the network per step; the KL term's gradient is
added in closed form (:func:`add_kl_grad_`), so it builds no autograd graph over the logits.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call

from oes_mri.optim import adam
from oes_mri.pruning.allocation import module_budget
from oes_mri.pruning.weightmask import WeightMask, prunable_names, topk_masks


class DegenerateMaskError(RuntimeError):
    """The pruned generator's output is zero, constant or non-finite, or a layer collapsed."""


def bernoulli_kl(q: torch.Tensor, density: float) -> torch.Tensor:
    """``sum KL(Bern(q) || Bern(density))`` over all entries."""
    eps = 1e-7
    q = q.clamp(eps, 1 - eps)
    return (q * torch.log(q / density) + (1 - q) * torch.log((1 - q) / (1 - density))).sum()


def logistic_noise(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """``log u - log(1 - u)``, ``u ~ U(0, 1)`` clamped to ``[1e-6, 1 - 1e-6]``, shaped like ``like``."""
    u = torch.rand(like.shape, device=like.device, generator=generator)
    return torch.logit(u, eps=1e-6)


def relaxed_mask(logits: torch.Tensor, tau: float, generator: torch.Generator | None) -> torch.Tensor:
    """One binary-concrete sample ``sigmoid((p + logistic noise) / tau)``."""
    return torch.sigmoid((logits + logistic_noise(logits, generator)) / tau)


@torch.no_grad()
def add_kl_grad_(logits: dict[str, torch.Tensor], density: float, weight: float) -> None:
    """Add ``weight * d/dp sum KL(Bern(sigmoid(p)) || Bern(density))`` to each ``p.grad``, in closed
    form: ``q (1 - q) (p - logit(density))`` with ``q = sigmoid(p)`` (no autograd graph over the
    3M logits: the KL term then costs a few elementwise passes per step)."""
    logit_d = math.log(density / (1 - density))
    for p in logits.values():
        q = torch.sigmoid(p)
        p.grad.addcmul_(q * (1 - q), p - logit_d, value=weight)


LOGIT_INITS = ("zero", "density", "magnitude", "density+magnitude")


def initial_logits(params: dict[str, torch.Tensor], names: list[str], density: float,
                   init: str = "zero", budget: dict[str, int] | None = None) -> dict[str, torch.Tensor]:
    """Starting logits ``p0 = b + g``.

    ``b`` is 0 (``"zero"``, the published OES: each weight kept with probability 1/2 while the
    mask is learned) or ``logit(density)`` (``"density"``: the relaxed mask keeps the target
    fraction from the start, so the mask is learned in the sparse regime it will be used in;
    with a layer ``budget``, each tensor's own ``logit(budget / numel)``).
    ``g`` is 0, or ``(|w| - mean |w|) / std |w|`` per tensor (``"magnitude"``: the top-k of
    the starting logits is magnitude pruning).
    """
    if init not in LOGIT_INITS:
        raise ValueError(f"OES logit init {init!r}: expected one of {', '.join(LOGIT_INITS)}")
    out = {}
    for n in names:
        d = min(1 - 1e-6, max(1e-6, budget[n] / params[n].numel() if budget is not None else density))
        p = torch.full_like(params[n], math.log(d / (1 - d)) if init.startswith("density") else 0.0)
        a = params[n].abs()
        if init.endswith("magnitude") and a.numel() > 1:
            p += (a - a.mean()) / a.std().clamp_min(1e-12)
        out[n] = p
    return out


ESTIMATORS = ("relaxed", "topk")


def sampled_mask(logits: dict[str, torch.Tensor], tau: float, generator: torch.Generator | None,
                 estimator: str, density: float, min_layer_density: float,
                 budget: dict[str, int] | None = None) -> dict[str, torch.Tensor]:
    """The mask multiplied into the weights during one mask-learning step.

    ``"relaxed"`` (published): a binary-concrete sample per weight (:func:`relaxed_mask`).
    ``"topk"``: the forward pass uses the pruned subnetwork itself, the top-k (global at
    ``density`` with the per-tensor floor, or per tensor under ``budget``) of the logits plus
    logistic noise, and the gradient reaches the logits straight through ``sigmoid(p)``:
    ``m = topk + sigmoid(p) - sigmoid(p).detach()``.
    """
    if estimator == "relaxed":
        return {n: relaxed_mask(p, tau, generator) for n, p in logits.items()}
    if estimator != "topk":
        raise ValueError(f"OES estimator {estimator!r}: expected one of {', '.join(ESTIMATORS)}")
    noisy = {n: p.detach() + logistic_noise(p, generator) for n, p in logits.items()}
    hard = topk_masks(noisy, density, min_layer_density, budget)
    out = {}
    for n, p in logits.items():
        q = torch.sigmoid(p)
        out[n] = hard[n].to(q.dtype) + q - q.detach()
    return out


def learn_oes_logits(gen: nn.Module, loss_fn: Callable[[torch.Tensor], torch.Tensor], names: list[str],
                     density: float, steps: int, tau: float = 0.2, kl_weight: float = 1e-9,
                     lr: float = 1e-2, seed: int = 0, init: str = "zero", estimator: str = "relaxed",
                     min_layer_density: float = 0.0, budget: dict[str, int] | None = None,
                     ) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Run OES mask learning; returns the logits by name and the loss every step.

    Args:
        gen: the generator (its weights are not changed; BatchNorm running stats are).
        loss_fn: maps the generator output to the scalar data term.
        names: the prunable parameters.
        density, tau, kl_weight, lr: OES hyper-parameters (published: 0.05, 0.2, 1e-9, 1e-2).
        steps: Adam steps on the logits.
        seed: seeds the Gumbel noise.
        init: starting logits (:func:`initial_logits`).
        estimator, min_layer_density, budget: the mask used in each step (:func:`sampled_mask`);
            ``budget`` (kept count per tensor) also sets the ``"density"`` inits.
    """
    params = {n: p.detach() for n, p in gen.named_parameters()}
    logits = {n: p.requires_grad_() for n, p in initial_logits(params, names, density, init, budget).items()}

    def masked(rng: torch.Generator) -> dict[str, torch.Tensor]:
        m = sampled_mask(logits, tau, rng, estimator, density, min_layer_density, budget)
        return {n: params[n] * m[n] for n in names}
    losses = mask_learning(gen, loss_fn, logits, masked, steps, density, kl_weight, lr, seed)
    return {n: p.detach() for n, p in logits.items()}, losses


def mask_learning(gen: nn.Module, loss_fn: Callable[[torch.Tensor], torch.Tensor], logits: dict[str, torch.Tensor],
                  masked: Callable[[torch.Generator], dict[str, torch.Tensor]], steps: int, density: float,
                  kl_weight: float, lr: float, seed: int,
                  after_step: Callable[[int], None] | None = None) -> list[float]:
    """OES's loop over any Bernoulli logits (weights, channels): each step the generator runs with
    the parameters ``masked(rng)`` (a relaxed mask of the logits applied, Gumbel noise from
    ``rng``), Adam on the logits with the data term's gradient plus the KL's closed form
    (:func:`add_kl_grad_`); the weights stay at their init. ``after_step(i)`` after step i
    (1-based; e.g. a snapshot of the logits). Returns the data term of every step."""
    params = {n: p.detach() for n, p in gen.named_parameters()}
    device = next(iter(params.values())).device
    opt = adam(logits.values(), lr)
    rng = torch.Generator(device=device).manual_seed(int(seed))
    losses = torch.zeros(steps, device=device)
    for step in range(steps):
        out = functional_call(gen, {**params, **masked(rng)}, ())
        data = loss_fn(out)
        opt.zero_grad(set_to_none=True)
        data.backward()
        add_kl_grad_(logits, density, kl_weight)
        opt.step()
        losses[step] = data.detach()
        if after_step is not None:
            after_step(step + 1)
    return losses.tolist()


def check_pruned(gen: nn.Module, mask: WeightMask) -> None:
    """Fail loudly when pruning collapsed the generator.

    Raises:
        DegenerateMaskError: a weight tensor (conv or BatchNorm scale) kept nothing, or the
            pruned output is non-finite, zero or spatially constant.
    """
    dead = [n for n, m in mask.masks.items() if n.endswith("weight") and not bool(m.any())]
    if dead:
        raise DegenerateMaskError(f"layer collapse: pruning kept no entry of {', '.join(dead[:4])}"
                                  f"{' ...' if len(dead) > 4 else ''}; use a smaller prunable scope "
                                  "or a minimum per-layer density")
    params = {n: p.detach() for n, p in gen.named_parameters()}
    masked = {n: params[n] * m.to(params[n].dtype) for n, m in mask.masks.items()}
    with torch.no_grad():
        out = functional_call(gen, {**params, **masked}, ())
    mag = out.abs()
    if not bool(torch.isfinite(mag).all()):
        raise DegenerateMaskError("pruned generator output is not finite")
    mean = float(mag.mean())
    if mean == 0.0 or float(mag.std()) <= 1e-4 * mean:
        raise DegenerateMaskError("pruned generator output is zero or constant: the mask "
                                  "disconnected the network")


def oes_mask(gen: nn.Module, loss_fn: Callable[[torch.Tensor], torch.Tensor], density: float = 0.05, *,
             steps: int = 300, scope: str = "conv", min_layer_density: float = 0.0, tau: float = 0.2,
             kl_weight: float = 1e-9, lr: float = 1e-2, seed: int = 0,
             meta: dict | None = None, init: str = "zero", estimator: str = "relaxed",
             allocation: str = "global") -> tuple[WeightMask, list[float]]:
    """Learn logits (:func:`learn_oes_logits`), threshold by top-k (global, or per tensor under
    the ``allocation``'s budget, :func:`oes_mri.pruning.allocation.layer_budget`), check, return.

    Returns:
        the :class:`WeightMask` (metadata: method, density, steps, tau, kl_weight, scope, ...)
        and the data loss of every mask-learning step.
    """
    names = prunable_names(gen, scope)
    budget = module_budget(gen, names, density, allocation, min_layer_density)
    logits, losses = learn_oes_logits(gen, loss_fn, names, density, steps, tau, kl_weight, lr, seed, init,
                                      estimator, min_layer_density, budget)
    mask = WeightMask(topk_masks(logits, density, min_layer_density, budget), {
        **(meta or {}), "method": "oes", "density": density, "mask_steps": steps, "tau": tau,
        "kl_weight": kl_weight, "mask_lr": lr, "scope": scope,
        "min_layer_density": min_layer_density, "mask_seed": seed, "logit_init": init, "estimator": estimator,
        "allocation": allocation})
    check_pruned(gen, mask)
    return mask, losses
