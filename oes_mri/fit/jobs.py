"""Untrained-generator reconstruction of one slice: dense DIP, Sparse-DIP (OES) and the
pruning baselines, all through the one fit loop of :mod:`oes_mri.fit.engine`.

Sparse-DIP = build the generator from a seed (or from a fitted neighbour's weights: a warm
start), scale the data to its output, learn a weight mask at initialisation (OES, or a
baseline at the same density; or reuse a saved mask: transfer, or the volume's mask), then
fit the pruned generator to the k-space, stopped by held-out k-space
(:class:`~oes_mri.fit.config.ValidationConfig`; ``docs/self_validation.md``). Settings:
:mod:`oes_mri.fit.config`. The solvers never see a target: a caller that wants curves
hands in a monitor of the coil images.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable, NamedTuple, Sequence

import torch
from torch import nn

from oes_mri.nets.generator import build_generator
from oes_mri.physics.measured import SliceData
from oes_mri.physics.operator import MultiCoilOp
from oes_mri.pruning.bank import is_pattern
from oes_mri.pruning.channels import is_channel_mask, shrink
from oes_mri.pruning.config import PRUNINGS, make_pruning_mask
from oes_mri.pruning.weightmask import WeightMask
from oes_mri.fit.config import DipConfig, ValidationConfig
from oes_mri.fit.fastpath import FastPath
from oes_mri.fit.fastpath import choose as choose_fast_path
from oes_mri.fit.engine import FitDiverged, FitResult, fit, fit_batch
from oes_mri.fit.problem import KspaceProblem, make_problem
from oes_mri.fit.penalty import penalised, penalty_weight

Weights = dict[str, torch.Tensor]
"""A generator's parameters by name (not its buffers: the fixed input comes from the seed, and
BatchNorm runs on batch statistics), e.g. a fitted neighbour's, to warm-start a fit from."""
Monitor = Callable[[torch.Tensor], dict]
"""``monitor(coil_images) -> dict``: the caller's view of an iterate (coil images ``(C, H, W)``
on the data's scale), e.g. PSNR against a target the solver never sees."""

log = logging.getLogger("oes_mri")

__all__ = ["DipConfig", "DipOutput", "FitSetup", "Job", "Monitor", "PRUNINGS", "SliceData", "ValidationConfig",
           "Weights", "average_folds", "reconstruct_dip", "reconstruct_dip_batch", "setup_fit"]

@dataclasses.dataclass
class DipOutput:
    """A (Sparse-)DIP reconstruction of one slice.

    Attributes:
        coil_images: ``(C, H, W)`` of the returned iterate on the data's scale.
        image: SENSE image ``(H, W)`` (``None`` when fitting coil images).
        weight_mask: the mask used (``None`` for dense DIP).
        weights: the fitted generator's state where its fit ended (a neighbour's warm start).
        history: losses per step, monitor logs, mask-learning losses, timings, lr used.
    """

    coil_images: torch.Tensor
    image: torch.Tensor | None
    weight_mask: WeightMask | None
    weights: Weights
    history: dict


class FitSetup(NamedTuple):
    """What a fit starts from (:func:`setup_fit`)."""
    gen: nn.Module
    """the generator at its initialisation (random, or a neighbour's fitted weights)"""
    problem: KspaceProblem
    """the data term, k-space scaled to the generator's initial output"""
    weight_mask: WeightMask | None
    """the pruning mask (given, or made by ``cfg.pruning``); ``None`` for dense DIP"""
    mask_losses: list[float]
    """OES mask-learning losses (empty when no mask was learned)"""
    mask_seconds: float
    """seconds to build the generator, the problem and the mask"""
    penalty: float = 0.0
    """``mu``, the weight of the hybrid prior's ``||W G(z)||_1`` in the fit loss (0: none)"""
    start: torch.Tensor | None = None
    """the generator's first image ``(K, H, W)`` when it fits a residual on a classical image"""

    @property
    def loss_fn(self) -> Callable[[torch.Tensor], torch.Tensor | tuple]:
        """What the fit minimises: the data term (with the held-out error when there is a
        hold-out), plus the wavelet penalty when ``penalty`` > 0."""
        data = self.problem.objective if self.problem.val_mask is not None else self.problem.loss
        return penalised(data, self.penalty) if self.penalty > 0 else data

    @property
    def fit_mask(self) -> WeightMask | None:
        """The mask the fit applies: ``weight_mask``, or none for a channel mask (the generator
        is then already rebuilt without the pruned channels)."""
        return None if is_channel_mask(self.weight_mask) else self.weight_mask


