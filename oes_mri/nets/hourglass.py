"""The DIP encoder-decoder ("hourglass"), the OES default generator.

Ulyanov et al.'s ``skip`` network as configured by OES (Ghosh et al., ICML 2024), with no
skip connections by default: per level ``i`` (channels ``c_i``), down:
``conv5x5(c_{i-1} -> c_i) -> avgpool2 -> BN -> LeakyReLU -> conv5x5 -> BN -> LeakyReLU``,
then the deeper levels, nearest 2x upsampling, and up:
``BN -> conv3x3(c_{i+1} (+ skip) -> c_i) -> BN -> LeakyReLU``; a final 1x1 conv to the
output channels, no sigmoid. Reflection padding throughout. With channels
[16, 32, 64, 128, 128, 128] and 32 input channels: 3.0M parameters.

Input and output are ``(B, C, H, W)`` with ``H, W`` multiples of ``2 ** levels``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def conv(cin: int, cout: int, k: int) -> nn.Conv2d:
    """``k x k`` convolution with reflection padding that keeps the size."""
    return nn.Conv2d(cin, cout, k, padding=k // 2, padding_mode="reflect" if k > 1 else "zeros")


class _Level(nn.Module):
    def __init__(self, cin: int, channels: Sequence[int], skips: Sequence[int], kd: int, ku: int,
                 slope: float) -> None:
        super().__init__()
        c, s = channels[0], skips[0]
        act = lambda: nn.LeakyReLU(slope)  # noqa: E731
        self.down = nn.Sequential(conv(cin, c, kd), nn.AvgPool2d(2), nn.BatchNorm2d(c), act(),
                                  conv(c, c, kd), nn.BatchNorm2d(c), act())
        self.skip = (nn.Sequential(conv(cin, s, 1), nn.BatchNorm2d(s), act()) if s > 0 else None)
        self.deeper = (_Level(c, channels[1:], skips[1:], kd, ku, slope)
                       if len(channels) > 1 else None)
        cup = (channels[1] if len(channels) > 1 else c) + s
        self.up = nn.Sequential(nn.BatchNorm2d(cup), conv(cup, c, ku), nn.BatchNorm2d(c), act())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.down(x)
        if self.deeper is not None:
            y = self.deeper(y)
        y = nn.functional.interpolate(y, scale_factor=2.0, mode="nearest")
        if self.skip is not None:
            y = torch.cat([self.skip(x), y], dim=1)
        return self.up(y)


class Hourglass(nn.Module):
    """DIP hourglass generator.

    Args:
        in_channels: input noise channels (32).
        out_channels: output channels (2 for one complex image, 2C for C coil images).
        channels: per-level channels, encoder = decoder ([16, 32, 64, 128, 128, 128]).
        skip_channels: per-level skip channels (0 = no skip, the OES default).
        down_kernel, up_kernel: conv sizes (5, 3).
        slope: LeakyReLU slope (0.2).
    """

    def __init__(self, in_channels: int = 32, out_channels: int = 2,
                 channels: Sequence[int] = (16, 32, 64, 128, 128, 128),
                 skip_channels: Sequence[int] | None = None, down_kernel: int = 5,
                 up_kernel: int = 3, slope: float = 0.2) -> None:
        super().__init__()
        skips = list(skip_channels) if skip_channels is not None else [0] * len(channels)
        if len(skips) != len(channels):
            raise ValueError("skip_channels must have one entry per level")
        self.levels = len(channels)
        self.body = _Level(in_channels, list(channels), skips, down_kernel, up_kernel, slope)
        self.out = nn.Conv2d(channels[0], out_channels, 1)

    @property
    def multiple(self) -> int:
        """Input sizes must be multiples of this."""
        return 2 ** self.levels

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W) -> (B, out_channels, H, W)``."""
        return self.out(self.body(z))
