"""Volume -> slices -> methods -> outputs, resumable and atomic.

For each volume: one sampling mask (fastMRI per-volume seed), per slice the undersampled
k-space and ESPIRiT maps (:mod:`oes_mri.slices`, disk cache) and every method; each finished (slice, method) is
checkpointed under ``<out>/.checkpoints/<volume>/`` at once, so an interrupted run resumes
where it stopped and gives the same final files. The final files are written atomically:
``<out>/<method>/<volume file name>`` (fastMRI submission format), ``metrics.json`` and
``metrics.csv``. A run refuses to touch outputs made with other settings unless
``overwrite`` is set. Checkpoints, metric files and the lock: :mod:`oes_mri.storage`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from oes_mri import chain
from oes_mri.atomic import atomic_write_bytes
from oes_mri.data.fastmri_io import write_reconstruction
from oes_mri.data.nifti_io import write_nifti
from oes_mri.data.sample import cache_dir
from oes_mri.data.volumes import list_volumes, load_slice, parse_slices, read_info
from oes_mri.errors import InputError, first_line
from oes_mri.fileid import file_identity
from oes_mri.methods import Reconstruction, Reconstructor, Score, make
from oes_mri.metrics import scorable, slice_metrics, volume_metrics
from oes_mri.nets.generator import build_generator
from oes_mri.physics.coils import MapCache
from oes_mri.progress import Progress
from oes_mri.pruning.weightmask import WeightMask
from oes_mri.slices import MeasuredSlice, Sampling, prepare_slice
from oes_mri.storage import (SliceResult, load_checkpoint, load_weights, out_lock, read_json, save_checkpoint,
                             save_weights, valid_checkpoint, write_metrics)

log = logging.getLogger("oes_mri")

NIFTI = ".nii.gz"


@dataclasses.dataclass
class RunConfig:
    """Everything a run needs (the CLI builds one).

    ``methods``: method objects (:mod:`oes_mri.methods`), or names for their defaults
    (``["oes", "sense", "zf"]``); ``data`` and ``out`` may be strings.
    """

    data: Path
    out: Path
    methods: list[Reconstructor]
    accel: float = 4.0
    center_fraction: float | None = None
    mask_kind: str = "auto"
    seed: int | None = None
    slices: str | None = None
    challenge: str | None = None
    weight_mask: Path | None = None
    mask_per: str = "volume"
    device: str = "cpu"
    overwrite: bool = False
    batch_slices: int = 1
    nifti: bool = False
    readout: str = "crop"

    def __post_init__(self) -> None:
        self.data, self.out = Path(self.data), Path(self.out)
        self.methods = [make(m) if isinstance(m, str) else m for m in self.methods]
        self.weight_mask = None if self.weight_mask is None else Path(self.weight_mask)

    @property
    def names(self) -> list[str]:
        """The methods' names (their output folders), in order."""
        return [m.name for m in self.methods]

    def method(self, name: str) -> Reconstructor:
        """The method object called ``name``."""
        return next(m for m in self.methods if m.name == name)

    @property
    def mask_method(self) -> str | None:
        """The method whose pruning mask is learned once per volume (or given), if any."""
        return next((m.name for m in self.methods if m.volume_mask), None)

    @property
    def sampling(self) -> Sampling:
        return Sampling(self.mask_kind, self.accel, self.center_fraction, self.seed)

    def fingerprint(self, method: str) -> dict:
        """The settings that determine a method's output (checked on resume)."""
        m = self.method(method)
        fp = {"accel": self.accel, "center_fraction": self.center_fraction, "mask_kind": self.mask_kind,
              "seed": self.seed, "challenge": self.challenge, "readout": self.readout, **m.fingerprint()}
        if m.untrained:
            fp.update(device=self.device, batch_slices=self.batch_slices)
        if m.volume_mask:
            fp.update(weight_mask=file_identity(self.weight_mask) if self.weight_mask else None, mask_per=self.mask_per)
        return json.loads(json.dumps(fp, default=str))