def setup_fit(x: SliceData, cfg: DipConfig, seed: int, weight_mask: WeightMask | None = None,
              fold: int | None = 0, init: Weights | None = None, start: torch.Tensor | None = None,
              snapshots: dict[int, WeightMask] | None = None) -> FitSetup:
    """The generator from ``seed`` (or loaded from ``init``), the scaled problem, and the
    weight mask (``weight_mask``, or made by ``cfg.pruning``: OES mask learning, a pruning
    baseline, or none): everything :func:`reconstruct_dip` fits, for callers that inspect or
    fit it themselves. ``fold``: the held-out split (``None``: every sample fitted).
    ``start``: a classical image ``(H, W)`` on the data's scale that the generator starts from
    (a residual on it, :meth:`~oes_mri.nets.generator.ImageGenerator.start_from`).
    ``snapshots``: OES over channels, the masks of earlier mask-learning steps (filled in place).

    Raises:
        ValueError: ``init`` with a mask to be learned (a warm start keeps the volume's mask).
    """
    t0 = time.perf_counter()
    gen = build_generator(cfg.arch, tuple(x.kspace.shape[-2:]), 1 if x.maps is not None else x.kspace.shape[0],
                          seed, x.kspace.device)
    if is_channel_mask(weight_mask):                       # a given channel mask: the smaller generator
        gen = shrink(gen, weight_mask)
    if init is not None:
        if weight_mask is None and cfg.pruning.method != "dense":
            raise ValueError("a warm start needs the pruning mask it was fitted with")
        missing, unexpected = gen.load_state_dict(init, strict=False)
        params = dict(gen.named_parameters())
        if unexpected or any(n in params for n in missing):
            raise ValueError(f"warm-start weights do not fit the generator {cfg.arch.name} "
                             f"(missing {sorted(n for n in missing if n in params)[:3]}, unexpected {unexpected[:3]})")
    split = (cfg.validation.split(x.mask, tuple(x.kspace.shape[-2:]), cfg.seed, fold)
             if cfg.validation.enabled and fold is not None else None)
    op = MultiCoilOp(x.mask, x.maps).to(x.kspace.device)
    with torch.no_grad():
        problem = make_problem(x.kspace, op, gen(), split)
    meta = {"arch": cfg.arch.to_dict(), "init_seed": seed, "source": x.source,
            "sensitivity_free": x.maps is None, "num_images": gen.num_images}
    mask_losses: list[float] = []
    wm = weight_mask
    if wm is None:
        def train(g: nn.Module, m: WeightMask | None) -> None:      # IMP's rounds
            fit(g, problem.loss, cfg.pruning.steps, cfg.lr, m, log_every=cfg.pruning.steps)
        wm, mask_losses = make_pruning_mask(cfg.pruning, cfg.oes, gen, problem.loss, train, cfg.seed, meta, snapshots)
        if is_channel_mask(wm):                            # learned here: rebuild smaller, rescale the data
            gen = shrink(gen, wm)
            with torch.no_grad():
                problem = make_problem(x.kspace, op, gen(), split)
    first = None
    if start is not None:
        first = problem.scale * start.to(x.kspace.device)[None]
        gen.start_from(first)
    return FitSetup(gen, problem, wm, mask_losses, time.perf_counter() - t0, _penalty(problem, cfg.fit.penalty),
                    first)


def _penalty(problem: KspaceProblem, lamda: float) -> float:
    """``mu`` of :func:`~oes_mri.fit.penalty.penalty_weight` for the hybrid prior's weight
    ``lamda`` (the L1-wavelet baseline's units), from the fit set's data."""
    if lamda <= 0:
        return 0.0
    with torch.no_grad():
        fit_y = problem.y if problem.fit_mask is None else problem.y * problem.fit_mask
        adjoint_max = float(problem.op.adjoint(fit_y).abs().max())
    return penalty_weight(lamda, adjoint_max, float(problem.y_norm2))


