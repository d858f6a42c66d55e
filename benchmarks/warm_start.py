"""A volume as a chain of warm-started slices against independent fits, side by side in one
run: total fit steps, fit seconds, volume and per-slice PSNR/SSIM (fastMRI definitions).

Each configuration is a whole CLI run (:func:`oes_mri.app.pipeline.run`) on the simulated
multi-slice volume (:func:`oes_mri.data.sample.sample_volume_path`), so the chain, the
hold-out rule and the outputs are exactly what a user gets. Configurations (``--configs``):
``independent-full`` (every slice from the random init, the oversampled readout fitted),
``independent`` (readout oversampling removed), ``warm`` (removed, slices chained, the CLI's
warm-start settings), ``warm-lrX-pN-sM`` (chained, a warm slice's learning rate X, patience N
and step cap M; any part may be left out).

    python benchmarks/warm_start.py                      # CPU: 5 slices of 128x128, 8 coils
    python benchmarks/warm_start.py --size 320 --coils 15 --slices 35 --device cuda   # knee size

Rows go to ``benchmarks/results/warm/rows.jsonl`` (a rerun reuses finished configurations
made with the same settings: each row carries a fingerprint of its full ``DipConfig``, so a
changed default measures again), the tables (rows of the current settings) to
``benchmarks/results/warm/warm_*.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import h5py
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import settings_digest  # noqa: E402

from oes_mri.atomic import atomic_write_bytes  # noqa: E402
from oes_mri.data.volumes import parse_slices  # noqa: E402
from oes_mri.data.sample import sample_volume_path  # noqa: E402
from oes_mri.metrics import slice_metrics  # noqa: E402
from oes_mri.methods import make  # noqa: E402
from oes_mri.app.pipeline import run  # noqa: E402
from oes_mri.app.volume import RunConfig  # noqa: E402
from oes_mri.fit.config import DipConfig, ValidationConfig, WarmStart  # noqa: E402

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "results" / "warm"


def config(name: str, args: argparse.Namespace, data: Path) -> RunConfig:
    """The run of configuration ``name`` (see the module docstring)."""
    parts = name.split("-")
    changes = {"fit.steps": args.steps, "warm.enabled": parts[0] == "warm",
               "speed.cuda_graph": args.device.startswith("cuda")}
    for part in parts[1:]:
        if part.startswith("lr"):
            changes["warm.lr"] = float(part[2:])
        elif part.startswith("p"):
            changes["warm.patience"] = int(part[1:])
        elif part.startswith("s"):
            changes["warm.steps"] = int(part[1:])
    dip = DipConfig(seed=args.seed).updated(changes)
    return RunConfig(data=data, out=args.work / f"{name}_seed{args.seed}", methods=[make(args.method, dip)],
                     accel=args.accel, device=args.device, overwrite=True,
                     readout="full" if name.endswith("-full") else "crop", slices=args.select)


def volume_label(data: Path, select: str | None) -> str:
    """The rows' name of the fitted volume: the file, and the selected slices if any."""
    return data.name + (f"[{select}]" if select else "")


def fingerprint(cfg: RunConfig) -> str:
    """:func:`quality.settings_digest` of the run's generator settings."""
    return settings_digest(cfg.methods[0].config)


def measure(name: str, args: argparse.Namespace, data: Path) -> dict:
    cfg = config(name, args, data)
    t = time.perf_counter()
    rec = run(cfg)[0]
    wall = time.perf_counter() - t
    with h5py.File(data) as hf:
        target = hf["reconstruction_rss"][()]
    target = target[parse_slices(args.select, len(target))]
    with h5py.File(cfg.out / args.method / data.name) as hf:
        recon = hf["reconstruction"][()]
    per = [slice_metrics(t_, r_, float(target.max())) for t_, r_ in zip(target, recon)]
    row = {"config": name, "seed": args.seed, "data": volume_label(data, args.select), "accel": rec["acceleration"],
           "method": args.method, "psnr": rec["psnr"], "ssim": rec["ssim"], "steps": rec["steps"],
           "total_steps": sum(rec["steps"]),
           "fit_seconds": rec["seconds"], "wall_seconds": round(wall, 1), "slice_psnr": [p for p, _ in per],
           "slice_ssim": [s for _, s in per], "device": args.device, "threads": torch.get_num_threads(),
           "settings": fingerprint(cfg)}
    print(f"  {name}: {row['psnr']:.2f} / {row['ssim']:.4f}, {row['total_steps']} steps {row['steps']}, "
          f"{row['fit_seconds']:.0f} s fitting", flush=True)
    return row