def slice_result(method: str, index: int, source: str, res: Reconstruction, seconds: float,
                 keep_weights: bool = False) -> SliceResult:
    """What is kept of a method's result on one slice: the final image, curves, steps, lambda
    and, with ``keep_weights`` (a chained method), the fitted weights, on the host."""
    if not np.isfinite(res.image).all():
        raise RuntimeError(f"{source}: {method} produced a non-finite image; not written")
    h = res.history
    mon = h.get("monitor", [])
    steps = np.asarray([h["steps"], h["best_step"]] if "steps" in h else [], np.int64)
    weights = {n: t.cpu().numpy() for n, t in res.weights.items()} if keep_weights and res.weights else None
    return SliceResult(method, index, res.image, float(seconds), np.asarray(h.get("losses", []), np.float32),
                       np.asarray([[r["step"], r["psnr"], r["ssim"]] for r in mon if "psnr" in r], np.float64),
                       np.asarray(h.get("val_losses", []), np.float32), steps,
                       np.asarray([h["lambda"]] if "lambda" in h else [], np.float64), weights,
                       h.get("fast_path", ""))


def scorer(target: np.ndarray | None) -> Score | None:
    """PSNR/SSIM of a final image against ``target`` (the fit curves), ``None`` without one."""
    if target is None:
        return None
    return lambda image: dict(zip(("psnr", "ssim"), slice_metrics(target, image)))


Warm = dict[str, dict[int, dict[str, np.ndarray]]]
"""method -> slice -> fitted weights: the warm starts a volume's chain continues from."""


