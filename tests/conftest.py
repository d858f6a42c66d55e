"""Shared fixtures: an isolated cache folder, tiny simulated fastMRI files, the real data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    """Every test session gets its own cache folder (sample, maps)."""
    os.environ["OES_MRI_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["OES_MRI_NO_CALIBRATION"] = "1"      # CLI subprocesses and Ray workers fit in fp32 too


@pytest.fixture(autouse=True)
def _fp32_fits(monkeypatch):
    """Fits run in fp32 on every CPU: with native bf16, ``--fast-path auto`` could pick another
    path from a timing, and tests that compare two fits would compare two paths (subprocesses:
    ``OES_MRI_NO_CALIBRATION``, set for the session). The choice itself is tested with mocked
    timings (``test_fast_path_falls_back_to_fp32...``)."""
    from oes_mri.fit import fastpath

    monkeypatch.setattr(fastpath, "native_bf16", lambda device: False)


def shared_file(name: str) -> Path:
    """A file of ../shared/data, or skip the test with the reason."""
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"real data {path} not present (../shared/data is not in a user's clone)")
    return path


def expect_input_error(path, match, loader=None):
    """``loader(path)`` (default :func:`oes_mri.read_info`) raises one line naming ``path`` with ``match``."""
    from oes_mri import InputError, read_info

    with pytest.raises(InputError) as err:
        (loader or read_info)(path)
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg
    assert match in msg, msg


def phantom_image(n: int = 32, seed: int = 0) -> np.ndarray:
    """A small smooth test object: random ellipses, deterministic."""
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n), indexing="ij")
    img = np.zeros((n, n))
    for _ in range(5):
        cx, cy = rng.uniform(-0.3, 0.3, 2)
        a, b = rng.uniform(0.2, 0.6, 2)
        img += rng.uniform(0.3, 1.0) * (((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 < 1)
    img += 0.5 * ((x / 0.8) ** 2 + (y / 0.9) ** 2 < 1)
    return img


@pytest.fixture
def vmapped(monkeypatch):
    """Several fits of a batch run as one vmapped network on the CPU too (by default only on
    CUDA, :data:`oes_mri.fit.jobs.BATCHED_DEVICES`): the tests that compare the batched path
    with single fits need it taken."""
    from oes_mri.fit import jobs

    monkeypatch.setattr(jobs, "BATCHED_DEVICES", ("cuda", "cpu"))


@pytest.fixture(scope="session")
def tiny_file(tmp_path_factory) -> Path:
    """A 2-slice, 4-coil simulated fastMRI file, recon 32x32 (k-space 64x36)."""
    from oes_mri.data.simulate import write_fastmri_file

    path = tmp_path_factory.mktemp("tiny") / "tiny_vol.h5"
    imgs = np.stack([phantom_image(32, 0), phantom_image(32, 1)])
    return write_fastmri_file(path, imgs, num_coils=4, snr=40.0, seed=3, scale=2e-4)


@pytest.fixture(scope="session")
def two_volumes(tmp_path_factory) -> Path:
    """A folder of two 3-slice, 4-coil simulated fastMRI files (recon 32x32)."""
    from oes_mri.data.simulate import write_fastmri_file

    folder = tmp_path_factory.mktemp("vols")
    for i in range(2):
        imgs = np.stack([phantom_image(32, 10 * i + s) for s in range(3)])
        write_fastmri_file(folder / f"vol{i}.h5", imgs, num_coils=4, snr=40.0, seed=i, scale=2e-4)
    return folder
