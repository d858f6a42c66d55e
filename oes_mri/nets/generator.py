"""An untrained generator ``G(z)`` with its fixed input noise, producing complex images.

:class:`ImageGenerator` wraps a network (hourglass, ConvDecoder, deep decoder) with the
fixed input ``z`` (a registered buffer, drawn from a seed) and the geometry: the output
grid is padded to a multiple of ``2 ** levels`` and cropped back to the encoded matrix
``(H, W)``; channel pairs are (real, imaginary). ``forward()`` returns
``(K, H, W)`` complex64, ``K = 1`` (a SENSE-combined image) or ``K = C`` (coil images).

Architectures are described by a JSON-friendly :class:`ArchConfig` (saved with weight
masks) and built with :func:`build_generator`; the same config and seed give the same
weights on every device (built on the CPU, then moved).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from oes_mri.nets.decoder import ConvDecoder
from oes_mri.nets.hourglass import Hourglass

ARCHS = ("hourglass", "hourglass-small", "hourglass-tiny", "convdecoder", "deepdecoder")


@dataclasses.dataclass(frozen=True)
class ArchConfig:
    """A generator's architecture: ``name`` and keyword arguments of its class.

    Names: "hourglass" (OES default), "hourglass-small" (channels [8, 16, 32, 64, 64, 64],
    for quick runs), "hourglass-tiny" (3 levels [8, 16, 16], for tests), "convdecoder",
    "deepdecoder".
    """

    name: str = "hourglass"
    kwargs: dict = dataclasses.field(default_factory=dict)
    input_channels: int = 32
    input_scale: float = 0.1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _make_net(cfg: ArchConfig, out_channels: int) -> nn.Module:
    if cfg.name == "hourglass":
        return Hourglass(cfg.input_channels, out_channels, **cfg.kwargs)
    if cfg.name == "hourglass-small":
        kw = {"channels": (8, 16, 32, 64, 64, 64), **cfg.kwargs}
        return Hourglass(cfg.input_channels, out_channels, **kw)
    if cfg.name == "hourglass-tiny":
        kw = {"channels": (8, 16, 16), **cfg.kwargs}
        return Hourglass(cfg.input_channels, out_channels, **kw)
    if cfg.name in ("convdecoder", "deepdecoder"):
        kw = {"channels": 64, "num_layers": 6, "kernel_size": 3 if cfg.name == "convdecoder" else 1,
              **cfg.kwargs}
        return ConvDecoder(cfg.input_channels, out_channels, **kw)
    raise ValueError(f"unknown architecture {cfg.name!r}; one of {ARCHS}")


class ImageGenerator(nn.Module):
    """``G(z)``: network + fixed noise input -> complex images ``(K, H, W)``.

    Args:
        net: the network.
        z: the fixed input ``(1, Cin, h, w)``.
        out_shape: the encoded matrix ``(H, W)``.
        num_images: ``K``, complex images produced (the network has ``2K`` outputs).
    """

    def __init__(self, net: nn.Module, z: torch.Tensor, out_shape: tuple[int, int], num_images: int) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("z", z)
        self.register_buffer("offset", None)
        self.out_shape = tuple(out_shape)
        self.num_images = num_images

    def start_from(self, image: torch.Tensor) -> None:
        """A residual generator that starts at ``image`` ``(K, H, W)``: from now on
        ``G'(z) = image + G(z) - G_0(z)``, with ``G_0`` the network as it is now (fixed)."""
        with torch.no_grad():
            self.offset = None
            self.offset = (image - self()).detach()

    def forward(self, z: torch.Tensor | None = None) -> torch.Tensor:
        """``G(z)`` as ``(K, H, W)`` complex; ``z`` defaults to the fixed input (a perturbed
        input of the same shape can be passed instead)."""
        z = self.z if z is None else z
        if isinstance(self.net, ConvDecoder):
            out = self.net(z, out_size=self.out_shape)
        else:
            out = self.net(z)
        H, W = self.out_shape
        top, left = (out.shape[-2] - H) // 2, (out.shape[-1] - W) // 2
        out = out[0, :, top:top + H, left:left + W].float()
        out = out.reshape(self.num_images, 2, H, W)
        out = torch.complex(out[:, 0], out[:, 1])
        return out if self.offset is None else out + self.offset


def padded_shape(shape: tuple[int, int], multiple: int) -> tuple[int, int]:
    """``shape`` rounded up to a multiple, and at least ``3 * multiple`` (so the deepest
    level's 5x5 reflection padding fits)."""
    return tuple(max(3 * multiple, int(math.ceil(s / multiple) * multiple)) for s in shape)


def build_generator(cfg: ArchConfig, out_shape: tuple[int, int], num_images: int = 1,
                    seed: int = 0, device: torch.device | str = "cpu") -> ImageGenerator:
    """Build a generator with weights and input noise drawn from ``seed``.

    Args:
        cfg: the architecture.
        out_shape: encoded matrix ``(H, W)``.
        num_images: 1 for a SENSE image, C for coil images (sensitivity-free fitting).
        seed: seeds both the weight init and the noise ``z ~ U(0, 1) * input_scale``.
        device: where the generator lives.
    """
    gen = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        net = _make_net(cfg, 2 * num_images)
    if isinstance(net, ConvDecoder):
        zshape = net.in_size
    else:
        zshape = padded_shape(out_shape, net.multiple)
    z = torch.rand((1, cfg.input_channels, *zshape), generator=gen) * cfg.input_scale
    return ImageGenerator(net, z, out_shape, num_images).to(device)
