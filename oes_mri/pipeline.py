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

import csv
import dataclasses
import io
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from oes_mri.atomic import atomic_write_bytes
from oes_mri.data.fastmri_io import VolumeInfo, list_volumes, load_slice, parse_slices, read_info, write_reconstruction
from oes_mri.data.sample import cache_dir
from oes_mri.errors import InputError
from oes_mri.methods import MethodSettings, SliceInput, run_method
from oes_mri.metrics import volume_metrics
from oes_mri.physics.coils import MapCache, estimate_maps, map_cache_key
from oes_mri.physics.masks import SamplingMask, default_center_fraction, make_mask, volume_seed
from oes_mri.pruning.weightmask import WeightMask
from oes_mri.solvers.combine import dc_rss

log = logging.getLogger("oes_mri")

RECORD_KEYS = ("file", "method", "acceleration", "center_fraction", "slices", "nmse", "psnr", "ssim",
               "seconds", "device")


@dataclasses.dataclass
class RunConfig:
    """Everything a run needs (the CLI builds one)."""

    data: Path
    out: Path
    methods: list[str]
    accel: float = 4.0
    center_fraction: float | None = None
    mask_kind: str = "random"
    seed: int | None = None
    slices: str | None = None
    challenge: str | None = None
    settings: MethodSettings = dataclasses.field(default_factory=MethodSettings)
    weight_mask: Path | None = None
    mask_per: str = "volume"
    device: str = "cpu"
    overwrite: bool = False

    def fingerprint(self, method: str) -> dict:
        """The settings that determine a method's output (checked on resume)."""
        fp = {"accel": self.accel, "center_fraction": self.center_fraction, "mask_kind": self.mask_kind,
              "seed": self.seed, "challenge": self.challenge}
        s = self.settings
        if method in ("sense",):
            fp.update(cg_lambda=s.cg_lambda, cg_iters=s.cg_iters)
        elif method in ("l1", "tv"):
            fp.update(lamda=s.l1_lambda if method == "l1" else s.tv_lambda, iters=s.cs_iters)
        elif method != "zf":
            d = dataclasses.asdict(s.dip)
            d.pop("pruning")
            fp.update(dip=d, device=self.device)
            if method == "oes":
                fp.update(weight_mask=str(self.weight_mask) if self.weight_mask else None, mask_per=self.mask_per)
        return json.loads(json.dumps(fp, default=str))


def center_fraction(cfg: RunConfig, info: VolumeInfo, smask: SamplingMask | None) -> float:
    """The centre fraction a run used: the given one, fastMRI's default, or (``file`` masks)
    the calibration width over the k-space width."""
    if cfg.mask_kind == "file":
        return smask.acs_width / info.shape[1]
    return default_center_fraction(cfg.accel) if cfg.center_fraction is None else cfg.center_fraction


def volume_sampling_mask(info: VolumeInfo, cfg: RunConfig) -> SamplingMask:
    """The volume's mask: the file's own (``file``) or a new one (fastMRI per-volume seed)."""
    if cfg.mask_kind == "file":
        if info.mask is None:
            raise InputError(info.path, "--mask file given but the file holds no 'mask' dataset")
        return info.mask
    seed = volume_seed(info.path.name) if cfg.seed is None else cfg.seed
    return make_mask(cfg.mask_kind, info.shape, cfg.accel, center_fraction(cfg, info, None), seed)


def save_checkpoint(path: Path, image: np.ndarray, seconds: float, history: dict) -> None:
    """One (slice, method) result, atomically: image, seconds and curves."""
    buf = io.BytesIO()
    mon = history.get("monitor", [])
    np.savez(buf, image=image.astype(np.float32), seconds=np.float64(seconds),
             losses=np.asarray(history.get("losses", []), np.float32),
             curve=np.asarray([[r["step"], r["psnr"], r["ssim"]] for r in mon if "psnr" in r], np.float64))
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


