"""ConvDecoder and deep decoder (Darestani & Heckel 2021; Heckel & Hand 2019).

A small fixed random input ``(1, C, h0, w0)`` is upsampled (nearest) through ``num_layers``
blocks ``upsample -> conv k x k -> ReLU -> BN`` to the output size, then a 1x1 conv to the
output channels. ``kernel_size=3`` is ConvDecoder, ``kernel_size=1`` the deep decoder. The
intermediate sizes grow geometrically from ``in_size`` to ``out_size``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class ConvDecoder(nn.Module):
    """ConvDecoder / deep decoder generator.

    Args:
        in_channels: channels of the input noise (= ``channels``).
        out_channels: 2 (one complex image) or 2C (coil images).
        channels: width of every layer.
        num_layers: number of upsampling blocks.
        kernel_size: 3 (ConvDecoder) or 1 (deep decoder).
        in_size: spatial size of the input noise.
    """

    def __init__(self, in_channels: int = 64, out_channels: int = 2, channels: int = 64,
                 num_layers: int = 6, kernel_size: int = 3, in_size: tuple[int, int] = (8, 8)) -> None:
        super().__init__()
        self.in_size = tuple(in_size)
        self.num_layers = num_layers
        pad = kernel_size // 2
        blocks = []
        cin = in_channels
        for _ in range(num_layers):
            blocks.append(nn.Sequential(
                nn.Conv2d(cin, channels, kernel_size, padding=pad, padding_mode="reflect" if pad else "zeros"),
                nn.ReLU(), nn.BatchNorm2d(channels)))
            cin = channels
        self.blocks = nn.ModuleList(blocks)
        self.out = nn.Conv2d(channels, out_channels, 1)

    @property
    def multiple(self) -> int:
        return 1

    def sizes(self, out_size: tuple[int, int]) -> list[tuple[int, int]]:
        """Geometric ladder of sizes from ``in_size`` to ``out_size`` (``num_layers`` steps)."""
        h = np.geomspace(self.in_size[0], out_size[0], self.num_layers + 1)[1:]
        w = np.geomspace(self.in_size[1], out_size[1], self.num_layers + 1)[1:]
        return [(int(round(a)), int(round(b))) for a, b in zip(h, w)]

    def forward(self, z: torch.Tensor, out_size: tuple[int, int] | None = None) -> torch.Tensor:
        """``(B, in_channels, h0, w0) -> (B, out_channels, H, W)``."""
        sizes = self.sizes(out_size or (z.shape[-2] * 2 ** self.num_layers, z.shape[-1] * 2 ** self.num_layers))
        x = z
        for block, size in zip(self.blocks, sizes):
            x = block(nn.functional.interpolate(x, size=size, mode="nearest"))
        return self.out(x)
