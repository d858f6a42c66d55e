"""python -m oes_mri.recon: reconstruct undersampled fastMRI volumes and compare methods.

Reads fastMRI HDF5 files (or the built-in sample), undersamples them retrospectively with a
fastMRI mask (seed from the file name, like the challenge) or uses the file's own mask,
reconstructs each slice with the chosen methods (Sparse-DIP pruned by OES, dense DIP,
CG-SENSE, L1-wavelet, TV, zero-filled, pruning baselines) and writes fastMRI submission
files, metrics (fastMRI definitions), figures and a report under --out. Interrupted runs
resume from per-slice checkpoints when the same command is run again.

Exit codes: 0 success; 2 bad input or options (one line on stderr; --debug for a traceback);
130 interrupted (finished slices are kept).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import warnings
from pathlib import Path

from oes_mri.errors import InputError, first_line
from oes_mri.optim import LR_SCHEDULES
from oes_mri.app.progress import BarProgress, LogProgress, Progress
from oes_mri.pruning.allocation import ALLOCATIONS
from oes_mri.pruning.oes import ESTIMATORS, LOGIT_INITS
from oes_mri.fit.engine import FitDiverged
from oes_mri.app.options import make_config

log = logging.getLogger("oes_mri")

EPILOG = """\
outputs (under --out):
  <method>/<input stem>.h5     fastMRI submission format: dataset 'reconstruction',
                               float32 [slices, rH, rW], on the target's intensity scale
  <method>/<input stem>.nii.gz with --save nifti: the same volume for image viewers
  metrics.json, metrics.csv    one record per output file: file, method, output, acceleration
                               (realised), center_fraction, slices, nmse, psnr, ssim
                               (fastMRI definitions, null without a target), seconds, device
  figures/                     comparison grid, PSNR-vs-step curves, sampling mask per volume
  report.md                    the table, the figures, the command line and versions
  .checkpoints/                per-slice results; a rerun of the same command resumes

examples:
  python -m oes_mri.recon --accel 4
  python -m oes_mri.recon --data knee/file1000001.h5 --slices 15:20 --methods all --device cuda
  python -m oes_mri.recon --data knee_val/ --accel 8 --methods oes-channels --pruning-mask bank:channels25
  python -m oes_mri.recon --data knee_val/ --device cuda --ray auto --ray-task-gpus 0.5
