"""Volume -> slices -> methods -> outputs, resumable and atomic.

For each volume: one sampling mask (fastMRI per-volume seed), per slice the undersampled
k-space, ESPIRiT maps (disk cache) and every method; each finished (slice, method) is
checkpointed under ``<out>/.checkpoints/<volume>/`` at once, so an interrupted run resumes
where it stopped and gives the same final files. The final files are written atomically:
``<out>/<method>/<volume file name>`` (fastMRI submission format), ``metrics.json`` and
``metrics.csv``. A run refuses to touch outputs made with other settings unless
``overwrite`` is set.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import hashlib
import io
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import numpy as np
import torch

from oes_mri.atomic import atomic_write_bytes
from oes_mri.data.fastmri_io import VolumeInfo, write_reconstruction
from oes_mri.data.volumes import list_volumes, load_slice, parse_slices, read_info
from oes_mri.data.nifti_io import write_nifti
from oes_mri.data.sample import cache_dir
from oes_mri.errors import InputError
from oes_mri.fileid import file_identity
from oes_mri.methods import REGISTRY, UNTRAINED, MethodSettings, SliceInput, run_batch, run_method
from oes_mri.metrics import volume_metrics
from oes_mri.physics.coils import MapCache, estimate_maps, map_cache_key
from oes_mri.physics.fft import center_crop, crop_readout
from oes_mri.physics.masks import SamplingMask, default_center_fraction, make_mask, volume_seed
from oes_mri.pruning.weightmask import WeightMask
from oes_mri.solvers.combine import dc_rss

log = logging.getLogger("oes_mri")

NIFTI = ".nii.gz"
RECORD_KEYS = ("file", "method", "acceleration", "center_fraction", "slices", "nmse", "psnr", "ssim",
               "seconds", "steps", "lambda", "device")


class Progress:
    """What a run reports as it goes (the CLI shows tqdm bars or log lines); does nothing here."""

    def volume(self, name: str, jobs: int) -> None:
        """A volume starts with ``jobs`` (slice, method) reconstructions to do."""

    def fit(self, desc: str, steps: int) -> Callable[[int, dict], None] | None:
        """A generator fit of ``steps`` starts; returns its ``progress(step, info)`` callback."""
        return None

    def done(self, desc: str, seconds: float, jobs: int = 1) -> None:
        """``jobs`` reconstructions finished."""

    def volume_done(self) -> None:
        """The volume's outputs are written."""


@dataclasses.dataclass
class RunConfig:
    """Everything a run needs (the CLI builds one)."""

    data: Path
    out: Path
    methods: list[str]
    accel: float = 4.0
    center_fraction: float | None = None
    mask_kind: str = "auto"
    seed: int | None = None
    slices: str | None = None
    challenge: str | None = None
    settings: MethodSettings = dataclasses.field(default_factory=MethodSettings)
    weight_mask: Path | None = None
    mask_per: str = "volume"
    device: str = "cpu"
    overwrite: bool = False
    batch_slices: int = 1
    nifti: bool = False
    readout: str = "crop"

    def fingerprint(self, method: str) -> dict:
        """The settings that determine a method's output (checked on resume)."""
        fp = {"accel": self.accel, "center_fraction": self.center_fraction, "mask_kind": self.mask_kind,
              "seed": self.seed, "challenge": self.challenge, "readout": self.readout,
              **REGISTRY[method].fingerprint(self.settings)}
        if method in UNTRAINED:
            fp.update(device=self.device, batch_slices=self.batch_slices)
            if method == "oes":
                fp.update(weight_mask=str(self.weight_mask) if self.weight_mask else None, mask_per=self.mask_per)
        return json.loads(json.dumps(fp, default=str))


def sampling_kind(cfg: RunConfig, info: VolumeInfo) -> str:
    """The mask kind a volume gets: ``auto`` is the file's own mask when it has one
    (prospectively undersampled data, fastMRI test files), else fastMRI's random mask."""
    if cfg.mask_kind == "auto":
        return "file" if info.mask is not None else "random"
    return cfg.mask_kind


