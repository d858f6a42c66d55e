"""The figures of one volume: the comparison grid, the sampling mask and the PSNR-vs-step
curves of its middle selected slice (read back from the checkpoints)."""

from __future__ import annotations

import numpy as np

from oes_mri.app import report
from oes_mri.app.storage import load_checkpoint, output_stem
from oes_mri.methods import ZeroFilled
from oes_mri.physics.combine import zero_filled_rss


def volume_figures(vol, records: list[dict]) -> list[str]:
    """Figures of one volume (middle selected slice); returns their paths relative to --out."""
    out, name = vol.cfg.out, output_stem(vol.info.path)
    mid = len(vol.indices) // 2
    index = vol.indices[mid]
    x, target = vol.slice_input(index)
    images = {"zero-filled": zero_filled_rss(x.kspace, x.recon_size).cpu().numpy()}
    curves = {}
    for m in vol.cfg.names:
        ck = load_checkpoint(vol.checkpoint(m, index))
        if not isinstance(vol.cfg.method(m), ZeroFilled):      # shown once, as "zero-filled"
            images[m] = ck["image"]
        curves[m] = report.FitCurves(ck["curve"], ck["vals"], int(ck["steps"][1]) if ck["steps"].size else None,
                                     str(ck["stop"]) if "stop" in ck else "")
    files = [f"figures/{name}_slice{index}.png", f"figures/{name}_mask.png"]
    report.comparison_grid(out / files[0], images, target, f"{vol.info.path.name} slice {index}, "
                           f"{vol.smask.acceleration:.2f}x {vol.smask.kind}")
    report.mask_figure(out / files[1], np.broadcast_to(vol.smask.mask.cpu().numpy(), vol.info.shape),
                       f"{vol.smask.kind} mask, {vol.smask.acceleration:.2f}x, ACS {vol.smask.acs_width}")
    if report.curves(out / f"figures/{name}_curves.png", curves, f"{vol.info.path.name} slice {index}"):
        files.append(f"figures/{name}_curves.png")
    return files
