"""Self-validation benchmark: does the held-out k-space pick the right iterate and the right
lambda, without ground truth?

    python benchmarks/self_validation.py --part curves   # long fits recording the held-out loss (rule off)
    python benchmarks/self_validation.py --part table    # the rule as the CLI runs it, every method
    python benchmarks/self_validation.py --report-only   # rebuild selfval.md from the rows

Each case is the middle slice of a file at the CLI's fastMRI random mask (``quality.prepare``),
scored with fastMRI's definitions on the data-consistent RSS image (every measured sample,
held-out ones included, in the data consistency). ``curves`` rows fit to the step cap and log
PSNR/SSIM every ``log_every`` steps next to the held-out loss at every step, so the stopping
rule can be replayed offline for any patience (:func:`replay`; PSNR/SSIM of the chosen step
taken at the nearest logged step). ``table`` rows run the rule for real. Rows are appended
to ``<out>/quality_rows.<part>.jsonl`` at once (an interrupted run resumes).
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import (Case, Rows, ablation, curve_score, default_files, prepare, score,  # noqa: E402
                     settings_digest)

from oes_mri.atomic import atomic_write_bytes  # noqa: E402
from quality import run_method  # noqa: E402
from replay import replay as replay_rule  # noqa: E402

from oes_mri.methods import LAMBDA_FACTORS, make  # noqa: E402
from oes_mri.physics.operator import MultiCoilOp  # noqa: E402
from oes_mri.fit.jobs import DipConfig, ValidationConfig  # noqa: E402

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "results" / "selfval"
LOG_EVERY = 25           # the curves' logging interval (--log-every), where the replayed rule decides


def parse_validation(spec: str) -> dict:
    """``"share=0.1,shape=lines"`` -> ValidationConfig fields (each item typed by
    :func:`quality.ablation` as ``validation.<item>``)."""
    return {k.partition(".")[2]: v for k, v in parse_settings(
        ",".join(f"validation.{item}" for item in filter(None, spec.split(",")))).items()}


def parse_settings(spec: str) -> dict:
    """``"fit.penalty=0.002,fit.lr=0.005"`` -> :meth:`DipConfig.updated` changes (each item
    by :func:`quality.ablation`)."""
    return {k: v for item in filter(None, spec.split(",")) for k, v in ablation(item).items()}


def run_generator(rows: Rows, part: str, case: Case, method: str, seed: int, steps: int,
                  validation: ValidationConfig, label: str, log_every: int, settings: str = "") -> dict:
    """One untrained-generator fit (or reuse its row): output, chosen step, curves; ``settings``:
    further :meth:`DipConfig.updated` changes (``"fit.penalty=0.002"``), part of the row's label.
    The key ends with a hash of the full settings (defaults included): a row is reused only for
    the settings it was made with."""
    label = f"{label}|{settings}" if settings else label
    dip = DipConfig(seed=seed, validation=validation).updated(
        {"fit.steps": steps, "fit.log_every": log_every, **parse_settings(settings)})
    key = f"{part}|{case.name}|{case.accel_nominal}|{method}|seed={seed}|{label}|cfg={settings_digest(dip)}"
    if rows.get(key):
        return rows.get(key)
    t = time.perf_counter()
    res = run_method(method, case.x, dip, score=curve_score(case))
    seconds = time.perf_counter() - t
    nmse, psnr, ssim = score(case, res.image)
    h = res.history
    curve = [(r["step"], r["psnr"], r["ssim"]) for r in h["monitor"]]
    peak = max(curve, key=lambda c: c[1])
    peak_ssim = max(curve, key=lambda c: c[2])
    row = {"key": key, "experiment": part, "data": case.name, "accel": case.accel, "accel_nominal": case.accel_nominal,
           "method": method, "seed": seed, "variant": label, "psnr": psnr, "ssim": ssim, "nmse": nmse,
           "seconds": round(seconds, 1), "steps": h["steps"], "best_step": h["best_step"], "stop": h["stop"],
           "psnr_peak": peak[1], "peak_step": peak[0], "ssim_peak": peak_ssim[2], "ssim_peak_step": peak_ssim[0],
           "curve": curve, "val": [round(v, 6) for v in h["val_losses"]], "device": rows.device}
    print(f"  {case.name} {case.accel_nominal:g}x {method} seed {seed} {label}: {psnr:.2f} / {ssim:.3f} "
          f"at step {h['best_step']} of {h['steps']} ({h['stop']}); peak {peak[1]:.2f} at {peak[0]} "
          f"({seconds:.0f} s)", flush=True)
    return rows.add(row)


def run_classical(rows: Rows, case: Case, method: str, validation: ValidationConfig, label: str) -> dict:
    """A regularised baseline with its weight chosen by held-out error, next to the fixed
    weight and the oracle over the same grid (every grid weight solved with all samples and
    scored against the target: reference only)."""
    key = f"table|{case.name}|{case.accel_nominal}|{method}|{label}"
    if rows.get(key):
        return rows.get(key)
    m = make(method, DipConfig(validation=validation))
    t = time.perf_counter()
    res = m.reconstruct_batch([case.x])[0]
    seconds = time.perf_counter() - t
    nmse, psnr, ssim = score(case, res.image)
    op = MultiCoilOp(case.x.mask, case.x.maps, case.x.recon_size)
    grid = [score(case, m.solve(case.x.kspace, op, lam).coil_images)[1:]
            for lam in res.history["lambda_grid"]]
    fixed = grid[list(LAMBDA_FACTORS).index(1.0)]
    oracle = max(range(len(grid)), key=lambda i: grid[i][0])
    row = {"key": key, "experiment": "table", "data": case.name, "accel": case.accel,
           "accel_nominal": case.accel_nominal, "method": method, "variant": label, "psnr": psnr, "ssim": ssim,
           "nmse": nmse, "seconds": round(seconds, 1), "lambda": res.history["lambda"],
           "lambda_grid": res.history["lambda_grid"], "lambda_errors": res.history["lambda_errors"],
           "grid_psnr_ssim": grid, "psnr_fixed": fixed[0], "ssim_fixed": fixed[1],
           "lambda_oracle": res.history["lambda_grid"][oracle], "psnr_oracle": grid[oracle][0],
           "ssim_oracle": grid[oracle][1], "device": rows.device}
    print(f"  {case.name} {case.accel_nominal:g}x {method} {label}: lambda {row['lambda']:g} {psnr:.2f} / {ssim:.3f}; "
          f"fixed {fixed[0]:.2f} / {fixed[1]:.3f}; oracle lambda {row['lambda_oracle']:g} {grid[oracle][0]:.2f}"
          f" ({seconds:.0f} s)", flush=True)
    return rows.add(row)


def replay(vals: list[float], cfg: ValidationConfig, fallback: int | None, log_every: int) -> tuple[int, int, str]:
    """The stopping rule of ``cfg`` on a recorded held-out curve: ``(chosen step, stop step,
    reason)``, decided every ``log_every`` steps as the fit decides it
    (:class:`~oes_mri.fit.stopping.ValidationStop`, by :func:`replay.replay`)."""
    rule = dataclasses.replace(cfg, fallback_steps=fallback).rule(1)
    record, stop = replay_rule(vals, rule, log_every)
    return int(record.best_step), stop, rule.reason[0]


OLD_RULE = ValidationConfig(informative=0.99, rise=0.0, noise=0.0, start=1)
"""The rule before issue 34: patience alone, from the first step, informative below 0.99."""


def rule_on_row(row: dict, patience: int, cap: int | None = None, fallback: int | None = None,
                rule: ValidationConfig | None = None) -> tuple[int, int, str, float, float]:
    """A rule (default: the package's, with ``patience``) replayed on a curves row cut at
    ``cap`` steps (``None``: all it recorded), with the ``fallback`` budget (``None``: the
    cap): ``(chosen step, stop step, reason, PSNR, SSIM)``, PSNR/SSIM read at the logged step
    nearest the chosen one."""
    cfg = dataclasses.replace(rule or ValidationConfig(), patience=patience)
    chosen, stop, why = replay(row["val"][:cap], cfg, fallback or 10**9, LOG_EVERY)
    return (chosen, stop, why, *at_step(row["curve"], chosen))


def at_step(curve: list, step: int) -> tuple[float, float]:
    """PSNR/SSIM of the logged step nearest to ``step``."""
    c = min(curve, key=lambda r: abs(r[0] - step))
    return c[1], c[2]


CAPS = (3000, 4000, 5000, 6000)   # step caps replayed on curves recorded past the default cap


def caps_table(curves: list[dict], patience: int) -> list[str]:
    """Markdown: the rule (``patience``, the cap as the fallback budget) replayed on each curve
    cut at each of :data:`CAPS` it reaches: what a longer cap gives the same fit."""
    if not curves:
        return []
    caps = [c for c in CAPS if any(len(r["val"]) >= c for r in curves)]
    lines = ["## Step caps, rule replayed", "",
             f"Curves recorded past {CAPS[0]} steps, cut at each cap and the rule (patience {patience}, the "
             "cap as the fallback budget) replayed: PSNR / SSIM (chosen step).", "",
             "| data | accel | method | seed | hold-out | " + " | ".join(f"cap {c}" for c in caps) + " |",
             "|---|---|---|---|---|" + "---|" * len(caps)]
    for r in sorted(curves, key=lambda r: r["key"]):
        cells = []
        for c in caps:
            if len(r["val"]) < c:
                cells.append("")
                continue
            chosen, _, why, psnr, ssim = rule_on_row(r, patience, c)
            cells.append(f"{psnr:.2f} / {ssim:.3f} ({chosen}{', fallback' if why == 'uninformative' else ''})")
        lines.append(f"| {r['data']} | {r['accel']:.2f} | {r['method']} | {r['seed']} | {r['variant']} | "
                     + " | ".join(cells) + " |")
    return lines + [""]


BUDGETS = ((3000, 400, None), (6000, 400, 3000), (6000, 400, None), (6000, 800, 3000), (6000, 800, None))
"""Candidate step budgets (cap, patience, fallback; ``None``: the cap) compared by :func:`budgets_table`."""


def budgets_table(curves: list[dict]) -> list[str]:
    """Markdown: each budget of :data:`BUDGETS` replayed on every curve recorded to its cap, as
    the mean over seeds per image and acceleration: PSNR / SSIM (mean steps run)."""
    groups: dict[tuple, list[dict]] = {}
    for r in curves:
        if len(r["val"]) >= max(b[0] for b in BUDGETS):
            groups.setdefault((r["data"], round(r["accel"], 2), r["method"], r["variant"]), []).append(r)
    if not groups:
        return []
    keys = sorted(groups)
    lines = ["## Step budgets, rule replayed (means over seeds)", "",
             "Each candidate budget replayed on the same curves: PSNR / SSIM (mean steps run), mean over the "
             "seeds listed. The fallback is the budget of a fit whose held-out set is uninformative.", "",
             "| cap | patience | fallback | " + " | ".join(
                 f"{d} {a:.2f}x {m} ({len(groups[(d, a, m, v)])} seeds)" for d, a, m, v in keys) + " |",
             "|---|---|---|" + "---|" * len(keys)]
    for cap, patience, fallback in BUDGETS:
        cells = []
        for k in keys:
            runs = [rule_on_row(r, patience, cap, fallback) for r in groups[k]]
            n = len(runs)
            cells.append(f"{sum(x[3] for x in runs) / n:.2f} / {sum(x[4] for x in runs) / n:.3f} "
                         f"({sum(x[1] for x in runs) / n:.0f})")
        lines.append(f"| {cap} | {patience} | {fallback or cap} | " + " | ".join(cells) + " |")
    return lines + [""]


def rules_table(curves: list[dict], cap: int) -> list[str]:
    """Markdown: the rule before issue 34 and the default rule replayed on every curve cut at
    ``cap`` (the cap as the fallback budget), per image and acceleration over its seeds: mean
    PSNR / SSIM, the worst seed's loss against running to the cap ("to cap") and, for a stop,
    against its own oracle peak, the spread (max - min PSNR), and the seeds' stop reasons."""
    groups: dict[tuple, list[dict]] = {}
    for r in curves:
        if len(r["val"]) >= cap and r["method"] == "random-channels" and "fit.lr=0.03" in r["variant"]:
            groups.setdefault((r["data"], r["accel_nominal"]), []).append(r)
    if not groups:
        return []
    lines = [f"## The stopping rule over seeds, before and after (CPU default, cap {cap})", "",
             "Random channels (a quarter), warm-up to 3e-2, lines held out (10 %); each curve recorded to the "
             "cap with the rule off and the rule replayed on it. 'worst vs cap': the largest PSNR a seed loses "
             "against the same fit run to the cap (its fallback budget); 'worst stop vs peak': the largest gap "
             "between a stopped seed and that fit's oracle peak (the best logged PSNR up to the cap). "
             "Before: patience 400 alone, informative below 0.99, from the first step. After: the default "
             "(`ValidationConfig`: a stop needs the smoothed held-out error 5 % and 3 noise std above its "
             "minimum for the patience, informative below 0.9, candidates from step 300; a plateau or an "
             "uninformative hold-out runs to the cap and returns the last iterate).", "",
             "| data | accel | seeds | rule | PSNR | SSIM | spread dB | worst vs cap dB | worst stop vs peak dB | stops |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (d, a), rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: r["seed"])
        for label, rule in (("before", OLD_RULE), ("after", ValidationConfig())):
            runs = [rule_on_row(r, rule.patience, cap, None, rule) for r in rs]
            caps = [at_step(r["curve"], cap)[0] for r in rs]
            peaks = [max(c[1] for c in r["curve"] if c[0] <= cap) for r in rs]
            p = [x[3] for x in runs]
            stopped = [pk - x[3] for x, pk in zip(runs, peaks) if x[1] < cap or x[2] in ("overfit", "patience")]
            reasons = [x[2] for x in runs]
            lines.append(f"| {d} | {a:g}x | {len(rs)} | {label} | {statistics.mean(p):.2f} | "
                         f"{statistics.mean(x[4] for x in runs):.3f} | {max(p) - min(p):.2f} | "
                         f"{max(c - x for c, x in zip(caps, p)):.2f} | {max(stopped) if stopped else 0:.2f} | "
                         + ", ".join(f"{k} {reasons.count(k)}" for k in dict.fromkeys(reasons)) + " |")
    return lines + [""]


def report(rows: Rows, out: Path, patiences: list[int]) -> None:
    """``selfval.md``: the curves replayed for each patience, and the table rows."""
    lines = ["# Self-validation benchmark", "",
             "Command: `python benchmarks/self_validation.py` (parts `curves`, `table`); "
             f"machine {platform.machine()}, torch {torch.__version__}.", "",
             "fastMRI definitions (PSNR, SSIM with data_range = target max) on the data-consistent RSS image "
             "of the middle slice (every measured sample, held-out ones included, in the data consistency), "
             "fastMRI random mask with the per-volume seed. No ground truth is used by any rule; "
             "the peak columns are the oracle (every logged step of the same run), for reference.", ""]
    curves = [r for r in rows.rows.values() if r["experiment"] == "curves"]
    if curves:
        lines += ["## Held-out curves, rule replayed", "",
                  "Fits to the step cap with the held-out loss recorded at every step; the rule replayed for "
                  f"each patience, with the default informative threshold ({ValidationConfig.informative:g}) and "
                  f"smoothing ({ValidationConfig.smoothing:g} steps) and "
                  "the cap as the fallback budget (PSNR/SSIM of the chosen step read at the nearest logged "
                  "step). gap = oracle peak of the same run - chosen. Rows without `fit.penalty` in their "
                  "hold-out label were made without the hybrid prior (penalty 0, the default until it became 2e-3).",
                  "",
                  "| data | accel | method | seed | hold-out | patience | chosen step | stop step | PSNR | SSIM "
                  "| peak PSNR (step) | peak SSIM (step) | gap dB | gap SSIM |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(curves, key=lambda r: r["key"]):
            for p in patiences:
                chosen, stop, why, psnr, ssim = rule_on_row(r, p)
                lines.append(f"| {r['data']} | {r['accel']:.2f} | {r['method']} | {r['seed']} | {r['variant']} | {p} "
                             f"| {chosen} | {stop} ({why}) | {psnr:.2f} | {ssim:.3f} | {r['psnr_peak']:.2f} "
                             f"({r['peak_step']}) | {r['ssim_peak']:.3f} ({r['ssim_peak_step']}) "
                             f"| {r['psnr_peak'] - psnr:.2f} | {r['ssim_peak'] - ssim:.3f} |")
        lines.append("")
    lines += rules_table(curves, 1500) + rules_table(curves, 6000)
    lines += caps_table([r for r in curves if len(r["val"]) > CAPS[0]], ValidationConfig.patience)
    lines += budgets_table(curves)
    cs = [r for r in rows.rows.values() if r["experiment"] == "table" and "lambda" in r]
    if cs:
        lines += ["## Baselines: lambda by held-out error", "",
                  "Each weight of the grid (the fixed weight x 0.1, 0.3, 1, 3, 10) solved on the fit set and "
                  "scored on the held-out set; the chosen weight solved again with every sample. 'fixed': the "
                  "fixed weight of `oes_mri.methods`; 'oracle': the grid weight with the best PSNR against the "
                  "target (reference only).", "",
                  "| data | accel | method | hold-out | chosen lambda | PSNR | SSIM | fixed PSNR | fixed SSIM "
                  "| oracle lambda | oracle PSNR | oracle SSIM | s |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(cs, key=lambda r: r["key"]):
            lines.append(f"| {r['data']} | {r['accel']:.2f} | {r['method']} | {r['variant']} | {r['lambda']:.2g} "
                         f"| {r['psnr']:.2f} | {r['ssim']:.3f} | {r['psnr_fixed']:.2f} | {r['ssim_fixed']:.3f} "
                         f"| {r['lambda_oracle']:.2g} | {r['psnr_oracle']:.2f} | {r['ssim_oracle']:.3f} | {r['seconds']} |")
        lines.append("")
    table = [r for r in rows.rows.values() if r["experiment"] == "table" and "lambda" not in r]
    if table:
        lines += ["## The rule as run", "",
                  "| data | accel | method | seed | variant | PSNR | SSIM | chosen step | steps run (why) "
                  "| peak PSNR (step) | peak SSIM | s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(table, key=lambda r: r["key"]):
            gen = "curve" in r
            lines.append(f"| {r['data']} | {r['accel']:.2f} | {r['method']} | {r.get('seed', '')} | {r['variant']} "
                         f"| {r['psnr']:.2f} | {r['ssim']:.3f} | {r.get('best_step', '')} "
                         f"| {str(r.get('steps', '')) + (' (' + r['stop'] + ')' if gen else '')} "
                         f"| {'%.2f (%d)' % (r['psnr_peak'], r['peak_step']) if gen else ''} "
                         f"| {'%.3f' % r['ssim_peak'] if gen else ''} | {r['seconds']} |")
        lines.append("")
    atomic_write_bytes(out / "selfval.md", "\n".join(lines).encode())
    print(f"wrote {out / 'selfval.md'}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=("curves", "table"), default="curves")
    ap.add_argument("--data", nargs="*", help="fastMRI files (default: the built-in sample and the shared brain)")
    ap.add_argument("--accels", type=float, nargs="+", default=[4.0])
    ap.add_argument("--methods", default="oes")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--steps", type=int, default=3000, help="the step cap")
    ap.add_argument("--validation", default="share=0.1,shape=points", help="ValidationConfig fields, k=v,...")
    ap.add_argument("--set", default="", help="further generator settings, section.field=v,... "
                    "(fit.penalty=0.002)")
    ap.add_argument("--patiences", type=int, nargs="+", default=[200, 400, 800])
    ap.add_argument("--log-every", type=int, default=LOG_EVERY)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = Rows(args.out / f"quality_rows.{args.part}.jsonl")
    if not args.report_only:
        val = parse_validation(args.validation)
        if args.part == "curves":                     # record to the cap: the rule never fires
            val.update(patience=10**9, fallback_steps=10**9)
        validation = ValidationConfig(**val)
        label = args.validation
        files = [Path(p) for p in args.data] if args.data else default_files()
        for f in files:
            for a in args.accels:
                case = prepare(f, a)
                for m in args.methods.split(","):
                    if not make(m).untrained:
                        run_classical(rows, case, m, validation, label)
                        continue
                    for seed in args.seeds:
                        run_generator(rows, args.part, case, m, seed, args.steps, validation, label, args.log_every,
                                      args.set)
        rows = Rows(args.out / f"quality_rows.{args.part}.jsonl")
    report(rows, args.out, args.patiences)


if __name__ == "__main__":
    main()
