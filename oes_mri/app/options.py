"""The run's settings from the command line's options (:func:`make_config`): every value
checked, and a refused one named by its flag, before anything runs."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from oes_mri.errors import InputError


def resolve_device(spec: str, remote: bool = False) -> str:
    """``auto`` -> cuda if available else cpu; reject CUDA without a GPU (unless the work runs
    on remote Ray workers, ``remote``, which get their GPUs from Ray)."""
    import torch

    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda") and remote:
        return spec
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(None, f"--device {spec}: CUDA is not available on this machine (torch.cuda.is_available() is False)")
        idx = int(spec.split(":")[1]) if ":" in spec else 0
        if idx >= torch.cuda.device_count():
            raise InputError(None, f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s)")
        return spec
    if spec != "cpu":
        raise InputError(None, f"--device {spec!r}: use auto, cpu, cuda or cuda:N")
    return spec


SETTING_FLAGS = {"fit.start": "--start", "validation.folds": "--holdout-folds", "speed.cuda_graph": "--cuda-graph",
                 "fit.input_jitter": "--input-jitter"}
"""The flags of the settings that :class:`~oes_mri.fit.config.DipConfig` checks in combination."""


def changed_settings(args: argparse.Namespace) -> dict[str, str]:
    """``{"section.field": flag}`` of the pruning and OES settings given away from their
    defaults (what a given ``--pruning-mask`` may leave unused)."""
    from oes_mri.fit.config import OesConfig, PruningConfig

    flags = {"pruning.density": ("--density", args.density, None),
             "pruning.steps": ("--prune-steps", args.prune_steps, None),
             "pruning.allocation": ("--allocation", args.allocation, PruningConfig.allocation),
             "oes.init": ("--oes-init", args.oes_init, OesConfig.init),
             "oes.estimator": ("--oes-estimator", args.oes_estimator, OesConfig.estimator)}
    return {key: flag for key, (flag, value, default) in flags.items() if value != default}


def make_config(args: argparse.Namespace):
    """Validate the options and build a :class:`oes_mri.app.volume.RunConfig`."""
    from oes_mri.data.sample import sample_path
    from oes_mri.methods import default_methods, make, parse_methods
    import torch

    from oes_mri.app.volume import RunConfig
    from oes_mri.fit.engine import use_cuda_graph

    for flag, value in (("--data", args.data), ("--out", args.out)):
        if value is not None and not value.strip():
            raise InputError(None, f"{flag} '{value}': an empty path (use '.' for the current folder)")
    if not 1 <= args.accel < math.inf:
        raise InputError(None, f"--accel {args.accel}: must be a finite number >= 1")
    if args.center_fraction is not None and not 0 < args.center_fraction < 1:
        raise InputError(None, f"--center-fraction {args.center_fraction}: must be in (0, 1)")
    if args.center_fraction is not None and args.accel > 1 and args.center_fraction * args.accel >= 1:
        raise InputError(None, f"--center-fraction {args.center_fraction:g} with --accel {args.accel:g}: the centre "
                               f"alone is at least 1/{args.accel:g} of the lines; use a centre fraction below "
                               f"{1 / args.accel:.3g}")
    for flag, seed in (("--seed", args.seed), ("--dip-seed", args.dip_seed)):
        if seed is not None and not 0 <= seed < 2**32:
            raise InputError(None, f"{flag} {seed}: must be in [0, 2**32)")
    if args.batch_slices < 1:
        raise InputError(None, f"--batch-slices {args.batch_slices}: must be >= 1")
    try:
        methods = parse_methods(args.methods) if args.methods is not None else None
    except ValueError as err:
        raise InputError(None, f"--methods: {err}")
    if args.pruning_mask is not None:
        from oes_mri.pruning import bank

        try:
            bank.load_file(args.pruning_mask)  # readable, else a clear error now
        except InputError as err:
            raise InputError(err.source, f"--pruning-mask: {err.problem}") from None
        changed = changed_settings(args)
        given = [changed[k] for k in bank.unused_with_mask(changed)]
        if given:
            raise InputError(None, f"{' '.join(given)} with --pruning-mask: the mask fixes what is kept and how it "
                                   "was made, so these flags would not be used; drop them or the mask")
    device = resolve_device(args.device, remote=args.ray not in (None, "local"))
    methods = methods if methods is not None else list(default_methods(device, args.arch))
    dip = dip_config(args)
    try:
        dip = dip.on_device(device, args.cuda_graph)
        use_cuda_graph(dip.speed.cuda_graph, torch.device(device), args.compile, args.input_jitter)
    except ValueError as err:
        raise InputError(None, f"--cuda-graph: {err}")
    return RunConfig(data=Path(args.data) if args.data is not None else sample_path(), out=Path(args.out),
                     methods=[make(name, dip, args.tune_lambda) for name in methods], accel=args.accel,
                     center_fraction=args.center_fraction, mask_kind=args.mask_kind, seed=args.seed,
                     slices=args.slices, challenge=args.challenge, pruning_mask=args.pruning_mask, prune_per=args.prune_per, device=device,
                     overwrite=args.overwrite, batch_slices=args.batch_slices,
                     nifti="nifti" in (args.save or ()), readout=args.readout)


def dip_config(args: argparse.Namespace):
    """The untrained generators' settings from the options; a refused value is named by its flag."""
    from oes_mri.nets.generator import ArchConfig
    from oes_mri.fit.config import (DipConfig, FitConfig, OesConfig, PruningConfig, SpeedConfig,
                                        ValidationConfig, WarmStart)

    def build(flags: str, make):
        try:
            return make()
        except ValueError as err:
            raise InputError(None, f"{flags}: {err}")

    pruning = build("--density/--prune-steps/--allocation", lambda: PruningConfig(
        density=args.density, allocation=args.allocation,
        **({"steps": args.prune_steps} if args.prune_steps is not None else {})))
    oes = build("--oes-init/--oes-estimator", lambda: OesConfig(init=args.oes_init, estimator=args.oes_estimator))
    fit = build("--steps/--lr/--lr-schedule/--output-iterate/--input-jitter/--dip-penalty/--start", lambda: FitConfig(
        steps=args.steps, lr=args.lr, lr_schedule=args.lr_schedule, output=args.output_iterate,
        input_jitter=args.input_jitter, penalty=args.dip_penalty, start=args.start))
    validation = build("--holdout/--holdout-shape/--patience/--holdout-smoothing/--holdout-folds",
                       lambda: ValidationConfig(share=args.holdout, shape=args.holdout_shape, patience=args.patience,
                                                smoothing=args.holdout_smoothing, folds=args.holdout_folds))
    speed = build("--compile/--amp/--cuda-graph/--fast-path", lambda: SpeedConfig(
        compile=args.compile, amp=args.amp, fast_path=args.fast_path))
    warm = build("--warm-start/--warm-lr/--warm-patience/--warm-steps", lambda: WarmStart(
        enabled=args.warm_start, lr=args.warm_lr, patience=args.warm_patience, steps=args.warm_steps))
    try:
        return DipConfig(arch=ArchConfig(args.arch), seed=args.dip_seed, pruning=pruning, oes=oes, fit=fit,
                         validation=validation, speed=speed, warm=warm)
    except ValueError as err:                 # a combination of sections: named by their flags
        message = str(err)
        for key, flag in SETTING_FLAGS.items():
            message = message.replace(key, flag)
        raise InputError(None, message) from None
