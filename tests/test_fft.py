import fastmri
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
