"""Named boolean masks over a module's parameters: select, threshold, apply, save, load.

A :class:`WeightMask` maps parameter names to boolean tensors (True = kept) and carries
metadata (architecture config, init seed, density, method, source). Applying it zeroes the
pruned weights in place and masks their gradients, so they stay exactly zero through
training with any optimizer without weight decay (the fit loop also re-applies it after each
step). Files are safetensors (tensors) with the metadata as JSON in the header: loading a
mask never runs code, and masks are matched by name and shape, never by ``parameters()``
order.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from oes_mri.atomic import atomic_path
from oes_mri.errors import InputError

SCOPES = ("conv", "conv+out", "all")


def prunable_names(module: nn.Module, scope: str = "conv") -> list[str]:
    """Names of the parameters that a mask covers.

    Args:
        module: the generator.
        scope: "conv": weights of every convolution except the final output conv (the default:
            a measured choice, pruning BatchNorm, biases and the 2-channel output conv collapses
            layers); "conv+out": with the output conv; "all": every parameter (OES as published).
    """
    if scope not in SCOPES:
        raise ValueError(f"unknown prunable scope {scope!r}; one of {SCOPES}")
    if scope == "all":
        return [n for n, _ in module.named_parameters()]
    convs = [n for n, m in module.named_modules() if isinstance(m, nn.Conv2d)]
    if scope == "conv":
        convs = convs[:-1]
    return [f"{n}.weight" for n in convs]


def topk_masks(scores: dict[str, torch.Tensor], density: float, min_layer_density: float = 0.0,
               budget: dict[str, int] | None = None) -> dict[str, torch.Tensor]:
    """Global top-k: keep the ``k = round(density * N)`` highest scores over all tensors.

    Each tensor first keeps its own top ``ceil(min_layer_density * n)`` entries (a floor
    against layer collapse); the rest of the ``k`` are the global top among the others.
    Ties are broken by position (deterministic). The kept count is exactly ``k`` (or the sum
    of the floors, when that is larger). With a ``budget`` (kept count per tensor, from
    :func:`oes_mri.pruning.allocation.layer_budget`) each tensor keeps its own top
    ``budget[name]`` instead.
    """
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if budget is not None:
        return {n: _top(s, budget[n]) for n, s in scores.items()}
    names = list(scores)
    flat = torch.cat([scores[n].detach().flatten().float() for n in names])
    sizes = [scores[n].numel() for n in names]
    k = int(round(density * flat.numel()))
    keep = torch.zeros_like(flat, dtype=torch.bool)
    if min_layer_density > 0:                       # the per-tensor floors
        keep = torch.cat([_top(scores[n], min(n_l, math.ceil(min_layer_density * n_l))).flatten()
                          for n, n_l in zip(names, sizes)])
    rest = k - int(keep.sum())
    if rest > 0:
        masked = flat.masked_fill(keep, float("-inf"))
        keep[torch.topk(masked, rest, sorted=False).indices] = True
    out, start = {}, 0
    for n, n_l in zip(names, sizes):
        out[n] = keep[start:start + n_l].reshape(scores[n].shape).clone()
        start += n_l
    return out


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` highest entries of ``scores``."""
    flat = scores.detach().flatten().float()
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[torch.topk(flat, k, sorted=False).indices] = True
    return keep.reshape(scores.shape)


@dataclass
class WeightMask:
    """Boolean masks by parameter name, with metadata."""

    masks: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)

    @property
    def density(self) -> float:
        """Kept fraction of the masked parameters."""
        kept = sum(int(m.sum()) for m in self.masks.values())
        return kept / max(1, sum(m.numel() for m in self.masks.values()))

    def layer_densities(self) -> dict[str, float]:
        """Kept fraction per tensor."""
        return {n: float(m.float().mean()) for n, m in self.masks.items()}

    def check_fits(self, module: nn.Module, source: str | None = None) -> None:
        """Raise :class:`InputError` unless every masked name exists with the same shape."""
        params = dict(module.named_parameters())
        for n, m in self.masks.items():
            if n not in params:
                raise InputError(source, f"weight mask names parameter {n!r} that the network lacks "
                                         f"(architecture mismatch: mask made for {self.meta.get('arch')})")
            if tuple(params[n].shape) != tuple(m.shape):
                raise InputError(source, f"weight mask for {n!r} has shape {tuple(m.shape)} but the "
                                         f"network's is {tuple(params[n].shape)} (architecture mismatch)")

    @torch.no_grad()
    def apply_(self, module: nn.Module) -> list:
        """Zero the pruned weights in place and mask their gradients.

        Returns:
            the gradient hook handles (``handle.remove()`` undoes the hooks).
        """
        self.check_fits(module)
        params = dict(module.named_parameters())
        handles = []
        for n, m in self.masks.items():
            p = params[n]
            mf = m.to(p.device, p.dtype)
            p.mul_(mf)
            handles.append(p.register_hook(lambda g, mf=mf: g * mf))
        return handles

    @torch.no_grad()
    def reapply_(self, module: nn.Module) -> None:
        """Zero the pruned weights again (cheap; after an optimizer step)."""
        params = dict(module.named_parameters())
        for n, m in self.masks.items():
            params[n].mul_(m.to(params[n].dtype))

    def save(self, path: str | os.PathLike) -> None:
        """Write a safetensors file (bool tensors + JSON metadata), atomically."""
        from safetensors.torch import save_file

        with atomic_path(path) as tmp:
            save_file({n: m.to("cpu", torch.bool).contiguous() for n, m in self.masks.items()}, str(tmp),
                      metadata={"oes_mri": json.dumps(self.meta, sort_keys=True)})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "WeightMask":
        """Read a mask file written by :meth:`save`.

        Raises:
            InputError: the file is missing or not a weight-mask file.
        """
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise InputError(path, "weight mask file not found")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get("oes_mri", "{}"))
                masks = {n: f.get_tensor(n).to(torch.bool) for n in f.keys()}
        except Exception as err:  # safetensors raises its own error types
            raise InputError(path, f"not a readable weight mask file ({type(err).__name__}: "
                                   f"{str(err).splitlines()[0][:120] if str(err) else ''})")
        if not masks:
            raise InputError(path, "weight mask file holds no masks")
        if not any(bool(m.any()) for m in masks.values()):
            raise InputError(path, "weight mask keeps no weight (every entry is False)")
        return cls(masks, meta)

