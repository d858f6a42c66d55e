"""Time to quality: CPU seconds until a method's no-oracle output reaches held-out-tuned
L1-wavelet's PSNR **and** SSIM on the same slice, every configuration side by side in one run.

    python benchmarks/time_to_quality.py                                  # every case and configuration
    python benchmarks/time_to_quality.py --cases brain4,sample4 --configs oes,dip-w2
    python benchmarks/time_to_quality.py --threads 1 --budget 10          # what the committed rows used

Cases: the shared real brain (skipped without ``../shared/data``), the built-in sample and a
knee-size simulated slice (320x320 recon, 15 coils, 640x368 k-space with readout
oversampling), at 4x and 8x, each the middle slice under the CLI's default fastMRI random
mask, ESPIRiT maps from the map cache (their time is common to every method and not counted).

Per case the classical methods run first (each twice; the second run is timed, so numba's
compilation is not counted); L1-wavelet with its held-out lambda search is the reference:
its seconds include the five grid solves. Each untrained configuration then runs under the
held-out rule (the CLI's defaults unless the configuration changes them) with a time budget
of ``--budget`` times L1's seconds. Every ``log_every`` steps the benchmark scores **the
rule's iterate**: the logged iterate with the lowest smoothed held-out error so far (the
latest one while the held-out error is uninformative), data consistency and RSS applied,
fastMRI PSNR/SSIM with data_range = target max. Scoring time is not counted. A fit ends where
the rule stops it, at the step cap, or at the budget.

Reported per configuration: seconds and steps until the rule's iterate reaches L1's PSNR and
SSIM (``-`` if never), that time as a multiple of L1's, the final output's quality, steps and
seconds, and one fit step's GFLOP (forward and backward, ``torch.utils.flop_counter``) and
parameter count (kept weights for a masked network). Rows are appended to
``<out>/rows.jsonl`` as they finish (a rerun resumes; rows made with other settings, threads
or code are not reused); ``<out>/time_to_quality.md`` and ``.png`` are rebuilt from them.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import SHARED, Case, prepare, run_method, score  # noqa: E402

from oes_mri.atomic import atomic_write_bytes  # noqa: E402
from oes_mri.data.sample import sample_path, sample_volume_path  # noqa: E402
from oes_mri.methods import make  # noqa: E402
from oes_mri.nets.generator import ArchConfig, build_generator  # noqa: E402
from oes_mri.pruning.channels import random_channel_mask, shrink  # noqa: E402
from oes_mri.defaults import generator_kind  # noqa: E402
from oes_mri.fit.config import DipConfig  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "ttq"
CLASSICAL = ("l1", "sense", "tv")


@dataclasses.dataclass(frozen=True)
class Config:
    """An untrained configuration: a method and changes to the CLI's default settings."""
    method: str
    changes: dict = dataclasses.field(default_factory=dict)
    arch: ArchConfig = ArchConfig()
    note: str = ""

    def settings(self, steps: int) -> DipConfig:
        return dataclasses.replace(DipConfig().updated({"fit.steps": steps, **self.changes}), arch=self.arch)


def hourglass(width: float, name: str = "hourglass") -> ArchConfig:
    """The OES hourglass with every level's channels scaled by ``width`` (at least 2)."""
    return ArchConfig(name, {"channels": tuple(max(2, round(c * width)) for c in (16, 32, 64, 128, 128, 128))})


