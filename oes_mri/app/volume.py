"""A run's settings (:class:`RunConfig`) and one volume's data and methods (:class:`VolumeData`):
its sampling mask, each slice measured, the volume's pruning mask, and the slices
reconstructed by every method (chained outward from the reference slice where the method
allows, :mod:`oes_mri.app.chain`). Checkpoints and final files: :mod:`oes_mri.app.pipeline`."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from oes_mri.app import chain
from oes_mri.app.progress import Progress
from oes_mri.app.slices import MeasuredSlice, Sampling, prepare_slice
from oes_mri.app.storage import SliceResult
from oes_mri.data.sample import cache_dir
from oes_mri.errors import InputError
from oes_mri.data.volumes import parse_slices, read_info
from oes_mri.fileid import file_identity
from oes_mri.methods import Reconstruction, Reconstructor, Score, make
from oes_mri.methods.base import check_image
from oes_mri.metrics import slice_metrics
from oes_mri.nets.generator import build_generator
from oes_mri.physics.coils import MapCache
from oes_mri.pruning import bank
from oes_mri.pruning.weightmask import WeightMask

log = logging.getLogger("oes_mri")


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
    pruning_mask: Path | str | None = None
    prune_per: str = "volume"
    device: str = "cpu"
    overwrite: bool = False
    batch_slices: int = 1
    nifti: bool = False
    readout: str = "crop"

    def __post_init__(self) -> None:
        self.data, self.out = Path(self.data), Path(self.out)
        self.methods = [make(m) if isinstance(m, str) else m for m in self.methods]
        self.pruning_mask = None if self.pruning_mask is None else Path(self.pruning_mask)

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
            fp.update(weight_mask=file_identity(bank.resolve(self.pruning_mask)) if self.pruning_mask else None,
                      mask_per=self.prune_per)           # the keys the checkpoints of earlier versions carry
        return json.loads(json.dumps(fp, default=str))


def slice_result(method: str, index: int, source: str, res: Reconstruction, seconds: float,
                 keep_weights: bool = False) -> SliceResult:
    """What is kept of a method's result on one slice: the final image, curves, steps, lambda
    and, with ``keep_weights`` (a chained method), the fitted weights, on the host."""
    check_image(res.image, method, source)
    h = res.history
    mon = h.get("monitor", [])
    steps = np.asarray([h["steps"], h["best_step"]] if "steps" in h else [], np.int64)
    weights = {n: t.cpu().numpy() for n, t in res.weights.items()} if keep_weights and res.weights else None
    return SliceResult(method, index, res.image, float(seconds), np.asarray(h.get("losses", []), np.float32),
                       np.asarray([[r["step"], r["psnr"], r["ssim"]] for r in mon if "psnr" in r], np.float64),
                       np.asarray(h.get("val_losses", []), np.float32), steps,
                       np.asarray([h["lambda"]] if "lambda" in h else [], np.float64), weights,
                       h.get("fast_path", ""), h.get("stop", ""),
                       {True: "yes", False: "no"}.get(h.get("heldout", {}).get("informative"), ""))


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
        if cfg.pruning_mask is None or cfg.mask_method is None:
            return None
        wm = bank.load_file(cfg.pruning_mask)
        arch = cfg.method(cfg.mask_method).config.arch
        if wm.meta.get("arch") not in (None, arch.to_dict()):
            raise InputError(cfg.pruning_mask, f"--pruning-mask was made for architecture {wm.meta.get('arch')}, "
                                              f"not {arch.to_dict()}")
        try:
            wm.check_fits(build_generator(arch, (64, 64), int(wm.meta.get("num_images", 1))), cfg.pruning_mask)
            cfg.method(cfg.mask_method).check_mask(wm)
        except InputError as err:
            raise InputError(cfg.pruning_mask, f"--pruning-mask: {err.problem}") from None
        except ValueError as err:
            raise InputError(cfg.pruning_mask, f"--pruning-mask: {err}") from None
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
        """``method``'s slices warm-start each other (:mod:`oes_mri.app.chain`): a warm-startable
        method, with one pruning mask for the whole volume where it learns one. One method of a
        run (:attr:`RunConfig.mask_method`) has the volume's mask; another that would learn one
        per volume learns one per slice, unchained."""
        cfg = self.cfg
        shared = method == cfg.mask_method and (cfg.pruning_mask is not None or cfg.prune_per == "volume")
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
