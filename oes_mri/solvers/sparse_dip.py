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
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from oes_mri.metrics import slice_metrics
from oes_mri.nets.generator import ArchConfig, build_generator
from oes_mri.physics.sense import SenseOp
from oes_mri.pruning.baselines import baseline_mask, imp_mask
from oes_mri.pruning.oes import oes_mask
from oes_mri.pruning.weightmask import WeightMask
from oes_mri.solvers.combine import dc_rss
from oes_mri.solvers.batched import fit_batched
from oes_mri.solvers.dip import FitDiverged, FitResult, KspaceProblem, fit, make_problem

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
        lr_schedule: of the fit, "constant" or "cosine" (from ``lr`` to 0 over ``steps``;
            :func:`oes_mri.optim.lr_schedule`).
        tau, kl_weight: OES temperature and KL weight.
        oes_init: OES starting logits, "zero" (published), "density", "magnitude" or
            "density+magnitude" (see :func:`oes_mri.pruning.oes.initial_logits`).
        oes_estimator: the mask in each OES step, "relaxed" (published) or "topk" (the pruned
            subnetwork, straight-through; :func:`oes_mri.pruning.oes.sampled_mask`).
        scope, min_layer_density: which weights are prunable, per-tensor density floor.
        allocation: how the density is split over the prunable tensors: "erk" (default, a
            measured choice: Erdos-Renyi-Kernel, the scores pick weights within each tensor),
            "global" (top-k of the scores over all tensors, as published), "uniform" or
            "magnitude" (the split of global magnitude pruning at init). Applies to OES and
            the random/magnitude/SNIP baselines alike (IMP is always global). See
            :mod:`oes_mri.pruning.allocation`.
        seed: weight init, input noise and Gumbel noise.
        sensitivity_free: fit coil images through ``CoilOp`` instead of one image through ``SenseOp``.
        output: which iterate is returned: "best" (lowest data loss), "last" or "ema".
        ema_decay: decay of the output average (used when ``output == "ema"``).
        input_jitter: std of Gaussian noise added to the fixed input at every fit step (DIP's
            ``reg_noise_std``, 1/30 there; 0 = off, the default). The "last" output is then
            the clean-input output; not with ``cuda_graph``; fitted one slice at a time.
        imp_rounds: IMP rounds.
        transfer_init: with a given mask: "same" (the mask's init seed) or "fresh" (``seed``).
        log_every: steps between logs/monitoring.
        retries: on divergence, retries from a fresh init at half the learning rate.
        compile: ``torch.compile`` the generator for the fit.
        amp: bf16 autocast for the generator in the fit (CUDA; FFT and data term in fp32).
        cuda_graph: replay each fit step as a CUDA graph (CUDA only; not with ``compile``).
    """

    pruning: str = "oes"
    arch: ArchConfig = dataclasses.field(default_factory=ArchConfig)
    density: float = 0.05
    mask_steps: int = 100
    steps: int = 300
    lr: float = 1e-2
    lr_schedule: str = "constant"
    mask_lr: float = 1e-2
    tau: float = 0.2
    kl_weight: float = 1e-9
    oes_init: str = "zero"
    oes_estimator: str = "relaxed"
    scope: str = "conv"
    min_layer_density: float = 0.01
    allocation: str = "erk"
    seed: int = 0
    sensitivity_free: bool = False
    output: str = "best"
    ema_decay: float = 0.99
    input_jitter: float = 0.0
    imp_rounds: int = 3
    transfer_init: str = "same"
    log_every: int = 25
    retries: int = 2
    compile: bool = False
    amp: bool = False
    cuda_graph: bool = False


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
                        cfg.tau, cfg.kl_weight, cfg.mask_lr, cfg.seed, meta, cfg.oes_init, cfg.oes_estimator,
                        cfg.allocation)
    if cfg.pruning == "imp":
        train = lambda g, m: fit(g, problem.loss, cfg.mask_steps, cfg.lr, m, log_every=cfg.mask_steps)  # noqa: E731
        return imp_mask(gen, cfg.density, train, cfg.imp_rounds, cfg.scope, cfg.min_layer_density, meta), []
    return baseline_mask(cfg.pruning, gen, cfg.density, problem.loss, cfg.scope, cfg.min_layer_density,
                         cfg.seed, meta, cfg.allocation), []


def _monitor(problem, kspace, mask, target, recon_size) -> Callable | None:
    if target is None:
        return None

    def mon(out: torch.Tensor) -> dict:
        img = dc_rss(problem.coil_images(out), kspace, mask, recon_size).cpu().numpy()
        psnr, ssim = slice_metrics(target, img)
        return {"psnr": psnr, "ssim": ssim}
    return mon


class FitSetup(NamedTuple):
    """What a fit starts from (:func:`setup_fit`)."""
    gen: nn.Module
    """the generator at its random init (weights not yet masked)"""
    problem: KspaceProblem
    """the data term, k-space scaled to the generator's initial output"""
    weight_mask: WeightMask | None
    """the pruning mask (given, or made by ``cfg.pruning``); ``None`` for dense DIP"""
    mask_losses: list[float]
    """OES mask-learning losses (empty when no mask was learned)"""
    mask_seconds: float
    """seconds to build the generator, the problem and the mask"""


def setup_fit(kspace: torch.Tensor, mask: torch.Tensor, maps: torch.Tensor | None, cfg: DipConfig, seed: int,
              weight_mask: WeightMask | None = None, source: str = "") -> FitSetup:
    """The generator from ``seed``, the scaled problem, and the weight mask (``weight_mask``, or
    made by ``cfg.pruning``: OES mask learning, a pruning baseline, or none): everything
    :func:`reconstruct_dip` fits, for callers that inspect or fit it themselves.

    Args:
        kspace: undersampled k-space ``(C, H, W)``; mask: broadcastable to it; maps: ``(C, H, W)``
            coil maps, or ``None`` for sensitivity-free fitting; source: recorded in the mask's metadata.

    Raises:
        ValueError: an unknown ``cfg.pruning``.
    """
    if cfg.pruning not in PRUNINGS:
        raise ValueError(f"unknown pruning {cfg.pruning!r}; one of {PRUNINGS}")
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
    return FitSetup(gen, problem, wm, mask_losses, time.perf_counter() - t0)


def _init_seed(cfg: DipConfig, weight_mask: WeightMask | None) -> int:
    if weight_mask is not None and cfg.transfer_init == "same":
        return int(weight_mask.meta.get("init_seed", cfg.seed))
    return cfg.seed


def _output(cfg: DipConfig, st: FitSetup, res: FitResult, lr: float, fit_seconds: float) -> DipOutput:
    out = {"best": res.best, "last": res.last, "ema": res.ema if res.ema is not None else res.last}[cfg.output]
    problem = st.problem
    history = {"losses": res.losses, "monitor": res.monitor, "mask_losses": st.mask_losses,
               "best_loss": res.best_loss, "lr": lr, "mask_seconds": st.mask_seconds,
               "fit_seconds": fit_seconds, "scale": problem.scale,
               "last_coil_images": problem.coil_images(res.last)}
    image = out[0] / problem.scale if isinstance(problem.op, SenseOp) else None
    return DipOutput(problem.coil_images(out), image, st.weight_mask, history)


def reconstruct_dip(kspace: torch.Tensor, mask: torch.Tensor, maps: torch.Tensor | None, cfg: DipConfig,
                    recon_size: tuple[int, int], weight_mask: WeightMask | None = None,
                    target: np.ndarray | None = None, source: str = "",
                    progress: Callable[[int, dict], None] | None = None) -> DipOutput:
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
        progress: ``progress(step, {'loss': ..., 'psnr': ...})`` every ``cfg.log_every`` steps.
    """
    maps = None if cfg.sensitivity_free else maps
    seed, lr = _init_seed(cfg, weight_mask), cfg.lr
    for attempt in range(cfg.retries + 1):
        st = setup_fit(kspace, mask, maps, cfg, seed, weight_mask, source)
        t1 = time.perf_counter()
        try:
            res = fit(st.gen, st.problem.loss, cfg.steps, lr, st.weight_mask,
                      cfg.ema_decay if cfg.output == "ema" else None, cfg.log_every,
                      _monitor(st.problem, kspace, mask, target, recon_size), progress, cfg.compile, cfg.amp,
                      cfg.cuda_graph, cfg.input_jitter, seed, cfg.lr_schedule)
            return _output(cfg, st, res, lr, time.perf_counter() - t1)
        except FitDiverged as err:
            if attempt == cfg.retries:
                raise
            log.warning("%s: %s; retrying from a fresh init with learning rate %g", source, err, lr / 2)
            lr, seed = lr / 2, seed + 1000
    raise AssertionError("unreachable")


class SliceData(NamedTuple):
    """One slice for :func:`reconstruct_dip_batch`: as the arguments of :func:`reconstruct_dip`."""

    kspace: torch.Tensor
    mask: torch.Tensor
    maps: torch.Tensor | None
    recon_size: tuple[int, int]
    target: np.ndarray | None = None
    source: str = ""


def reconstruct_dip_batch(slices: Sequence[SliceData], cfg: DipConfig, weight_mask: WeightMask | None = None,
                          progress: Callable[[int, dict], None] | None = None) -> list[DipOutput]:
    """Reconstruct several slices of one size at once (:func:`~oes_mri.solvers.batched.fit_batched`).

    Each slice gets what :func:`reconstruct_dip` would give it (own generator from the same
    seed, own scaling, own mask unless ``weight_mask`` is shared), up to rounding. If any
    slice diverges, every slice is redone one at a time with :func:`reconstruct_dip`'s retries.
    ``cfg.output == "ema"``, ``cfg.compile``, ``cfg.amp`` and ``cfg.input_jitter`` are not
    batched (done one at a time).
    """
    def one_at_a_time() -> list[DipOutput]:
        return [reconstruct_dip(x.kspace, x.mask, x.maps, cfg, x.recon_size, weight_mask, x.target, x.source,
                                progress) for x in slices]

    if cfg.output == "ema" or cfg.compile or cfg.amp or cfg.input_jitter or len(slices) == 1:
        return one_at_a_time()
    seed = _init_seed(cfg, weight_mask)
    xs = [x._replace(maps=None) if cfg.sensitivity_free else x for x in slices]
    sts = [setup_fit(x.kspace, x.mask, x.maps, cfg, seed, weight_mask, x.source) for x in xs]
    t1 = time.perf_counter()
    try:
        results = fit_batched([st.gen for st in sts], [st.problem.loss for st in sts], cfg.steps, cfg.lr,
                              [st.weight_mask for st in sts], cfg.log_every,
                              [_monitor(st.problem, x.kspace, x.mask, x.target, x.recon_size)
                               for st, x in zip(sts, xs)], progress, cfg.cuda_graph, cfg.lr_schedule)
    except FitDiverged as err:
        log.warning("batch %s: %s; fitting its slices one at a time", slices[0].source, err)
        return one_at_a_time()
    seconds = (time.perf_counter() - t1) / len(slices)
    return [_output(cfg, st, res, cfg.lr, seconds) for st, res in zip(sts, results)]
