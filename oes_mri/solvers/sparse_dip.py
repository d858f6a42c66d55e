"""Untrained-generator reconstruction of one slice: dense DIP, Sparse-DIP (OES) and the
pruning baselines, all through the one fit loop of :mod:`oes_mri.solvers.dip`.

Sparse-DIP = build the generator from a seed, scale the data to its output, learn a weight
mask at initialisation (OES, or a baseline at the same density; or reuse a saved mask:
transfer), then fit the pruned generator to the k-space.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable

import numpy as np
import torch

from oes_mri.metrics import slice_metrics
from oes_mri.nets.generator import ArchConfig, build_generator
from oes_mri.pruning.baselines import baseline_mask, imp_mask
from oes_mri.pruning.oes import oes_mask
from oes_mri.pruning.weightmask import WeightMask
from oes_mri.solvers.combine import dc_rss
from oes_mri.solvers.dip import FitDiverged, fit, make_problem

log = logging.getLogger("oes_mri")

PRUNINGS = ("oes", "dense", "random", "magnitude", "snip", "imp")


@dataclasses.dataclass
class DipConfig:
    """Settings of a (Sparse-)DIP reconstruction.

    Attributes:
        pruning: "oes" (Sparse-DIP), "dense" (DIP), "random", "magnitude", "snip", "imp".
        arch: generator architecture.
        density: kept fraction of the prunable weights.
        mask_steps: OES mask-learning steps (IMP: training steps per round).
        steps: fitting steps.
        lr: Adam learning rate of the fit; mask_lr: of the OES logits.
        tau, kl_weight: OES temperature and KL weight.
        scope, min_layer_density: which weights are prunable, per-tensor density floor.
        seed: weight init, input noise and Gumbel noise.
        sensitivity_free: fit coil images through ``CoilOp`` instead of one image through ``SenseOp``.
        output: which iterate is returned: "best" (lowest data loss), "last" or "ema".
        ema_decay: decay of the output average (used when ``output == "ema"``).
        imp_rounds: IMP rounds.
        transfer_init: with a given mask: "same" (the mask's init seed) or "fresh" (``seed``).
        log_every: steps between logs/monitoring.
        retries: on divergence, retries from a fresh init at half the learning rate.
    """

    pruning: str = "oes"
    arch: ArchConfig = dataclasses.field(default_factory=ArchConfig)
    density: float = 0.05
    mask_steps: int = 100
    steps: int = 450
    lr: float = 1e-2
    mask_lr: float = 1e-2
    tau: float = 0.2
    kl_weight: float = 1e-9
    scope: str = "conv"
    min_layer_density: float = 0.01
    seed: int = 0
    sensitivity_free: bool = False
    output: str = "best"
    ema_decay: float = 0.99
    imp_rounds: int = 3
    transfer_init: str = "same"
    log_every: int = 25
    retries: int = 2


@dataclasses.dataclass
class DipOutput:
    """A (Sparse-)DIP reconstruction of one slice.

    Attributes:
        coil_images: ``(C, H, W)`` of the returned iterate on the data's scale.
        image: SENSE image ``(H, W)`` (``None`` when sensitivity-free).
        weight_mask: the mask used (``None`` for dense DIP).
        history: losses per step, monitor logs, mask-learning losses, timings, lr used.
    """

    coil_images: torch.Tensor
    image: torch.Tensor | None
    weight_mask: WeightMask | None
    history: dict


def _make_mask(cfg: DipConfig, gen, problem, meta: dict) -> tuple[WeightMask | None, list[float]]:
    if cfg.pruning == "dense":
        return None, []
    if cfg.pruning == "oes":
        return oes_mask(gen, problem.loss, cfg.density, cfg.mask_steps, cfg.scope, cfg.min_layer_density,
                        cfg.tau, cfg.kl_weight, cfg.mask_lr, cfg.seed, meta)
    if cfg.pruning == "imp":
        train = lambda g, m: fit(g, problem.loss, cfg.mask_steps, cfg.lr, m, log_every=cfg.mask_steps)  # noqa: E731
        return imp_mask(gen, cfg.density, train, cfg.imp_rounds, cfg.scope, cfg.min_layer_density, meta), []
    return baseline_mask(cfg.pruning, gen, cfg.density, problem.loss, cfg.scope, cfg.min_layer_density,
                         cfg.seed, meta), []


def _monitor(problem, kspace, mask, target, recon_size) -> Callable | None:
    if target is None:
        return None

    def mon(out: torch.Tensor) -> dict:
        img = dc_rss(problem.coil_images(out), kspace, mask, recon_size).cpu().numpy()
        psnr, ssim = slice_metrics(target, img)
        return {"psnr": psnr, "ssim": ssim}
    return mon


def reconstruct_dip(kspace: torch.Tensor, mask: torch.Tensor, maps: torch.Tensor | None, cfg: DipConfig,
                    recon_size: tuple[int, int], weight_mask: WeightMask | None = None,
                    target: np.ndarray | None = None, source: str = "",
                    progress: Callable[[int, float], None] | None = None) -> DipOutput:
    """Reconstruct one slice with an untrained generator.

    Args:
        kspace: undersampled k-space ``(C, H, W)`` (its device is used).
        mask: sampling mask broadcastable to it.
        maps: coil maps ``(C, H, W)`` (ignored when ``cfg.sensitivity_free``).
        cfg: the settings.
        recon_size: ``(rH, rW)`` for monitoring.
        weight_mask: a saved mask to reuse (transfer) instead of learning one.
        target: ``(rH, rW)`` target for PSNR/SSIM curves (not used by the fit).
        source: file/slice name for logs and the mask metadata.
    """
    if cfg.pruning not in PRUNINGS:
        raise ValueError(f"unknown pruning {cfg.pruning!r}; one of {PRUNINGS}")
    maps = None if cfg.sensitivity_free else maps
    seed = cfg.seed
    if weight_mask is not None and cfg.transfer_init == "same":
        seed = int(weight_mask.meta.get("init_seed", seed))
    lr = cfg.lr
    for attempt in range(cfg.retries + 1):
        t0 = time.perf_counter()
        gen = build_generator(cfg.arch, tuple(kspace.shape[-2:]), 1 if maps is not None else kspace.shape[0],
                              seed, kspace.device)
        with torch.no_grad():
            problem = make_problem(kspace, mask, maps, gen())
        meta = {"arch": cfg.arch.to_dict(), "init_seed": seed, "source": source,
                "sensitivity_free": maps is None, "num_images": gen.num_images}
        mask_losses: list[float] = []
        wm = weight_mask
        if wm is None:
            wm, mask_losses = _make_mask(cfg, gen, problem, meta)
        t1 = time.perf_counter()
        try:
            res = fit(gen, problem.loss, cfg.steps, lr, wm, cfg.ema_decay if cfg.output == "ema" else None,
                      cfg.log_every, _monitor(problem, kspace, mask, target, recon_size), progress)
            break
        except FitDiverged as err:
            if attempt == cfg.retries:
                raise
            log.warning("%s: %s; retrying from a fresh init with learning rate %g", source, err, lr / 2)
            lr, seed = lr / 2, seed + 1000
    out = {"best": res.best, "last": res.last, "ema": res.ema if res.ema is not None else res.last}[cfg.output]
    history = {"losses": res.losses, "monitor": res.monitor, "mask_losses": mask_losses,
               "best_loss": res.best_loss, "lr": lr, "mask_seconds": t1 - t0,
               "fit_seconds": time.perf_counter() - t1, "scale": problem.scale,
               "last_coil_images": problem.coil_images(res.last)}
    image = out[0] / problem.scale if maps is not None else None
    return DipOutput(problem.coil_images(out), image, wm, history)
