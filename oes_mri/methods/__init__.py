"""The reconstruction methods, one :class:`~oes_mri.methods.base.Reconstructor` class each,
and the registry of their command-line names (:data:`REGISTRY`, one line a method).

Names: ``zf`` (zero-filled RSS), ``sense`` (CG-SENSE), ``l1`` (L1-wavelet), ``tv`` (total
variation), ``dip`` (dense DIP), ``oes`` (Sparse-DIP with an OES mask), and the pruning
baselines at the same density ``random``, ``magnitude``, ``snip``, ``imp``; structured pruning
(whole channels, the generator rebuilt smaller) ``oes-channels`` and ``random-channels`` (the
CPU's default, :func:`default_methods`).

Every method is tuned the same honest way, by held-out k-space
(:class:`~oes_mri.fit.config.ValidationConfig`): the untrained generators stop on it and
the regularised baselines choose their weight from a grid by it.
"""

from __future__ import annotations

import logging
import typing
from typing import Any, Callable

import torch

from oes_mri.methods.base import Reconstruction, Reconstructor, Score, final_image, slice_data
from oes_mri.methods.classical import LAMBDA_FACTORS, TV, CGSense, L1Wavelet, Regularised, ZeroFilled
from oes_mri.methods.untrained import DenseDIP, SparseDIP, Untrained
from oes_mri.defaults import CHANNEL_ARCHS, DEFAULT_METHODS, FALLBACK_METHOD, device_defaults, generator_kind
from oes_mri.fit.config import DipConfig, check_type

log = logging.getLogger("oes_mri")

__all__ = ["CGSense", "DenseDIP", "Untrained", "L1Wavelet", "LAMBDA_FACTORS", "METHODS", "REGISTRY",
           "Reconstruction", "Reconstructor", "Score", "SparseDIP", "TV", "ZeroFilled", "final_image", "make",
           "UnknownSetting", "default_methods", "parse_methods", "slice_data"]

Factory = Callable[[DipConfig, bool], Reconstructor]
"""``factory(dip, tune)``: a method from the shared settings (the generators' ``DipConfig``,
whose validation split and seed the lambda grids share; ``tune``: held-out lambdas)."""


def _regularised(cls: type[Regularised]) -> Factory:
    return lambda dip, tune: cls(tune=tune, validation=dip.validation, seed=dip.seed)


REGISTRY: dict[str, Factory] = {
    "zf": lambda dip, tune: ZeroFilled(),
    "sense": _regularised(CGSense),
    "l1": _regularised(L1Wavelet),
    "tv": _regularised(TV),
    "oes": lambda dip, tune: SparseDIP(dip, "oes"),
    "dip": lambda dip, tune: DenseDIP(dip),
    "random": lambda dip, tune: SparseDIP(dip, "random"),
    "magnitude": lambda dip, tune: SparseDIP(dip, "magnitude"),
    "snip": lambda dip, tune: SparseDIP(dip, "snip"),
    "imp": lambda dip, tune: SparseDIP(dip, "imp"),
    "oes-channels": lambda dip, tune: SparseDIP(dip, "oes-channels"),
    "random-channels": lambda dip, tune: SparseDIP(dip, "random-channels"),
}
METHODS = tuple(REGISTRY)
def default_methods(device: str | torch.device = "cpu", arch: str = "hourglass") -> tuple[str, ...]:
    """What runs on ``device`` when no method is named: its Sparse-DIP and the baselines
    (:func:`oes_mri.defaults.device_defaults`, :data:`oes_mri.defaults.DEFAULT_METHODS`). A
    generator ``arch`` that channel pruning cannot rebuild gets OES's weight mask instead of a
    channel-pruned default (said in the log)."""
    dip = device_defaults(device).method
    if generator_kind(dip) == "channels" and arch not in CHANNEL_ARCHS:
        log.info("the %s generator cannot be channel-pruned: the default Sparse-DIP is %s", arch, FALLBACK_METHOD)
        dip = FALLBACK_METHOD
    return (dip, *DEFAULT_METHODS)


def make(name: str, dip: DipConfig | None = None, tune: bool = True, **settings: Any) -> Reconstructor:
    """The method ``name`` with the shared settings ``dip`` and ``tune``, then ``settings``
    replaced (its own fields, e.g. ``lamda=1e-3``, ``iters=50``).

    Raises:
        ValueError: an unknown method, or a setting it does not have or refuses.
    """
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    import dataclasses

    method = REGISTRY[name](dip or DipConfig(), tune)
    if settings:
        fields = {f.name for f in dataclasses.fields(method)} - {"config"}
        unknown = sorted(set(settings) - fields)
        if unknown:
            raise UnknownSetting(f"method {name!r} has no setting(s) {', '.join(unknown)}"
                                 + (f" (its own: {', '.join(sorted(fields))})" if fields else ""))
        hints = typing.get_type_hints(type(method))
        for key, value in settings.items():
            check_type(key, value, hints.get(key))
        method = dataclasses.replace(method, **settings)
    return method


class UnknownSetting(ValueError):
    """A setting that the method does not have (:func:`make`)."""


def parse_methods(spec: str) -> list[str]:
    """``"oes,sense,zf"``, ``"all"`` or ``"all,zf"`` -> method names (validated, once each,
    order kept)."""
    names = [m.strip() for m in spec.split(",") if m.strip()]
    names = list(dict.fromkeys(n for m in names for n in (METHODS if m == "all" else (m,))))   # once each, in order
    bad = [m for m in names if m not in METHODS]
    if bad or not names:
        raise ValueError(f"unknown method(s) {', '.join(bad) or '(none)'}; choose from "
                         f"{', '.join(METHODS)} or 'all'")
    return names
