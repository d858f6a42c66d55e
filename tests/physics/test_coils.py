import logging

import numpy as np
import torch

from oes_mri import load_volume
from oes_mri.physics.coils import MapCache, estimate_maps, map_cache_key, map_coverage, maps_ok
from oes_mri.physics.fft import rss
from oes_mri.physics.masks import fastmri_mask, volume_seed
from tests.conftest import shared_file


def test_espirit_on_sample_recovers_maps():
    from oes_mri import sample_path

    v = load_volume(sample_path())
    k = v.kspace[0]
    m = fastmri_mask(k.shape[-2:], 4, seed=volume_seed("sample"))
    res = estimate_maps(k * m.mask, m)
    assert res.method == "espirit-k6"
    assert res.maps.shape == k.shape and res.maps.dtype == torch.complex64
    assert map_coverage(res.maps, k * m.mask, m.acs) > 0.95
    # ESPIRiT maps are normalised: RSS about 1 inside the object
    obj = torch.from_numpy(np.pad(v.target[0], ((80, 80), (12, 12)))) > 0.2 * v.target.max()
    assert abs(float(rss(res.maps, 0)[obj].mean()) - 1) < 0.05


def test_failed_calibration_detected_and_falls_back(caplog):
    path = shared_file("brain_t1_8coil.h5")
    k = load_volume(path).kspace[0]
    m = fastmri_mask(k.shape[-2:], 8, 0.04, seed=volume_seed("vol"))
    assert m.acs_width == 7
    with caplog.at_level(logging.WARNING, logger="oes_mri"):
        res = estimate_maps(k * m.mask, m, source="brain slice 0")
    assert res.method != "espirit-k6"
    assert "brain slice 0" in caplog.text and "ESPIRiT" in caplog.text
    assert maps_ok(res.maps, k * m.mask, m.acs) or res.method == "lowres"
    assert torch.isfinite(res.maps).all() and float(res.maps.abs().max()) > 0


def test_all_zero_maps_are_not_ok():
    k = torch.randn(2, 16, 16, dtype=torch.complex64)
    m = fastmri_mask((16, 16), 2, 0.5, seed=0)
    assert not maps_ok(torch.zeros(2, 16, 16, dtype=torch.complex64), k, m.acs)
    nan = torch.full((2, 16, 16), float("nan"), dtype=torch.complex64)
    assert not maps_ok(nan, k, m.acs)


def test_map_cache(tiny_file, tmp_path):
    k = load_volume(tiny_file).kspace[0]
    m = fastmri_mask(k.shape[-2:], 2, 0.3, seed=0)
    cache = MapCache(tmp_path)
    key = map_cache_key(tiny_file, 0, m, kernel_width=6)
    assert key != map_cache_key(tiny_file, 1, m, kernel_width=6)
    calls = []

    def compute():
        calls.append(1)
        return estimate_maps(k * m.mask, m)

    a = cache.get_or_compute(key, compute)
    b = cache.get_or_compute(key, compute)
    assert len(calls) == 1 and torch.equal(a.maps, b.maps) and a.method == b.method


def test_sigpy_app_falls_back_to_cpu_when_the_gpu_path_fails(monkeypatch, caplog):
    """Where sigpy would run on a GPU but CuPy fails (here: not installed), the app runs on
    the CPU with one warning and gives the CPU result."""
    import types

    from oes_mri import sample_path, sigpy_bridge
    from oes_mri.physics.coils import espirit_maps

    k = load_volume(sample_path()).kspace[0]
    m = fastmri_mask(k.shape[-2:], 4, seed=volume_seed("sample"))
    y = k * m.mask
    cpu = espirit_maps(y, 24)
    monkeypatch.setattr(sigpy_bridge, "sigpy_device", lambda device: types.SimpleNamespace(id=0))
    monkeypatch.setitem(__import__("sys").modules, "cupy", None)          # import cupy fails
    with caplog.at_level(logging.WARNING, logger="oes_mri"):
        again = espirit_maps(y, 24)
    assert torch.equal(cpu, again)
    assert len([r for r in caplog.records if "running it on the CPU" in r.getMessage()]) == 1
