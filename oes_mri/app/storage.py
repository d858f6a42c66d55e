"""What a run keeps on disk: one checkpoint per finished (slice, method), checksummed and
validated on read; the metric records (``metrics.json`` / ``metrics.csv``); the lock on
``--out``. Every file is written atomically (:mod:`oes_mri.atomic`)."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import logging
import math
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

from oes_mri.atomic import atomic_write_bytes
from oes_mri.errors import InputError

log = logging.getLogger("oes_mri")

RECORD_KEYS = ("file", "method", "output", "acceleration", "center_fraction", "slices", "nmse", "psnr", "ssim",
               "seconds", "steps", "lambda", "device", "fast_path", "stop", "heldout_informative", "pruning_mask")


class SliceResult(NamedTuple):
    """One finished (slice, method): what a checkpoint holds."""

    method: str
    index: int
    image: np.ndarray        # (rH, rW) float32, data-consistent RSS
    seconds: float
    losses: np.ndarray       # fit losses per step (empty for classical methods)
    curve: np.ndarray        # rows (step, psnr, ssim) when a target exists
    vals: np.ndarray         # held-out losses per step (empty without a hold-out)
    steps: np.ndarray        # (fit steps run, chosen step) of a generator; () for classical methods
    lamda: np.ndarray        # the regularisation weight used, () when the method has none
    weights: dict | None = None  # a fitted generator's state (name -> array), kept apart (save_weights)
    fast_path: str = ""          # how the fit's steps ran (oes_mri.fit.fastpath); "" for classical methods
    stop: str = ""               # why the fit stopped (oes_mri.fit.stopping.REASONS); "" for classical methods
    informative: str = ""        # whether its held-out samples carried a usable signal: "yes", "no", "" (none)


CHECKPOINT_KEYS = ("image", "seconds", "losses", "curve", "vals", "steps", "lamda")


def _checksum(arrays: dict, keys: tuple[str, ...] = CHECKPOINT_KEYS) -> str:
    h = hashlib.sha256()
    for k in keys:
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_checkpoint(path: Path, r: SliceResult) -> None:
    """One (slice, method) result, atomically, with a SHA-256 of its arrays."""
    arrays = {"image": r.image, "seconds": np.float64(r.seconds), "losses": r.losses, "curve": r.curve,
              "vals": r.vals, "steps": r.steps, "lamda": r.lamda}
    buf = io.BytesIO()
    np.savez(buf, **arrays, fast_path=np.str_(r.fast_path), stop=np.str_(r.stop),
             informative=np.str_(r.informative), checksum=np.str_(_checksum(arrays)))
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path) -> dict:
    """A checkpoint's arrays, checked against its checksum and for a finite 2-D image.

    Raises:
        InputError: naming the file, when it is unreadable, altered or invalid.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            ck = {k: z[k] for k in z.files}
    except Exception as err:  # truncated zip: BadZipFile, EOFError, OSError, ValueError
        raise InputError(path, f"unreadable checkpoint ({type(err).__name__})")
    if "checksum" not in ck or any(k not in ck for k in CHECKPOINT_KEYS) or str(ck["checksum"]) != _checksum(ck):
        raise InputError(path, "checkpoint does not match its checksum (altered or from an older version)")
    if ck["image"].ndim != 2 or not np.isfinite(ck["image"]).all():
        raise InputError(path, "checkpoint image is not a finite 2-D array")
    return ck


def valid_checkpoint(path: Path) -> bool:
    """``path`` holds a valid checkpoint; an invalid one is removed with a warning naming it."""
    if not path.exists():
        return False
    try:
        load_checkpoint(path)
        return True
    except InputError as err:
        log.warning("%s; recomputing", err)
        path.unlink(missing_ok=True)
        return False


def save_weights(path: Path, weights: dict[str, np.ndarray]) -> None:
    """A fitted generator's state (what a neighbour slice warm-starts from), compressed
    (pruned weights are zeros), atomically, with a SHA-256 of its arrays."""
    keys = tuple(sorted(weights))
    buf = io.BytesIO()
    np.savez_compressed(buf, **weights, checksum=np.str_(_checksum(weights, keys)))
    atomic_write_bytes(path, buf.getvalue())


def load_weights(path: Path) -> dict[str, np.ndarray] | None:
    """Weights saved by :func:`save_weights`, or ``None`` (with a warning naming the file)
    when they are missing, unreadable or altered: never used then."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        checksum = str(arrays.pop("checksum"))
        if checksum != _checksum(arrays, tuple(sorted(arrays))) or not all(np.isfinite(a).all() for a in arrays.values()):
            raise ValueError("checksum")
        return arrays
    except Exception as err:  # truncated zip, missing checksum, altered values
        log.warning("%s: unusable warm-start weights (%s); this slice starts from the random init",
                    path, type(err).__name__)
        return None


def read_json(path: Path):
    """A JSON file the run wrote, or :class:`InputError` naming it."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(path, f"unreadable ({type(err).__name__}); remove it or use another --out")


def record_output(record: dict) -> str:
    """The output file a metric record describes, relative to the run's folder
    (``<method>/<stem>.h5``; a record written before the field existed: from its input file)."""
    return record.get("output") or f"{record['method']}/{output_stem(Path(record['file']))}.h5"


def output_stem(path: Path) -> str:
    """The name a volume's outputs take: the file's stem for ``.h5``, else its whole name with
    the dots as underscores (``vol.dat`` -> ``vol_dat``), so inputs that differ only in their
    extension never share an output."""
    return path.stem if path.suffix == ".h5" else path.name.replace(".", "_")


def write_metrics(out: Path, records: list[dict]) -> list[dict]:
    """Merge ``records`` into ``metrics.json`` / ``metrics.csv``: a record replaces the one that
    describes the same output file (:func:`record_output`), whatever spelling of the input
    made either, and a record whose output file is gone is dropped."""
    path = out / "metrics.json"
    old = read_json(path) if path.exists() else []
    if not isinstance(old, list) or not all(isinstance(r, dict) and {"file", "method"} <= r.keys() for r in old):
        raise InputError(path, "is not a list of metric records; remove it or use another --out")
    keys = {record_output(r) for r in records}
    merged = [r for r in old if record_output(r) not in keys and (out / record_output(r)).exists()] + records
    merged = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
              for r in merged]                                     # strict JSON: no Infinity / NaN, old rows too
    atomic_write_bytes(path, json.dumps(merged, indent=2, allow_nan=False).encode())
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=RECORD_KEYS)
    w.writeheader()
    for r in merged:
        w.writerow({k: _csv_value(r.get(k)) for k in RECORD_KEYS})
    atomic_write_bytes(out / "metrics.csv", buf.getvalue().encode())
    return merged


def _csv_value(v: object) -> object:
    """A record's value in metrics.csv: empty for None, per-slice lists space-separated."""
    if v is None:
        return ""
    if isinstance(v, list):
        return " ".join(str(x).lower() if isinstance(x, (str, bool)) else f"{x:g}" for x in v)
    return v


@contextlib.contextmanager
def out_lock(out: Path) -> Iterator[None]:
    """Hold ``<out>/.lock`` (an exclusive ``flock``) for the run; a second run into the same
    folder is refused with :class:`InputError` instead of mixing its outputs with ours."""
    if out.exists() and not out.is_dir():
        raise InputError(out, "--out is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        f = open(out / ".lock", "a")
    except OSError as err:
        raise InputError(out, f"--out cannot be written: {err.strerror or type(err).__name__}")
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise InputError(out, "another oes_mri run is writing to this --out; wait for it or use another folder")
        yield