def _init_seed(cfg: DipConfig, weight_mask: WeightMask | None) -> int:
    """A given mask is used with the generator init it was made for (its ``init_seed``), but
    a bank mask, a pattern for any init (:func:`oes_mri.pruning.bank.is_pattern`), starts from
    the run's own seed."""
    if weight_mask is not None and not is_pattern(weight_mask):
        return int(weight_mask.meta.get("init_seed", cfg.seed))
    return cfg.seed


DIVERGED = 3.0
"""A fit whose returned iterate's data error (on every measured sample, relative: 1 is the error
of predicting zeros) is above this has diverged, even if its numbers stayed finite (measured:
``--lr 10`` gave -19.9 dB at a finite loss)."""


def check_data_error(st: FitSetup, res: FitResult) -> None:
    """Raise :class:`FitDiverged` when the chosen iterate (or the classical start a residual fit
    returns instead of a worse one) fits the data far worse than zeros."""
    chosen = st.start if _kept_start(st, res.best) else res.best
    with torch.no_grad():
        err = float(st.problem.data_error(chosen))
    if not err <= DIVERGED:
        raise FitDiverged(f"the fitted image's data error is {err:.3g} times that of zeros")


def _kept_start(st: FitSetup, out: torch.Tensor) -> bool:
    """A residual fit's chosen iterate predicts the held-out samples worse than its classical
    start (the raw held-out error; the rule reads it smoothed): the start is returned instead."""
    if st.start is None or st.problem.val_mask is None:
        return False
    with torch.no_grad():
        return float(st.problem.objective(out)[1]) > float(st.problem.objective(st.start)[1])


def _output(cfg: DipConfig, st: FitSetup, res: FitResult, lr: float, fit_seconds: float,
            fast: FastPath = FastPath("fp32", {})) -> DipOutput:
    out = {"best": res.best, "last": res.last, "ema": res.ema if res.ema is not None else res.last}[cfg.fit.output]
    kept = _kept_start(st, out)
    out = st.start if kept else out
    problem = st.problem
    history = {"losses": res.losses, "monitor": res.monitor, "mask_losses": st.mask_losses,
               "best_loss": res.best_loss, "lr": lr, "mask_seconds": st.mask_seconds,
               "fit_seconds": fit_seconds, "scale": problem.scale, "val_losses": res.val_losses,
               "best_step": res.best_step, "steps": res.steps, "stop": res.stop, "heldout": res.seen,
               "fast_path": "bf16" if cfg.speed.amp else fast.path, "fast_path_seconds": fast.seconds,
               "start_kept": kept}
    image = out[0] / problem.scale if problem.op.sense else None
    weights = {n: p.detach() for n, p in st.gen.named_parameters()}      # the generator is not used again
    return DipOutput(problem.coil_images(out), image, st.weight_mask, weights, history)


WARM_RULE = {"validation.informative": 0.99, "validation.rise": 0.0, "validation.noise": 0.0, "validation.start": 1}
"""A warm-started slice keeps the rule the chain was measured with (``docs/warm_start.md``):
patience alone from its first step, informative below 0.99. It starts at its neighbour's
fitted weights, not at a blurred random init, and its cap is short."""


def warm_config(cfg: DipConfig) -> DipConfig:
    """The settings of a warm-started fit: the fit's learning rate, step cap (never above the
    fit's) and held-out patience replaced by :class:`~oes_mri.fit.config.WarmStart`'s
    where it sets them, and with a patience of its own the stopping rule of :data:`WARM_RULE`. A warm rate of its own runs constant: a warm-up schedule is for a
    random init, not for a neighbour's fitted weights."""
    steps = None if cfg.warm.steps is None else min(cfg.warm.steps, cfg.steps)
    changes = {"fit.lr": cfg.warm.lr, "validation.patience": cfg.warm.patience, "fit.steps": steps,
               **(WARM_RULE if cfg.warm.patience is not None else {})}
    if cfg.warm.lr is not None and cfg.lr_schedule == "warmup":
        changes["fit.lr_schedule"] = "constant"
    return cfg.updated({k: v for k, v in changes.items() if v is not None})


