"""Readout oversampling: fit the acquired readout or its central field of view, side by side.

    python benchmarks/readout.py                       # full, crop, crop-maps on the built-in sample
    python benchmarks/readout.py --readouts full,crop --accels 4

For each readout handling (``oes_mri.app.slices.READOUTS``: ``full``; ``crop``: the k-space cut to
the recon field of view, maps estimated on the acquired readout and cropped; ``crop-maps``:
maps estimated on the cropped k-space) and each acceleration: zero-filled, CG-SENSE, L1-wavelet
(fixed weights) and Sparse-DIP (``--steps`` fit steps, no hold-out), PSNR / SSIM with the fastMRI
definitions and seconds per method, in one process. Prints a markdown table and writes it to
``--out``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import Case, prepare, run_method, score  # noqa: E402

from oes_mri.atomic import atomic_write_bytes  # noqa: E402
from oes_mri.data.sample import sample_path  # noqa: E402
from oes_mri.data.volumes import read_info  # noqa: E402
from oes_mri.physics.coils import estimate_maps  # noqa: E402
from oes_mri.physics.fft import crop_readout  # noqa: E402
from oes_mri.app.slices import Sampling  # noqa: E402
from oes_mri.fit.jobs import DipConfig, ValidationConfig  # noqa: E402


def prepare_crop_maps(path: Path, accel: float) -> Case:
    """``crop-maps``: as ``crop``, with ESPIRiT run on the cropped k-space (measured here,
    not the package's way)."""
    case = prepare(path, accel, readout="full")
    smask = Sampling(accel=accel).mask(read_info(path))
    rows = case.x.recon_size[0]
    y = crop_readout(case.x.kspace, rows)
    maps = estimate_maps(y, smask._replace(acs=(slice(0, rows), smask.acs[1]))).maps
    return Case(case.name, accel, case.accel, case.x._replace(kspace=y, maps=maps), case.target)

OUT = Path(__file__).resolve().parent / "results" / "selfval" / "readout.md"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=None, help="a fastMRI file (default: the built-in sample)")
    ap.add_argument("--readouts", default="full,crop,crop-maps")
    ap.add_argument("--accels", type=float, nargs="+", default=[4.0, 8.0])
    ap.add_argument("--methods", default="zf,sense,l1,oes")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    path = args.data or sample_path()
    dip = DipConfig(validation=ValidationConfig(share=0.0)).updated({"fit.steps": args.steps})
    lines = [f"# Readout oversampling: {path.name}", "",
             f"`python benchmarks/readout.py` ({platform.machine()}, torch {torch.__version__}, "
             f"{torch.get_num_threads()} thread(s)); Sparse-DIP: {args.steps} fit steps, no hold-out, seed 0; "
             "fixed lambdas. fastMRI definitions on the data-consistent RSS image of the middle slice.", "",
             "| accel | readout | method | k-space (C, H, W) | PSNR | SSIM | s |", "|---|---|---|---|---|---|---|"]
    for accel in args.accels:
        for readout in args.readouts.split(","):
            case = prepare_crop_maps(path, accel) if readout == "crop-maps" else prepare(path, accel, readout=readout)
            for m in args.methods.split(","):
                t = time.perf_counter()
                r = run_method(m, case.x, dip, tune=False)
                seconds = time.perf_counter() - t
                _, psnr, ssim = score(case, r.image)
                lines.append(f"| {accel:g} | {readout} | {m} | {tuple(case.x.kspace.shape)} | {psnr:.2f} | {ssim:.3f} "
                             f"| {seconds:.1f} |")
                print(lines[-1], flush=True)
    atomic_write_bytes(args.out, ("\n".join(lines) + "\n").encode())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