"""


def build_parser() -> argparse.ArgumentParser:
    from oes_mri.methods import METHODS, default_methods
    from oes_mri.nets.generator import ARCHS, ArchConfig
    from oes_mri.physics.holdout import SHAPES
    from oes_mri.defaults import DEVICES, GENERATORS
    from oes_mri.fit.config import (OUTPUTS, STARTS, DipConfig, FitConfig, OesConfig, PruningConfig, SpeedConfig,
                                    ValidationConfig, WarmStart)
    from oes_mri.fit.fastpath import FAST_PATHS

    p = argparse.ArgumentParser(prog="python -m oes_mri.recon", description=__doc__.split("\n\n")[1],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", type=str, default=None,
                   help="a raw data file -- fastMRI .h5, ISMRMRD .h5 or Siemens twix .dat, detected by "
                   "content -- or a folder of them (default: the built-in sample)")
    g.add_argument("--slices", default=None, help="slice selection, e.g. '10:20', '3', '0,5,9' (default: all)")
    g.add_argument("--challenge", choices=["multicoil", "singlecoil"], default=None,
                   help="default: from the rank of 'kspace'")
    g = p.add_argument_group("undersampling")
    g.add_argument("--accel", type=float, default=4.0, help="acceleration, any value >= 1 (default 4)")
    g.add_argument("--center-fraction", type=float, default=None,
                   help="fully sampled centre fraction (default fastMRI's: 0.08 at 4x, 0.04 at 8x, 0.32/accel)")
    g.add_argument("--sampling", "--mask", dest="mask_kind", choices=["auto", "random", "equispaced", "poisson", "file"],
                   default="auto", help="fastMRI random/equispaced columns, 2-D Poisson-disc, or the file's own "
                   "sampling ('mask' dataset, or the lines a scanner file acquired); auto (default): the file's "
                   "own when it is undersampled, else random (--mask: the old name)")
    g.add_argument("--readout", choices=["crop", "full"], default="crop",
                   help="crop (default): remove readout oversampling before the fits when the readout is "
                   "fully sampled (same image on the recon grid, half the pixels for fastMRI's 2x; coil maps from "
                   "the acquired readout, cropped); full: fit the acquired readout")
    g.add_argument("--seed", type=int, default=None,
                   help="mask seed (default: fastMRI's per-volume seed tuple(map(ord, file name)))")
    g = p.add_argument_group("methods")
    g.add_argument("--methods", default=None,
                   help=f"comma list of {', '.join(METHODS)}, or 'all' (default {','.join(default_methods('cpu'))} "
                   f"on the CPU, {','.join(default_methods('cuda'))} on CUDA)")
    g = p.add_argument_group("Sparse-DIP and DIP")
    g.add_argument("--density", type=float, default=None,
                   help=f"kept fraction of the prunable weights (default {GENERATORS['weights'].kept:g}), of the channels "
                   f"of every feature map for oes-channels and random-channels (default {GENERATORS['channels'].kept:g})")
    g.add_argument("--oes-init", choices=LOGIT_INITS, default=OesConfig.init,
                   help="OES starting logits: zero (published, default), density (each layer's kept share), "
                   "magnitude, density+magnitude")
    g.add_argument("--oes-estimator", choices=ESTIMATORS, default=OesConfig.estimator,
                   help="mask in each OES step: relaxed Bernoulli (published) or the top-k subnetwork "
                   "with straight-through gradients")
    g.add_argument("--allocation", choices=ALLOCATIONS, default=PruningConfig.allocation,
                   help="split of the density over the layers: erk (default: Erdos-Renyi-Kernel; the OES "
                   "logits pick the weights within each layer), global (top-k over all layers, as published), "
                   "uniform, or magnitude (the split of global magnitude pruning at init)")
    g.add_argument("--prune-steps", "--mask-steps", dest="prune_steps", type=int, default=None,
                   help="OES pruning-mask learning steps (default 100; --mask-steps: the old name)")
    g.add_argument("--steps", type=int, default=None,
                   help="fitting steps: the cap when held-out k-space stops the fit (default on the CPU "
                   f"{GENERATORS['channels'].steps} for the channel-pruned generators, {GENERATORS['weights'].steps} "
                   f"for the others; {DEVICES['cuda'].steps} on CUDA)")
    g.add_argument("--lr", type=float, default=None,
                   help=f"Adam learning rate of the fit (default {GENERATORS['channels'].lr:g} for the channel-pruned "
                   f"generators, {GENERATORS['weights'].lr:g} for the others)")
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=None,
                   help="learning rate over the fit: constant, cosine from --lr to 0 over --steps, or warmup "
                   f"(--lr/10 to --lr over the first 100 steps) (default {GENERATORS['channels'].lr_schedule} for the "
                   f"channel-pruned generators, {GENERATORS['weights'].lr_schedule} for the others)")
    g.add_argument("--arch", choices=ARCHS, default=ArchConfig.name, help=f"generator (default {ArchConfig.name})")
    g.add_argument("--dip-seed", type=int, default=DipConfig.seed,
                   help=f"generator init / input noise / held-out split seed (default {DipConfig.seed})")
    g.add_argument("--pruning-mask", "--weight-mask", dest="pruning_mask", type=Path, default=None,
                   help="reuse a pruning mask instead of learning one: a shipped mask of the bank "
                   "(bank:channels25) or a file (.safetensors; a run writes the one it learns to "
                   "<out>/.checkpoints/<volume>/<method>/weight_mask.safetensors) (--weight-mask: the old name)")
    g.add_argument("--prune-per", "--mask-per", dest="prune_per", choices=["volume", "slice"], default="volume",
                   help="learn one OES pruning mask per volume on its middle slice and reuse it, or one per "
                   "slice (--mask-per: the old name)")
    g.add_argument("--output-iterate", choices=OUTPUTS, default=FitConfig.output,
                   help="returned DIP iterate: lowest held-out error (default; lowest data loss with "
                   "--holdout 0), last, or moving average")
    g.add_argument("--start", choices=STARTS, default=FitConfig.start,
                   help="none (default): the generator's own first image; l1, sense or tv: a residual on that "
                   "method's held-out-tuned image solved on the fit set (never returned worse, by held-out error)")
    g.add_argument("--input-jitter", type=float, default=FitConfig.input_jitter,
                   help="std of noise added to the generator input at every fit step (DIP's reg_noise_std, "
                   "e.g. 0.033; default 0 = off; fits eagerly, without CUDA graphs)")
    g.add_argument("--dip-penalty", type=float, default=FitConfig.penalty, metavar="LAMBDA",
                   help="hybrid prior: a wavelet L1 penalty on the generator's image, weight in the units of "
                   "the L1-wavelet baseline's lambda (default %(default)g; 0 = off)")
    g.add_argument("--fast-path", choices=FAST_PATHS, default=SpeedConfig.fast_path,
                   help="how fit steps run on the CPU: auto (default: fp32 unless a short calibration finds "
                   "channels_last, or bf16 on a CPU with native bf16, at least 15 %% faster; recorded in metrics.json), "
                   "or fp32, channels_last, bf16")
    g.add_argument("--compile", action="store_true", help="torch.compile the generator (see benchmarks/speed.py)")
    g.add_argument("--amp", action="store_true",
                   help="bf16 autocast for the generator, FFTs and data term in fp32 (for CUDA)")
    g.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                   help="replay each fit step as a CUDA graph (default: on for CUDA without --compile)")
    g = p.add_argument_group("self-validation (held-out k-space; no ground truth)")
    g.add_argument("--holdout", type=float, default=ValidationConfig.share,
                   help="share of the measured non-calibration samples held out to stop the generator fits and "
                   f"to choose the baselines' lambdas (default {ValidationConfig.share:g}; 0 = off: fixed --steps "
                   "and fixed lambdas)")
    g.add_argument("--holdout-shape", choices=SHAPES, default=ValidationConfig.shape,
                   help=f"held-out random k-space points or whole phase-encode lines (default {ValidationConfig.shape})")
    g.add_argument("--patience", type=int, default=ValidationConfig.patience,
                   help="stop a fit after this many steps without a lower held-out error "
                   f"(default {ValidationConfig.patience})")
    g.add_argument("--holdout-smoothing", type=float, default=ValidationConfig.smoothing,
                   help="read the held-out error as a running average over about this many steps "
                   f"(default {ValidationConfig.smoothing:g}; 1 = the raw error)")
    g.add_argument("--holdout-folds", type=int, default=ValidationConfig.folds,
                   help=f"average K fits on K different hold-out splits (default {ValidationConfig.folds})")
    g.add_argument("--warm-start", action=argparse.BooleanOptionalAction, default=WarmStart.enabled,
                   help="fit a volume's slices as a chain outward from its middle slice, each starting from "
                   "its neighbour's fitted generator and stopped by its own held-out k-space (default on; "
                   "for DIP and for Sparse-DIP with one pruning mask per volume)")
    g.add_argument("--warm-lr", type=float, default=WarmStart.lr,
                   help=f"learning rate of a warm-started slice (default {WarmStart.lr:g}: a fresh Adam at --lr "
                   "shakes a fitted generator)")
    g.add_argument("--warm-patience", type=int, default=WarmStart.patience,
                   help=f"held-out patience of a warm-started slice (default {WarmStart.patience}; 400 for "
                   "slices far apart)")
    g.add_argument("--warm-steps", type=int, default=WarmStart.steps,
                   help=f"step cap of a warm-started slice (default {WarmStart.steps}; at most --steps)")
    g.add_argument("--tune-lambda", action=argparse.BooleanOptionalAction, default=True,
                   help="choose the CG-SENSE / L1 / TV weight from a grid by held-out error (default on)")
    g = p.add_argument_group("run")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    g.add_argument("--batch-slices", type=int, default=1,
                   help="fit this many slices at once (one batched network; faster on GPUs; default 1)")
    g.add_argument("--out", type=str, default="recon_out", help="output folder (default recon_out/)")
    g.add_argument("--save", choices=["fastmri", "nifti"], action="append", default=None,
                   help="output formats besides metrics: fastmri (submission .h5, always written) and "
                   "nifti (<method>/<input stem>.nii.gz for image viewers); repeat or give once")
    g.add_argument("--overwrite", action="store_true", help="replace outputs made with other settings")
    g.add_argument("--quiet", action="store_true", help="print only the final table")
    g.add_argument("--no-figures", action="store_true", help="skip figures and report.md")
    g.add_argument("--debug", action="store_true", help="show tracebacks")
    g = p.add_argument_group("scale-out (needs pip install 'oes-mri[ray]')")
    g.add_argument("--ray", metavar="WHERE", default=None,
                   help="run slices as Ray tasks: 'local' (start Ray here), 'auto' (join the running "
                        "cluster, e.g. after 'ray start --head') or a cluster address")
    g.add_argument("--ray-workers", type=int, default=None, help="CPUs of a --ray local instance (default all)")
    g.add_argument("--ray-task-cpus", type=float, default=1.0, help="CPUs each task asks for (default 1)")
    g.add_argument("--ray-task-gpus", type=float, default=None,
                   help="GPUs each task asks for, fractions pack fits (default 1 with --device cuda, else 0)")
    return p


TERMINATED = threading.Event()
"""Set when a SIGTERM arrived (Ray may turn the interrupt into its own ``KeyboardInterrupt``)."""


def on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM ends the run as Ctrl-C does (finished slices kept, the lock released, a line
    saying how to resume), with exit code 143."""
    TERMINATED.set()
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """The command line; exit code 0, 2 (bad input, one line on stderr), 130 (Ctrl-C) or 143 (SIGTERM)."""
    argv = sys.argv[1:] if argv is None else argv
    main_thread = threading.current_thread() is threading.main_thread()
    TERMINATED.clear()
    previous = signal.signal(signal.SIGTERM, on_sigterm) if main_thread else None
    try:
        return _main(argv)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if not args.debug:                         # readers' chatter would print before the one-line error
        warnings.filterwarnings("ignore", module=r"(xsdata|twixtools)(\.|$)")
        warnings.filterwarnings("ignore", category=ResourceWarning)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s",
                        stream=sys.stderr)
    try:
        return _run(args, argv)
    except InputError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished slices are kept; run the same command again to resume", file=sys.stderr)
        return 143 if TERMINATED.is_set() else 130
    except (FitDiverged, OSError) as err:
        if args.debug:
            raise
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2


