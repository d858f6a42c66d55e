"""Untrained-generator reconstruction of one slice: dense DIP, Sparse-DIP (OES) and the
pruning baselines, all through the one fit loop of :mod:`oes_mri.solvers.dip`.

Sparse-DIP = build the generator from a seed, scale the data to its output, learn a weight
mask at initialisation (OES, or a baseline at the same density; or reuse a saved mask:
transfer), then fit the pruned generator to the k-space, stopped by held-out k-space
(:class:`ValidationConfig`; ``docs/self_validation.md``).
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
from oes_mri.physics.holdout import SHAPES, KspaceSplit, split_mask
from oes_mri.physics.sense import SenseOp
from oes_mri.pruning.baselines import baseline_mask, imp_mask
from oes_mri.pruning.oes import oes_mask
from oes_mri.pruning.weightmask import WeightMask
from oes_mri.solvers.combine import dc_rss
from oes_mri.solvers.batched import fit_batched
from oes_mri.solvers.dip import FitDiverged, FitResult, KspaceProblem, fit, make_problem
from oes_mri.solvers.loop import StepBudget, ValidationStop

log = logging.getLogger("oes_mri")

PRUNINGS = ("oes", "dense", "random", "magnitude", "snip", "imp")


@dataclasses.dataclass(frozen=True)
class ValidationConfig:
    """K-space self-validation of a fit (:mod:`oes_mri.physics.holdout`, :class:`ValidationStop`).

    ``share`` of the measured non-ACS samples is held out; the generator is fitted to the rest,
    the fit stops when the held-out error has not improved for ``patience`` steps (or at the
    step cap), and the lowest-held-out-error iterate is returned; the final image applies data
    consistency with every measured sample. ``share = 0`` turns it off (every sample fitted,
    a fixed number of steps, the lowest-fit-loss iterate). Defaults measured on the shared
    brain and the built-in sample (``docs/self_validation.md``): held-out points fail to stop
    the fit on the sample, lines do; a held-out error never below 1 carries no information.

    Attributes:
        share: held-out fraction, in [0, 1).
        shape: "points" or "lines" ("lines" needs a column mask; a 2-D mask gets "points").
        patience: steps without a lower held-out error before the fit stops.
        informative: a held-out set whose best relative error stays at or above this carries
            no information (1 = the error of predicting zeros); the fit then uses
            ``fallback_steps`` (``math.inf``: never fall back).
        fallback_steps: step budget when the held-out set is uninformative (``None``: the
            step cap, i.e. the fixed budget a fit without hold-out would run).
        folds: K fits on K different splits (seeds), their images averaged (K > 1 fits
            them as one batch).
        refit: after each held-out fit, fit the same initial generator (and pruning mask) to
            every measured sample for as many steps as the hold-out chose, and return that
            (wins back what the hold-out takes from the fit, at up to twice the steps).
    """

    share: float = 0.1
    shape: str = "lines"
    patience: int = 400
    informative: float = 1.0
    fallback_steps: int | None = None
    folds: int = 1
    refit: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.share < 1.0:
            raise ValueError(f"validation share must be in [0, 1), got {self.share}")
        if self.shape not in SHAPES:
            raise ValueError(f"validation shape {self.shape!r}: expected one of {', '.join(SHAPES)}")
        if self.patience < 1 or (self.fallback_steps is not None and self.fallback_steps < 1) or self.folds < 1:
            raise ValueError("validation patience, fallback_steps and folds must be >= 1")
        if not self.informative > 0.0:
            raise ValueError(f"validation informative threshold must be > 0, got {self.informative}")
        if self.folds > 1 and self.share == 0:
            raise ValueError("validation folds > 1 need a held-out share > 0")

    @property
    def enabled(self) -> bool:
        return self.share > 0

    def split(self, mask: torch.Tensor, shape: tuple[int, int], seed: int, fold: int = 0) -> KspaceSplit:
        """The held-out split of fold ``fold`` (seeded by ``seed`` and the fold)."""
        kind = self.shape if mask.shape[0] == 1 else "points"
        return split_mask(mask, shape, self.share, kind, seed=1_000_003 * fold + seed)

    def rule(self, slices: int) -> ValidationStop | None:
        """The stopping rule for ``slices`` fits, or ``None`` when off."""
        if not self.enabled:
            return None
        return ValidationStop(slices, self.patience, self.informative, self.fallback_steps)


@dataclasses.dataclass
class DipConfig:
    """Settings of a (Sparse-)DIP reconstruction.

    Attributes:
        pruning: "oes" (Sparse-DIP), "dense" (DIP), "random", "magnitude", "snip", "imp".
        arch: generator architecture.
        density: kept fraction of the prunable weights.
        mask_steps: OES mask-learning steps (IMP: training steps per round).
        steps: fitting steps (the cap when self-validation stops the fit).
        validation: k-space self-validation (:class:`ValidationConfig`; on by default).
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
        output: which iterate is returned: "best" (lowest held-out error; lowest data loss
            without a hold-out), "last" or "ema".
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
    validation: ValidationConfig = dataclasses.field(default_factory=ValidationConfig)
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

    @property
    def loss_fn(self) -> Callable[[torch.Tensor], torch.Tensor | tuple]:
        """What the fit minimises: the data term, with the held-out error when there is a hold-out."""
        return self.problem.objective if self.problem.val_mask is not None else self.problem.loss


