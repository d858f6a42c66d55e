"""Structured pruning: OES over whole channels, and the pruned generator rebuilt smaller.

An unstructured mask keeps dense FLOPs (a masked dense convolution). Here the Bernoulli
variables of OES are over the *channels* of the hourglass's feature maps: a channel gate
``g_c`` multiplies input channel ``c`` of the convolution that reads the feature map (after
the BatchNorm, LeakyReLU, pooling or upsampling between them, which act channel by channel),
so a closed gate removes the channel exactly: the consumer's input channel, the producer's
output channel and the BatchNorm entries on the way. The generator's input noise ``z`` is a
feature map too (its channels feed the first 5x5 convolution at full resolution, the most
expensive one). Mask learning is OES's (:func:`~oes_mri.pruning.oes.relaxed_mask`, a KL
penalty toward the density, Adam on the logits, the weights frozen at init); the binary mask
keeps the top ``round(density * n)`` gates of each feature map (at least 2), so every conv's
FLOPs fall with the product of its kept input and output shares (about ``density**2``).

The result is a :class:`~oes_mri.pruning.weightmask.WeightMask` like any other (whole rows and
columns of the weights, BatchNorm entries, saved per parameter name; metadata
``"structure": "channels"``), so volumes share it and warm starts reuse it; the fit then runs
the generator rebuilt physically smaller (:func:`shrink`), whose output equals the masked dense
generator's to rounding.
"""

from __future__ import annotations

import copy
from typing import Callable, NamedTuple

import torch
from torch import nn

from oes_mri.nets.hourglass import Hourglass
from oes_mri.pruning.oes import mask_learning, relaxed_mask
from oes_mri.pruning.weightmask import WeightMask

STRUCTURE = "channels"
MIN_CHANNELS = 2


class FeatureMap(NamedTuple):
    """One feature map between two convolutions of the hourglass.

    Attributes:
        name: the parameter-name prefix of the consumer convolution (its gate's name).
        width: channels.
        producer: the conv that writes it (``""``: the generator's input noise ``z``).
        norms: the BatchNorm layers on the way (channel-wise).
        consumer: the conv that reads it.
    """
    name: str
    width: int
    producer: str
    norms: tuple[str, ...]
    consumer: str


def feature_maps(gen: nn.Module) -> list[FeatureMap]:
    """The hourglass's feature maps (no skip connections), from ``z`` to the output conv.

    Raises:
        ValueError: another architecture, or an hourglass with skip connections.
    """
    net = getattr(gen, "net", None)
    if not isinstance(net, Hourglass):
        raise ValueError("channel pruning needs the hourglass generator")
    levels, lvl, prefix = [], net.body, "net.body"
    while lvl is not None:
        if lvl.skip is not None:
            raise ValueError("channel pruning does not handle skip connections")
        levels.append(prefix)
        lvl, prefix = lvl.deeper, prefix + ".deeper"
    maps = [("", (), f"{levels[0]}.down.0")]
    for i, p in enumerate(levels):
        maps.append((f"{p}.down.0", (f"{p}.down.2",), f"{p}.down.4"))
        nxt = f"{levels[i + 1]}.down.0" if i + 1 < len(levels) else f"{p}.up.1"
        maps.append((f"{p}.down.4", (f"{p}.down.5",) + (() if i + 1 < len(levels) else (f"{p}.up.0",)), nxt))
    for i in reversed(range(len(levels))):
        p = levels[i]
        if i > 0:
            maps.append((f"{p}.up.1", (f"{p}.up.2", f"{levels[i - 1]}.up.0"), f"{levels[i - 1]}.up.1"))
        else:
            maps.append((f"{p}.up.1", (f"{p}.up.2",), "net.out"))
    modules = dict(gen.named_modules())
    return [FeatureMap(consumer, modules[consumer].in_channels, producer, norms, consumer)
            for producer, norms, consumer in maps]


def channel_mask(gen: nn.Module, keep: dict[str, torch.Tensor], meta: dict) -> WeightMask:
    """The parameter mask of kept channels ``keep`` (feature map name -> bool ``(width,)``):
    each consumer's input columns, each producer's output rows and bias, the BatchNorm entries."""
    params = dict(gen.named_parameters())
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}
    for fm in feature_maps(gen):
        k = keep[fm.name].to(torch.bool)
        masks[f"{fm.consumer}.weight"] &= k.view(1, -1, 1, 1)
        if fm.producer:
            masks[f"{fm.producer}.weight"] &= k.view(-1, 1, 1, 1)
            masks[f"{fm.producer}.bias"] &= k
        for bn in fm.norms:
            masks[f"{bn}.weight"] &= k
            masks[f"{bn}.bias"] &= k
    return WeightMask({n: m.cpu() for n, m in masks.items()}, {**meta, "structure": STRUCTURE})


def kept_channels(gen: nn.Module, mask: WeightMask) -> dict[str, torch.Tensor]:
    """``feature map name -> kept channel indices``, read from a channel mask's consumer columns."""
    return {fm.name: mask.masks[f"{fm.consumer}.weight"].flatten(2).any(-1).any(0).nonzero().flatten()
            for fm in feature_maps(gen)}


