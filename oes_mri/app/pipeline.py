"""Volume -> slices -> methods -> outputs, resumable and atomic.

For each volume: one sampling mask (fastMRI per-volume seed), per slice the undersampled
k-space and ESPIRiT maps (:mod:`oes_mri.app.slices`, disk cache) and every method; each finished (slice, method) is
checkpointed under ``<out>/.checkpoints/<volume>/`` at once, so an interrupted run resumes
where it stopped and gives the same final files. The final files are written atomically:
``<out>/<method>/<volume file name>`` (fastMRI submission format), ``metrics.json`` and
``metrics.csv``. A run refuses to touch outputs made with other settings unless
``overwrite`` is set. Checkpoints, metric files and the lock: :mod:`oes_mri.app.storage`.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np

from oes_mri.app import chain
from oes_mri.atomic import atomic_write_bytes
from oes_mri.data.fastmri_io import write_reconstruction
from oes_mri.data.nifti_io import write_nifti
from oes_mri.data.volumes import list_volumes, load_slice
from oes_mri.errors import InputError, first_line
from oes_mri.fileid import file_identity
from oes_mri.metrics import scorable, volume_metrics
from oes_mri.app.progress import Progress
from oes_mri.app.volume import RunConfig, VolumeData, Warm
from oes_mri.pruning.weightmask import WeightMask
from oes_mri.app.storage import (SliceResult, load_checkpoint, load_weights, out_lock, read_json, save_checkpoint,
                             output_stem, save_weights, valid_checkpoint, write_metrics)

log = logging.getLogger("oes_mri")

NIFTI = ".nii.gz"


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
        identity, and the reference slice where the output depends on it: a volume-learned
        pruning mask is learned there, and a chain (dense DIP too) starts there."""
        fp = dict(self.cfg.fingerprint(method), input=file_identity(self.info.path),
                  center_fraction=self.cfg.sampling.center_fraction_of(self.info, self.smask))   # given = default
        learned = method == self.cfg.mask_method and self.cfg.prune_per == "volume" and self.cfg.pruning_mask is None
        if learned or self.chained(method):
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
        return (self.cfg.mask_method is not None and self.cfg.prune_per == "volume" and self.cfg.pruning_mask is None
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
        if self.cfg.pruning_mask is not None:
            return self.given_mask()
        if self.cfg.mask_method is None or self.cfg.prune_per != "volume":
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
        if self.cfg.prune_per == "volume" and mm in todo:      # the reference slice was just checkpointed
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
        else:                          # an earlier run's NIfTI no longer describes the rebuilt .h5
            self.final_path(method, NIFTI).unlink(missing_ok=True)
        seconds = float(sum(ck["seconds"] for ck in cks))
        steps = [int(ck["steps"][0]) for ck in cks if ck["steps"].size]
        lambdas = [float(ck["lamda"][0]) for ck in cks if ck["lamda"].size]
        paths = sorted({str(ck["fast_path"]) for ck in cks if "fast_path" in ck and str(ck["fast_path"])})
        stops = [str(ck["stop"]) for ck in cks if "stop" in ck and str(ck["stop"])]
        informative = [str(ck["informative"]) == "yes" for ck in cks if str(ck.get("informative", ""))]
        nmse = psnr = ssim = None
        if target is not None:
            nmse, psnr, ssim = volume_metrics(target, recon)
        cf = self.cfg.sampling.center_fraction_of(self.info, self.smask)
        return {"file": str(self.info.path), "method": method,
                "output": self.final_path(method).relative_to(self.cfg.out).as_posix(), "acceleration": self.smask.acceleration,
                "center_fraction": cf, "slices": len(self.indices), "nmse": nmse, "psnr": psnr, "ssim": ssim,
                "seconds": seconds, "steps": steps or None,
                "lambda": lambdas or None, "device": str(self.device), "fast_path": ",".join(paths) or None,
                "stop": stops or None, "heldout_informative": informative or None,
                "pruning_mask": self.pruning_mask_used(method)}

    def pruning_mask_used(self, method: str) -> str | None:
        """Which pruning mask ``method`` fitted with: the given one (``bank:NAME`` for a shipped
        mask, else the file), "made per volume" or "made per slice" (OES learns it, random draws it); ``None`` for a
        method without one."""
        m = self.cfg.method(method)
        if not m.untrained or m.config.pruning.method == "dense":
            return None
        if method == self.cfg.mask_method and self.cfg.pruning_mask is not None:
            return str(self.cfg.pruning_mask)
        shared = method == self.cfg.mask_method and self.cfg.prune_per == "volume"
        return "made per volume" if shared else "made per slice"


def file_error(path: Path, err: BaseException) -> InputError:
    """Any error of one file of a folder run as one line naming the file."""
    if isinstance(err, InputError):
        return err
    first = first_line(err)
    return InputError(path, first if first == type(err).__name__ else f"{type(err).__name__}: {first}")


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