def _scaled(monitor: Monitor | None, problem: KspaceProblem) -> Callable[[torch.Tensor], dict] | None:
    """The caller's monitor of coil images, as a monitor of the generator's output."""
    return None if monitor is None else (lambda out: monitor(problem.coil_images(out)))


class Job(NamedTuple):
    """One fit: a slice, its held-out fold (``None``: every sample), its pruning mask, its
    monitor, its warm start and its classical start image."""
    x: SliceData
    fold: int | None
    weight_mask: WeightMask | None
    monitor: Monitor | None = None
    init: Weights | None = None
    start: torch.Tensor | None = None


def _fit_one(job: Job, cfg: DipConfig, progress) -> DipOutput:
    """One eager fit, retried from a fresh init at half the learning rate when it diverges (a
    warm start is retried from the random init)."""
    seed, lr, init = _init_seed(cfg, job.weight_mask), cfg.lr, job.init
    for attempt in range(cfg.fit.retries + 1):
        st = setup_fit(job.x, cfg, seed, job.weight_mask, job.fold, init, job.start)
        t1 = time.perf_counter()
        fast = choose_fast_path(st.gen, st.loss_fn, "fp32" if cfg.speed.amp else cfg.speed.fast_path)
        try:
            res = fit(st.gen, st.loss_fn, cfg.steps, lr, st.fit_mask,
                      ema_decay=cfg.fit.ema_decay if cfg.fit.output == "ema" else None,
                      log_every=cfg.fit.log_every, monitor=_scaled(job.monitor, st.problem), progress=progress,
                      compile=cfg.speed.compile, amp=cfg.speed.amp or fast.path == "bf16",
                      cuda_graph=cfg.speed.cuda_graph, input_jitter=cfg.fit.input_jitter, jitter_seed=seed,
                      schedule=cfg.lr_schedule, stop=cfg.validation.rule(1),
                      channels_last=fast.path == "channels_last")
            check_data_error(st, res)
            return _output(cfg, st, res, lr, time.perf_counter() - t1, fast)
        except FitDiverged as err:
            if attempt == cfg.fit.retries:
                raise FitDiverged(f"{job.x.source}: {err}") from None
            log.warning("%s: %s; retrying from a fresh init with learning rate %g", job.x.source, err, lr / 2)
            lr, seed, init = lr / 2, seed + 1000, None
    raise AssertionError("unreachable")


def reconstruct_dip(x: SliceData, cfg: DipConfig, weight_mask: WeightMask | None = None,
                    progress: Callable[[int, dict], None] | None = None, monitor: Monitor | None = None,
                    init: Weights | None = None) -> DipOutput:
    """Reconstruct one slice with an untrained generator (:func:`reconstruct_dip_batch`).

    Args:
        x: the slice.
        cfg: the settings.
        weight_mask: a saved mask to reuse (transfer, or the volume's) instead of learning one.
        progress: ``progress(step, {'loss': ..., **monitor})`` every ``cfg.fit.log_every`` steps.
        monitor: ``monitor(coil_images) -> dict`` logged every ``cfg.fit.log_every`` steps.
        init: warm start: the generator's initial state (a fitted neighbour's ``weights``).
    """
    return reconstruct_dip_batch([x], cfg, weight_mask, progress, [monitor], [init])[0]


def average_folds(outs: Sequence[DipOutput]) -> DipOutput:
    """The mean of K fold fits of one slice: coil images and images averaged; the history is
    the first fold's, with ``steps`` the total over folds and ``fold_steps`` / ``fold_best_steps``;
    the weights are the first fold's."""
    if len(outs) == 1:
        return outs[0]
    first = outs[0]
    image = torch.stack([o.image for o in outs]).mean(0) if first.image is not None else None
    history = {**first.history, "steps": sum(o.history["steps"] for o in outs),
               "fold_steps": [o.history["steps"] for o in outs],
               "fold_best_steps": [o.history["best_step"] for o in outs],
               "fit_seconds": sum(o.history["fit_seconds"] for o in outs)}
    return DipOutput(torch.stack([o.coil_images for o in outs]).mean(0), image, first.weight_mask, first.weights,
                     history)


