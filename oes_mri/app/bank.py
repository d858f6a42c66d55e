"""python -m oes_mri.app.bank: learn the mask bank's masks (:mod:`oes_mri.pruning.bank`) again.

Each shipped mask is learned by OES over channels (:func:`~oes_mri.pruning.channels.channel_oes_mask`)
on the full-width generator at its random init, on the middle slice of a public image the
package regenerates (the built-in sample) at a fastMRI random mask, with every measured sample
in the data term, a long mask-learning budget, and a fixed seed; then written with its
provenance. Same seed, same bytes on one CPU (the learning is deterministic there); another CPU
may round differently and flip a near-tied channel (``docs/mask_bank.md``).

    python -m oes_mri.app.bank                       # rebuild every shipped mask into the package
    python -m oes_mri.app.bank --out DIR --steps 20  # a quick rebuild elsewhere (a test)
    python -m oes_mri.app.bank --data my_scan.h5 --name my_knee --out masks/  # a mask for your data
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import NamedTuple

import torch

from oes_mri.app.slices import Sampling, prepare_slice
from oes_mri.data.sample import cache_dir, sample_path
from oes_mri.data.volumes import read_info
from oes_mri.errors import InputError
from oes_mri.fit.config import DipConfig
from oes_mri.fit.jobs import setup_fit
from oes_mri.nets.generator import ArchConfig
from oes_mri.physics.coils import MapCache
from oes_mri.pruning import bank
from oes_mri.pruning.weightmask import WeightMask


class BankSpec(NamedTuple):
    """How one shipped mask is learned."""
    accel: float = 4.0
    steps: int = 3000
    seed: int = 0
    density: float = 0.25
    arch: str = "hourglass"


SPECS = {"channels25": BankSpec()}
"""The shipped masks by name: a quarter of every feature map's channels of the default
hourglass (the CPU's channel-pruned generator), learned on the built-in sample at 4x with
3000 OES steps (``docs/mask_bank.md``: the budget measured)."""


def learn(data: Path, spec: BankSpec, snapshots: tuple[int, ...] = (), source: str | None = None
          ) -> tuple[WeightMask, dict[int, WeightMask]]:
    """An OES channel mask learned on the middle slice of ``data`` (``spec``), and the masks of
    the ``snapshots`` steps of the same run. The metadata records the provenance and marks the
    mask a pattern for any init (:func:`oes_mri.pruning.bank.is_pattern`)."""
    info = read_info(data)
    smask = Sampling(accel=spec.accel).mask(info)
    ms = prepare_slice(info, smask, info.num_slices // 2, torch.device("cpu"), MapCache(cache_dir() / "maps"),
                       mask_seed="None", accel=spec.accel, cf=None)
    cfg = DipConfig(arch=ArchConfig(spec.arch), seed=spec.seed).updated(
        {"pruning.method": "oes-channels", "pruning.density": spec.density, "pruning.steps": spec.steps})
    shots = {s: None for s in snapshots if s < spec.steps}
    setup = setup_fit(ms.x, cfg, spec.seed, fold=None, snapshots=shots)
    versions = {"torch": torch.__version__, "oes_mri": _version()}
    provenance = {"source": source or info.path.name, "source_slice": info.num_slices // 2,
                  "acceleration": round(smask.acceleration, 3), "sampling": f"fastMRI random, {spec.accel:g}x",
                  "pattern_only": True, "versions": versions}
    def mark(wm: WeightMask) -> WeightMask:
        return WeightMask(wm.masks, {**wm.meta, **provenance})
    return mark(setup.weight_mask), {s: mark(m) for s, m in shots.items()}


def _version() -> str:
    from oes_mri import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m oes_mri.app.bank", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=bank.FOLDER, help="folder of the masks (default: the package's bank)")
    ap.add_argument("--names", nargs="*", default=list(SPECS), help=f"which shipped masks ({', '.join(SPECS)})")
    ap.add_argument("--steps", type=int, default=None, help="OES steps instead of each spec's (a quick rebuild)")
    ap.add_argument("--data", type=Path, default=None,
                    help="learn on this fastMRI file instead of the built-in sample (your own mask; with --name)")
    ap.add_argument("--name", default=None, help="the mask's name with --data (default: the file's stem)")
    ap.add_argument("--seed", type=int, default=None, help="mask-learning seed instead of the spec's")
    args = ap.parse_args(argv)
    jobs = ([(args.name or args.data.stem, SPECS["channels25"], args.data)] if args.data is not None
            else [(n, SPECS[n], sample_path()) for n in args.names if n in SPECS])
    unknown = [n for n in args.names if n not in SPECS]
    try:
        if unknown and args.data is None:
            raise InputError(None, f"--names: no shipped mask {', '.join(unknown)} (known: {', '.join(SPECS)})")
        args.out.mkdir(parents=True, exist_ok=True)
        for name, spec, data in jobs:
            spec = spec._replace(**{k: v for k, v in (("steps", args.steps), ("seed", args.seed)) if v is not None})
            wm, _ = learn(data, spec, source="built-in sample" if data == sample_path() else None)
            out = args.out / f"{name}{bank.SUFFIX}"
            bank.save(wm, out)
            print(f"{out}: {json.dumps({k: wm.meta[k] for k in ('mask_steps', 'mask_seed', 'density')})}")
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