CONSTANT = {"fit.lr": 1e-2, "fit.lr_schedule": "constant"}
"""The full hourglass's rate, pinned where a channel-pruned configuration was measured with it
(the channel-pruned generators' default became the warm-up to 3e-2, ``rch-25-warm3``)."""
CONFIGS: dict[str, Config] = {
    "oes": Config("oes", note="the CUDA default (the CPU default before): 5 % OES mask, dense FLOPs"),
    "dip": Config("dip", note="dense hourglass, 3.0M weights"),
    "dip-w2": Config("dip", arch=hourglass(0.5), note="dense, half width (hourglass-small)"),
    "dip-w4": Config("dip", arch=hourglass(0.25), note="dense, quarter width"),
    "oes-w2": Config("oes", arch=hourglass(0.5), note="5 % OES mask on the half-width net"),
    "dip-w8": Config("dip", arch=hourglass(0.125), note="dense, eighth width"),
    "soes-50": Config("oes-channels", {"pruning.density": 0.5, **CONSTANT},
                      note="OES over channels, half of each map kept"),
    "soes-25": Config("oes-channels", {"pruning.density": 0.25, **CONSTANT}, note="OES over channels, a quarter kept"),
    "rch-25": Config("random-channels", {"pruning.density": 0.25, **CONSTANT}, note="random channels, a quarter kept"),
    "l1+dip-w4": Config("dip", {"fit.start": "l1"}, hourglass(0.25),
                        note="dense quarter width, a residual on the held-out L1 image (its seconds included)"),
    "l1+dip-w2": Config("dip", {"fit.start": "l1"}, hourglass(0.5), note="the same at half width"),
    "dip-w4-warm3": Config("dip", {"fit.lr_schedule": "warmup", "fit.lr": 3e-2}, hourglass(0.25),
                           note="quarter width, warm-up to a peak rate of 3e-2"),
    "rch-25-warm3": Config("random-channels", {"pruning.density": 0.25, "fit.lr_schedule": "warmup", "fit.lr": 3e-2},
                           note="random channels (a quarter), warm-up to 3e-2: the CPU default"),
    "l1+dip-w4-lr3": Config("dip", {"fit.start": "l1", "fit.lr": 1e-3}, hourglass(0.25),
                            note="the residual on L1 at learning rate 1e-3"),
    "l1+soes-25": Config("oes-channels", {"fit.start": "l1", "pruning.density": 0.25, **CONSTANT},
                         note="OES channels (a quarter) on the held-out L1 image"),
}


def cases(names: list[str]) -> dict[str, tuple[Path, float]]:
    """``name -> (file, acceleration)``; ``brain`` needs ``../shared/data`` (else skipped)."""
    files = {"brain": SHARED / "brain_t1_8coil.h5", "sample": None, "knee": None}
    out = {}
    for n in names:
        stem, accel = n.rstrip("0123456789"), n[len(n.rstrip("0123456789")):]
        if stem not in files or not accel:
            raise SystemExit(f"case {n!r}: one of brain, sample, knee followed by the acceleration (brain4)")
        if stem == "brain" and not files["brain"].exists():
            print(f"skip {n}: {files['brain']} is absent", file=sys.stderr)
            continue
        path = {"brain": files["brain"], "sample": None, "knee": None}[stem]
        if stem == "sample":
            path = sample_path()
        if stem == "knee":
            path = sample_volume_path(slices=1, size=320, num_coils=15)
        out[n] = (path, float(accel))
    return out


