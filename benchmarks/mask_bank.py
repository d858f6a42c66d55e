"""Mask-bank benchmark: is a long-learned OES channel pattern better than a random one, and does
it survive the move to another image, coil count and acceleration?

    python benchmarks/mask_bank.py --part learn      # OES channel masks on the sample, snapshots of the budget
    python benchmarks/mask_bank.py --part transfer   # each mask (and random channels) on each target, 5 seeds
    python benchmarks/mask_bank.py --report-only     # rebuild mask_bank.md from the rows

``learn``: OES over channels (a quarter kept) on the built-in sample at 4x, every measured
sample in the data term, seeds ``--mask-seeds``, one run per seed with the masks of
``--snapshots`` steps kept (one run measures every budget); files under
``results/mask_bank/masks/``. ``transfer``: each target's middle slice at the CLI's fastMRI
random mask, the CPU default fit (cap 1500, warm-up to 3e-2, the held-out rule) from a fresh
init of each generator seed with (a) each learned mask as a pattern, (b) random channels of
the same seed (the default), (c) ``MASK@own-init``: the mask with the init it was learned on
(OES learns a mask for one init; the generator seed then changes nothing); fastMRI PSNR/SSIM
of the output, oracle peak for reference.
Rows appended at once to ``quality_rows.mask_bank.jsonl`` (an interrupted run resumes).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cases import case_files  # noqa: E402
from quality import Rows, curve_score, default_files, prepare, run_method, score  # noqa: E402

from oes_mri.app.bank import BankSpec, learn  # noqa: E402
from oes_mri.atomic import atomic_write_bytes  # noqa: E402
from oes_mri.data.sample import sample_path  # noqa: E402
from oes_mri.fit.config import DipConfig  # noqa: E402
from oes_mri.pruning.weightmask import WeightMask  # noqa: E402

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "results" / "mask_bank"


def mask_file(seed: int, steps: int) -> Path:
    return OUT / "masks" / f"oes-channels25_sample4x_seed{seed}_{steps}.safetensors"


def learn_part(rows: Rows, seeds: list[int], snapshots: list[int]) -> None:
    for seed in seeds:
        final = max(snapshots)
        if all(mask_file(seed, s).exists() for s in snapshots):
            continue
        t = time.perf_counter()
        wm, shots = learn(sample_path(), BankSpec(steps=final, seed=seed), tuple(snapshots),
                          source="built-in sample")
        seconds = time.perf_counter() - t
        for s, m in {**shots, final: wm}.items():
            m.save(mask_file(seed, s))
        rows.add({"key": f"learn|{seed}|{final}", "experiment": "learn", "seed": seed, "steps": final,
                  "seconds": round(seconds, 1)})
        print(f"  mask seed {seed}: {final} OES steps in {seconds:.0f} s", flush=True)


def transfer_part(rows: Rows, files: list[Path], accels: list[float], seeds: list[int], masks: list[str],
                  steps: int) -> None:
    for f in files:
        for a in accels:
            case = prepare(f, a)
            for label in ["random"] + masks:
                for seed in seeds:
                    key = f"transfer|{case.name}|{a:g}|{label}|seed={seed}|steps={steps}"
                    if rows.get(key):
                        continue
                    dip = DipConfig(seed=seed).updated({"fit.steps": steps})
                    wm = None
                    if label != "random":               # "<mask>@own-init": the init the mask was learned on
                        wm = WeightMask.load(OUT / "masks" / f"{label.partition('@')[0]}.safetensors")
                        wm = WeightMask(wm.masks, {**wm.meta, "pattern_only": not label.endswith("@own-init")})
                    t = time.perf_counter()
                    res = run_method("oes-channels" if wm is not None else "random-channels", case.x, dip, wm,
                                     score=curve_score(case))
                    seconds = time.perf_counter() - t
                    _, psnr, ssim = score(case, res.image)
                    curve = [(r["step"], r["psnr"], r["ssim"]) for r in res.history["monitor"]]
                    peak = max(c[1] for c in curve)
                    rows.add({"key": key, "experiment": "transfer", "data": case.name, "accel": case.accel,
                              "accel_nominal": a, "mask": label, "seed": seed, "psnr": psnr, "ssim": ssim,
                              "psnr_peak": peak, "steps": res.history["steps"], "stop": res.history["stop"],
                              "seconds": round(seconds, 1)})
                    print(f"  {case.name} {a:g}x {label} seed {seed}: {psnr:.2f} / {ssim:.3f} "
                          f"({res.history['steps']} steps, {res.history['stop']}, {seconds:.0f} s)", flush=True)


def report(rows: Rows) -> None:
    tr = [r for r in rows.rows.values() if r["experiment"] == "transfer"]
    groups: dict[tuple, list[dict]] = {}
    for r in tr:
        groups.setdefault((r["data"], r["accel_nominal"], r["mask"]), []).append(r)
    lines = ["# Mask bank: learned OES channel patterns against random channels", "",
             "Command: `python benchmarks/mask_bank.py --part learn` then `--part transfer`. The CPU default fit "
             "(a quarter of the channels, cap 1500, warm-up to 3e-2, held-out rule) from a fresh init of each "
             "generator seed; 'random': random channels of that seed (today's default); the others: an OES channel "
             "mask learned once on the built-in sample at 4x (mask seed, OES steps) used as a pattern. PSNR / SSIM "
             "(fastMRI definitions) mean over seeds, the spread (max - min PSNR) and the seeds.", "",
             "| target | accel | mask | seeds | PSNR | SSIM | spread dB | PSNR per seed | s / fit |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (d, a, m), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] != "random", kv[0][2])):
        rs = sorted(rs, key=lambda r: r["seed"])
        p = [r["psnr"] for r in rs]
        lines.append(f"| {d} | {a:g}x | {m} | {len(rs)} | {statistics.mean(p):.2f} | "
                     f"{statistics.mean(r['ssim'] for r in rs):.3f} | {max(p) - min(p):.2f} | "
                     f"{', '.join(f'{x:.2f}' for x in p)} | {statistics.mean(r['seconds'] for r in rs):.0f} |")
    learn_rows = [r for r in rows.rows.values() if r["experiment"] == "learn"]
    if learn_rows:
        lines += ["", "Mask learning (one core): " + "; ".join(f"seed {r['seed']}: {r['steps']} OES steps in "
                                                            f"{r['seconds']:.0f} s" for r in learn_rows)]
    atomic_write_bytes(OUT / "mask_bank.md", ("\n".join(lines) + "\n").encode())
    print(f"wrote {OUT / 'mask_bank.md'}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=("learn", "transfer"), default="transfer")
    ap.add_argument("--mask-seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--snapshots", type=int, nargs="+", default=[100, 300, 1000, 3000])
    ap.add_argument("--masks", nargs="*", default=None, help="mask file stems under results/mask_bank/masks/ "
                    "(STEM@own-init: with the init it was learned on, the seed then changes nothing)")
    ap.add_argument("--cases", nargs="*", default=["brain4", "sample4"], help="benchmarks/cases.py cases")
    ap.add_argument("--default-files", action="store_true", help="also the sample and the shared brain")
    ap.add_argument("--files", type=Path, nargs="*", default=[], help="also these fastMRI files")
    ap.add_argument("--accels", type=float, nargs="+", default=[4.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    (OUT / "masks").mkdir(parents=True, exist_ok=True)
    rows = Rows(OUT / f"quality_rows.mask_bank_{args.part}.jsonl")
    if not args.report_only:
        if args.part == "learn":
            learn_part(rows, args.mask_seeds, args.snapshots)
        else:
            files = (default_files() if args.default_files else []) + list(args.files) + case_files(args.cases)
            masks = args.masks if args.masks is not None else sorted(
                p.name[:-len(".safetensors")] for p in (OUT / "masks").glob("*.safetensors"))
            transfer_part(rows, files, args.accels, args.seeds, masks, args.steps)
        rows = Rows(OUT / f"quality_rows.mask_bank_{args.part}.jsonl")
    report(rows)


if __name__ == "__main__":
    main()