def table(rows: list[dict]) -> list[str]:
    lines = ["| config | seed | PSNR | SSIM | total steps | steps per slice | fit s | steps vs independent | "
             "fit time vs independent |", "|---|---|---|---|---|---|---|---|---|"]
    base = {r["seed"]: r for r in rows if r["config"] == "independent"}
    for r in rows:
        b = base.get(r["seed"])
        ratio = f"{r['total_steps'] / b['total_steps']:.2f}" if b else "-"
        tratio = f"{r['fit_seconds'] / b['fit_seconds']:.2f}" if b else "-"
        lines.append(f"| {r['config']} | {r['seed']} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['total_steps']} | "
                     f"{' '.join(map(str, r['steps']))} | {r['fit_seconds']:.0f} | {ratio} | {tratio} |")
    lines += ["", "Per-slice PSNR / SSIM (slice metrics with the volume maximum):", "",
              "| config | seed | " + " | ".join(f"slice {i}" for i in range(len(rows[0]["slice_psnr"]))) + " |",
              "|---|---|" + "---|" * len(rows[0]["slice_psnr"])]
    for r in rows:
        lines.append(f"| {r['config']} | {r['seed']} | " + " | ".join(
            f"{p:.2f} / {s:.3f}" for p, s in zip(r["slice_psnr"], r["slice_ssim"])) + " |")
    return lines


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="warm,independent,independent-full")
    p.add_argument("--slices", type=int, default=5, help="slices of the simulated volume")
    p.add_argument("--select", default=None, help="the slices to fit, as --slices of the CLI (default: all)")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--coils", type=int, default=8)
    p.add_argument("--accel", type=float, default=4.0)
    p.add_argument("--steps", type=int, default=2000, help="fit step cap (the hold-out rule stops earlier)")
    p.add_argument("--method", default="oes")
    p.add_argument("--seed", type=int, default=0, help="generator seed")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", type=Path, default=Path("/tmp/oes_warm_bench"))
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv[1:])
    torch.set_num_threads(args.threads)
    data = sample_volume_path(args.slices, args.size, args.coils)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "rows.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    label = volume_label(data, args.select)
    for name in filter(None, args.configs.split(",")):
        key = (name, args.seed, label, args.accel, args.method, args.steps, fingerprint(config(name, args, data)))
        if any((r["config"], r["seed"], r["data"], r.get("accel_nominal"), r["method"], r.get("cap"),
                r.get("settings")) == key for r in rows):
            continue
        row = {**measure(name, args, data), "accel_nominal": args.accel, "cap": args.steps}
        rows.append(row)
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
    current = {fingerprint(config(n, args, data)) for n in filter(None, args.configs.split(","))}
    rows = [r for r in rows if r.get("settings") in current and r["data"] == label]   # others: in rows.jsonl only
    for case in sorted({(r["data"], r["accel_nominal"], r["method"], r["cap"], r["device"]) for r in rows}):
        mine = [r for r in rows if (r["data"], r["accel_nominal"], r["method"], r["cap"], r["device"]) == case]
        md = [f"# Warm-started slices against independent fits: {case[0]}", "",
              f"`python benchmarks/{Path(argv[0]).name}` ({platform.machine()}, torch {torch.__version__}, "
              f"{mine[0]['threads']} thread(s), {case[4]}); method {case[2]}, {case[1]:g}x nominal "
              f"({mine[0]['accel']:.2f}x realised), step cap {case[3]}, CLI defaults otherwise (10 % held-out "
              f"lines, patience {ValidationConfig.patience}; a warm slice: patience {WarmStart.patience}, cap "
              f"{WarmStart.steps}). Fit seconds exclude ESPIRiT and I/O; the OES mask is learned once per "
              "volume in every configuration. fastMRI volume metrics.", "", *table(mine)]
        stem = case[0].replace(".h5", "").replace("[", "_").replace(":", "-").rstrip("]")
        name = f"warm_{stem}_{case[1]:g}x_{case[2]}_{case[4]}.md"
        atomic_write_bytes(args.out / name, ("\n".join(md) + "\n").encode())
        print("\n".join(md))


if __name__ == "__main__":
    main(sys.argv)