def _slice_conv(conv: nn.Conv2d, rows: torch.Tensor | None, cols: torch.Tensor | None) -> nn.Conv2d:
    w = conv.weight.detach()
    w = w if rows is None else w[rows.to(w.device)]
    w = w if cols is None else w[:, cols.to(w.device)]
    new = nn.Conv2d(w.shape[1], w.shape[0], conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, conv.bias is not None, conv.padding_mode).to(w.device, w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if conv.bias is not None:
            new.bias.copy_(conv.bias.detach() if rows is None else conv.bias.detach()[rows.to(w.device)])
    return new


def _slice_norm(bn: nn.BatchNorm2d, idx: torch.Tensor) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(len(idx), bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    new = new.to(bn.weight.device, bn.weight.dtype)
    with torch.no_grad():
        i = idx.to(bn.weight.device)
        for name in ("weight", "bias", "running_mean", "running_var"):
            src = getattr(bn, name)
            if src is not None:
                getattr(new, name).copy_(src.detach()[i])
    return new


def shrink(gen: nn.Module, mask: WeightMask) -> nn.Module:
    """A copy of ``gen`` with the channels ``mask`` removes taken out: smaller convolutions and
    BatchNorms, and fewer input-noise channels; its output equals the masked ``gen``'s to
    rounding."""
    kept = kept_channels(gen, mask)
    small = copy.deepcopy(gen)
    modules = dict(small.named_modules())
    rows: dict[str, torch.Tensor] = {}
    cols: dict[str, torch.Tensor] = {}
    for fm in feature_maps(gen):
        idx = kept[fm.name]
        cols[fm.consumer] = idx
        if fm.producer:
            rows[fm.producer] = idx
        for bn in fm.norms:
            _replace(small, bn, _slice_norm(modules[bn], idx))
        if not fm.producer:
            small.z = small.z[:, idx.to(small.z.device)].contiguous()
    for name in set(rows) | set(cols):
        _replace(small, name, _slice_conv(modules[name], rows.get(name), cols.get(name)))
    return small


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)


def channel_budget(gen: nn.Module, density: float) -> dict[str, int]:
    """Kept channels per feature map: ``max(2, round(density * width))`` (at most the width)."""
    return {fm.name: min(fm.width, max(MIN_CHANNELS, round(density * fm.width))) for fm in feature_maps(gen)}


def top_channels(scores: dict[str, torch.Tensor], budget: dict[str, int]) -> dict[str, torch.Tensor]:
    """Per feature map, the ``budget`` highest scores (ties by position)."""
    out = {}
    for n, s in scores.items():
        keep = torch.zeros(s.shape, dtype=torch.bool, device=s.device)
        keep[torch.topk(s, budget[n], sorted=False).indices] = True
        out[n] = keep
    return out


def _gated(params: dict[str, torch.Tensor], fms: list[FeatureMap], gates: dict[str, torch.Tensor]) -> dict:
    """The consumers' weights with their input channels multiplied by the gates."""
    return {f"{fm.consumer}.weight": params[f"{fm.consumer}.weight"] * gates[fm.name].view(1, -1, 1, 1)
            for fm in fms}


def channel_oes_mask(gen: nn.Module, loss_fn: Callable[[torch.Tensor], torch.Tensor], density: float, *,
                     steps: int = 100, tau: float = 0.2, kl_weight: float | None = None, lr: float = 1e-2,
                     seed: int = 0, meta: dict | None = None,
                     snapshots: dict[int, WeightMask] | None = None) -> tuple[WeightMask, list[float]]:
    """OES over channels: learn a logit per channel of every feature map (relaxed Bernoulli
    gates on the consumers' input channels, KL toward ``density``, Adam on the logits from 0,
    the weights frozen), then keep the top ``channel_budget`` of each feature map.
    ``snapshots``: a dict whose keys are steps (below ``steps``); each gets the mask the
    logits of that step give (one run measures several mask budgets).

    Args:
        kl_weight: weight of the summed KL; ``None``: OES's 1e-9 per weight at 3M weights,
            spread over the gates (1e-9 times weights per gate), so the prior pulls as hard
            over a few hundred gates as over the weights.
    """
    fms = feature_maps(gen)
    params = {n: p.detach() for n, p in gen.named_parameters()}
    device = next(iter(params.values())).device
    logits = {fm.name: torch.zeros(fm.width, device=device, requires_grad=True) for fm in fms}
    n_gates = sum(fm.width for fm in fms)
    weight = kl_weight if kl_weight is not None else 1e-9 * sum(p.numel() for p in params.values()) / n_gates

    def gated(rng: torch.Generator) -> dict[str, torch.Tensor]:
        return _gated(params, fms, {n: relaxed_mask(p, tau, rng) for n, p in logits.items()})
    def mask_at(step: int) -> WeightMask:
        keep = top_channels({n: p.detach() for n, p in logits.items()}, channel_budget(gen, density))
        return channel_mask(gen, keep, {**(meta or {}), "method": "oes-channels", "density": density,
                                        "mask_steps": step, "tau": tau, "kl_weight": weight, "mask_lr": lr,
                                        "mask_seed": seed})

    def snapshot(step: int) -> None:
        if snapshots is not None and step in snapshots:
            snapshots[step] = mask_at(step)
    losses = mask_learning(gen, loss_fn, logits, gated, steps, density, weight, lr, seed, snapshot)
    return mask_at(steps), losses


def random_channel_mask(gen: nn.Module, density: float, seed: int = 0, meta: dict | None = None) -> WeightMask:
    """Random channels at the same budget (the structured baseline)."""
    rng = torch.Generator().manual_seed(int(seed))
    scores = {fm.name: torch.rand(fm.width, generator=rng) for fm in feature_maps(gen)}
    return channel_mask(gen, top_channels(scores, channel_budget(gen, density)),
                        {**(meta or {}), "method": "random-channels", "density": density, "mask_seed": seed})


def is_channel_mask(mask: WeightMask | None) -> bool:
    return mask is not None and mask.meta.get("structure") == STRUCTURE
