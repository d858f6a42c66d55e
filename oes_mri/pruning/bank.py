"""The mask bank: OES pruning masks learned once, offline, with a long mask-learning budget,
shipped with the package (``oes_mri/pruning/bank/*.safetensors``) and used by name
(``--pruning-mask bank:NAME``).

OES's second claim (Ghosh et al., ICML 2024, and the authors' ``transfer.py``): a mask learned
on one image, applied to a fresh random init on another, keeps that image's own mask's quality:
the binary pattern carries the prior. A mask is then a property of the architecture, learned
once; a channel mask does not even depend on the image size. A bank mask is therefore used as a
*pattern*: the generator is initialised from the run's own seed (``--dip-seed``), not from the
init the mask was learned with (its metadata's ``pattern_only``).

A channel mask is stored compactly: one bool vector of kept channels per feature map
(``channels.<feature map>``, a few hundred bytes in all, where the parameter-shaped masks take
3 MB), expanded on load for the architecture in its metadata. The metadata holds the
provenance (source image, acceleration, mask steps, seeds, density, architecture, package
versions). ``python -m oes_mri.app.bank`` rebuilds the shipped files (``docs/mask_bank.md``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import torch

from oes_mri.atomic import atomic_path
from oes_mri.errors import InputError
from oes_mri.nets.generator import ArchConfig, build_generator
from oes_mri.pruning.channels import channel_mask, feature_maps, is_channel_mask, kept_channels
from oes_mri.pruning.weightmask import WeightMask

FOLDER = Path(__file__).parent / "bank"
"""Where the shipped masks live (package data)."""

SUFFIX = ".safetensors"
PREFIX = "bank:"
"""``--pruning-mask bank:NAME`` names a shipped mask."""
COMPACT = "channels/v1"
"""The metadata ``format`` of a channel mask stored as kept-channel vectors."""


def names() -> list[str]:
    """The shipped masks' names (file stems), sorted."""
    return sorted(p.name[:-len(SUFFIX)] for p in FOLDER.glob(f"*{SUFFIX}"))


def path(name: str) -> Path:
    """The file of the shipped mask ``name`` (``bank:`` prefix allowed).

    Raises:
        InputError: no shipped mask of that name (the known names listed).
    """
    name = name[len(PREFIX):] if name.startswith(PREFIX) else name
    p = FOLDER / f"{name}{SUFFIX}"
    if not p.is_file():
        raise InputError(None, f"no shipped pruning mask {name!r}; the bank has {', '.join(names()) or 'none'}")
    return p


def _generator(meta: dict, source: object) -> torch.nn.Module:
    arch = meta.get("arch") or {}
    try:
        cfg = ArchConfig(arch["name"], arch.get("kwargs", {}), arch.get("input_channels", 32),
                         arch.get("input_scale", 0.1))
        return build_generator(cfg, (64, 64), int(meta.get("num_images", 1)))
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(source, f"pruning mask metadata names no buildable architecture ({err})") from None


def save(wm: WeightMask, dst: str | os.PathLike) -> None:
    """Write ``wm``: a channel mask compactly (kept channels per feature map), any other as
    :meth:`WeightMask.save` does. Atomic."""
    if not is_channel_mask(wm):
        wm.save(dst)
        return
    from safetensors.torch import save_file

    gen = _generator(wm.meta, dst)
    kept = kept_channels(gen, wm)
    vectors = {}
    for fm in feature_maps(gen):
        v = torch.zeros(fm.width, dtype=torch.bool)
        v[kept[fm.name]] = True
        vectors[f"channels.{fm.name}"] = v
    with atomic_path(dst) as tmp:
        save_file(vectors, str(tmp), metadata={"oes_mri": json.dumps({**wm.meta, "format": COMPACT}, sort_keys=True)})


def load_file(src: str | os.PathLike) -> WeightMask:
    """A mask file: a compact channel mask (expanded for its architecture) or a
    :meth:`WeightMask.save` file; ``bank:NAME`` a shipped mask, its metadata naming it.

    Raises:
        InputError: the file is missing, unreadable, or its vectors do not fit its architecture.
    """
    name = str(src)
    if name.startswith(PREFIX):
        wm = load_file(path(name))
        return WeightMask(wm.masks, {**wm.meta, "bank": name[len(PREFIX):]})
    wm = WeightMask.load(src)
    if wm.meta.get("format") != COMPACT:
        return wm
    gen = _generator(wm.meta, src)
    keep = {}
    for fm in feature_maps(gen):
        v = wm.masks.get(f"channels.{fm.name}")
        if v is None or v.shape != (fm.width,):
            raise InputError(src, f"channel mask does not fit {wm.meta['arch'].get('name')}: feature map {fm.name!r} "
                                  f"needs {fm.width} channels, the file has {None if v is None else tuple(v.shape)}")
        keep[fm.name] = v
    meta = {k: v for k, v in wm.meta.items() if k != "format"}
    return channel_mask(gen, keep, meta)


def resolve(src: str | os.PathLike) -> Path:
    """The file behind a mask argument: ``bank:NAME``'s shipped file, else ``src`` itself."""
    return path(str(src)) if str(src).startswith(PREFIX) else Path(src)


def load(name: str) -> WeightMask:
    """The shipped mask ``name``."""
    return load_file(f"{PREFIX}{name}")


def is_pattern(wm: WeightMask | None) -> bool:
    """The mask is a pattern for any init (a bank mask): the generator starts from the run's
    seed, not from the init the mask was learned with."""
    return wm is not None and bool(wm.meta.get("pattern_only"))


def unused_with_mask(keys: Iterable[str]) -> list[str]:
    """The settings among ``keys`` (``"section.field"``) that a given pruning mask leaves
    unused: what is kept and how a mask is made (``pruning.*`` but the method, ``oes.*``).

    >>> unused_with_mask(["pruning.density", "fit.steps", "oes.init", "pruning.method"])
    ['pruning.density', 'oes.init']
    """
    return [k for k in keys if k.startswith("oes.") or (k.startswith("pruning.") and k != "pruning.method")]