def setup_fit(kspace: torch.Tensor, mask: torch.Tensor, maps: torch.Tensor | None, cfg: DipConfig, seed: int,
              weight_mask: WeightMask | None = None, source: str = "", fold: int | None = 0) -> FitSetup:
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
    split = (cfg.validation.split(mask, tuple(kspace.shape[-2:]), cfg.seed, fold)
             if cfg.validation.enabled and fold is not None else None)
    with torch.no_grad():
        problem = make_problem(kspace, mask, maps, gen(), split)
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
               "last_coil_images": problem.coil_images(res.last), "val_losses": res.val_losses,
               "best_step": res.best_step, "steps": res.steps, "stop": res.stop}
    image = out[0] / problem.scale if isinstance(problem.op, SenseOp) else None
    return DipOutput(problem.coil_images(out), image, st.weight_mask, history)


def _rule(cfg: DipConfig, slices: int, budgets: list[int] | None) -> ValidationStop | StepBudget | None:
    return StepBudget(budgets) if budgets is not None else cfg.validation.rule(slices)


def _fit_one(x: "SliceData", cfg: DipConfig, weight_mask: WeightMask | None, progress, fold: int | None,
             budget: int | None = None) -> DipOutput:
    """One eager fit of one hold-out fold (or, ``fold=None``, of every sample for ``budget``
    steps: the refit), retried from a fresh init at half the learning rate when it diverges."""
    maps = None if cfg.sensitivity_free else x.maps
    seed, lr = _init_seed(cfg, weight_mask), cfg.lr
    steps = cfg.steps if budget is None else budget
    for attempt in range(cfg.retries + 1):
        st = setup_fit(x.kspace, x.mask, maps, cfg, seed, weight_mask, x.source, fold)
        t1 = time.perf_counter()
        try:
            res = fit(st.gen, st.loss_fn, steps, lr, st.weight_mask,
                      cfg.ema_decay if cfg.output == "ema" else None, cfg.log_every,
                      _monitor(st.problem, x.kspace, x.mask, x.target, x.recon_size), progress, cfg.compile, cfg.amp,
                      cfg.cuda_graph, cfg.input_jitter, seed, cfg.lr_schedule,
                      _rule(cfg, 1, None if budget is None else [budget]))
            return _output(cfg, st, res, lr, time.perf_counter() - t1)
        except FitDiverged as err:
            if attempt == cfg.retries:
                raise
            log.warning("%s: %s; retrying from a fresh init with learning rate %g", x.source, err, lr / 2)
            lr, seed = lr / 2, seed + 1000
    raise AssertionError("unreachable")


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
    x = SliceData(kspace, mask, maps, recon_size, target, source)
    return reconstruct_dip_batch([x], cfg, weight_mask, progress)[0]


class SliceData(NamedTuple):
    """One slice for :func:`reconstruct_dip_batch`: as the arguments of :func:`reconstruct_dip`."""

    kspace: torch.Tensor
    mask: torch.Tensor
    maps: torch.Tensor | None
    recon_size: tuple[int, int]
    target: np.ndarray | None = None
    source: str = ""


