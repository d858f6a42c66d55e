"""The fastMRI data layer: reading, header geometry, writing, and every bad input."""

import h5py
import numpy as np
import pytest
import torch

from oes_mri import InputError, load_volume, read_info, write_reconstruction
from oes_mri.data.volumes import list_volumes, load_slice, parse_slices
from tests.conftest import expect_input_error


def test_load_tiny(tiny_file):
    v = load_volume(tiny_file)
    assert v.kspace.shape == (2, 4, 64, 36) and v.kspace.dtype == torch.complex64
    assert v.target.shape == (2, 32, 32) and v.recon_size == (32, 32)
    assert v.info.header.encoded_size == (64, 36)
    left, right = v.info.header.padding_left, v.info.header.padding_right
    assert 0 < left < right < 36
    assert not v.kspace[..., :left].any() and not v.kspace[..., right:].any()
    assert v.attrs["acquisition"] == "SIMULATED" and v.mask is None


def test_slice_selection(tiny_file):
    v = load_volume(tiny_file, slices=[1])
    assert v.kspace.shape[0] == 1
    assert np.array_equal(v.target[0], load_volume(tiny_file).target[1])
    assert parse_slices("0:1", 2) == [0] and parse_slices(None, 3) == [0, 1, 2]
    assert parse_slices("2,0", 3) == [0, 2]
    with pytest.raises(ValueError):
        parse_slices("5", 2)


def test_folder_listing(tiny_file, tmp_path):
    assert list_volumes(tiny_file.parent) == [tiny_file]
    with pytest.raises(InputError, match="holds no raw data files"):
        list_volumes(tmp_path)


def test_write_reconstruction_readable_by_fastmri(tmp_path):
    from fastmri.evaluate import psnr

    rec = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    out = tmp_path / "sub" / "vol.h5"
    write_reconstruction(out, rec)
    with h5py.File(out, "r") as hf:
        got = hf["reconstruction"][()]
    assert got.dtype == np.float32 and np.array_equal(got, rec)
    assert np.isinf(psnr(rec, got))
    assert [p.name for p in out.parent.iterdir()] == ["vol.h5"]  # no temporary left


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "vol.h5"
    with pytest.raises(ValueError):
        write_reconstruction(out, np.zeros((4, 4)))
    assert list(tmp_path.iterdir()) == []


# ---- bad input: one clear line naming the file ----

def _write(path, **datasets):
    with h5py.File(path, "w") as hf:
        for k, v in datasets.items():
            hf.create_dataset(k, data=v)
    return path


def _ksp(*shape, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)


_expect = expect_input_error


def test_missing_file(tmp_path):
    _expect(tmp_path / "nope.h5", "file not found")


def test_not_hdf5(tmp_path):
    p = tmp_path / "x.h5"
    p.write_text("hello")
    _expect(p, "neither an HDF5 file")


def test_truncated(tiny_file, tmp_path):
    p = tmp_path / "trunc.h5"
    data = tiny_file.read_bytes()
    p.write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError) as err:
        load_volume(p)
    assert str(p) in str(err.value) and ("truncated" in str(err.value) or "corrupt" in str(err.value))


def test_no_kspace(tmp_path):
    _expect(_write(tmp_path / "a.h5", other=np.zeros(3)), "no 'kspace' dataset")


def test_wrong_rank(tmp_path):
    _expect(_write(tmp_path / "a.h5", kspace=_ksp(2, 3, 4, 5, 6)), "rank 5")
    p = _write(tmp_path / "b.h5", kspace=_ksp(2, 8, 8))
    with pytest.raises(InputError, match="multicoil needs rank 4"):
        read_info(p, challenge="multicoil")


def test_real_dtype(tmp_path):
    _expect(_write(tmp_path / "a.h5", kspace=np.ones((1, 2, 8, 8), np.float32)), "real dtype")


def test_nan_and_inf(tmp_path):
    k = _ksp(1, 2, 8, 8)
    k[0, 0, 1, 1] = np.nan
    _expect(_write(tmp_path / "a.h5", kspace=k), "NaN or Inf", load_volume)
    k = _ksp(1, 2, 8, 8)
    k[0, 1, 2, 2] = np.inf
    _expect(_write(tmp_path / "b.h5", kspace=k), "NaN or Inf", load_volume)


def test_all_zero(tmp_path):
    _expect(_write(tmp_path / "a.h5", kspace=np.zeros((1, 2, 8, 8), np.complex64)), "all zero", load_volume)


def test_mask_width_mismatch(tmp_path):
    p = _write(tmp_path / "a.h5", kspace=_ksp(1, 2, 8, 8), mask=np.ones(7, bool))
    _expect(p, "mask has width 7 but k-space has width 8")


def test_singlecoil(tmp_path):
    p = _write(tmp_path / "sc.h5", kspace=_ksp(2, 8, 6), reconstruction_esc=np.ones((2, 8, 6), np.float32))
    info = read_info(p)
    assert info.challenge == "singlecoil" and info.has_target
    k, t = load_slice(info, 1)
    assert k.shape == (1, 8, 6) and t.shape == (8, 6)