def step_cost(case: Case, cfg: Config) -> tuple[float, int]:
    """GFLOP of one fit step (generator forward + backward; the FFTs are negligible) and the
    parameters the fit trains (a channel mask: the rebuilt generator's; an unstructured mask:
    its density's share, at dense FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    gen = build_generator(cfg.arch, tuple(case.x.kspace.shape[-2:]), 1, 0)
    density = make(cfg.method, cfg.settings(1)).config.pruning.kept
    channels = generator_kind(cfg.method) == "channels"
    if channels:
        gen = shrink(gen, random_channel_mask(gen, density))       # any mask of the budget: same shapes
    with FlopCounterMode(display=False) as fc:
        out = gen()
        (out.real.square().sum() + out.imag.square().sum()).backward()
    params = sum(p.numel() for p in gen.parameters())
    if cfg.method != "dip" and not channels:
        params = round(params * density)
    return fc.get_total_flops() / 1e9, params


class OutOfBudget(Exception):
    """The configuration used its time budget."""


class Clock:
    """Wall seconds of a fit minus the seconds spent scoring its iterates."""

    def __init__(self) -> None:
        self.t0, self.paused = time.perf_counter(), 0.0

    def now(self) -> float:
        return time.perf_counter() - self.t0 - self.paused

    def pause(self, fn: Callable[[], object]) -> object:
        t = time.perf_counter()
        try:
            return fn()
        finally:
            self.paused += time.perf_counter() - t


def run_classical(case: Case, method: str) -> dict:
    """One timed run (after an untimed one) of a classical method with its held-out lambda."""
    run_method(method, case.x)
    t = time.perf_counter()
    res = run_method(method, case.x)
    seconds = time.perf_counter() - t
    _, psnr, ssim = score(case, res.image)
    return {"psnr": psnr, "ssim": ssim, "seconds": seconds, "lambda": res.history.get("lambda")}


def rule_pick(curve: list[dict], informative: float) -> list[dict]:
    """At each logged step, the logged iterate the rule would return if the fit ended there:
    the lowest smoothed held-out error so far, or the latest while none is informative."""
    picks, best = [], None
    for c in curve:
        v = c.get("val_smoothed", math.inf)
        if v < informative and (best is None or v < best["val_smoothed"]):
            best = c
        picks.append(best if best is not None else c)
    return picks


def run_untrained(case: Case, cfg: Config, steps: int, budget: float, log_every: int) -> dict:
    """A configuration under the held-out rule, its rule's iterate scored every ``log_every``
    steps, stopped by the rule, the step cap or the time ``budget`` (seconds)."""
    dip = cfg.settings(steps).updated({"fit.log_every": log_every})
    clock, curve = Clock(), []

    def monitor(image: np.ndarray) -> dict:
        t = clock.now()
        _, psnr, ssim = clock.pause(lambda: score(case, image))
        return {"seconds": t, "psnr": psnr, "ssim": ssim}

    def progress(step: int, info: dict) -> None:
        curve.append({k: info[k] for k in ("seconds", "psnr", "ssim", "val_smoothed") if k in info} | {"step": step})
        if info["seconds"] > budget:
            raise OutOfBudget

    try:
        res = run_method(cfg.method, case.x, dip, progress=progress, score=monitor)
        seconds = clock.now()
        _, psnr, ssim = score(case, res.image)
        final = {"psnr": psnr, "ssim": ssim, "steps": res.history["steps"], "seconds": seconds,
                 "stop": res.history["stop"], "best_step": res.history["best_step"]}
    except OutOfBudget:
        last = rule_pick(curve, dip.validation.informative)[-1]
        final = {"psnr": last["psnr"], "ssim": last["ssim"], "steps": curve[-1]["step"],
                 "seconds": curve[-1]["seconds"], "stop": "budget", "best_step": last["step"]}
    return {"curve": curve, "final": final}


def reach(curve: list[dict], informative: float, psnr: float, ssim: float) -> dict | None:
    """The first logged step whose rule's iterate is at least ``psnr`` and ``ssim``."""
    for c, pick in zip(curve, rule_pick(curve, informative)):
        if pick["psnr"] >= psnr and pick["ssim"] >= ssim:
            return {"seconds": c["seconds"], "step": c["step"]}
    return None


def commit() -> str:
    """The checkout's commit (recorded with each row)."""
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        return ""


def cpu_name() -> str:
    """The CPU model (rows of another CPU are kept apart: seconds are compared within one CPU)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def row_key(case: str, name: str, detail: dict) -> str:
    return hashlib.sha1(json.dumps([case, name, detail], sort_keys=True, default=str).encode()).hexdigest()[:16]


class Rows:
    """``rows.jsonl``: one JSON row per (case, configuration), appended as it finishes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows = {}
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    r = json.loads(line)
                    self.rows[r["key"]] = r

    def add(self, row: dict) -> dict:
        self.rows[row["key"]] = row
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        return row