def _torch(weights: dict[str, np.ndarray] | None) -> dict[str, torch.Tensor] | None:
    return None if weights is None else {n: torch.from_numpy(a) for n, a in weights.items()}


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
        self.smask = cfg.sampling.mask(self.info)
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

    def slice_input(self, index: int) -> MeasuredSlice:
        """Undersampled k-space, maps and target of one slice (maps from the disk cache)."""
        return prepare_slice(self.info, self.smask, index, self.device, self.maps_cache, self.cfg.readout,
                             mask_seed=str(self.cfg.seed), accel=self.cfg.accel, cf=self.cfg.center_fraction)

    def given_mask(self) -> WeightMask | None:
        """``--pruning-mask``, checked against the architecture of the method that uses it."""
        cfg = self.cfg
        if cfg.weight_mask is None or cfg.mask_method is None:
            return None
        wm = WeightMask.load(cfg.weight_mask)
        arch = cfg.method(cfg.mask_method).config.arch
        if wm.meta.get("arch") not in (None, arch.to_dict()):
            raise InputError(cfg.weight_mask, f"--pruning-mask was made for architecture {wm.meta.get('arch')}, "
                                              f"not {arch.to_dict()}")
        try:
            wm.check_fits(build_generator(arch, (64, 64), int(wm.meta.get("num_images", 1))), cfg.weight_mask)
        except InputError as err:
            raise InputError(cfg.weight_mask, f"--pruning-mask: {err.problem}") from None
        return wm

    def learn_mask(self, progress: Progress | None = None) -> tuple[WeightMask, SliceResult]:
        """Sparse-DIP on the reference slice: the volume's OES mask and that slice's result."""
        progress = progress or Progress()
        ref, name = self.reference_slice, self.cfg.mask_method
        method = self.cfg.method(name)
        ms = self.slice_input(ref)
        t = time.perf_counter()
        res = method.reconstruct_batch([ms.x], progress=progress.fit(f"{self.info.path.name} slice {ref} {name}",
                                                                     method.steps), scores=[scorer(ms.target)])[0]
        return res.weight_mask, slice_result(name, ref, ms.x.source, res, time.perf_counter() - t,
                                             self.chained(name))

    def chained(self, method: str) -> bool:
        """``method``'s slices warm-start each other (:mod:`oes_mri.chain`): a warm-startable
        method, with one pruning mask for the whole volume where it learns one. One method of a
        run (:attr:`RunConfig.mask_method`) has the volume's mask; another that would learn one
        per volume learns one per slice, unchained."""
        cfg = self.cfg
        shared = method == cfg.mask_method and (cfg.weight_mask is not None or cfg.mask_per == "volume")
        return cfg.method(method).chains(shared)

    def reconstruct(self, todo: dict[str, list[int]], weight_mask: WeightMask | None,
                    progress: Progress | None = None, warm: Warm | None = None) -> Iterator[list[SliceResult]]:
        """Reconstruct ``todo`` (method -> slice indices); yields each group's results as they
        finish. Methods whose slices are chained (:meth:`chained`) run wave by wave outward
        from the reference slice, each slice starting from its parent's fitted weights (from
        ``warm``, or fitted here); the others run ``cfg.batch_slices`` slices at a time."""
        progress = progress or Progress()
        free = {m: idx for m, idx in todo.items() if idx and not self.chained(m)}
        for batch in self.batches():
            wanted = [i for i in batch if any(i in idx for idx in free.values())]
            inputs = {i: self.slice_input(i) for i in wanted}
            for m, idx in free.items():
                idx = [i for i in batch if i in idx]
                if idx:
                    yield self._run(m, idx, inputs, weight_mask, progress)
        for m, idx in todo.items():
            if idx and self.chained(m):
                yield from self._chain(m, idx, weight_mask, progress, dict((warm or {}).get(m, {})))

    def _chain(self, method: str, todo: list[int], weight_mask: WeightMask | None, progress: Progress,
               fitted: dict[int, dict[str, np.ndarray]]) -> Iterator[list[SliceResult]]:
        """One method's chain over ``todo``; ``fitted``: the weights of the slices done so far
        (only those a slice still to fit starts from are kept)."""
        left = set(todo)
        kids = chain.children(self.indices, self.reference_slice)
        for wave in chain.waves(self.indices, self.reference_slice, todo, self.cfg.batch_slices):
            inits = []
            for link in wave:
                if link.parent is not None and fitted.get(link.parent) is None:
                    log.warning("%s slice %d %s: no fitted weights of slice %d; starting from the random init",
                                self.info.path.name, link.index, method, link.parent)
                inits.append(_torch(fitted.get(link.parent)) if link.parent is not None else None)
            idx = [link.index for link in wave]
            results = self._run(method, idx, {i: self.slice_input(i) for i in idx}, weight_mask, progress, inits)
            fitted.update((r.index, r.weights) for r in results)
            left -= set(idx)
            fitted = {i: w for i, w in fitted.items() if left.intersection(kids[i])}
            yield results

    def _run(self, method: str, idx: list[int], inputs: dict[int, MeasuredSlice], weight_mask: WeightMask | None,
             progress: Progress, inits: list | None = None) -> list[SliceResult]:
        """``method`` on the slices ``idx`` at once."""
        t = time.perf_counter()
        m = self.cfg.method(method)
        fit_progress = (progress.fit(f"{self.info.path.name} slice {','.join(map(str, idx))} {method}", m.steps)
                        if m.untrained else None)
        given = weight_mask if method == self.cfg.mask_method else None         # the volume's mask is its own
        results = m.reconstruct_batch([inputs[i].x for i in idx], weight_mask=given, progress=fit_progress,
                                      scores=[scorer(inputs[i].target) for i in idx], inits=inits)
        seconds = (time.perf_counter() - t) / len(idx)
        keep = self.chained(method)
        return [slice_result(method, i, inputs[i].x.source, r, seconds, keep) for i, r in zip(idx, results)]


