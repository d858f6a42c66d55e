"""The mask bank: OES pruning masks learned once, offline, with a long mask-learning budget,
shipped with the package (``oes_mri/pruning/bank/*.safetensors``) and used by name.

OES's second claim (Ghosh et al., ICML 2024, and the authors' ``transfer.py``): a mask learned
on one image, applied to a fresh random init on another, keeps that image's own mask's quality:
the binary pattern carries the prior. A mask is then a property of the architecture, learned
once; a channel mask does not even depend on the image size. A bank mask is therefore used as a
*pattern*: the generator is initialised from the run's own seed (``--dip-seed``), not from the
init the mask was learned with (its metadata's ``pattern_only``).

Each file is a :class:`~oes_mri.pruning.weightmask.WeightMask` with its provenance in the
metadata (source images, acceleration, mask steps, seeds, density, architecture, package
versions). ``python -m oes_mri.app.bank`` rebuilds them (``docs/mask_bank.md``).
"""

from __future__ import annotations

from pathlib import Path

from oes_mri.errors import InputError
from oes_mri.pruning.weightmask import WeightMask

FOLDER = Path(__file__).parent / "bank"
"""Where the shipped masks live (package data)."""

SUFFIX = ".safetensors"


def names() -> list[str]:
    """The shipped masks' names (file stems), sorted."""
    return sorted(p.name[:-len(SUFFIX)] for p in FOLDER.glob(f"*{SUFFIX}"))


def path(name: str) -> Path:
    """The file of the shipped mask ``name``.

    Raises:
        InputError: no shipped mask of that name (the known names listed).
    """
    p = FOLDER / f"{name}{SUFFIX}"
    if not p.is_file():
        raise InputError(None, f"no shipped pruning mask {name!r}; the bank has {', '.join(names()) or 'none'}")
    return p


def load(name: str) -> WeightMask:
    """The shipped mask ``name``, its metadata naming it (``bank``)."""
    wm = WeightMask.load(path(name))
    return WeightMask(wm.masks, {**wm.meta, "bank": name})


def is_pattern(wm: WeightMask | None) -> bool:
    """The mask is a pattern for any init (a bank mask): the generator starts from the run's
    seed, not from the init the mask was learned with."""
    return wm is not None and bool(wm.meta.get("pattern_only"))
