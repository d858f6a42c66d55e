"""Every default that depends on the generator or the device, in one table.

Read by the fit settings (:class:`~oes_mri.fit.config.DipConfig`), the pruning settings
(:class:`~oes_mri.pruning.config.PruningConfig`), the method registry, the command line,
:func:`oes_mri.reconstruct`, the deepinv adapter and the benchmarks alike: change a default
here and every entry point follows. Why each value is what it is: ``docs/defaults.md``.

>>> generator_defaults("random-channels").steps, device_defaults("cpu").method
(1500, 'random-channels')
>>> device_defaults("cuda:1").steps, device_defaults("cuda").cuda_graph
(6000, True)
"""

from __future__ import annotations

from typing import NamedTuple

CHANNEL_PRUNINGS = ("oes-channels", "random-channels")
"""Structured prunings: whole channels kept or removed, the generator rebuilt smaller."""


class GeneratorDefaults(NamedTuple):
    """The defaults of a fit from a random init, by generator kind."""
    steps: int
    """the step cap on the CPU: a budget of about 100 s a slice on one core at 256x256"""
    lr: float
    """Adam's (peak) learning rate"""
    lr_schedule: str
    """:data:`oes_mri.optim.LR_SCHEDULES`"""
    kept: float
    """the kept fraction: of the prunable weights, or of the channels of every feature map"""


class DeviceDefaults(NamedTuple):
    """The defaults of a run, by device type."""
    method: str
    """the Sparse-DIP that runs when no method is named"""
    steps: int | None
    """the step cap when none is given (``None``: the generator's own, :class:`GeneratorDefaults`)"""
    cuda_graph: bool
    """replay each fit step as a CUDA graph (where the fit's other options allow it)"""


GENERATORS = {
    "weights": GeneratorDefaults(steps=300, lr=1e-2, lr_schedule="constant", kept=0.05),
    "channels": GeneratorDefaults(steps=1500, lr=3e-2, lr_schedule="warmup", kept=0.25),
}
"""By generator kind (:func:`generator_kind`): the full hourglass, dense or pruned weight by
weight (dense FLOPs), or one rebuilt from a quarter of its channels (16x fewer FLOPs a step)."""

DEVICES = {
    "cpu": DeviceDefaults(method="random-channels", steps=None, cuda_graph=False),
    "cuda": DeviceDefaults(method="oes", steps=6000, cuda_graph=True),
}
"""By device type: on the CPU the channel-pruned generator at its own budget; on CUDA OES's
5 % weight mask on the full generator, capped at 6000 steps, each step a replayed CUDA graph."""

CHANNEL_ARCHS = ("hourglass", "hourglass-small", "hourglass-tiny")
"""Generators whose channels can be pruned and rebuilt smaller (no skip connections)."""
FALLBACK_METHOD = "oes"
"""The default Sparse-DIP for a generator that channel pruning cannot rebuild: OES's weight mask."""

DEFAULT_METHODS = ("sense", "zf")
"""The baselines that run beside the default Sparse-DIP when no method is named."""


def generator_kind(pruning: str) -> str:
    """"channels" for a pruning that rebuilds the generator smaller (:data:`CHANNEL_PRUNINGS`),
    else "weights" (the full generator, dense or masked weight by weight)."""
    return "channels" if pruning in CHANNEL_PRUNINGS else "weights"


def generator_defaults(pruning: str) -> GeneratorDefaults:
    """The fit defaults of the generator that ``pruning`` ("oes", "dense", "random-channels", ...) makes."""
    return GENERATORS[generator_kind(pruning)]


def device_defaults(device: object) -> DeviceDefaults:
    """The run defaults of ``device`` ("cpu", "cuda", "cuda:1" or a ``torch.device``)."""
    return DEVICES["cuda" if str(device).startswith("cuda") else "cpu"]