def center_fraction(cfg: RunConfig, info: VolumeInfo, smask: SamplingMask | None) -> float:
    """The centre fraction a run used: the given one, fastMRI's default, or (``file`` masks)
    the calibration width over the k-space width."""
    if sampling_kind(cfg, info) == "file":
        return smask.acs_width / info.shape[1]
    return default_center_fraction(cfg.accel) if cfg.center_fraction is None else cfg.center_fraction


def volume_sampling_mask(info: VolumeInfo, cfg: RunConfig) -> SamplingMask:
    """The volume's mask: the file's own (``file``) or a new one (fastMRI per-volume seed)."""
    kind = sampling_kind(cfg, info)
    if kind == "file":
        if info.mask is None:
            raise InputError(info.path, "--mask file given but the file holds no 'mask' dataset "
                                        "(it is fully sampled)")
        return info.mask
    seed = volume_seed(info.path.name) if cfg.seed is None else cfg.seed
    return make_mask(kind, info.shape, cfg.accel, center_fraction(cfg, info, None), seed)


READOUTS = ("crop", "full", "crop-maps")
"""``crop``: remove readout oversampling before the fits (when the readout is fully sampled,
i.e. a column mask); coil maps are estimated on the acquired readout and cropped;
``full``: fit the acquired readout; ``crop-maps``: as ``crop`` with the maps estimated on the
cropped k-space (measured in ``docs/self_validation.md``)."""


def prepare_slice(info: VolumeInfo, smask: SamplingMask, index: int, device: torch.device,
                  maps_cache: MapCache, readout: str = "crop", **key: object) -> SliceInput:
    """One slice ready for the methods: ``y = M k`` on ``device``, ESPIRiT maps (from
    ``maps_cache`` under a key of the file, slice, mask, readout and ``key``) and the target.

    With ``readout="crop"`` and a column mask, the readout is cut to the recon size's field
    of view first (:func:`~oes_mri.physics.fft.crop_readout`: the image on the recon grid is
    unchanged, the fit has fewer pixels: half for fastMRI's 2x oversampling)."""
    if readout not in READOUTS:
        raise ValueError(f"readout {readout!r}: expected one of {', '.join(READOUTS)}")
    kspace, target = load_slice(info, index)
    rows = info.header.recon_size[0]
    crop = readout in ("crop", "crop-maps") and smask.mask.shape[0] == 1 and kspace.shape[-2] > rows
    mask = smask.mask.to(device)
    y = kspace.to(device) * mask + 0.0
    source = f"{info.path.name}:{index}"
    ckey = map_cache_key(info.path, index, smask, mask_kind=smask.kind, **key,
                         maps_on="cropped" if crop and readout == "crop-maps" else "acquired")
    if readout == "crop-maps" and crop:               # ESPIRiT on the cropped k-space (measured: not the default)
        y = crop_readout(y, rows)
        cropped = smask._replace(acs=(slice(0, rows), smask.acs[1]))
        maps = maps_cache.get_or_compute(ckey, lambda: estimate_maps(y, cropped, source=source)).maps
    else:                                             # ESPIRiT on the acquired readout, maps cropped
        maps = maps_cache.get_or_compute(ckey, lambda: estimate_maps(y, smask, source=source)).maps
        if crop:
            y, maps = crop_readout(y, rows), center_crop(maps, (rows, maps.shape[-1]))
    return SliceInput(y, mask, maps.to(device), info.header.recon_size, target, source)


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


def slice_result(method: str, index: int, x: SliceInput, res, seconds: float) -> SliceResult:
    """Image (data consistency + RSS) and curves of a method's result."""
    image = dc_rss(res.recon.coil_images, x.kspace, x.mask, x.recon_size).cpu().numpy().astype(np.float32)
    if not np.isfinite(image).all():
        raise RuntimeError(f"{x.source}: {method} produced a non-finite image; not written")
    h = res.history
    mon = h.get("monitor", [])
    steps = np.asarray([h["steps"], h["best_step"]] if "steps" in h else [], np.int64)
    return SliceResult(method, index, image, float(seconds), np.asarray(h.get("losses", []), np.float32),
                       np.asarray([[r["step"], r["psnr"], r["ssim"]] for r in mon if "psnr" in r], np.float64),
                       np.asarray(h.get("val_losses", []), np.float32), steps,
                       np.asarray([h["lambda"]] if "lambda" in h else [], np.float64))