def reconstruct_dip_batch(slices: Sequence[SliceData], cfg: DipConfig, weight_mask: WeightMask | None = None,
                          progress: Callable[[int, dict], None] | None = None,
                          monitors: Sequence[Monitor | None] | None = None,
                          inits: Sequence[Weights | None] | None = None,
                          starts: Sequence[torch.Tensor | None] | None = None) -> list[DipOutput]:
    """Reconstruct several slices of one size at once (:func:`~oes_mri.fit.engine.fit_batch`).

    Each slice gets what :func:`reconstruct_dip` would give it (own generator from the same
    seed or its own ``inits`` entry, own scaling, own hold-out and stopping rule, own mask
    unless ``weight_mask`` is shared), up to rounding; with ``cfg.validation.folds`` K > 1,
    its K folds are fitted in the same batch and averaged.
    If any fit diverges, every fit is redone one at a time with retries. Settings that are not
    batched (:attr:`DipConfig.batched`) are fitted one at a time.
    """
    K = cfg.validation.folds
    monitors = list(monitors) if monitors is not None else [None] * len(slices)
    inits = list(inits) if inits is not None else [None] * len(slices)
    starts = list(starts) if starts is not None else [None] * len(slices)
    jobs = [Job(x, f, weight_mask, mon if f == 0 else None, init, start)
            for x, mon, init, start in zip(slices, monitors, inits, starts) for f in range(K)]
    outs: list[DipOutput | None] = [None] * len(jobs)
    for warm in (False, True):                    # cold and warm-started fits: their own settings
        idx = [i for i, j in enumerate(jobs) if (j.init is not None) == warm]
        if idx:
            for i, o in zip(idx, _fit_jobs([jobs[i] for i in idx], warm_config(cfg) if warm else cfg, progress)):
                outs[i] = o
    return [average_folds(outs[i * K:(i + 1) * K]) for i in range(len(slices))]


BATCHED_DEVICES = ("cuda",)
"""Devices on which several fits run as one vmapped network. On the CPU they run one after
another: there the batch gained nothing for the full hourglass (0.94x, ``docs/findings.md``)
and made each step of the quarter-channel default 1.21-1.52x slower per generator (grouped
convolutions of a few channels; ``benchmarks/results/profile/step_profile.md``)."""


def _fit_jobs(jobs: list[Job], cfg: DipConfig, progress: Callable[[int, dict], None] | None) -> list[DipOutput]:
    """Fit the jobs as one batch on a device of :data:`BATCHED_DEVICES` (else, when the
    settings are not batched, or after a divergence, one at a time)."""
    def one_at_a_time(js: list[Job]) -> list[DipOutput]:
        return [_fit_one(j, cfg, progress) for j in js]

    if not cfg.batched or len(jobs) == 1 or jobs[0].x.kspace.device.type not in BATCHED_DEVICES:
        return one_at_a_time(jobs)
    sts = [setup_fit(j.x, cfg, _init_seed(cfg, j.weight_mask), j.weight_mask, j.fold, j.init, j.start) for j in jobs]
    t1 = time.perf_counter()
    try:
        results = fit_batch([st.gen for st in sts], [st.loss_fn for st in sts], cfg.steps, cfg.lr,
                            [st.fit_mask for st in sts], log_every=cfg.fit.log_every,
                            monitors=[_scaled(j.monitor, st.problem) for st, j in zip(sts, jobs)],
                            progress=progress, cuda_graph=cfg.speed.cuda_graph, schedule=cfg.lr_schedule,
                            stop=cfg.validation.rule(len(jobs)))
        for st, res in zip(sts, results):
            check_data_error(st, res)
    except FitDiverged as err:
        log.warning("batch %s: %s; fitting its slices one at a time", jobs[0].x.source, err)
        return one_at_a_time(jobs)
    seconds = (time.perf_counter() - t1) / len(jobs)
    return [_output(cfg, st, res, cfg.lr, seconds) for st, res in zip(sts, results)]
