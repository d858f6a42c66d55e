"""Averaging K generators: does the mean image of K fits buy the CPU default its missing
decibels, and at how many of L1-wavelet's seconds?

    python benchmarks/averaging.py                         # brain and sample at 4x, seeds 0-4, K = 1 and 2
    python benchmarks/averaging.py --files my.h5 --accels 4 8 --folds 1 2 3

Per case (the middle slice at the CLI's default fastMRI random mask, readout oversampling
removed as the CLI does) the classical baselines run first, L1-wavelet and CG-SENSE with their
held-out lambda (each twice; the second run is timed, so numba's compilation is not counted).
Then, per generator seed, the CLI's CPU default (``random-channels``: a quarter of the
channels, cap 1500, warm-up to 3e-2, the held-out rule) with ``validation.folds`` = K: K fits
of the seed's generator, each holding out another share of the lines and stopped by it, fitted
one after another, their images averaged (``--holdout-folds K`` on the command line); and
"K = 2 draws": the mean image of two independent single fits (seeds s and s + 1: other
channels, init and held-out lines), from the kept K = 1 images. Every fit of
the table runs in this one process, one thread, so seconds are comparable side by side.

Rows go to ``benchmarks/results/averaging/rows.jsonl`` as they finish (a rerun resumes);
``averaging.md`` is rebuilt from them: PSNR / SSIM (fastMRI definitions, data_range = target
max) mean over seeds, the spread (max - min PSNR), seconds a fit and its multiple of L1's.
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import Rows, default_files, prepare, run_method, score  # noqa: E402
from time_to_quality import run_classical  # noqa: E402

from oes_mri.atomic import atomic_write_bytes  # noqa: E402
from oes_mri.fit.config import DipConfig  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "averaging"
METHOD = "random-channels"


def classical(rows: Rows, case, name: str) -> dict:
    """Held-out-tuned ``name`` on ``case``: run twice, the second timed."""
    key = f"classical|{case.name}|{case.accel_nominal:g}|{name}"
    if rows.get(key) is None:
        r = run_classical(case, name)
        rows.add({"key": key, "data": case.name, "accel": case.accel, "accel_nominal": case.accel_nominal,
                  "method": name, "psnr": r["psnr"], "ssim": r["ssim"], "seconds": round(r["seconds"], 2),
                  "lambda": r["lambda"]})
    return rows.get(key)


def image_file(case, seed: int, steps: int) -> Path:
    """Where a single fit's final image is kept (K = 1; for the averages of independent draws)."""
    return OUT / "images" / f"{case.name}_{case.accel_nominal:g}x_seed{seed}_{steps}.npy"


def averaged(rows: Rows, case, folds: int, seed: int, steps: int) -> dict:
    """The CPU default with ``folds`` generators averaged, generator seed ``seed`` (K = 1: its
    image kept under ``images/``)."""
    key = f"dip|{case.name}|{case.accel_nominal:g}|K={folds}|seed={seed}|steps={steps}"
    keep = image_file(case, seed, steps) if folds == 1 else None
    if rows.get(key) is None or (keep is not None and not keep.exists()):
        dip = DipConfig(seed=seed).updated({"fit.steps": steps, "validation.folds": folds})
        t = time.perf_counter()
        res = run_method(METHOD, case.x, dip)
        seconds = time.perf_counter() - t
        if keep is not None:
            keep.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(keep, _npy(res.image))
        if rows.get(key) is not None:                  # refitted only for its image
            return rows.get(key)
        _, psnr, ssim = score(case, res.image)
        rows.add({"key": key, "data": case.name, "accel": case.accel, "accel_nominal": case.accel_nominal,
                  "method": f"K={folds}", "seed": seed, "psnr": psnr, "ssim": ssim, "seconds": round(seconds, 1),
                  "steps": res.history.get("steps"), "stop": res.history.get("stop")})
        print(f"  {case.name} {case.accel_nominal:g}x K={folds} seed {seed}: {psnr:.2f} / {ssim:.3f} "
              f"({seconds:.0f} s)", flush=True)
    return rows.get(key)


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def draws(rows: Rows, case, seeds: list[int], steps: int) -> None:
    """K = 2 independent draws (two seeds: other channels, init and held-out lines): the mean
    of the kept images of seeds ``s`` and the next seed (cyclically), scored; seconds: the two fits'."""
    for i, s in enumerate(seeds):
        t = seeds[(i + 1) % len(seeds)]
        key = f"draws|{case.name}|{case.accel_nominal:g}|seeds={s},{t}|steps={steps}"
        files = [image_file(case, u, steps) for u in (s, t)]
        if rows.get(key) is not None or not all(f.exists() for f in files):
            continue
        image = np.mean([np.load(f) for f in files], axis=0)
        _, psnr, ssim = score(case, image)
        singles = [rows.get(f"dip|{case.name}|{case.accel_nominal:g}|K=1|seed={u}|steps={steps}") for u in (s, t)]
        rows.add({"key": key, "data": case.name, "accel": case.accel, "accel_nominal": case.accel_nominal,
                  "method": "K=2 draws", "seed": s, "psnr": psnr, "ssim": ssim,
                  "seconds": round(sum(r["seconds"] for r in singles), 1)})


