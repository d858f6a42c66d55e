"""python -m oes_mri.evaluate --target DIR --pred DIR: score reconstructions made elsewhere.

For every target file (``reconstruction_rss`` or ``reconstruction_esc``) with a prediction of
the same name (dataset ``reconstruction``), compute the fastMRI volume metrics
(:func:`oes_mri.metrics.volume_metrics`) and print one row per volume and the mean.
A volume that cannot be scored is named in a warning line and the others are scored: a target
without a prediction or without a scorable target image is only that; a prediction that cannot
be read, has another shape or holds NaN/Inf makes the exit code 2 after the table (one line
naming them). Exit code 2 with one line on stderr when nothing can be scored.
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


class NotScored(InputError):
    """A volume left out for a reason that is not a defect of the prediction: it has no
    prediction (a folder may cover part of the targets), or its target cannot be scored."""


def _read(path: Path, keys: tuple[str, ...], missing: type[InputError] = InputError) -> np.ndarray:
    """The first of ``keys`` in ``path`` as a real array; a complex one as its magnitude (the
    fastMRI metrics score magnitude images; a warning says so).

    Raises:
        InputError: unreadable, none of the keys (``missing``), a group instead of an array, or not numbers.
    """
    try:
        with h5py.File(path, "r") as hf:
            for k in keys:
                if k in hf:
                    data = dataset(hf, k, path)[()]
                    break
            else:
                raise missing(path, f"has none of the datasets {', '.join(keys)}")
    except OSError as err:
        raise InputError(path, f"cannot be read as HDF5: {str(err).splitlines()[0][:120]}")
    if not isinstance(data, np.ndarray) or not (np.issubdtype(data.dtype, np.number) or data.dtype == bool):
        raise InputError(path, f"'{k}' holds {getattr(data, 'dtype', type(data).__name__)}, not numbers")
    if np.iscomplexobj(data):
        log.warning("%s: '%s' is complex; its magnitude is scored (fastMRI scores magnitude images)", path, k)
        data = np.abs(data)
    return data


def evaluate(target_dir: Path, pred_dir: Path, square_crop: bool = False,
             skipped: dict[str, InputError] | None = None) -> dict[str, VolumeMetrics]:
    """Metrics per volume name for every target with a prediction. A volume that cannot be
    scored is left out, named in ``skipped`` (``name -> error``: :class:`NotScored`, or a
    prediction or target that cannot be read, shapes that differ, NaN or Inf) and in a warning
    line; the others are scored.

    Raises:
        InputError: no volume could be scored.
    """
    out = {}
    skipped = {} if skipped is None else skipped
    for t in list_volumes(target_dir):
        try:
            out[t.name] = _score(t, pred_dir / t.name, square_crop)
        except InputError as err:
            skipped[t.name] = err
            print(f"warning: {err}; not scored", file=sys.stderr)
    if not out:
        raise InputError(pred_dir, f"no volume of {target_dir} could be scored ({len(skipped)} not scored, "
                                   "the warnings above say why)")
    return out


def _score(t: Path, p: Path, square_crop: bool) -> VolumeMetrics:
    """The fastMRI metrics of prediction ``p`` against target file ``t``.

    Raises:
        InputError: naming the file and what keeps it from being scored.
    """
    if not p.exists():
        raise NotScored(p, f"no prediction for target {t}")
    target = _read(t, ("reconstruction_rss", "reconstruction_esc"), missing=NotScored)
    pred = _read(p, ("reconstruction",))
    if target.shape != pred.shape:
        raise InputError(p, f"reconstruction has shape {pred.shape} but the target {target.shape}")
    why = scorable(target)
    if why is not None:
        raise NotScored(t, why)
    if not np.isfinite(pred).all():
        raise InputError(p, "reconstruction holds NaN or Inf values")
    return volume_metrics(target, pred, square_crop)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m oes_mri.evaluate", description=__doc__.split("\n\n")[1])
    p.add_argument("--target", type=Path, required=True, help="folder (or file) of fastMRI target files")
    p.add_argument("--pred", type=Path, required=True, help="folder of reconstructions with the same names")
    p.add_argument("--square-crop", action="store_true", help="crop to (W, W) as fastmri.evaluate's CLI does")
    args = p.parse_args(argv)
    skipped: dict[str, InputError] = {}
    try:
        res = evaluate(args.target, args.pred, args.square_crop, skipped)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{'volume':30s} {'NMSE':>8s} {'PSNR':>8s} {'SSIM':>8s}")
    for name, m in res.items():
        print(f"{name:30s} {m.nmse:8.4f} {m.psnr:8.2f} {m.ssim:8.4f}")
    mean = np.mean([list(m) for m in res.values()], axis=0)
    print(f"{'mean':30s} {mean[0]:8.4f} {mean[1]:8.2f} {mean[2]:8.4f}")
    bad = [name for name, err in skipped.items() if not isinstance(err, NotScored)]
    if bad:
        print(f"error: {len(bad)} prediction(s) could not be scored: {', '.join(bad)} (the others are above)",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