def measure(args: argparse.Namespace, rows: Rows) -> None:
    for cname, (path, accel) in cases(args.cases).items():
        case = prepare(path, accel, readout="crop")
        env = {"threads": args.threads, "accel": case.accel, "cpu": cpu_name()}
        ref = {}
        for m in CLASSICAL:
            key = row_key(cname, m, env)
            row = rows.rows.get(key) or rows.add({"key": key, "case": cname, "config": m, **env,
                                                  **run_classical(case, m)})
            ref[m] = row
            print(f"{cname} {m}: {row['psnr']:.2f} / {row['ssim']:.4f} in {row['seconds']:.1f} s", flush=True)
        l1 = ref["l1"]
        for name in args.configs:
            cfg = CONFIGS[name]
            detail = {**env, "steps": args.steps, "budget": args.budget, "log_every": args.log_every,
                      "settings": repr(cfg.settings(args.steps)), "method": cfg.method, "l1_seconds": l1["seconds"]}
            key = row_key(cname, name, detail)
            if key in rows.rows:
                continue
            gflop, params = step_cost(case, cfg)
            out = run_untrained(case, cfg, args.steps, args.budget * l1["seconds"], args.log_every)
            hit = reach(out["curve"], DipConfig().validation.informative, l1["psnr"], l1["ssim"])
            row = rows.add({"key": key, "case": cname, "config": name, **env, "commit": commit(), "gflop": gflop, "params": params,
                            "reach": hit, **out})
            f = row["final"]
            print(f"{cname} {name}: reach {hit} ; final {f['psnr']:.2f} / {f['ssim']:.4f} at {f['steps']} steps "
                  f"{f['seconds']:.0f} s ({f['stop']})", flush=True)


def table(rows: list[dict], cases_: list[str], configs: list[str]) -> str:
    lines = []
    for cname in cases_:
        rs = {r["config"]: r for r in rows if r["case"] == cname}
        if "l1" not in rs:
            continue
        l1 = rs["l1"]
        spent = [r["final"]["seconds"] / l1["seconds"] for r in rs.values() if r.get("final", {}).get("stop") == "budget"]
        budget = f"; time budget about {min(spent):.0f}x L1's seconds" if spent else ""
        lines += [f"### {cname} ({l1['accel']:.2f}x{budget})", "",
                  "| method | GFLOP / step | weights | reaches L1 at | x L1's seconds | final PSNR / SSIM "
                  "| steps | seconds | stop |", "|---|---|---|---|---|---|---|---|---|"]
        for m in CLASSICAL:
            if m in rs:
                r = rs[m]
                lines.append(f"| {m} (held-out lambda {r['lambda']:.3g}) | | | | | {r['psnr']:.2f} / {r['ssim']:.4f} "
                             f"| | {r['seconds']:.1f} | |")
        for name in configs:
            if name not in rs:
                continue
            r, f = rs[name], rs[name]["final"]
            hit = r["reach"]
            at = f"{hit['seconds']:.0f} s, step {hit['step']}" if hit else "-"
            ratio = f"{hit['seconds'] / l1['seconds']:.1f}" if hit else f"> {f['seconds'] / l1['seconds']:.1f}"
            lines.append(f"| {name} | {r['gflop']:.2f} | {r['params'] / 1e6:.2f}M | {at} | {ratio} | "
                         f"{f['psnr']:.2f} / {f['ssim']:.4f} | {f['steps']} | {f['seconds']:.0f} | {f['stop']} |")
        lines.append("")
    return "\n".join(lines)


def front(curves: list[list[tuple[float, float]]]) -> list[tuple[float, float]]:
    """The Pareto front of (seconds, quality) curves: at each time, the best quality any
    configuration's rule's iterate has reached by then."""
    points = sorted(p for c in curves for p in c)
    out, best = [], -math.inf
    for t, q in points:
        if q > best:
            best = q
            out.append((t, q))
    return out


