"""python -m oes_mri.evaluate --target DIR --pred DIR: score reconstructions made elsewhere.

For every target file (``reconstruction_rss`` or ``reconstruction_esc``) with a prediction of
the same name (dataset ``reconstruction``), compute the fastMRI volume metrics
(:func:`oes_mri.metrics.volume_metrics`) and print one row per volume and the mean.
A target without a prediction gets a warning line. Exit code 2 with one line on stderr for a
missing folder, an unreadable file, or a prediction with NaN/Inf values.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import h5py
import numpy as np

from oes_mri.data.fastmri_io import dataset
from oes_mri.data.volumes import list_volumes
from oes_mri.errors import InputError
from oes_mri.metrics import VolumeMetrics, scorable, volume_metrics

log = logging.getLogger("oes_mri")


def _read(path: Path, keys: tuple[str, ...]) -> np.ndarray:
    """The first of ``keys`` in ``path`` as a real array; a complex one as its magnitude (the
    fastMRI metrics score magnitude images; a warning says so).

    Raises:
        InputError: unreadable, none of the keys, a group instead of an array, or not numbers.
    """
    try:
        with h5py.File(path, "r") as hf:
            for k in keys:
                if k in hf:
                    data = dataset(hf, k, path)[()]
                    break
            else:
                raise InputError(path, f"has none of the datasets {', '.join(keys)}")
    except OSError as err:
        raise InputError(path, f"cannot be read as HDF5: {str(err).splitlines()[0][:120]}")
    if not isinstance(data, np.ndarray) or not (np.issubdtype(data.dtype, np.number) or data.dtype == bool):
        raise InputError(path, f"'{k}' holds {getattr(data, 'dtype', type(data).__name__)}, not numbers")
    if np.iscomplexobj(data):
        log.warning("%s: '%s' is complex; its magnitude is scored (fastMRI scores magnitude images)", path, k)
        data = np.abs(data)
    return data


def evaluate(target_dir: Path, pred_dir: Path, square_crop: bool = False) -> dict[str, VolumeMetrics]:
    """Metrics per volume name for every target with a prediction."""
    out, unscorable = {}, []
    for t in list_volumes(target_dir):
        p = pred_dir / t.name
        if not p.exists():
            print(f"warning: {p}: no prediction for target {t}", file=sys.stderr)
            continue
        target = _read(t, ("reconstruction_rss", "reconstruction_esc"))
        pred = _read(p, ("reconstruction",))
        if target.shape != pred.shape:
            raise InputError(p, f"reconstruction has shape {pred.shape} but the target {target.shape}")
        why = scorable(target)
        if why is not None:
            print(f"warning: {t}: {why}; not scored", file=sys.stderr)
            unscorable.append(t.name)
            continue
        if not np.isfinite(pred).all():
            raise InputError(p, "reconstruction holds NaN or Inf values")
        out[t.name] = volume_metrics(target, pred, square_crop)
    if not out and unscorable:
        raise InputError(target_dir, f"no target can be scored ({', '.join(unscorable)}: NaN, Inf or all zero)")
    if not out:
        raise InputError(pred_dir, f"no prediction matches a target file of {target_dir}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m oes_mri.evaluate", description=__doc__.split("\n\n")[1])
    p.add_argument("--target", type=Path, required=True, help="folder (or file) of fastMRI target files")
    p.add_argument("--pred", type=Path, required=True, help="folder of reconstructions with the same names")
    p.add_argument("--square-crop", action="store_true", help="crop to (W, W) as fastmri.evaluate's CLI does")
    args = p.parse_args(argv)
    try:
        res = evaluate(args.target, args.pred, args.square_crop)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{'volume':30s} {'NMSE':>8s} {'PSNR':>8s} {'SSIM':>8s}")
    for name, m in res.items():
        print(f"{name:30s} {m.nmse:8.4f} {m.psnr:8.2f} {m.ssim:8.4f}")
    mean = np.mean([list(m) for m in res.values()], axis=0)
    print(f"{'mean':30s} {mean[0]:8.4f} {mean[1]:8.2f} {mean[2]:8.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
