"""Quality benchmark: the method table, the OES density sweep, long PSNR-vs-step curves and
mask transfer, on fastMRI-format files at fastMRI random masks (4x, 8x).

    python benchmarks/quality.py                       # the committed results (hours on 1 CPU thread)
    python benchmarks/quality.py --experiments curves  # one part in a separate process (rows are merged)
    python benchmarks/quality.py --quick               # a smoke run (minutes)
    python benchmarks/quality.py --data my_dir --accels 4 --table-methods zf,sense,oes,dip

Each file: the middle slice, the fastMRI ``RandomMaskFunc`` mask with the challenge's
per-volume seed (``tuple(map(ord, file name))``) and default centre fraction, ESPIRiT maps;
every image is data-consistent RSS, scored with ``fastmri.evaluate``'s NMSE/PSNR/SSIM
(``data_range`` = target max, the slice is the volume). Untrained generators report the last
iterate, the lowest-data-loss iterate ("best", what ``--output-iterate best`` returns; no
ground truth used) and, for reference only, the oracle peak PSNR over the run (every
``log_every`` steps).

Every finished row is appended to ``<out>/quality_rows.jsonl`` at once: an interrupted run
resumes, and the tables are rebuilt from the rows. Writes ``quality.md``, ``quality.csv`` and
``quality_curves.png`` / ``quality_density.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import platform
import sys
import time
import types
import typing
from pathlib import Path

import numpy as np
import torch

from oes_mri.atomic import atomic_write_bytes
from oes_mri.data.volumes import read_info
from oes_mri.data.sample import cache_dir, sample_path
from oes_mri.methods import METHODS, Reconstruction, final_image, make
from oes_mri.metrics import volume_metrics
from oes_mri.physics.coils import MapCache
from oes_mri.app.slices import Sampling, prepare_slice
from oes_mri.physics.measured import SliceData
from oes_mri.pruning.weightmask import WeightMask
from oes_mri.defaults import GENERATORS
from oes_mri.fit.config import DipConfig, PruningConfig

ROOT = Path(__file__).resolve().parent
SHARED = ROOT.parent.parent / "shared" / "data"
COLUMNS = ("experiment", "data", "accel", "method", "variant", "psnr", "ssim", "nmse", "psnr_last", "ssim_last",
           "psnr_peak", "peak_step", "steps", "seconds", "mask_seconds")


ABLATIONS = ["oes.lr=0.1", "pruning.steps=300", "fit.lr=0.03", "pruning.min_layer_density=0.05",
             "pruning.scope=conv+out"]                 # OES variants on the main case, default steps


def field_type(key: str) -> type:
    """The declared type of the :class:`DipConfig` setting ``key`` (``"fit.lr"``, ``"seed"``);
    of an optional setting (``int | None``), the type it takes when set.

    Raises:
        ValueError: an unknown setting.
    """
    section, _, name = key.rpartition(".")
    obj = getattr(DipConfig(), section, None) if section else DipConfig()
    hints = typing.get_type_hints(type(obj)) if dataclasses.is_dataclass(obj) else {}
    if name not in hints:
        raise ValueError(f"unknown setting {key!r}")
    hint = hints[name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):        # X | None -> X
        kinds = [t for t in typing.get_args(hint) if t is not type(None)]
        return kinds[0] if len(kinds) == 1 else hint
    return typing.get_origin(hint) or hint                                 # tuple[int, ...] -> tuple


def ablation(variant: str) -> dict:
    """``"section.field=value"`` -> ``{key: value}`` for :meth:`DipConfig.updated` (value typed
    by the field's declaration)."""
    name, _, value = variant.partition("=")
    try:
        kind = field_type(name)
    except ValueError:
        kind = None
    if kind not in (int, float, str, bool) or not value:
        raise SystemExit(f"setting {variant!r} is not section.field=value for a DipConfig "
                         "number/string/bool setting (e.g. fit.lr=0.03)")
    return {name: value == "True" if kind is bool else kind(value)}


def settings_digest(dip: DipConfig) -> str:
    """A short hash of a generator's full settings (defaults included): benchmark rows made
    with other settings are never reused."""
    return hashlib.sha1(repr(dip).encode()).hexdigest()[:12]


@dataclasses.dataclass
class Case:
    name: str
    accel_nominal: float
    accel: float
    x: SliceData
    target: np.ndarray


def default_files() -> list[Path]:
    """The built-in sample, then the shared real brain when present (the main case)."""
    brain = SHARED / "brain_t1_8coil.h5"
    return [sample_path()] + ([brain] if brain.exists() else [])


def prepare(path: Path, accel: float, device: torch.device = torch.device("cpu"), readout: str = "full") -> Case:
    """The middle slice of ``path`` under the CLI's default fastMRI random mask, on ``device``
    (``readout``: as ``prepare_slice``; "full" for the rows made before readout cropping)."""
    info = read_info(path)
    smask = Sampling(accel=accel).mask(info)
    ms = prepare_slice(info, smask, info.num_slices // 2, device, MapCache(cache_dir() / "maps"), readout,
                       mask_seed="None", accel=accel, cf=None)
    return Case(path.stem, accel, round(smask.acceleration, 2), ms.x, ms.target)


def score(case: Case, image: np.ndarray | torch.Tensor) -> tuple[float, float, float]:
    """fastMRI NMSE/PSNR/SSIM of a final image ``(rH, rW)``, or of the final image of coil
    images ``(C, H, W)`` (:func:`~oes_mri.methods.final_image`)."""
    if isinstance(image, torch.Tensor):
        image = final_image(case.x, image)
    return volume_metrics(case.target[None], image[None])


def curve_score(case: Case):
    """The fit curves' monitor: PSNR/SSIM of each logged iterate's final image."""
    def sc(image: np.ndarray) -> dict:
        _, psnr, ssim = score(case, image)
        return {"psnr": psnr, "ssim": ssim}
    return sc


class Rows:
    """Append-only result rows, keyed for resuming: this process appends to ``path``
    (``quality_rows.jsonl``, or ``quality_rows.<part>.jsonl`` for a separate process) and
    sees the rows of every part in its folder."""

    def __init__(self, path: Path, suffix: str = "", device: str = "cpu") -> None:
        self.path, self.suffix = path, suffix          # suffix: appended to every variant (--set)
        self.device = device                           # recorded in every new row
        self.rows: dict[str, dict] = {}
        for part in sorted(path.parent.glob("quality_rows*.jsonl")):
            for line in part.read_text().splitlines():
                if line.strip():
                    r = json.loads(line)
                    self.rows[r["key"]] = r

    def get(self, key: str) -> dict | None:
        return self.rows.get(key)

    def add(self, row: dict) -> dict:
        self.rows[row["key"]] = row
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
        return row


def run_method(method: str, x: SliceData, dip: DipConfig | None = None, weight_mask: WeightMask | None = None,
               score=None, progress=None, tune: bool = True) -> Reconstruction:
    """Method ``method`` (with the shared settings ``dip``) on one slice; ``score``: its curves."""
    return make(method, dip, tune).reconstruct_batch([x], weight_mask=weight_mask, progress=progress,
                                                     scores=[score])[0]


def run_row(rows: Rows, experiment: str, case: Case, method: str, variant: str, settings: DipConfig,
            weight_mask: WeightMask | None = None, keep_mask: dict | None = None) -> dict:
    """Run (or reuse) one reconstruction and record its metrics."""
    variant += rows.suffix
    key = f"{experiment}|{case.name}|{case.accel_nominal}|{method}|{variant}"
    done = rows.get(key)
    if done is not None and (keep_mask is None or done.get("mask_file")):
        if keep_mask is not None:
            keep_mask[key] = WeightMask.load(done["mask_file"])
        return done
    t = time.perf_counter()
    res = run_method(method, case.x, settings, weight_mask, score=curve_score(case))
    seconds = time.perf_counter() - t
    nmse, psnr, ssim = score(case, res.image)
    row = {"key": key, "experiment": experiment, "data": case.name, "accel": case.accel, "method": method,
           "variant": variant, "psnr": psnr, "ssim": ssim, "nmse": nmse, "seconds": round(seconds, 1),
           "device": rows.device}
    h = res.history
    if h:
        curve = [(r["step"], r["psnr"], r["ssim"]) for r in h["monitor"]]
        row["psnr_last"], row["ssim_last"] = curve[-1][1:]              # the last step run
        peak = max(curve, key=lambda c: c[1])
        row.update(psnr_peak=peak[1], peak_step=peak[0], steps=len(h["losses"]), curve=curve,
                   mask_seconds=round(h["mask_seconds"], 1))
    if keep_mask is not None and res.weight_mask is not None:
        path = rows.path.parent / "masks" / f"{case.name}_{case.accel_nominal:g}x_{method}_{variant}.safetensors"
        res.weight_mask.save(path)
        row["mask_file"] = str(path)
        keep_mask[key] = res.weight_mask
    print(f"  {case.name} {case.accel_nominal:g}x {method:9s} {variant:14s} {psnr:6.2f} dB {ssim:.3f}"
          f"  ({seconds:.0f} s)", flush=True)
    return rows.add(row)


def settings_for(args: argparse.Namespace, **dip: object) -> DipConfig:
    base = {"fit.steps": args.steps, "pruning.steps": args.mask_steps,
            "speed.cuda_graph": args.device.startswith("cuda")}
    for change in args.set:
        base.update(ablation(change))
    return DipConfig().updated({**base, **dip})


def experiments(args: argparse.Namespace, rows: Rows) -> None:
    files = [Path(p) for p in args.data] if args.data else default_files()
    cases = {(f.stem, a): prepare(f, a, torch.device(args.device)) for f in files for a in args.accels}
    main = cases[(files[-1].stem, args.accels[0])]            # sweep/curves/transfer: the real file at 4x
    masks: dict[str, WeightMask] = {}
    order = [main] + [c for c in cases.values() if c is not main]   # the main case first, the rest last
    todo = args.experiments
    if "table" in todo:
        print(f"table: {main.name} {main.accel_nominal:g}x", flush=True)
        table(args, rows, main, args.table_methods, args.lrs, masks)
    if "curves" in todo:
        print("long curves", flush=True)
        for m in args.curve_methods:
            s = settings_for(args, **{"fit.steps": args.curve_steps})
            run_row(rows, "curves", main, m, f"steps={args.curve_steps}", s)
    if "transfer" in todo:
        print("transfer", flush=True)
    for donor in [c for c in order[1:] if c.accel_nominal == main.accel_nominal and "transfer" in todo]:
        key = f"table|{donor.name}|{donor.accel_nominal}|oes|default"
        run_row(rows, "table", donor, "oes", "default", settings_for(args), keep_mask=masks)
        for init in ("same", "fresh"):            # the donor's generator init, or another (seed 1)
            m = masks[key]
            m = m if init == "same" else WeightMask(m.masks, {**m.meta, "init_seed": 1})
            s = settings_for(args, seed=0 if init == "same" else 1)
            run_row(rows, "transfer", main, "oes", f"from {donor.name}, {init} init", s, m)
    if "density" in todo:
        print("density sweep", flush=True)
    for d in args.densities if "density" in todo else []:
        run_row(rows, "density", main, "oes", f"density={d:g}", settings_for(args, **{"pruning.density": d}))
    if "ablation" in todo:
        print("ablation: what moves Sparse-DIP", flush=True)
    for variant in args.ablations if "ablation" in todo else []:
        run_row(rows, "ablation", main, "oes", variant, settings_for(args, **ablation(variant)))
    for case in order[1:] if "table" in todo else []:
        print(f"table: {case.name} {case.accel_nominal:g}x", flush=True)
        table(args, rows, case, args.short_methods, args.lrs[:1], masks)


def table(args: argparse.Namespace, rows: Rows, case: Case, methods: list[str], lrs: list[float],
          masks: dict[str, WeightMask]) -> None:
    for m in methods:
        if m == "dip":
            for lr in lrs:
                run_row(rows, "table", case, "dip", f"lr={lr:g}", settings_for(args, **{"fit.lr": lr}))
        else:
            run_row(rows, "table", case, m, "default", settings_for(args), keep_mask=masks if m == "oes" else None)


def fmt(v, spec: str) -> str:
    return "" if v is None else format(v, spec)


def table_md(rows: list[dict], experiment: str) -> str:
    order = list(METHODS)
    rank = lambda r: (r["data"], r["accel"], order.index(r["method"]) if r["method"] in order else len(order),  # noqa: E731
                      r["variant"] != "default")                      # then run order
    sel = sorted((r for r in rows if r["experiment"] == experiment), key=rank)
    out = ["| data | accel | method | variant | PSNR | SSIM | NMSE | PSNR last | SSIM last | peak PSNR (step) | "
           "peak SSIM (step) | s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sel:
        peak = f"{r['psnr_peak']:.2f} ({r['peak_step']})" if r.get("psnr_peak") is not None else ""
        top = max(r["curve"], key=lambda c: c[2]) if r.get("curve") else None
        peak_ssim = f"{top[2]:.3f} ({top[0]})" if top else ""
        out.append(f"| {r['data']} | {r['accel']:.2f} | {r['method']} | {r['variant']} | {r['psnr']:.2f} | "
                   f"{r['ssim']:.3f} | {r['nmse']:.4f} | {fmt(r.get('psnr_last'), '.2f')} | "
                   f"{fmt(r.get('ssim_last'), '.3f')} | {peak} | {peak_ssim} | {r['seconds']:.0f} |")
    return "\n".join(out)


def plots(rows: list[dict], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    curves = [r for r in rows if r["experiment"] == "curves" and r.get("curve")]
    if curves:
        fig, axes = plt.subplots(1, 2, figsize=(14, 4.2))
        colours = plt.get_cmap("tab20").colors
        for i, r in enumerate(curves):
            c = np.asarray(r["curve"])
            sets = dict(v.split("=", 1) for v in r["variant"].split() if "=" in v)
            pct = f"{100 * float(sets.pop('density', sets.pop('pruning.density', GENERATORS['weights'].kept))):g} %"
            label = {"oes": f"Sparse-DIP (OES {pct})", "dip": "dense DIP"}.get(r["method"], f"{r['method']} {pct}")
            label += "".join(f", {k}={v}" for k, v in sets.items())           # steps and --set changes
            style = {"c": colours[i % len(colours)], "ls": ("-", "--", ":")[i // len(colours) % 3], "lw": 1}
            axes[0].plot(c[:, 0], c[:, 1], label=label, **style)                  # past 20 curves: dashed
            axes[1].plot(c[:, 0], c[:, 2], **style)
        for r in rows:
            if r["experiment"] == "table" and r["data"] == curves[0]["data"] and r["method"] in ("l1", "sense") \
                    and abs(r["accel"] - curves[0]["accel"]) < 1e-6:
                axes[0].axhline(r["psnr"], ls=":", c="gray")
                axes[0].text(0, r["psnr"], r["method"], fontsize=8, va="bottom")
        axes[0].set(xlabel="fit step", ylabel="PSNR (dB), last iterate")
        axes[1].set(xlabel="fit step", ylabel="SSIM, last iterate")
        fig.suptitle(f"{curves[0]['data']} at {curves[0]['accel']:.2f}x")
        fig.tight_layout(rect=(0, 0, 0.74, 1))
        fig.legend(loc="center left", bbox_to_anchor=(0.74, 0.5), fontsize=7, frameon=False)
        fig.savefig(out / "quality_curves.png", dpi=100)
        plt.close(fig)
        made.append("quality_curves.png")
    groups: dict[str, list[tuple[float, dict]]] = {}          # one line per setting ("density=d rest")
    for r in rows:
        if r["experiment"] == "density":
            first, _, rest = r["variant"].partition(" ")
            groups.setdefault(rest, []).append((float(first.split("=")[1]), r))
    cases = {(r["data"], r["accel"]) for g in groups.values() for _, r in g}
    for r in rows:                      # the table's OES row is the default density's point
        rest = "" if r["variant"] == "default" else r["variant"]
        if r["experiment"] == "table" and r["method"] == "oes" and (r["data"], r["accel"]) in cases and rest in groups:
            groups[rest].append((GENERATORS["weights"].kept, r))
    if groups:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for rest, dens in sorted(groups.items()):
            dens.sort(key=lambda x: x[0])
            d = [x for x, _ in dens]
            name = rest or f"allocation={PruningConfig.allocation}"
            line = ax.semilogx(d, [r["psnr"] for _, r in dens], "o-", label=f"best iterate {name}")
            ax.semilogx(d, [r["psnr_last"] for _, r in dens], "s--", c=line[0].get_color(), label=f"last iterate {name}")
        ax.set(xlabel="density", ylabel="PSNR (dB)", title=f"OES density sweep, {dens[0][1]['data']}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "quality_density.png", dpi=100)
        plt.close(fig)
        made.append("quality_density.png")
    return made


def write_results(rows: Rows, out: Path, argv: list[str], seconds: float) -> None:
    allrows = list(rows.rows.values())
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in allrows:
        w.writerow(r)
    atomic_write_bytes(out / "quality.csv", buf.getvalue().encode())
    figs = plots(allrows, out)
    cmd = " ".join(["python", f"benchmarks/{Path(argv[0]).name}", *argv[1:]])
    devices = sorted({r.get("device", "cpu") for r in allrows})
    md = [f"# Quality benchmark\n\nCommand: `{cmd}`\n",
          f"Machine: {platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}, "
          f"Python {platform.python_version()}; rows made on: {', '.join(devices)}. Rows already in "
          f"`quality_rows*.jsonl` are reused (delete them to recompute); this invocation took "
          f"{seconds / 60:.0f} min.\n",
          "fastMRI definitions (NMSE, PSNR, SSIM with data_range = target max), data-consistent RSS, middle "
          "slice, fastMRI random mask with the per-volume seed (accel = realised). DIP rows: PSNR/SSIM of the "
          "lowest-data-loss iterate (the default output), of the last iterate, and the oracle peak PSNR over "
          "the run (uses the target; reference only). Seconds: wall time per slice of a 1-thread process, on a machine "
          "that may run other parts at the same time (parts run as separate processes): rough; "
          "`speed.md` has side-by-side timings.\n",
          "Pruned rows (oes, random, magnitude, snip) use `DipConfig`'s default ERK layer split unless the "
          "variant says `allocation=...`; `allocation=global` is the published global top-k (and the split "
          "of every row made before ERK became the default). `imp` is always global: `imp_rounds` (3) rounds "
          "of `mask_steps` (100) training steps, each pruning the smallest weights and rewinding to init. "
          "`input_jitter=s`: DIP's input noise of std s at every fit step (last iterate and curves at the "
          "clean input). `lr_schedule=cosine`: the fit's learning rate falls from `lr` to 0 over the run.\n"]
    for exp, title in (("table", "Methods"), ("density", "OES density sweep"), ("curves", "Long runs"),
                       ("transfer", "Mask transfer"), ("ablation", "What moves Sparse-DIP (5 %, one change each)")):
        if any(r["experiment"] == exp for r in allrows):
            md += [f"## {title}\n", table_md(allrows, exp), ""]
    md += [f"![{f}]({f})" for f in figs]
    atomic_write_bytes(out / "quality.md", ("\n".join(md) + "\n").encode())


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", nargs="*", help="fastMRI files with targets; the last is the main case (default: the "
                   "built-in sample, then ../shared/data/brain_t1_8coil.h5 when present)")
    p.add_argument("--accels", type=float, nargs="+", default=[4.0, 8.0])
    p.add_argument("--table-methods", default="zf,sense,l1,tv,dip,oes,random,magnitude,snip,imp",
                   help="methods on the main case (the last file at the first acceleration)")
    p.add_argument("--short-methods", default="zf,sense,l1,dip,oes", help="methods on the other cases")
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-2, 3e-3], help="dense DIP learning rates")
    p.add_argument("--densities", type=float, nargs="*", default=[0.01, 0.02, 0.1, 0.2])
    p.add_argument("--steps", type=int, default=450)
    p.add_argument("--mask-steps", type=int, default=100)
    p.add_argument("--curve-steps", type=int, default=3000, help="fit steps of the long runs (default 3000)")
    p.add_argument("--experiments", default="table,curves,transfer,density,ablation",
                   help="which parts to run (comma list); parts can run as separate processes")
    p.add_argument("--curve-methods", default="oes,dip", help="methods of the long runs")
    p.add_argument("--ablations", nargs="*", default=ABLATIONS,
                   help="OES variants on the main case, as DipConfig field=value (default: %(default)s)")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="DipConfig changes for every untrained method of this run (appended to the variant names)")
    p.add_argument("--device", default="cpu", help="torch device of the fits (the metrics are computed on the CPU); "
                   "on CUDA the fit steps are replayed as CUDA graphs")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="tiny step counts (smoke test)")
    p.add_argument("--report-only", action="store_true", help="only rebuild the tables and plots from the rows")
    p.add_argument("--out", type=Path, default=ROOT / "results")
    args = p.parse_args(argv)
    args.table_methods = args.table_methods.split(",")
    args.short_methods = args.short_methods.split(",")
    args.experiments = args.experiments.split(",")
    args.curve_methods = args.curve_methods.split(",")
    for variant in args.ablations + args.set:
        ablation(variant)                                    # bad names fail before anything runs
    if args.quick:
        args.steps, args.mask_steps, args.densities, args.lrs, args.curve_steps = 10, 5, [0.02], args.lrs[:1], 30
        args.out = args.out / "quick"
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv if argv is None else argv
    args = parse(argv[1:])
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    part = "" if args.experiments == parse([]).experiments else "." + "_".join(args.experiments)
    device = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    rows = Rows(args.out / f"quality_rows{part}.jsonl", "".join(f" {c}" for c in args.set), device)
    t = time.perf_counter()
    try:
        if not args.report_only:
            experiments(args, rows)
    finally:
        write_results(rows, args.out, argv, time.perf_counter() - t)
    print(f"wrote {args.out / 'quality.md'}")


if __name__ == "__main__":
    main()
