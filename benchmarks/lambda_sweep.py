"""Regularisation sweep of the compressed-sensing baselines (L1-wavelet, TV) and CG-SENSE:
how the default weights of :mod:`oes_mri.methods.classical` were chosen.

    python benchmarks/lambda_sweep.py          # about 5 min on 2 CPU cores

lambda is relative to the data scale (``oes_mri.methods.solvers`` divides the k-space by
``max |A^H y|``), so one default serves fastMRI knee data, the built-in sample and tiny
phantoms. Same cases and metrics as ``benchmarks/quality.py`` (middle slice, fastMRI random
mask with the per-volume seed, fastMRI definitions). Writes ``lambda_sweep.md`` / ``.csv``.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from pathlib import Path

from quality import default_files, prepare, score

from oes_mri.atomic import atomic_write_bytes
from oes_mri.methods import make

ROOT = Path(__file__).resolve().parent
GRID = {"l1": [3e-4, 1e-3, 2e-3, 3e-3, 1e-2], "tv": [3e-4, 1e-3, 3e-3, 1e-2, 3e-2], "sense": [1e-3, 1e-2, 3e-2, 1e-1]}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", nargs="*", help="fastMRI files with targets (default: sample + shared brain)")
    p.add_argument("--accels", type=float, nargs="+", default=[4.0, 8.0])
    p.add_argument("--out", type=Path, default=ROOT / "results")
    args = p.parse_args(argv[1:])
    files = [Path(f) for f in args.data] if args.data else default_files()
    rows = []
    for f in files:
        for a in args.accels:
            case = prepare(f, a)
            for method, grid in GRID.items():
                for lam in grid:
                    t = time.perf_counter()
                    res = make(method, tune=False, lamda=lam).reconstruct_batch([case.x])[0]
                    nmse, psnr, ssim = score(case, res.image)
                    rows.append({"data": case.name, "accel": case.accel, "method": method, "lambda": lam,
                                 "psnr": psnr, "ssim": ssim, "nmse": nmse, "seconds": time.perf_counter() - t})
                    print(f"  {case.name} {a:g}x {method} {lam:g}: {psnr:.2f} dB {ssim:.3f}", flush=True)
    sense, l1, tv = (make(m) for m in ("sense", "l1", "tv"))
    md = ["# Regularisation sweep (CG-SENSE, L1-wavelet, TV)\n",
          f"Command: `{' '.join(['python', 'benchmarks/' + Path(argv[0]).name, *argv[1:]])}`\n",
          f"Defaults in `oes_mri.methods`: CG-SENSE lambda {sense.lamda:g} ({sense.iters} it.), "
          f"L1-wavelet {l1.lamda:g}, TV {tv.lamda:g} ({tv.iters} it.); lambda relative "
          "to max |A^H y|. Bold: best PSNR per case and method.\n",
          "| data | accel | method | lambda | PSNR | SSIM | NMSE | s |", "|---|---|---|---|---|---|---|---|"]
    best = {}
    for r in rows:
        k = (r["data"], r["accel"], r["method"])
        if k not in best or r["psnr"] > best[k]["psnr"]:
            best[k] = r
    for r in rows:
        b = "**" if best[(r["data"], r["accel"], r["method"])] is r else ""
        md.append(f"| {r['data']} | {r['accel']:.2f} | {r['method']} | {b}{r['lambda']:g}{b} | {r['psnr']:.2f} | "
                  f"{r['ssim']:.3f} | {r['nmse']:.4f} | {r['seconds']:.1f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "lambda_sweep.md", ("\n".join(md) + "\n").encode())
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(args.out / "lambda_sweep.csv", buf.getvalue().encode())
    print("\n".join(md))


if __name__ == "__main__":
    main()
