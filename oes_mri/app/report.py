"""Figures and tables: the comparison grid, PSNR-versus-step curves, the mask, report.md."""

from __future__ import annotations

import platform
import shlex
from pathlib import Path
from typing import NamedTuple

import numpy as np

from oes_mri.atomic import atomic_path, atomic_write_bytes
from oes_mri.fit.stopping import REASONS
from oes_mri.metrics import slice_metrics


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _savefig(fig, path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        fig.savefig(f, format="png", dpi=100, bbox_inches="tight")


def comparison_grid(path: Path, images: dict[str, np.ndarray], target: np.ndarray | None, title: str) -> None:
    """Row 1: target and each method's image (titled PSNR/SSIM); row 2: error maps, with a
    colour bar in the target's column instead of an empty panel."""
    plt = _plt()
    cols = ([("target", target)] if target is not None else []) + list(images.items())
    rows = 2 if target is not None else 1
    fig, axes = plt.subplots(rows, len(cols), figsize=(2.6 * len(cols), 2.8 * rows), squeeze=False)
    vmax = float((target if target is not None else next(iter(images.values()))).max())
    emax = 0.2 * vmax
    for j, (name, img) in enumerate(cols):
        ax = axes[0, j]
        ax.imshow(img, cmap="gray", vmin=0, vmax=vmax)
        label = name
        if target is not None and name != "target":
            p, s = slice_metrics(target, img, vmax)
            label = f"{name}\n{p:.2f} dB / {s:.3f}"
        ax.set_title(label, fontsize=9)
        if rows == 2 and name != "target":
            shown = axes[1, j].imshow(np.abs(img - target), cmap="inferno", vmin=0, vmax=emax)
            axes[1, j].set_title("|error|", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    if rows == 2 and len(cols) > 1:
        bar = fig.colorbar(shown, ax=axes[1, 0], fraction=0.5, location="left")
        bar.set_label("|error| (20 % of the target max)", fontsize=8)
    fig.suptitle(title, fontsize=10)
    _savefig(fig, path)
    plt.close(fig)


class FitCurves(NamedTuple):
    """What a fit's curves figure shows of one method."""

    curve: np.ndarray
    """rows (step, psnr, ssim) every log step (empty without a target)"""
    vals: np.ndarray
    """held-out relative error per step (empty without a hold-out)"""
    chosen: int | None
    """the step of the returned iterate"""
    stop: str = ""
    """why the fit ended (:data:`~oes_mri.fit.stopping.REASONS`)"""


def curves(path: Path, fits: dict[str, FitCurves], title: str) -> bool:
    """Per method: the held-out error versus step with the chosen step marked (what the
    stopping rule saw), and PSNR / SSIM versus step when a target exists."""
    fits = {k: v for k, v in fits.items() if len(v.curve) or len(v.vals)}
    if not fits:
        return False
    panels = (["val"] if any(len(f.vals) for f in fits.values()) else []) + \
             (["psnr", "ssim"] if any(len(f.curve) for f in fits.values()) else [])
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
    for name, f in fits.items():
        for ax, panel in zip(axes[0], panels):
            if panel == "val" and len(f.vals):
                line, = ax.plot(np.arange(1, len(f.vals) + 1), f.vals, label=f"{name} ({f.stop})" if f.stop else name,
                                lw=0.8)
            elif panel != "val" and len(f.curve):
                line, = ax.plot(f.curve[:, 0], f.curve[:, 1 if panel == "psnr" else 2], label=name)
            else:
                continue
            if f.chosen:
                ax.axvline(f.chosen, color=line.get_color(), ls=":", lw=1)
    labels = {"val": "held-out relative error", "psnr": "PSNR (dB)", "ssim": "SSIM"}
    for ax, panel in zip(axes[0], panels):
        ax.set_xlabel("step"), ax.set_ylabel(labels[panel]), ax.grid(alpha=0.3)
        if panel == "val":
            ax.set_yscale("log")
    axes[0][0].legend(title="dotted: chosen step", fontsize=8)
    fig.suptitle(title, fontsize=10)
    _savefig(fig, path)
    plt.close(fig)
    return True


def mask_figure(path: Path, mask: np.ndarray, title: str) -> None:
    """The sampling mask over the k-space grid."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(3, 3))
    ax.imshow(mask, cmap="gray", aspect="auto", interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("phase encode (W)"), ax.set_ylabel("readout (H)")
    _savefig(fig, path)
    plt.close(fig)


def summary_rows(records: list[dict]) -> list[dict]:
    """Per method: the mean PSNR, SSIM and NMSE over the volumes that have a target (``scored``
    of ``volumes``; ``None`` when none has), and seconds per slice over every volume."""
    rows = []
    for m in dict.fromkeys(r["method"] for r in records):
        rs = [r for r in records if r["method"] == m]
        scored = [r for r in rs if r["psnr"] is not None]
        mean = lambda k: float(np.mean([r[k] for r in scored])) if scored else None  # noqa: E731
        rows.append({"method": m, "volumes": len(rs), "scored": len(scored), "psnr": mean("psnr"),
                     "ssim": mean("ssim"), "nmse": mean("nmse"),
                     "s_per_slice": sum(r["seconds"] for r in rs) / max(1, sum(r["slices"] for r in rs))})
    return rows


def format_table(rows: list[dict], markdown: bool = False) -> str:
    """The summary table as text (terminal) or Markdown."""
    f = lambda v, p: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
    head = ["method", "volumes", "PSNR dB", "SSIM", "NMSE", "s/slice"]
    count = lambda r: (str(r["volumes"]) if r["scored"] in (0, r["volumes"])  # noqa: E731
                       else f"{r['volumes']} ({r['scored']} scored)")
    body = [[r["method"], count(r), f(r["psnr"], 2), f(r["ssim"], 4), f(r["nmse"], 4),
             f(r["s_per_slice"], 1)] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(b) + " |" for b in body])
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(b) for b in body])


def stop_summary(stops: list[str] | None) -> str:
    """``["plateau", "plateau", "overfit"]`` -> ``"plateau 2, overfit 1"`` (``-`` for none)."""
    if not stops:
        return "-"
    return ", ".join(f"{k} {stops.count(k)}" for k in dict.fromkeys(stops))


def write_report(out: Path, records: list[dict], figures: list[str], argv: list[str]) -> Path:
    """``report.md``: the command, versions, the table, per-volume rows and the figures."""
    import torch

    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("sigpy", "fastmri", "numpy"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - versions are informative only
            versions[mod] = "?"
    lines = ["# oes-mri reconstruction report", "", "Command:", "", "```", "python -m oes_mri.recon " + shlex.join(argv),
             "```", "", "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
             f"; machine: {platform.machine()}, {platform.system()}", "",
             "Metrics: fastMRI definitions (volume-wise NMSE, PSNR and SSIM with data_range = volume max), "
             "mean over the volumes with a target.", "", format_table(summary_rows(records), markdown=True), "",
             "## Per volume", "", "Fast path: how a generator's fit steps ran (``--fast-path``). Stop: why each "
             "slice's fit ended (" + "; ".join(f"{k}: {v}" for k, v in REASONS.items()) + "), slices counted.", "",
             "| file | method | accel | PSNR | SSIM | NMSE | s | fast path | stop |", "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        g = lambda k, p: "-" if r[k] is None else f"{r[k]:.{p}f}"  # noqa: E731
        lines.append(f"| {Path(r['file']).name} | {r['method']} | {r['acceleration']:.2f} | {g('psnr', 2)} | "
                     f"{g('ssim', 4)} | {g('nmse', 4)} | {r['seconds']:.1f} | {r.get('fast_path') or '-'} | "
                     f"{stop_summary(r.get('stop'))} |")
    masks = dict.fromkeys(f"{r['method']}: {r['pruning_mask']}" for r in records if r.get("pruning_mask"))
    if masks:
        lines += ["", "Pruning masks: " + "; ".join(masks) + "."]
    lines += ["", "## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures]
    path = out / "report.md"
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path