class VolumeRun(VolumeData):
    """Reconstruct one volume with every method (see the module docstring): checkpoints,
    the volume's OES mask, final files."""

    def __init__(self, path: Path, cfg: RunConfig, progress: Progress | None = None) -> None:
        super().__init__(path, cfg)
        self.ckdir = cfg.out / ".checkpoints" / output_stem(self.info.path)
        self.progress = progress or Progress()
        self._check_fingerprints()

    def fingerprint(self, method: str) -> dict:
        """The run's settings for ``method`` plus what this volume adds: the input file's
        identity, and for a volume-learned OES mask the slice it is learned on."""
        fp = dict(self.cfg.fingerprint(method), input=file_identity(self.info.path),
                  center_fraction=self.cfg.sampling.center_fraction_of(self.info, self.smask))   # given = default
        if method == self.cfg.mask_method and self.cfg.mask_per == "volume" and self.cfg.weight_mask is None:
            fp["reference_slice"] = self.reference_slice
        return fp

    def _check_fingerprints(self) -> None:
        for m in self.cfg.names:
            fp_path = self.ckdir / m / "config.json"
            fp = self.fingerprint(m)
            final = self.final_path(m)
            for out in (final, self.final_path(m, NIFTI)):
                if out.exists() and out.resolve() == self.info.path.resolve():
                    raise InputError(out, "this output would replace the input file itself; choose another --out")
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
        return self.cfg.out / method / f"{output_stem(self.info.path)}{suffix}"

    def checkpoint(self, method: str, index: int) -> Path:
        return self.ckdir / method / f"slice_{index:04d}.npz"

    def weights_path(self, method: str, index: int) -> Path:
        """The fitted weights of a chained slice, kept while a slice still to fit starts from them."""
        return self.ckdir / method / f"slice_{index:04d}.weights.npz"

    @property
    def mask_path(self) -> Path:
        return self.ckdir / str(self.cfg.mask_method) / "weight_mask.safetensors"

    def needs_mask(self) -> bool:
        """The volume's OES mask is still to be learned."""
        return (self.cfg.mask_method is not None and self.cfg.mask_per == "volume" and self.cfg.weight_mask is None
                and not self.mask_path.exists())

    def save(self, r: SliceResult) -> None:
        """Checkpoint a finished (slice, method), once: a result already on disk is kept.
        A chained slice's weights are kept until every slice that starts from them is done
        (the chain's two ends stay, for a rerun with more slices)."""
        path = self.checkpoint(r.method, r.index)
        if path.exists():
            return
        if r.weights is not None:                               # a chained method's slice
            save_weights(self.weights_path(r.method, r.index), r.weights)
        save_checkpoint(path, r)
        if r.weights is not None:
            kids = chain.children(self.indices, self.reference_slice)
            for p in (r.index, chain.parents(self.indices, self.reference_slice)[r.index]):
                if p is not None and kids[p] and all(self.checkpoint(r.method, k).exists() for k in kids[p]):
                    self.weights_path(r.method, p).unlink(missing_ok=True)

    def warm_weights(self, todo: dict[str, list[int]]) -> Warm:
        """The stored weights the chains of ``todo`` continue from: each to-do slice's parent
        when that is done (a resumed run, or the OES reference slice)."""
        par = chain.parents(self.indices, self.reference_slice)
        warm: Warm = {}
        for m, idx in todo.items():
            if self.chained(m):
                starts = {par[i] for i in idx if par[i] is not None and par[i] not in idx}
                warm[m] = {p: w for p in starts if (w := load_weights(self.weights_path(m, p))) is not None}
        return warm

    def save_mask(self, wm: WeightMask, r: SliceResult) -> None:
        wm.save(self.mask_path)
        self.save(r)

    def weight_mask(self) -> WeightMask | None:
        """The OES mask shared by the volume's slices (learned here if needed), or a given one."""
        if self.cfg.weight_mask is not None:
            return self.given_mask()
        if self.cfg.mask_method is None or self.cfg.mask_per != "volume":
            return None
        if not self.needs_mask():
            return WeightMask.load(self.mask_path)
        t = time.perf_counter()
        wm, ref_result = self.learn_mask(self.progress)
        self.save_mask(wm, ref_result)
        self.progress.done(f"{self.info.path.name} slice {self.reference_slice} {self.cfg.mask_method} (volume mask)",
                           time.perf_counter() - t)
        return wm

    def todo(self) -> dict[str, list[int]]:
        """Slices without a valid checkpoint, per method (an invalid one is removed, with a warning)."""
        return {m: [i for i in self.indices if not valid_checkpoint(self.checkpoint(m, i))] for m in self.cfg.names}

    def run(self) -> list[dict]:
        """Reconstruct every missing (slice, method), then write the volume's outputs."""
        todo = self.todo()
        self.progress.volume(self.info.path.name, sum(map(len, todo.values())))
        wm = self.weight_mask()
        mm = self.cfg.mask_method
        if self.cfg.mask_per == "volume" and mm in todo:      # the reference slice was just checkpointed
            todo[mm] = [i for i in todo[mm] if not self.checkpoint(mm, i).exists()]
        for results in self.reconstruct(todo, wm, self.progress, self.warm_weights(todo)):
            for r in results:
                self.save(r)
            self.progress.done(f"{self.info.path.name} slice {','.join(str(r.index) for r in results)} "
                               f"{results[0].method}", sum(r.seconds for r in results), len(results))
        return self.finish()

    def finish(self) -> list[dict]:
        """Write the final files and return the metric records (every checkpoint must exist)."""
        target = self.targets()
        records = [self._finish(m, target) for m in self.cfg.names]
        self.progress.volume_done()
        return records

    def targets(self) -> np.ndarray | None:
        """The selected slices' targets, or ``None`` (no target, or one that cannot be scored:
        a warning says why, and the records say "no target" with null scores)."""
        if not self.info.has_target:
            return None
        target = np.stack([load_slice(self.info, i)[1] for i in self.indices])
        why = scorable(target)
        if why is not None:
            log.warning("%s: %s; reconstructed, not scored", self.info.path, why)
            return None
        return target

    def _finish(self, method: str, target: np.ndarray | None) -> dict:
        cks = [load_checkpoint(self.checkpoint(method, i)) for i in self.indices]
        recon = np.stack([ck["image"] for ck in cks])
        write_reconstruction(self.final_path(method), recon)      # rebuilt: the slice set may have changed
        if self.cfg.nifti:
            write_nifti(self.final_path(method, NIFTI), recon, self.info.voxel_size)
        seconds = float(sum(ck["seconds"] for ck in cks))
        steps = [int(ck["steps"][0]) for ck in cks if ck["steps"].size]
        lambdas = [float(ck["lamda"][0]) for ck in cks if ck["lamda"].size]
        paths = sorted({str(ck["fast_path"]) for ck in cks if "fast_path" in ck and str(ck["fast_path"])})
        nmse = psnr = ssim = None
        if target is not None:
            nmse, psnr, ssim = volume_metrics(target, recon)
        cf = self.cfg.sampling.center_fraction_of(self.info, self.smask)
        return {"file": str(self.info.path), "method": method, "acceleration": self.smask.acceleration,
                "center_fraction": cf, "slices": len(self.indices), "nmse": nmse, "psnr": psnr, "ssim": ssim,
                "seconds": seconds, "steps": steps or None,
                "lambda": lambdas or None, "device": str(self.device), "fast_path": ",".join(paths) or None}