def _one_line(err: BaseException) -> str:
    """A fit that diverged at every retry, or a file system error (disk full, no permission),
    as one line naming the file (the cache folder and its variable when it is there)."""
    if isinstance(err, OSError):
        from oes_mri.data.sample import cache_dir

        what = err.strerror or first_line(err)
        where = f"{err.filename}: " if err.filename else ""
        cache = cache_dir()
        if err.filename and Path(err.filename).resolve().is_relative_to(cache.resolve()):
            return (f"{where}{what}: the cache folder {cache} cannot be written; make it writable or set "
                    "OES_MRI_CACHE to another folder")
        return f"{where}{what} (finished slices are kept; rerun to resume)"
    return f"{err} (try a lower --lr)"


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    from oes_mri.app import report
    from oes_mri.app.figures import volume_figures
    from oes_mri.app.pipeline import run

    cfg = make_config(args)
    if args.quiet:
        progress = Progress()
    else:
        progress = BarProgress() if sys.stderr.isatty() else LogProgress()
    figures: list[str] = []

    def on_volume(vol, recs):
        if not args.no_figures:
            figures.extend(volume_figures(vol, recs))

    if args.ray is not None:
        from oes_mri.app.ray_runner import RayOptions, run_ray

        gpus = args.ray_task_gpus if args.ray_task_gpus is not None else float(cfg.device.startswith("cuda"))
        opts = RayOptions(args.ray, args.ray_workers, args.ray_task_cpus, gpus)

        def runner():
            return run_ray(cfg, opts, progress, on_volume)
    else:
        def runner():
            return run(cfg, progress, on_volume)
    try:
        records, failure = runner(), None
    except InputError as err:
        records, failure = getattr(err, "records", None), err
        if not records:
            raise
    rows = report.summary_rows(records)
    if not args.no_figures:
        report.write_report(cfg.out, records, figures, argv)
    print(report.format_table(rows))
    print(f"outputs in {cfg.out}/ (metrics.json, report.md, figures/, <method>/)")
    if failure is not None:
        raise failure
    return 0


if __name__ == "__main__":
    sys.exit(main())
