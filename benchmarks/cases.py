"""Benchmark cases the self-validation and mask-bank benchmarks share, made from the team's
data (generated on first use into ``<cache>/bench/``, deterministic, never committed):

- ``brain4``: the shared real brain (``../shared/data/brain_t1_8coil.h5``) with 4 of its 8
  coils (every other one, so that the four still surround the head); the target is the RSS
  of those four fully sampled coil images, as a 4-coil scanner would record it.
- ``sample4``: the built-in sample's image simulated with 4 coils (SNR 30).
- ``sample-snr10``: the built-in sample's image simulated with 8 coils at SNR 10, a case
  where the fit reaches the noise within the step cap and the stopping rule must act.

    python benchmarks/cases.py          # writes them and prints their paths
"""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import torch

from oes_mri.data.fastmri_io import atomic_h5
from oes_mri.data.sample import cache_dir, sample_image
from oes_mri.data.simulate import write_fastmri_file
from oes_mri.physics.fft import center_crop, ifft2c, rss

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
BRAIN = SHARED / "brain_t1_8coil.h5"
VERSION = 1


def folder() -> Path:
    path = cache_dir() / "bench" / f"v{VERSION}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def coil_subset(src: Path, dst: Path, coils: list[int]) -> Path:
    """``src`` (a fully sampled fastMRI multicoil file) with only ``coils``; the target is the
    RSS of those coils' images, centre-cropped to the old target's size."""
    with h5py.File(src, "r") as f:
        k = f["kspace"][()][:, coils]
        header = f["ismrmrd_header"][()]
        size = f["reconstruction_rss"].shape[-2:]
        attrs = {a: f.attrs[a] for a in ("acquisition", "patient_id") if a in f.attrs}
    target = center_crop(rss(ifft2c(torch.from_numpy(k))), size).numpy().astype(np.float32)
    attrs.update(max=float(target.max()), norm=float(np.linalg.norm(target)), num_coils=len(coils),
                 source=f"{src.name}, coils {coils}")
    atomic_h5(dst, {"kspace": k, "reconstruction_rss": target, "ismrmrd_header": header}, attrs)
    return dst


def brain4() -> Path | None:
    """The shared brain with coils 0, 2, 4, 6 (``None`` without ``../shared/data``)."""
    if not BRAIN.exists():
        return None
    path = folder() / "brain4_t1_4coil.h5"
    return path if path.exists() else coil_subset(BRAIN, path, [0, 2, 4, 6])


def simulated(name: str, coils: int, snr: float) -> Path:
    """The built-in sample's image simulated with ``coils`` coils at RSS SNR ``snr`` (the
    sample's own seed and scale)."""
    path = folder() / f"{name}.h5"
    if not path.exists():
        write_fastmri_file(path, sample_image()[None], num_coils=coils, snr=snr, seed=1045, scale=3e-4,
                           acquisition="SIM_HEAD")
    return path


def sample4() -> Path:
    return simulated("sample4_head_4coil", 4, 30.0)


def sample_snr10() -> Path:
    return simulated("sample_snr10_head_8coil", 8, 10.0)


CASES = {"brain4": brain4, "sample4": sample4, "sample-snr10": sample_snr10}


def case_files(names: list[str]) -> list[Path]:
    """The files of the named cases (a missing shared file is skipped with a line saying so)."""
    out = []
    for n in names:
        p = CASES[n]()
        if p is None:
            print(f"skipping {n}: {BRAIN} is absent", file=sys.stderr)
        else:
            out.append(p)
    return out


if __name__ == "__main__":
    for p in case_files(list(CASES)):
        print(p)