def figure(rows: list[dict], cases_: list[str], configs: list[str], path: Path) -> None:
    """Quality of the rule's iterate versus seconds per case (one colour per configuration in
    every panel), the front over all of them, and the classical methods as points."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    shown = [c for c in cases_ if any(r["case"] == c and r["config"] == "l1" for r in rows)]
    if not shown:
        return
    colours = {name: plt.get_cmap("tab20")(i % 20) for i, name in enumerate(configs)}
    fig, axes = plt.subplots(2, len(shown), figsize=(4.2 * len(shown), 7.5), squeeze=False)
    informative = DipConfig().validation.informative
    for j, cname in enumerate(shown):
        rs = {r["config"]: r for r in rows if r["case"] == cname}
        for i, metric in enumerate(("psnr", "ssim")):
            ax, curves = axes[i, j], []
            for name in configs:
                if name in rs and rs[name]["curve"]:
                    cur = rs[name]["curve"]
                    xy = [(c["seconds"], p[metric]) for c, p in zip(cur, rule_pick(cur, informative))]
                    fin = rs[name]["final"]
                    curves.append(xy + [(fin["seconds"], fin[metric])])
                    ax.plot(*zip(*xy), color=colours[name], lw=1.2, label=name)
                    ax.plot(fin["seconds"], fin[metric], "x", color=colours[name], ms=7)   # what it returned
            if curves:
                ax.plot(*zip(*front(curves)), color="k", lw=2.2, ls="--", alpha=0.5, label="front")
            for m, marker in zip(CLASSICAL, "o^s"):
                if m in rs:
                    ax.plot(rs[m]["seconds"], rs[m][metric], marker, color="k", label=m)
            ref = rs["l1"][metric]
            ax.axhline(ref, color="k", lw=0.6, ls=":")
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("CPU seconds")
            ax.set_ylabel(metric.upper() + (" dB" if metric == "psnr" else ""))
            ax.set_title(f"{cname} ({rs['l1']['accel']:.2f}x)")
            lows = [min(q for _, q in c) for c in curves] + [ref]
            span = 4.0 if metric == "psnr" else 0.12
            ax.set_ylim(max(min(lows), ref - span), max([ref] + [max(q for _, q in c) for c in curves]) +
                        (0.3 if metric == "psnr" else 0.01))
    handles, labels = axes[0, 0].get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    fig.legend(seen.values(), seen.keys(), loc="lower center", ncol=min(8, len(seen)), fontsize=8)
    fig.suptitle("Rule's iterate (held-out k-space, no oracle) versus CPU seconds; L1 with its lambda search "
                 "(dotted: its quality); x: what each run returned; dashed: the front")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    import io
    buf = io.BytesIO()
    fig.savefig(buf, dpi=90)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def write(rows: Rows, args: argparse.Namespace, out: Path) -> None:
    current = [r for r in rows.rows.values() if r["threads"] == args.threads and r.get("cpu") == cpu_name()]
    names = list(dict.fromkeys(r["case"] for r in current))
    configs = [c for c in CONFIGS if any(r["config"] == c for r in current)]
    md = ["# Time to quality", "",
          f"CPU: {cpu_name()}, {args.threads} torch thread(s), torch "
          f"{torch.__version__}; step cap {args.steps}, scored every "
          f"{args.log_every} steps. Made by `benchmarks/time_to_quality.py`; seconds exclude scoring and the "
          "coil maps. 'reaches L1 at': the first logged step whose rule's iterate (no oracle) has L1's PSNR "
          "and SSIM.", "", "Configurations: " + "; ".join(f"`{c}` {CONFIGS[c].note}" for c in configs), "",
          table(current, names, configs)]
    atomic_write_bytes(out / "time_to_quality.md", "\n".join(md).encode())
    figure(current, names, configs, out / "time_to_quality.png")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="brain4,sample4,brain8,sample8,knee4",
                   type=lambda s: [c for c in s.split(",") if c])
    p.add_argument("--configs", default=",".join(CONFIGS), type=lambda s: [c for c in s.split(",") if c])
    p.add_argument("--steps", type=int, default=6000, help="step cap of every fit")
    p.add_argument("--budget", type=float, default=10.0, help="time budget, a multiple of L1's seconds")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--report-only", action="store_true", help="rebuild the table and figure from the rows")
    args = p.parse_args(argv)
    bad = [c for c in args.configs if c not in CONFIGS]
    if bad:
        p.error(f"unknown configuration(s) {bad}; one of {', '.join(CONFIGS)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    rows = Rows(args.out / "rows.jsonl")
    try:
        if not args.report_only:
            measure(args, rows)
    finally:
        write(rows, args, args.out)


if __name__ == "__main__":
    main()
