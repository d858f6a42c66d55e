"""Settings of an untrained-generator reconstruction, as nested, validated, frozen objects:
:class:`DipConfig` holds the generator (``arch``, ``seed``) and one object per concern,
:class:`~oes_mri.pruning.config.PruningConfig`, :class:`~oes_mri.pruning.config.OesConfig`,
:class:`FitConfig`, :class:`ValidationConfig`, :class:`SpeedConfig` and :class:`WarmStart`.
Every object checks its fields when built, so the API, the CLI and the benchmarks share one
validation. Change a copy with :meth:`DipConfig.updated` (``{"fit.steps": 3000}``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import types
import typing
from typing import Any, Mapping

import torch

from oes_mri.nets.generator import ArchConfig
from oes_mri.optim import LR_SCHEDULES
from oes_mri.physics.holdout import SHAPES, KspaceSplit, NothingToHoldOut, split_mask
from oes_mri.errors import require
from oes_mri.defaults import device_defaults, generator_defaults
from oes_mri.pruning.config import PRUNINGS, OesConfig, PruningConfig
from oes_mri.fit.fastpath import FAST_PATHS
from oes_mri.fit.loop import LOG_EVERY
from oes_mri.fit.stopping import ValidationStop

log = logging.getLogger("oes_mri")

OUTPUTS = ("best", "last", "ema")
STARTS = ("none", "l1", "sense", "tv")
__all__ = ["DipConfig", "FitConfig", "OesConfig", "PruningConfig", "PRUNINGS", "SpeedConfig", "ValidationConfig",
           "WarmStart", "OUTPUTS"]


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """The fit of the generator to the k-space (:func:`~oes_mri.fit.engine.fit`).

    Attributes:
        steps: fitting steps (the cap when self-validation stops the fit); ``None`` (the
            default): the generator's own (:data:`oes_mri.defaults.GENERATORS`, read through :attr:`DipConfig.steps`).
        lr: Adam learning rate; lr_schedule: "constant", "cosine" (to 0 over ``steps``) or
            "warmup" (:data:`~oes_mri.optim.LR_SCHEDULES`). ``None`` (the default): the
            generator's own (:data:`oes_mri.defaults.GENERATORS`, read through :attr:`DipConfig.lr` and
            :attr:`DipConfig.lr_schedule`).
        output: which iterate is returned: "best" (lowest held-out error; lowest data loss
            without a hold-out), "last" or "ema" (average with ``ema_decay``).
        input_jitter: std of Gaussian noise added to the fixed input at every step (DIP's
            ``reg_noise_std``; 0 = off, the default); fitted one slice at a time.
        retries: on divergence, retries from a fresh init at half the learning rate.
        log_every: steps between logs, monitoring and stopping-rule checks.
        start: where the generator's image starts: "none" (the untrained generator's own
            output, DIP) or a classical method ("l1", "sense", "tv": its held-out-tuned image
            solved on the fit set, and the generator fits a residual on top of it,
            ``x = x_0 + G(z) - G_0(z)``; the held-out rule then never returns an iterate with a
            higher held-out error than ``x_0``).
        penalty: the hybrid prior's weight ``lamda`` of a wavelet penalty ``||W G(z)||_1`` on
            the generator's image, in the L1-wavelet baseline's units (0 = off;
            :mod:`oes_mri.fit.penalty`). 2e-3 (L1-wavelet's fixed weight): over 10
            (image, acceleration, seed) fits, +0.51 dB and +0.027 SSIM on average against no
            penalty, under the held-out rule (``docs/self_validation.md``).
    """

    steps: int | None = None
    lr: float | None = None
    lr_schedule: str | None = None
    output: str = "best"
    ema_decay: float = 0.99
    input_jitter: float = 0.0
    retries: int = 2
    log_every: int = LOG_EVERY
    penalty: float = 2e-3
    start: str = "none"

    def __post_init__(self) -> None:
        require(0 <= self.penalty < math.inf, f"penalty {self.penalty}: must be finite and >= 0")
        require((self.steps is None or self.steps >= 1) and self.log_every >= 1, "fit steps and log_every must be >= 1")
        require(self.lr is None or 0 < self.lr < math.inf, f"fit lr {self.lr}: must be a finite number > 0")
        require(self.lr_schedule is None or self.lr_schedule in LR_SCHEDULES,
                f"lr schedule {self.lr_schedule!r}: one of {', '.join(LR_SCHEDULES)}")
        require(self.output in OUTPUTS, f"output {self.output!r}: one of {', '.join(OUTPUTS)}")
        require(0 <= self.ema_decay < 1, f"ema_decay {self.ema_decay}: must be in [0, 1)")
        require(0 <= self.input_jitter < math.inf, f"input_jitter {self.input_jitter}: must be finite and >= 0")
        require(self.retries >= 0, f"retries {self.retries}: must be >= 0")
        require(self.start in STARTS, f"start {self.start!r}: one of {', '.join(STARTS)}")


@dataclasses.dataclass(frozen=True)
class SpeedConfig:
    """How the fit runs, not what it computes (up to rounding).

    Attributes:
        compile: ``torch.compile`` the generator.
        amp: bf16 autocast for the generator (CUDA; FFT and data term in fp32).
        cuda_graph: replay each fit step as a CUDA graph (CUDA only; not with ``compile``).
        fast_path: how a single fit's steps run on the CPU: "auto" (the default: a capability
            check and a short calibration, :mod:`oes_mri.fit.fastpath`; fp32 unless a path
            is clearly faster), or "fp32", "channels_last", "bf16" (autocast).
    """

    compile: bool = False
    amp: bool = False
    cuda_graph: bool = False
    fast_path: str = "auto"

    def __post_init__(self) -> None:
        require(not (self.compile and self.cuda_graph), "cuda_graph does not combine with compile")
        require(self.fast_path in FAST_PATHS, f"fast path {self.fast_path!r}: one of {', '.join(FAST_PATHS)}")


@dataclasses.dataclass(frozen=True)
class ValidationConfig:
    """K-space self-validation of a fit (:mod:`oes_mri.physics.holdout`,
    :class:`~oes_mri.fit.stopping.ValidationStop`).

    ``share`` of the measured non-ACS samples is held out; the generator is fitted to the rest;
    the fit stops only on evidence that it has begun to overfit (the held-out error risen above
    its minimum by a margin, for ``patience`` steps; the minimum's iterate is returned), and
    runs to the cap and returns the last iterate when the held-out error carries no signal or
    only plateaus; the final image applies data consistency with every measured sample.
    ``share = 0`` turns it off (every sample fitted, a fixed number of steps, the
    lowest-fit-loss iterate). The regularised baselines choose their weight on the same split.
    The values below were chosen on recorded fits over seeds (``docs/self_validation.md``).

    Attributes:
        share: held-out fraction, in [0, 1).
        shape: "points" or "lines" ("lines" needs a column mask; a 2-D mask gets "points").
        patience: steps the held-out error must stand above its minimum before the fit stops.
        informative: the hold-out carries a usable signal only once the smoothed relative
            error (1 = the error of predicting zeros) falls below this; otherwise the fit runs
            ``fallback_steps`` and the baselines keep their fixed weight. 0.9: with few coils
            the error wanders between 0.98 and 1.05 while the image improves.
        rise: the relative rise of the smoothed error above its minimum that counts as
            evidence of overfitting (at least ``noise`` times its step-to-step noise too).
        noise: that margin in units of the held-out error's step-to-step noise.
        start: the first step whose iterate may be chosen (the blurred first iterates and the
            warm-up's rate transients are no candidates).
        smoothing: the rule reads the held-out error as a running average over about this many
            steps (exponential, weight ``1/smoothing``; 1 = the raw error).
        fallback_steps: step budget when the held-out set is uninformative (``None``: the
            step cap, the fixed budget a fit without hold-out would run).
        folds: K fits of one generator init on K disjoint held-out sets (while K x share <= 1),
            each stopped by its own, their images averaged (one batch on CUDA, one after
            another on the CPU).
    """

    share: float = 0.1
    shape: str = "lines"
    patience: int = 400
    informative: float = 0.9
    rise: float = 0.05
    noise: float = 3.0
    start: int = 300
    smoothing: float = 25.0
    fallback_steps: int | None = None
    folds: int = 1

    def __post_init__(self) -> None:
        require(0.0 <= self.share < 1.0, f"validation share must be in [0, 1), got {self.share}")
        require(self.shape in SHAPES, f"validation shape {self.shape!r}: expected one of {', '.join(SHAPES)}")
        require(self.patience >= 1 and (self.fallback_steps is None or self.fallback_steps >= 1) and self.folds >= 1,
               "validation patience, fallback_steps and folds must be >= 1")
        require(self.informative > 0.0, f"validation informative threshold must be > 0, got {self.informative}")
        require(self.smoothing >= 1.0, f"validation smoothing must be >= 1 step, got {self.smoothing}")
        require(self.rise >= 0 and self.noise >= 0 and self.start >= 1,
                "validation rise and noise must be >= 0, start >= 1")
        require(self.folds == 1 or self.share > 0, "validation folds > 1 need a held-out share > 0")

    @property
    def enabled(self) -> bool:
        return self.share > 0

    def split(self, mask: torch.Tensor, shape: tuple[int, int], seed: int, fold: int = 0) -> KspaceSplit:
        """The held-out split of fold ``fold``: block ``fold`` of the seed's permutation of the
        candidates (:func:`~oes_mri.physics.holdout.split_mask`; folds disjoint while K x share <= 1).

        Raises:
            NothingToHoldOut: every measured sample is calibration (e.g. a fully sampled scan).
        """
        kind = self.shape if mask.shape[0] == 1 else "points"
        return split_mask(mask, shape, self.share, kind, seed=seed, fold=fold)

    def usable(self, mask: torch.Tensor, shape: tuple[int, int], source: str = "") -> bool:
        """Samples can be held out under ``mask``; if not (every measured sample is calibration,
        as in a fully sampled scan), a warning says that the fits run without self-validation
        (the step cap, the fixed lambdas)."""
        if not self.enabled:
            return False
        try:
            self.split(mask, shape, 0)
            return True
        except NothingToHoldOut:
            log.warning("%s: no measured sample outside the calibration region to hold out; fitting without "
                        "self-validation (the --steps budget, the fixed lambdas)", source or "k-space")
            return False

    def rule(self, slices: int) -> ValidationStop | None:
        """The stopping rule for ``slices`` fits, or ``None`` when off."""
        if not self.enabled:
            return None
        return ValidationStop(slices, self.patience, self.informative, self.fallback_steps, self.smoothing,
                              self.rise, self.noise, self.start)


@dataclasses.dataclass(frozen=True)
class WarmStart:
    """A volume fitted as a chain of slices: the reference slice from the random init, then
    each neighbour, outward in both directions, from the fitted weights of the slice next to it
    (same pruning mask, same held-out lines, its own stopping rule).

    Attributes:
        enabled: chain the slices (the default); off, every slice starts from the random init.
        lr: the fit's learning rate for a warm-started slice (``None``: the fit's). A fresh
            Adam moves every weight by about ``lr`` in its first steps, whatever the gradient:
            at the cold-start rate that undoes much of what the neighbour's fit found.
            Measured (``docs/warm_start.md``): 1e-3 gave +1.1 dB over a cold fit of the
            slice, 1e-2 +0.03 dB.
        patience: the held-out patience of a warm-started slice (``None``: the validation's).
            100: on a whole 35-slice volume (``docs/warm_start.md``) the chain runs 0.23 of
            independent fits' steps at +0.50 dB / +0.036 SSIM over them (0.05 dB / 0.009 SSIM
            below patience 400, which runs 0.43). A warm slice's held-out error dips in its
            first 25 steps; read raw, patience 100 stopped at such dips (-0.68 dB), read
            smoothed (``ValidationConfig.smoothing``) it holds on every run of neighbouring
            slices measured (four, -0.12 to +0.50 dB against independent fits) and loses
            0.35 dB on 5 slices spanning a whole head: ``--warm-patience 400`` for slices far
            apart.
        steps: the step cap of a warm-started slice (``None``: the fit's), also its budget
            when its held-out lines are uninformative. Cap 400 with the validation's patience,
            measured on a 5-slice volume: the volume within -0.08 dB / -0.008 SSIM of
            independent fits at 0.42 of their steps (the edge slice loses 2.2 dB at 400 steps);
            on three runs of 7 neighbouring slices of a 35-slice volume -0.12 to +0.17 dB at
            0.31-0.60 of the steps. On the whole 35-slice volume a cap of 100 runs 0.15 of the
            steps at 24.04 / 0.728, level with patience 100 in PSNR, 0.006 below in SSIM.
    """

    enabled: bool = True
    lr: float | None = 1e-3
    patience: int | None = 100
    steps: int | None = 400

    def __post_init__(self) -> None:
        require(self.patience is None or self.patience >= 1, "warm-start patience must be >= 1")
        require(self.steps is None or self.steps >= 1, "warm-start steps must be >= 1")
        require(self.lr is None or 0 < self.lr < math.inf, f"warm-start lr {self.lr}: must be a finite number > 0")


@dataclasses.dataclass(frozen=True)
class DipConfig:
    """Settings of a (Sparse-)DIP reconstruction.

    Attributes:
        arch: generator architecture; seed: weight init, input noise, Gumbel noise and the
            held-out split.
        pruning: which weights are kept (:class:`PruningConfig`; ``pruning.method`` "dense" is DIP).
        oes: OES mask learning (:class:`OesConfig`).
        fit: the fit (:class:`FitConfig`).
        validation: k-space self-validation (:class:`ValidationConfig`; on by default).
        speed: compile, bf16, CUDA graphs (:class:`SpeedConfig`).
        warm: slices chained within a volume (:class:`WarmStart`; used by the pipeline).
    """

    arch: ArchConfig = dataclasses.field(default_factory=ArchConfig)
    seed: int = 0
    pruning: PruningConfig = PruningConfig()
    oes: OesConfig = OesConfig()
    fit: FitConfig = FitConfig()
    validation: ValidationConfig = ValidationConfig()
    speed: SpeedConfig = SpeedConfig()
    warm: WarmStart = WarmStart()

    def __post_init__(self) -> None:
        require(0 <= self.seed < 2**32, f"seed {self.seed}: must be in [0, 2**32)")
        require(not (self.speed.cuda_graph and self.fit.input_jitter),
                "speed.cuda_graph does not combine with fit.input_jitter (the input noise is drawn eagerly)")
        require(self.fit.start == "none" or self.validation.folds == 1,
                f"fit.start {self.fit.start!r} does not combine with validation.folds {self.validation.folds}: "
                "a classical start is solved on one fit set")

    @property
    def steps(self) -> int:
        """The fit's step cap: ``fit.steps``, or the generator's default (:data:`oes_mri.defaults.GENERATORS`)."""
        return self.fit.steps if self.fit.steps is not None else generator_defaults(self.pruning.method).steps

    @property
    def lr(self) -> float:
        """The fit's learning rate: ``fit.lr``, or the generator's default (:data:`oes_mri.defaults.GENERATORS`)."""
        return self.fit.lr if self.fit.lr is not None else generator_defaults(self.pruning.method).lr

    @property
    def lr_schedule(self) -> str:
        """The fit's schedule: ``fit.lr_schedule``, or the generator's default (:data:`oes_mri.defaults.GENERATORS`)."""
        return (self.fit.lr_schedule if self.fit.lr_schedule is not None
                else generator_defaults(self.pruning.method).lr_schedule)

    def on_device(self, device: object, cuda_graph: bool | None = None) -> "DipConfig":
        """These settings with ``device``'s defaults (:func:`oes_mri.defaults.device_defaults`)
        where they are left open: the step cap when ``fit.steps`` is unset, and CUDA graphs
        unless ``cuda_graph`` says (``None``: the device's choice, where compile and input
        jitter allow it). The CLI, :func:`oes_mri.reconstruct` and the deepinv adapter resolve
        their settings through here, so they run the same fit on every device."""
        dev = device_defaults(device)
        if cuda_graph is None:
            cuda_graph = dev.cuda_graph and not self.speed.compile and not self.fit.input_jitter
        changes: dict[str, Any] = {"speed.cuda_graph": cuda_graph}
        if self.fit.steps is None and dev.steps is not None:
            changes["fit.steps"] = dev.steps
        return self.updated(changes)

    @property
    def batched(self) -> bool:
        """Several fits can share one batched loop (not with an EMA output, compile, bf16 or input jitter)."""
        return not (self.fit.output == "ema" or self.speed.compile or self.speed.amp or self.fit.input_jitter)

    def updated(self, changes: Mapping[str, Any]) -> "DipConfig":
        """A validated copy with ``changes``: keys are top-level fields (``"seed"``) or
        ``"section.field"`` (``"fit.steps"``, ``"pruning.method"``, ``"validation.share"``).

        Raises:
            ValueError: an unknown key, or a value its section refuses.
        """
        top: dict[str, Any] = {}
        nested: dict[str, dict[str, Any]] = {}
        for key, value in changes.items():
            section, _, name = key.rpartition(".")
            if section:
                nested.setdefault(section, {})[name] = value
            else:
                top[name] = value
        for section, kw in nested.items():
            obj = getattr(self, section, None)
            if not dataclasses.is_dataclass(obj) or section == "arch":
                raise ValueError(f"unknown settings section {section!r}")
            unknown = set(kw) - {f.name for f in dataclasses.fields(obj)}
            if unknown:
                raise ValueError(f"unknown {section} setting(s): {', '.join(sorted(unknown))}")
            for name, value in kw.items():
                check_type(f"{section}.{name}", value, typing.get_type_hints(type(obj))[name])
            top[section] = dataclasses.replace(obj, **kw)
        unknown = set(top) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        hints = typing.get_type_hints(DipConfig)
        for name, value in top.items():
            if name not in nested:
                check_type(name, value, hints[name])
        return dataclasses.replace(self, **top)


def check_type(key: str, value: Any, hint: Any) -> None:
    """Raise ``ValueError`` naming ``key`` unless ``value`` has the declared type ``hint``
    (``int`` excludes ``bool``; a ``float`` takes an ``int``; ``X | None`` takes ``None``; a
    settings section takes only its own object). Hints it cannot check pass."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return
        hint = next((a for a in args if a is not type(None)), hint)
    ok = {int: lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool),
          float: lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool),
          bool: lambda v: isinstance(v, bool), str: lambda v: isinstance(v, str)}.get(hint)
    if ok is None and dataclasses.is_dataclass(hint):
        ok = lambda v: isinstance(v, hint)  # noqa: E731
        if not ok(value):
            raise ValueError(f"{key}: expected a {hint.__name__} (or '{key}.<field>' settings), "
                             f"got {type(value).__name__} {value!r}")
    if ok is not None and not ok(value):
        raise ValueError(f"{key}: expected {getattr(hint, '__name__', hint)}, got {type(value).__name__} {value!r}")