class VolumeRun:
    """Reconstruct one volume with every method (see the module docstring)."""

    def __init__(self, path: Path, cfg: RunConfig, progress: Callable[[str], object] | None = None) -> None:
        self.cfg = cfg
        self.info = read_info(path, cfg.challenge)
        try:
            self.indices = parse_slices(cfg.slices, self.info.num_slices)
        except ValueError as err:
            raise InputError(path, str(err))
        self.smask = volume_sampling_mask(self.info, cfg)
        self.device = torch.device(cfg.device)
        self.ckdir = cfg.out / ".checkpoints" / self.info.path.stem
        self.maps_cache = MapCache(cache_dir() / "maps")
        self.progress = progress
        self._check_fingerprints()

    def _check_fingerprints(self) -> None:
        for m in self.cfg.methods:
            fp_path = self.ckdir / m / "config.json"
            fp = self.cfg.fingerprint(m)
            final = self.cfg.out / m / self.info.path.name
            if fp_path.exists() and json.loads(fp_path.read_text()) != fp or (final.exists() and not fp_path.exists()):
                if not self.cfg.overwrite:
                    raise InputError(final, "outputs made with other settings exist; use --overwrite "
                                            "or another --out")
            if self.cfg.overwrite and (fp_path.exists() or final.exists()):
                shutil.rmtree(self.ckdir / m, ignore_errors=True)
                final.unlink(missing_ok=True)
            atomic_write_bytes(fp_path, json.dumps(fp, sort_keys=True).encode())

    def checkpoint(self, method: str, index: int) -> Path:
        return self.ckdir / method / f"slice_{index:04d}.npz"

    def slice_input(self, index: int) -> SliceInput:
        """Undersampled k-space, maps and target of one slice (maps from the disk cache)."""
        kspace, target = load_slice(self.info, index)
        kspace = kspace.to(self.device)
        mask = self.smask.mask.to(self.device)
        y = kspace * mask + 0.0
        source = f"{self.info.path.name}:{index}"
        key = map_cache_key(self.info.path, index, self.smask, mask_seed=str(self.cfg.seed),
                            mask_kind=self.smask.kind, accel=self.cfg.accel, cf=self.cfg.center_fraction)
        maps = self.maps_cache.get_or_compute(key, lambda: estimate_maps(y.cpu(), self.smask, source=source))
        return SliceInput(y, mask, maps.maps.to(self.device), self.info.header.recon_size, target, source)

    def weight_mask(self) -> WeightMask | None:
        """The OES mask shared by the volume's slices (``mask_per == "volume"``), or a given one."""
        cfg = self.cfg
        if cfg.weight_mask is not None:
            wm = WeightMask.load(cfg.weight_mask)
            if wm.meta.get("arch") not in (None, cfg.settings.dip.arch.to_dict()):
                raise InputError(cfg.weight_mask, f"weight mask was made for architecture {wm.meta.get('arch')}, "
                                                  f"not {cfg.settings.dip.arch.to_dict()}")
            return wm
        if "oes" not in cfg.methods or cfg.mask_per != "volume":
            return None
        path = self.ckdir / "oes" / "weight_mask.safetensors"
        if path.exists():
            return WeightMask.load(path)
        ref = self.indices[len(self.indices) // 2]
        x = self.slice_input(ref)
        t = time.perf_counter()
        res = run_method("oes", x, cfg.settings, None, self._fit_progress("oes", ref))
        res.weight_mask.save(path)
        self._save(x, "oes", ref, res, time.perf_counter() - t)
        return res.weight_mask

    def _fit_progress(self, method: str, index: int):
        if self.progress is None:
            return None
        return lambda step, loss: self.progress(f"{self.info.path.name} slice {index} {method}: step {step} loss {loss:.4g}")

    def _save(self, x: SliceInput, method: str, index: int, res, seconds: float) -> None:
        image = dc_rss(res.recon.coil_images, x.kspace, x.mask, x.recon_size).cpu().numpy()
        if not np.isfinite(image).all():
            raise RuntimeError(f"{x.source}: {method} produced a non-finite image; not written")
        save_checkpoint(self.checkpoint(method, index), image, seconds, res.history)

    def run(self) -> list[dict]:
        """Reconstruct every missing (slice, method), then write the volume's outputs."""
        wm = self.weight_mask()
        for index in self.indices:
            todo = [m for m in self.cfg.methods if not self.checkpoint(m, index).exists()]
            if not todo:
                continue
            x = self.slice_input(index)
            for m in todo:
                t = time.perf_counter()
                res = run_method(m, x, self.cfg.settings, wm, self._fit_progress(m, index))
                self._save(x, m, index, res, time.perf_counter() - t)
                if self.progress is not None:
                    self.progress(f"{self.info.path.name} slice {index} {m}: done in {time.perf_counter() - t:.1f}s")
        target = self.targets()
        return [self._finish(m, target) for m in self.cfg.methods]

    def targets(self) -> np.ndarray | None:
        if not self.info.has_target:
            return None
        return np.stack([load_slice(self.info, i)[1] for i in self.indices])

    def _finish(self, method: str, target: np.ndarray | None) -> dict:
        cks = [load_checkpoint(self.checkpoint(method, i)) for i in self.indices]
        recon = np.stack([ck["image"] for ck in cks])
        final = self.cfg.out / method / self.info.path.name
        if not final.exists():
            write_reconstruction(final, recon)
        seconds = float(sum(ck["seconds"] for ck in cks))
        nmse = psnr = ssim = None
        if target is not None:
            nmse, psnr, ssim = volume_metrics(target, recon)
        cf = center_fraction(self.cfg, self.info, self.smask)
        return {"file": str(self.info.path), "method": method, "acceleration": self.smask.acceleration,
                "center_fraction": cf, "slices": len(self.indices), "nmse": nmse, "psnr": psnr, "ssim": ssim,
                "seconds": seconds, "device": str(self.device)}


def write_metrics(out: Path, records: list[dict]) -> list[dict]:
    """Merge ``records`` into ``metrics.json`` / ``metrics.csv`` (same file+method replaced)."""
    path = out / "metrics.json"
    old = json.loads(path.read_text()) if path.exists() else []
    keys = {(r["file"], r["method"]) for r in records}
    merged = [r for r in old if (r["file"], r["method"]) not in keys] + records
    atomic_write_bytes(path, json.dumps(merged, indent=2).encode())
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=RECORD_KEYS)
    w.writeheader()
    for r in merged:
        w.writerow({k: ("" if r[k] is None else r[k]) for k in RECORD_KEYS})
    atomic_write_bytes(out / "metrics.csv", buf.getvalue().encode())
    return merged


def run(cfg: RunConfig, progress: Callable[[str], object] | None = None,
        on_volume: Callable[[VolumeRun, list[dict]], None] | None = None) -> list[dict]:
    """Reconstruct every volume of ``cfg.data``; returns this run's metric records."""
    records: list[dict] = []
    files = list_volumes(cfg.data)
    for f in files:
        vol = VolumeRun(f, cfg, progress)
        recs = vol.run()
        write_metrics(cfg.out, recs)
        if on_volume is not None:
            on_volume(vol, recs)
        records.extend(recs)
    return records
