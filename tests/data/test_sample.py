import h5py
import numpy as np

from oes_mri import load_volume, sample_path
from oes_mri.data.sample import matplotlib_mr_slice
from oes_mri.data.simulate import write_fastmri_file


def test_sample_layout():
    v = load_volume(sample_path())
    assert v.kspace.shape == (1, 8, 320, 184)
    assert v.recon_size == (160, 160) and v.target.shape == (1, 160, 160)
    assert abs(v.attrs["max"] - v.target.max()) < 1e-9
    with h5py.File(sample_path()) as hf:
        assert set(hf.keys()) == {"kspace", "reconstruction_rss", "ismrmrd_header"}


def test_real_slice_source():
    img = matplotlib_mr_slice()
    assert img.shape == (256, 256) and img.max() > 100


def test_simulation_deterministic(tmp_path):
    img = matplotlib_mr_slice()[::8, ::8]
    a = write_fastmri_file(tmp_path / "a.h5", img, num_coils=3, seed=7)
    b = write_fastmri_file(tmp_path / "b.h5", img, num_coils=3, seed=7)
    c = write_fastmri_file(tmp_path / "c.h5", img, num_coils=3, seed=8)
    ka, kb, kc = (load_volume(p).kspace.numpy() for p in (a, b, c))
    assert np.array_equal(ka, kb) and not np.array_equal(ka, kc)


def test_target_is_rss_of_fully_sampled(tiny_file):

    from oes_mri import center_crop, ifft2c, rss

    v = load_volume(tiny_file)
    ref = center_crop(rss(ifft2c(v.kspace)), v.recon_size).numpy()
    assert np.allclose(ref, v.target, rtol=1e-5, atol=1e-6 * v.target.max())