def file_error(path: Path, err: BaseException) -> InputError:
    """Any error of one file of a folder run as one line naming the file."""
    if isinstance(err, InputError):
        return err
    first = first_line(err)
    return InputError(path, first if first == type(err).__name__ else f"{type(err).__name__}: {first}")


def output_stem(path: Path) -> str:
    """The name a volume's outputs take: the file's stem for ``.h5``, else its whole name with
    the dots as underscores (``vol.dat`` -> ``vol_dat``), so inputs that differ only in their
    extension never share an output."""
    return path.stem if path.suffix == ".h5" else path.name.replace(".", "_")


def check_output_names(files: list[Path]) -> None:
    """Refuse a folder whose inputs would write the same output file.

    Raises:
        InputError: naming the inputs that collide.
    """
    seen: dict[str, Path] = {}
    for f in files:
        other = seen.setdefault(output_stem(f), f)
        if other != f:
            raise InputError(f, f"would write the same outputs as {other.name} ({output_stem(f)}.h5); "
                                "rename one of them")


def run(cfg: RunConfig, progress: Progress | None = None,
        on_volume: Callable[[VolumeRun, list[dict]], None] | None = None) -> list[dict]:
    """Reconstruct every volume of ``cfg.data``; returns this run's metric records.

    A file of a folder that fails, for any reason, is reported (a warning naming it,
    :func:`file_error`) and the others go on; the run then raises :class:`InputError` listing
    the failed files. A single file's error is raised as it is.
    """
    records: list[dict] = []
    failed: list[str] = []
    files = list_volumes(cfg.data)
    check_output_names(files)
    with out_lock(cfg.out):
        for f in files:
            try:
                vol = VolumeRun(f, cfg, progress)
                recs = vol.run()
            except Exception as err:  # noqa: BLE001 - one bad file of a folder must not stop the others
                if f == cfg.data:
                    raise
                log.warning("error: %s (skipped)", file_error(f, err))
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