CHECKPOINT_KEYS = ("image", "seconds", "losses", "curve", "vals", "steps", "lamda")


def _checksum(arrays: dict) -> str:
    h = hashlib.sha256()
    for k in CHECKPOINT_KEYS:
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_checkpoint(path: Path, r: SliceResult) -> None:
    """One (slice, method) result, atomically, with a SHA-256 of its arrays."""
    arrays = {"image": r.image, "seconds": np.float64(r.seconds), "losses": r.losses, "curve": r.curve,
              "vals": r.vals, "steps": r.steps, "lamda": r.lamda}
    buf = io.BytesIO()
    np.savez(buf, **arrays, checksum=np.str_(_checksum(arrays)))
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


def read_json(path: Path):
    """A JSON file the run wrote, or :class:`InputError` naming it."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(path, f"unreadable ({type(err).__name__}); remove it or use another --out")


class VolumeData:
    """Read-only view of one volume under a run's settings: its slices, sampling mask and the
    reconstruction of slices. Writes nothing but the map cache, so it also runs on workers."""

    def __init__(self, path: Path, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.info = read_info(path, cfg.challenge)
        try:
            self.indices = parse_slices(cfg.slices, self.info.num_slices)
        except ValueError as err:
            raise InputError(path, str(err))
        self.smask = volume_sampling_mask(self.info, cfg)
        self.device = torch.device(cfg.device)
        self.maps_cache = MapCache(cache_dir() / "maps")

    @property
    def reference_slice(self) -> int:
        """The slice the volume's OES mask is learned on (the middle selected one)."""
        return self.indices[len(self.indices) // 2]

    def batches(self) -> list[list[int]]:
        """The selected slices in consecutive groups of ``cfg.batch_slices`` (fitted together)."""
        B = max(1, self.cfg.batch_slices)
        return [self.indices[i:i + B] for i in range(0, len(self.indices), B)]

    def slice_input(self, index: int) -> SliceInput:
        """Undersampled k-space, maps and target of one slice (maps from the disk cache)."""
        return prepare_slice(self.info, self.smask, index, self.device, self.maps_cache, self.cfg.readout,
                             mask_seed=str(self.cfg.seed), accel=self.cfg.accel, cf=self.cfg.center_fraction)

    def given_mask(self) -> WeightMask | None:
        """``--weight-mask``, checked against the architecture."""
        cfg = self.cfg
        if cfg.weight_mask is None:
            return None
        wm = WeightMask.load(cfg.weight_mask)
        if wm.meta.get("arch") not in (None, cfg.settings.dip.arch.to_dict()):
            raise InputError(cfg.weight_mask, f"weight mask was made for architecture {wm.meta.get('arch')}, "
                                              f"not {cfg.settings.dip.arch.to_dict()}")
        return wm

    def learn_mask(self, progress: Progress | None = None) -> tuple[WeightMask, SliceResult]:
        """Sparse-DIP on the reference slice: the volume's OES mask and that slice's result."""
        progress = progress or Progress()
        ref = self.reference_slice
        x = self.slice_input(ref)
        t = time.perf_counter()
        res = run_method("oes", x, self.cfg.settings, None,
                         progress.fit(f"{self.info.path.name} slice {ref} oes", self.cfg.settings.dip.steps))
        return res.weight_mask, slice_result("oes", ref, x, res, time.perf_counter() - t)

    def reconstruct(self, todo: dict[str, list[int]], weight_mask: WeightMask | None,
                    progress: Progress | None = None) -> Iterator[list[SliceResult]]:
        """Reconstruct ``todo`` (method -> slice indices), ``cfg.batch_slices`` slices at a time
        for the untrained generators; yields each (method, batch)'s results as they finish."""
        progress = progress or Progress()
        for batch in self.batches():
            wanted = [i for i in batch if any(i in idx for idx in todo.values())]
            inputs = {i: self.slice_input(i) for i in wanted}
            for m, idx in todo.items():
                idx = [i for i in batch if i in idx]
                if not idx:
                    continue
                t = time.perf_counter()
                fit_progress = (progress.fit(f"{self.info.path.name} slice {','.join(map(str, idx))} {m}",
                                             self.cfg.settings.dip.steps) if m in UNTRAINED else None)
                results = run_batch(m, [inputs[i] for i in idx], self.cfg.settings, weight_mask, fit_progress)
                seconds = (time.perf_counter() - t) / len(idx)
                yield [slice_result(m, i, inputs[i], r, seconds) for i, r in zip(idx, results)]


class VolumeRun(VolumeData):
    """Reconstruct one volume with every method (see the module docstring): checkpoints,
    the volume's OES mask, final files."""

    def __init__(self, path: Path, cfg: RunConfig, progress: Progress | None = None) -> None:
        super().__init__(path, cfg)
        self.ckdir = cfg.out / ".checkpoints" / self.info.path.stem
        self.progress = progress or Progress()
        self._check_fingerprints()

    def fingerprint(self, method: str) -> dict:
        """The run's settings for ``method`` plus what this volume adds: the input file's
        identity, and for a volume-learned OES mask the slice it is learned on."""
        fp = dict(self.cfg.fingerprint(method), input=file_identity(self.info.path))
        if method == "oes" and self.cfg.mask_per == "volume" and self.cfg.weight_mask is None:
            fp["reference_slice"] = self.reference_slice
        return fp

    def _check_fingerprints(self) -> None:
        for m in self.cfg.methods:
            fp_path = self.ckdir / m / "config.json"
            fp = self.fingerprint(m)
            final = self.final_path(m)
            if fp_path.exists() and read_json(fp_path) != fp or (final.exists() and not fp_path.exists()):
                if not self.cfg.overwrite:
                    raise InputError(final, "outputs made with other settings exist; use --overwrite "
                                            "or another --out")
            if self.cfg.overwrite and (fp_path.exists() or final.exists()):
                shutil.rmtree(self.ckdir / m, ignore_errors=True)
                final.unlink(missing_ok=True)
                self.final_path(m, NIFTI).unlink(missing_ok=True)
            atomic_write_bytes(fp_path, json.dumps(fp, sort_keys=True).encode())

    def final_path(self, method: str, suffix: str = ".h5") -> Path:
        """``<out>/<method>/<input stem><suffix>``: the fastMRI submission file (``.h5``) or
        the NIfTI volume (``.nii.gz``)."""
        return self.cfg.out / method / f"{self.info.path.stem}{suffix}"

    def checkpoint(self, method: str, index: int) -> Path:
        return self.ckdir / method / f"slice_{index:04d}.npz"

    @property
    def mask_path(self) -> Path:
        return self.ckdir / "oes" / "weight_mask.safetensors"

    def needs_mask(self) -> bool:
        """The volume's OES mask is still to be learned."""
        return ("oes" in self.cfg.methods and self.cfg.mask_per == "volume" and self.cfg.weight_mask is None
                and not self.mask_path.exists())

    def save(self, r: SliceResult) -> None:
        """Checkpoint a finished (slice, method), once: a result already on disk is kept."""
        path = self.checkpoint(r.method, r.index)
        if not path.exists():
            save_checkpoint(path, r)

    def save_mask(self, wm: WeightMask, r: SliceResult) -> None:
        wm.save(self.mask_path)
        self.save(r)

    def weight_mask(self) -> WeightMask | None:
        """The OES mask shared by the volume's slices (learned here if needed), or a given one."""
        if self.cfg.weight_mask is not None:
            return self.given_mask()
        if "oes" not in self.cfg.methods or self.cfg.mask_per != "volume":
            return None
        if not self.needs_mask():
            return WeightMask.load(self.mask_path)
        t = time.perf_counter()
        wm, ref_result = self.learn_mask(self.progress)
        self.save_mask(wm, ref_result)
        self.progress.done(f"{self.info.path.name} slice {self.reference_slice} oes (volume mask)",
                           time.perf_counter() - t)
        return wm

    def todo(self) -> dict[str, list[int]]:
        """Slices without a valid checkpoint, per method (an invalid one is removed, with a warning)."""
        return {m: [i for i in self.indices if not valid_checkpoint(self.checkpoint(m, i))] for m in self.cfg.methods}

    def run(self) -> list[dict]:
        """Reconstruct every missing (slice, method), then write the volume's outputs."""
        todo = self.todo()
        self.progress.volume(self.info.path.name, sum(map(len, todo.values())))
        wm = self.weight_mask()
        if self.cfg.mask_per == "volume" and "oes" in todo:      # the reference slice was just checkpointed
            todo["oes"] = [i for i in todo["oes"] if not self.checkpoint("oes", i).exists()]
        for results in self.reconstruct(todo, wm, self.progress):
            for r in results:
                self.save(r)
            self.progress.done(f"{self.info.path.name} slice {','.join(str(r.index) for r in results)} "
                               f"{results[0].method}", sum(r.seconds for r in results), len(results))
        return self.finish()

    def finish(self) -> list[dict]:
        """Write the final files and return the metric records (every checkpoint must exist)."""
        target = self.targets()
        records = [self._finish(m, target) for m in self.cfg.methods]
        self.progress.volume_done()
        return records

    def targets(self) -> np.ndarray | None:
        if not self.info.has_target:
            return None
        return np.stack([load_slice(self.info, i)[1] for i in self.indices])

    def _finish(self, method: str, target: np.ndarray | None) -> dict:
        cks = [load_checkpoint(self.checkpoint(method, i)) for i in self.indices]
        recon = np.stack([ck["image"] for ck in cks])
        write_reconstruction(self.final_path(method), recon)      # rebuilt: the slice set may have changed
        if self.cfg.nifti:
            write_nifti(self.final_path(method, NIFTI), recon, self.info.voxel_size)
        seconds = float(sum(ck["seconds"] for ck in cks))
        steps = [int(ck["steps"][0]) for ck in cks if ck["steps"].size]
        lambdas = [float(ck["lamda"][0]) for ck in cks if ck["lamda"].size]
        nmse = psnr = ssim = None
        if target is not None:
            nmse, psnr, ssim = volume_metrics(target, recon)
        cf = center_fraction(self.cfg, self.info, self.smask)
        return {"file": str(self.info.path), "method": method, "acceleration": self.smask.acceleration,
                "center_fraction": cf, "slices": len(self.indices), "nmse": nmse, "psnr": psnr, "ssim": ssim,
                "seconds": seconds, "steps": steps or None,
                "lambda": lambdas or None, "device": str(self.device)}


def write_metrics(out: Path, records: list[dict]) -> list[dict]:
    """Merge ``records`` into ``metrics.json`` / ``metrics.csv`` (same file+method replaced)."""
    path = out / "metrics.json"
    old = read_json(path) if path.exists() else []
    if not isinstance(old, list) or not all(isinstance(r, dict) and {"file", "method"} <= r.keys() for r in old):
        raise InputError(path, "is not a list of metric records; remove it or use another --out")
    records = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
               for r in records]                                   # strict JSON: no Infinity / NaN
    keys = {(r["file"], r["method"]) for r in records}
    merged = [r for r in old if (r["file"], r["method"]) not in keys] + records
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
    return " ".join(f"{x:g}" for x in v) if isinstance(v, list) else v


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


def run(cfg: RunConfig, progress: Progress | None = None,
        on_volume: Callable[[VolumeRun, list[dict]], None] | None = None) -> list[dict]:
    """Reconstruct every volume of ``cfg.data``; returns this run's metric records.

    A bad file of a folder is reported (a warning naming it) and the others go on; the run
    then raises :class:`InputError` listing the failed files.
    """
    records: list[dict] = []
    failed: list[str] = []
    with out_lock(cfg.out):
        for f in list_volumes(cfg.data):
            try:
                vol = VolumeRun(f, cfg, progress)
                recs = vol.run()
            except InputError as err:
                if f == cfg.data:
                    raise
                log.warning("error: %s (skipped)", err)
                failed.append(f.name)
                continue
            write_metrics(cfg.out, recs)
            if on_volume is not None:
                on_volume(vol, recs)
            records.extend(recs)
    if failed:
        err = InputError(cfg.data, f"{len(failed)} file(s) failed: {', '.join(failed)} (the others were reconstructed)")
        err.records = records                     # what did finish, for the caller's table
        raise err
    return records
