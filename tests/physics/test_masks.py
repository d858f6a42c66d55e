import numpy as np
import pytest
import torch
from fastmri.data.subsample import create_mask_for_mask_type

from oes_mri.physics.masks import (fastmri_mask, find_acs, make_sampling_mask, mask_from_array,
                                   poisson_mask, volume_seed)


@pytest.mark.parametrize("kind", ["random", "equispaced"])
@pytest.mark.parametrize("accel,cf", [(4, 0.08), (8, 0.04)])
@pytest.mark.parametrize("shape", [(640, 368), (230, 180), (64, 37)])
def test_bit_identical_to_fastmri(kind, accel, cf, shape):
    seed = volume_seed("file1000001.h5")
    ours = fastmri_mask(shape, accel, cf, kind, seed=seed)
    func = create_mask_for_mask_type(kind, [cf], [accel])
    ref, num_low = func((1, *shape, 2), seed=seed)
    assert torch.equal(ours.mask.reshape(-1), ref.reshape(-1))
    assert ours.acs_width == num_low
    assert ours.mask.shape == (1, shape[1])


def test_seed_reproducible_and_file_dependent():
    a = fastmri_mask((640, 368), 4, seed=volume_seed("a.h5"))
    b = fastmri_mask((640, 368), 4, seed=volume_seed("a.h5"))
    c = fastmri_mask((640, 368), 4, seed=volume_seed("b.h5"))
    assert torch.equal(a.mask, b.mask) and not torch.equal(a.mask, c.mask)


def test_realised_acceleration_and_acs():
    m = fastmri_mask((640, 368), 4, 0.08, seed=1)
    cols = int(m.mask.sum())
    assert m.acceleration == pytest.approx(368 / cols)
    assert 3.0 < m.acceleration < 5.5
    assert m.acs_width == round(368 * 0.08)
    assert bool(m.mask[0, m.acs[1]].all())
    assert m.acs_height == 640


def test_default_center_fraction():
    assert fastmri_mask((64, 100), 4, seed=0).acs_width == 8
    assert fastmri_mask((64, 100), 8, seed=0).acs_width == 4


def test_poisson_mask():
    m = poisson_mask((64, 60), 4, calib=(12, 12), seed=2)
    assert m.mask.shape == (64, 60)
    assert 2.5 < m.acceleration < 6
    assert m.acs_height >= 12 and m.acs_width >= 12
    assert torch.equal(m.mask, poisson_mask((64, 60), 4, calib=(12, 12), seed=2).mask)
    assert make_sampling_mask("poisson", (64, 60), 4, seed=(1, 2)).mask.shape == (64, 60)


def test_mask_from_array_1d_and_2d():
    w = np.zeros(20, bool)
    w[8:13] = True
    w[::4] = True
    m = mask_from_array(w, (10, 20))
    assert m.mask.shape == (1, 20) and m.acs[1] == slice(8, 13)
    m2 = mask_from_array(np.tile(w, (10, 1)), (10, 20))
    assert m2.mask.shape == (1, 20)  # columns detected
    two_d = np.zeros((10, 20), bool)
    two_d[3:7, 8:13] = True
    m3 = mask_from_array(two_d, (10, 20))
    assert m3.mask.shape == (10, 20) and m3.acs == (slice(3, 7), slice(8, 13))


def test_mask_width_mismatch_is_an_error():
    with pytest.raises(ValueError, match="width 19 but k-space has width 20"):
        mask_from_array(np.ones(19), (10, 20))
    with pytest.raises(ValueError, match="shape"):
        mask_from_array(np.ones((9, 20)), (10, 20))


def test_find_acs_on_2d():
    m = torch.zeros(9, 9)
    m[2:7, 3:6] = 1
    assert find_acs(m, (9, 9)) == (slice(2, 7), slice(3, 6))
