import fastmri
import numpy as np
import torch

from oes_mri import fft2c, ifft2c


def _rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.complex64)


def _rel(a, b):
    return float((a - b).abs().norm() / b.abs().norm())


def test_fft2c_equals_fastmri():
    x = _rand(3, 4, 20, 17)
    ref = torch.view_as_complex(fastmri.fft2c(torch.view_as_real(x)).contiguous())
    assert _rel(fft2c(x), ref) < 1e-5


def test_ifft2c_equals_fastmri():
    k = _rand(2, 15, 16)
    ref = torch.view_as_complex(fastmri.ifft2c(torch.view_as_real(k)).contiguous())
    assert _rel(ifft2c(k), ref) < 1e-5


def test_unitary_and_inverse():
    x = _rand(4, 12, 9)
    k = fft2c(x)
    assert abs(float(k.norm() / x.norm()) - 1) < 1e-5
    assert _rel(ifft2c(k), x) < 1e-5


def test_differentiable():
    x = _rand(8, 8).requires_grad_(True)
    fft2c(x).abs().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_pipeline_readout_crop_keeps_the_image(tiny_file, tmp_path):
    """--readout crop on a fully sampled simulated slice: half the readout, the same
    zero-filled RSS image on the recon grid (and the same target)."""
    from oes_mri.app.volume import RunConfig, VolumeData
    from oes_mri.physics.combine import zero_filled_rss

    imgs = {}
    for readout in ("full", "crop"):
        cfg = RunConfig(data=tiny_file, out=tmp_path / readout, methods=["zf"], accel=1.0, readout=readout)
        x, tgt = VolumeData(tiny_file, cfg).slice_input(0)
        imgs[readout] = (x.kspace.shape, zero_filled_rss(x.kspace, x.recon_size).numpy(), tgt)
    (shape_full, full, target), (shape_crop, crop, _) = imgs["full"], imgs["crop"]
    assert shape_crop[-2] == x.recon_size[0] < shape_full[-2] and shape_crop[-1] == shape_full[-1]
    assert np.abs(crop - full).max() < 1e-5 * full.max()
    assert np.abs(full - target).max() < 1e-4 * target.max()      # fully sampled: the zero-filled RSS is the target