def average_folds(outs: Sequence[DipOutput]) -> DipOutput:
    """The mean of K fold fits of one slice: coil images and images averaged; the history is
    the first fold's, with ``steps`` the total over folds and ``fold_steps`` / ``fold_best_steps``."""
    if len(outs) == 1:
        return outs[0]
    first = outs[0]
    image = torch.stack([o.image for o in outs]).mean(0) if first.image is not None else None
    history = {**first.history, "steps": sum(o.history["steps"] for o in outs),
               "fold_steps": [o.history["steps"] for o in outs],
               "fold_best_steps": [o.history["best_step"] for o in outs],
               "fit_seconds": sum(o.history["fit_seconds"] for o in outs)}
    return DipOutput(torch.stack([o.coil_images for o in outs]).mean(0), image, first.weight_mask, history)


def reconstruct_dip_batch(slices: Sequence[SliceData], cfg: DipConfig, weight_mask: WeightMask | None = None,
                          progress: Callable[[int, dict], None] | None = None) -> list[DipOutput]:
    """Reconstruct several slices of one size at once (:func:`~oes_mri.solvers.batched.fit_batched`).

    Each slice gets what :func:`reconstruct_dip` would give it (own generator from the same
    seed, own scaling, own hold-out and stopping rule, own mask unless ``weight_mask`` is
    shared), up to rounding; with ``cfg.validation.folds`` K > 1, its K folds are fitted in the
    same batch and averaged; with ``cfg.validation.refit``, each fold is fitted again to every
    sample for the steps its hold-out chose (same init and mask). If any fit diverges, every
    fit is redone one at a time with retries. ``cfg.output == "ema"``, ``cfg.compile``,
    ``cfg.amp`` and ``cfg.input_jitter`` are not batched (done one at a time).
    """
    K = cfg.validation.folds
    xs = [x._replace(maps=None) if cfg.sensitivity_free else x for x in slices]
    jobs = [(x, f, weight_mask) for x in xs for f in range(K)]
    outs = _fit_jobs(jobs, cfg, progress)
    if cfg.validation.enabled and cfg.validation.refit:
        held = outs
        outs = _fit_jobs([(x, None, o.weight_mask) for (x, _, _), o in zip(jobs, held)], cfg, progress,
                         [o.history["best_step"] for o in held])
        outs = [_refitted(o, h) for o, h in zip(outs, held)]
    return [average_folds(outs[i * K:(i + 1) * K]) for i in range(len(slices))]


def _refitted(refit: DipOutput, held: DipOutput) -> DipOutput:
    """The refit's output with the held-out fit's record: its curves, its chosen step, and
    ``steps`` the total of both fits."""
    history = {**held.history, "steps": held.history["steps"] + refit.history["steps"],
               "refit_steps": refit.history["steps"], "fit_seconds": held.history["fit_seconds"]
               + refit.history["fit_seconds"]}
    return DipOutput(refit.coil_images, refit.image, held.weight_mask, history)


def _fit_jobs(jobs: list[tuple[SliceData, int | None, WeightMask | None]], cfg: DipConfig,
              progress: Callable[[int, dict], None] | None, budgets: list[int] | None = None) -> list[DipOutput]:
    """Fit ``(slice, fold, weight mask)`` jobs as one batch (or one at a time when the settings
    are not batched, or after a divergence); ``budgets``: per job, the refit's step count."""
    def one_at_a_time() -> list[DipOutput]:
        return [_fit_one(x, cfg, wm, progress, f, None if budgets is None else budgets[i])
                for i, (x, f, wm) in enumerate(jobs)]

    if cfg.output == "ema" or cfg.compile or cfg.amp or cfg.input_jitter or len(jobs) == 1:
        return one_at_a_time()
    sts = [setup_fit(x.kspace, x.mask, x.maps, cfg, _init_seed(cfg, wm), wm, x.source, f) for x, f, wm in jobs]
    t1 = time.perf_counter()
    try:
        results = fit_batched([st.gen for st in sts], [st.loss_fn for st in sts],
                              cfg.steps if budgets is None else max(budgets), cfg.lr,
                              [st.weight_mask for st in sts], cfg.log_every,
                              [_monitor(st.problem, x.kspace, x.mask, x.target, x.recon_size)
                               for st, (x, _, _) in zip(sts, jobs)], progress, cfg.cuda_graph, cfg.lr_schedule,
                              _rule(cfg, len(jobs), budgets))
    except FitDiverged as err:
        log.warning("batch %s: %s; fitting its slices one at a time", jobs[0][0].source, err)
        return one_at_a_time()
    seconds = (time.perf_counter() - t1) / len(jobs)
    return [_output(cfg, st, res, cfg.lr, seconds) for st, res in zip(sts, results)]
