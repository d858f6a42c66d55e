"""The hybrid prior: a wavelet L1 penalty on the generator's image, in the L1-wavelet
baseline's units (:mod:`oes_mri.fit.penalty`)."""

from __future__ import annotations

import numpy as np
import pytest
import sigpy as sp
import torch

from oes_mri.nets.generator import ArchConfig
from oes_mri.fit.config import FitConfig, ValidationConfig
from oes_mri.fit.penalty import wavelet_l1
from oes_mri.fit.jobs import DipConfig, reconstruct_dip, reconstruct_dip_batch, setup_fit
from tests.fit.test_fit import _slices, float64  # noqa: F401 (fixture)

TINY = DipConfig(arch=ArchConfig("hourglass-tiny")).updated({"pruning.method": "dense"})


@pytest.mark.parametrize("shape", [(37, 52), (64, 36)])
def test_wavelet_l1_is_sigpys_wavelet_norm(shape):
    """``||W x||_1`` of complex images equals sigpy's db4 ``Wavelet`` linop (the L1 baseline's)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, *shape)) + 1j * rng.standard_normal((2, *shape))
    want = sum(np.abs(sp.linop.Wavelet(shape, wave_name="db4")(xi)).sum() for xi in x)
    assert np.isclose(float(wavelet_l1(torch.from_numpy(x))), want, rtol=1e-9)


def test_penalised_loss_is_the_l1_wavelet_objective(float64):  # noqa: F811
    """The fit loss with ``fit.penalty = lamda`` is L1-wavelet's objective
    ``1/2 ||A u - y/m||^2 + lamda ||W u||_1`` (``u = x/m``, ``m = max|A^H y|``) times
    ``2 m^2 / ||y||^2``; the held-out error stays the data error alone."""
    x = float64(_slices(1)[0])
    lamda = 0.003
    for share in (0.0, 0.2):
        cfg = TINY.updated({"fit.penalty": lamda, "validation.share": share})
        st = setup_fit(x, cfg, seed=0)
        plain = setup_fit(x, cfg.updated({"fit.penalty": 0.0}), seed=0)
        p = st.problem
        fit_mask = p.fit_mask if p.fit_mask is not None else x.mask
        y = p.y * fit_mask
        m = float(p.op.adjoint(y).abs().max())
        image = torch.randn(1, *x.kspace.shape[-2:], dtype=torch.complex128, generator=torch.Generator().manual_seed(1))
        u = image / m
        r = (p.op(u[0]) - y / m) * fit_mask
        objective = 0.5 * float(r.abs().square().sum()) + lamda * float(wavelet_l1(u))
        got = st.loss_fn(image)
        fit_loss = got[0] if isinstance(got, tuple) else got
        assert np.isclose(float(fit_loss), 2 * m**2 / float(y.abs().square().sum()) * objective, rtol=1e-9)
        if share:
            assert float(got[1]) == float(plain.loss_fn(image)[1])          # held-out error: data only
        else:
            assert float(fit_loss) > float(plain.loss_fn(image))


def test_penalty_makes_the_image_sparser():
    """A strong penalty lowers the wavelet norm of the returned image (relative to its size)."""
    x = _slices(1)[0]
    cfg = TINY.updated({"fit.steps": 60, "fit.log_every": 20, "validation.share": 0.0})
    ratio = []
    for lamda in (0.0, 0.05):
        img = reconstruct_dip(x, cfg.updated({"fit.penalty": lamda})).image
        ratio.append(float(wavelet_l1(img[None]) / img.abs().square().sum().sqrt()))
    assert ratio[1] < 0.8 * ratio[0]


def test_batched_penalised_fit_equals_one_at_a_time(float64, vmapped):  # noqa: F811
    """The penalty reaches the batched loop: batched slices follow their one-slice fits (float64)."""
    xs = [float64(x) for x in _slices(2)]
    cfg = TINY.updated({"fit.penalty": 0.01, "fit.steps": 12, "fit.log_every": 4,
                        "validation": ValidationConfig(share=0.2, patience=100)})
    for x, b in zip(xs, reconstruct_dip_batch(xs, cfg)):
        one = reconstruct_dip(x, cfg)
        assert np.allclose(b.history["losses"], one.history["losses"], rtol=1e-6, atol=0)
        assert (b.coil_images - one.coil_images).abs().max() < 1e-5 * one.coil_images.abs().max()


def test_penalty_must_be_finite_and_not_negative():
    for bad in (-1e-3, float("inf")):
        with pytest.raises(ValueError, match="penalty"):
            FitConfig(penalty=bad)
