import numpy as np
import pytest
from fastmri.evaluate import nmse, psnr, ssim

from oes_mri.metrics import fastmri_crop, slice_metrics, volume_metrics


def _pair(shape, seed=0):
    rng = np.random.default_rng(seed)
    gt = rng.random(shape).astype(np.float32) * 3e-4
    return gt, (gt + rng.normal(scale=2e-5, size=shape)).astype(np.float32)


def test_equals_fastmri_evaluate():
    gt, pred = _pair((3, 40, 40))
    ours = volume_metrics(gt, pred)
    assert ours.nmse == pytest.approx(float(nmse(gt, pred)), abs=1e-6)
    assert ours.psnr == pytest.approx(float(psnr(gt, pred)), abs=1e-6)
    assert ours.ssim == pytest.approx(float(ssim(gt, pred)[0]), abs=1e-6)


def test_square_crop_like_fastmri_cli():
    gt, pred = _pair((2, 50, 30), seed=1)
    t, p = fastmri_crop(gt, pred)
    assert t.shape == (2, 30, 30)
    assert volume_metrics(gt, pred, square_crop=True).ssim == pytest.approx(float(ssim(t, p)[0]), abs=1e-6)


def test_volume_max_not_slice_max():
    gt, pred = _pair((2, 32, 32), seed=2)
    gt[1] *= 0.5
    pred[1] *= 0.5
    vol = volume_metrics(gt, pred)
    per_slice = [slice_metrics(gt[i], pred[i], maxval=gt.max())[1] for i in range(2)]
    assert vol.ssim == pytest.approx(np.mean(per_slice), abs=1e-6)
