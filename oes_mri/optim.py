"""The optimiser every fit uses (generator weights, OES logits)."""

from __future__ import annotations

from typing import Iterable

import torch


def adam(params: Iterable[torch.Tensor], lr: float, capturable: bool = False) -> torch.optim.Adam:
    """Adam, fused (one kernel over all tensors) where PyTorch has it (CPU, CUDA);
    ``capturable`` keeps its step count on the device (needed inside a CUDA graph)."""
    params = list(params)
    return torch.optim.Adam(params, lr=lr, fused=params[0].device.type in ("cpu", "cuda"), capturable=capturable)