def report(rows: Rows, threads: int) -> None:
    lines = ["# Averaging K generators (the CPU default, `--holdout-folds K`)", "",
             f"CPU: {platform.machine()}, {threads} torch thread(s), torch {torch.__version__}; made by "
             "`benchmarks/averaging.py` (its docstring says how). PSNR dB / SSIM, fastMRI definitions; "
             "generators: mean over seeds, spread = max - min PSNR; x L1 = seconds a fit over held-out "
             "L1-wavelet's seconds on the same slice, measured side by side in one process.", "",
             "| case | method | seeds | PSNR | SSIM | spread dB | PSNR per seed | s / fit | x L1 |",
             "|---|---|---|---|---|---|---|---|---|"]
    cases = dict.fromkeys((r["data"], r["accel_nominal"]) for r in rows.rows.values())
    for data, accel in cases:
        rs = [r for r in rows.rows.values() if (r["data"], r["accel_nominal"]) == (data, accel)]
        l1 = next((r["seconds"] for r in rs if r["method"] == "l1"), None)
        for method in dict.fromkeys(r["method"] for r in rs):
            group = sorted((r for r in rs if r["method"] == method), key=lambda r: r.get("seed", 0))
            p = [r["psnr"] for r in group]
            s = statistics.mean(r["seconds"] for r in group)
            ratio = f"{s / l1:.1f}" if l1 else "-"
            per_seed = ", ".join(f"{x:.2f}" for x in p) if "seed" in group[0] else ""
            lines.append(f"| {data} {accel:g}x | {method} | {len(group) if per_seed else ''} | {statistics.mean(p):.2f} "
                         f"| {statistics.mean(r['ssim'] for r in group):.3f} | "
                         f"{max(p) - min(p):.2f} | {per_seed} | {s:.1f} | {ratio} |")
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(OUT / "averaging.md", ("\n".join(lines) + "\n").encode())
    print(f"wrote {OUT / 'averaging.md'}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=Path, nargs="*", default=None, help="fastMRI files (default: sample, brain)")
    ap.add_argument("--accels", type=float, nargs="+", default=[4.0])
    ap.add_argument("--folds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    rows = Rows(OUT / "quality_rows.jsonl")
    if not args.report_only:
        for f in args.files if args.files is not None else default_files()[::-1]:
            for a in args.accels:
                case = prepare(f, a, readout="crop")
                for name in ("l1", "sense"):
                    classical(rows, case, name)
                for seed in args.seeds:
                    for k in args.folds:
                        averaged(rows, case, k, seed, args.steps)
                draws(rows, case, args.seeds, args.steps)
                report(rows, args.threads)
    report(rows, args.threads)


if __name__ == "__main__":
    main()
