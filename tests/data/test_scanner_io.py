"""Scanner raw data in (ISMRMRD, Siemens twix), NIfTI out."""

import json
import sys

import h5py
import numpy as np
import pytest
import torch

from oes_mri import InputError, load_volume, read_info
from oes_mri.data.ismrmrd_io import write_ismrmrd
from oes_mri.data import volumes
from oes_mri.data.volumes import detect, list_volumes, load_slice
from oes_mri.physics.fft import center_crop, crop_readout, ifft2c, rss
from oes_mri.recon import main
from tests.conftest import expect_input_error, shared_file

FAST = ["--arch", "hourglass-tiny", "--steps", "10", "--mask-steps", "5", "--no-figures", "--quiet", "--fast-path", "fp32"]


_expect = expect_input_error


@pytest.fixture(scope="module")
def fastmri_volume(tiny_file):
    return load_volume(tiny_file)


def _sampled(W, step=3, acs=4):
    m = np.zeros(W, bool)
    m[::step] = True
    m[W // 2 - acs // 2:W // 2 + acs // 2] = True
    return m


@pytest.fixture(scope="module")
def ismrmrd_files(tmp_path_factory, fastmri_volume):
    """The tiny fastMRI volume as ISMRMRD: fully sampled and undersampled, noise scans mixed in."""
    d = tmp_path_factory.mktemp("ismrmrd")
    k = fastmri_volume.kspace.numpy()
    full, under = d / "full.h5", d / "under.h5"
    write_ismrmrd(full, k, fastmri_volume.recon_size, voxel_size=(0.5, 0.6, 3.0), noise_scans=2)
    write_ismrmrd(under, k, fastmri_volume.recon_size, sampled=_sampled(k.shape[-1]), noise_scans=1)
    return full, under


def test_ismrmrd_fully_sampled_reads_back(ismrmrd_files, fastmri_volume):
    full, _ = ismrmrd_files
    assert detect(full) == "ismrmrd"
    v = load_volume(full)
    assert torch.equal(v.kspace, fastmri_volume.kspace)           # same k-space, noise scans skipped
    assert v.recon_size == fastmri_volume.recon_size and v.mask is None
    assert v.info.voxel_size == pytest.approx((0.5, 0.6, 3.0))
    want = center_crop(rss(ifft2c(v.kspace)), v.recon_size).numpy()
    assert np.allclose(v.target, want, rtol=1e-5, atol=1e-7 * want.max())   # fastMRI's reconstruction_rss
    assert np.allclose(v.target, fastmri_volume.target, rtol=1e-4, atol=1e-6 * want.max())


def test_ismrmrd_undersampled_carries_its_mask(ismrmrd_files, fastmri_volume):
    _, under = ismrmrd_files
    info = read_info(under)
    m = _sampled(info.shape[1])
    assert not info.has_target and info.mask is not None
    assert torch.equal(info.mask.mask[0].bool(), torch.from_numpy(m))
    k, target = load_slice(info, 1)
    assert target is None
    assert torch.equal(k, fastmri_volume.kspace[1] * torch.from_numpy(m))


def _patch_xml(path, old, new):
    with h5py.File(path, "r+") as hf:
        xml = hf["dataset/xml"][0]
        xml = xml.decode() if isinstance(xml, bytes) else xml
        assert old in xml
        hf["dataset/xml"][0] = xml.replace(old, new).encode()
    return path


def _copy(src, dst):
    dst.write_bytes(src.read_bytes())
    return dst


def test_ismrmrd_unsupported_files(ismrmrd_files, tmp_path, fastmri_volume):
    full, _ = ismrmrd_files
    _expect(_patch_xml(_copy(full, tmp_path / "radial.h5"), "<trajectory>cartesian", "<trajectory>radial"),
            "trajectory 'radial' is not supported")
    _expect(_patch_xml(_copy(full, tmp_path / "3d.h5"), "<y>36</y><z>1</z>", "<y>36</y><z>8</z>"),
            "3-D encoding")
    start = "<kspace_encoding_step_1>"
    p = _copy(full, tmp_path / "nolimits.h5")
    with h5py.File(p, "r") as hf:
        xml = hf["dataset/xml"][0].decode()
    block = xml[xml.index(start):xml.index("</kspace_encoding_step_1>") + len("</kspace_encoding_step_1>")]
    _expect(_patch_xml(p, block, ""), "lacks encodingLimits/kspace_encoding_step_1")
    _expect(_patch_xml(_copy(full, tmp_path / "badxml.h5"), "<encoding>", "<encodingX>"), "unreadable ISMRMRD XML")
    # a slice without acquisitions, and slices sampled differently
    k = fastmri_volume.kspace.numpy()
    gap = tmp_path / "gap.h5"
    write_ismrmrd(gap, np.concatenate([k, k]), fastmri_volume.recon_size)
    with h5py.File(gap, "r+") as hf:
        data = hf["dataset/data"][()]
        keep = data["head"]["idx"]["slice"] != 1
        del hf["dataset/data"]
        hf["dataset"].create_dataset("data", data=data[keep], maxshape=(None,))
    _expect(gap, "slice 1 of 4 has no acquisitions")
    uneven = tmp_path / "uneven.h5"
    write_ismrmrd(uneven, k, fastmri_volume.recon_size)
    with h5py.File(uneven, "r+") as hf:
        data = hf["dataset/data"][()]
        drop = (data["head"]["idx"]["slice"] == 1) & (data["head"]["idx"]["kspace_encode_step_1"] == 3)
        del hf["dataset/data"]
        hf["dataset"].create_dataset("data", data=data[~drop], maxshape=(None,))
    _expect(uneven, "slice 1 acquired other phase-encode lines than slice 0")


def test_twix_matches_the_converted_h5():
    pytest.importorskip("twixtools")
    dat = shared_file("siemens_gre_phantom_2coil.dat")
    h5 = shared_file("phantom_gre_2coil.h5")
    assert detect(dat) == "twix"
    v = load_volume(dat)
    with h5py.File(h5) as hf:
        ref, ref_target = hf["kspace"][()], hf["reconstruction_rss"][()]
    assert v.kspace.shape == (1, 2, 320, 160) and v.recon_size == (160, 160) and v.mask is None
    # phantom_gre_2coil.h5 holds twixtools' remove_os k-space: unnormalised transforms, so ours
    # (orthonormal, image values kept) times sqrt(160 / 320)
    cropped = crop_readout(v.kspace, 160).numpy() * np.sqrt(0.5)
    assert np.abs(cropped - ref).max() < 1e-5 * np.abs(ref).max()
    assert np.abs(v.target * np.sqrt(0.5) - ref_target).max() < 1e-5 * ref_target.max()
    assert v.info.voxel_size == pytest.approx((1.25, 1.25, 4.0))


def test_twix_without_the_extra(monkeypatch, tmp_path):
    dat = shared_file("siemens_gre_phantom_2coil.dat")
    monkeypatch.setitem(sys.modules, "twixtools", None)
    volumes._scan.cache_clear()                 # a file read before is kept in memory
    _expect(dat, "pip install 'oes-mri[siemens]'")


def test_garbage_and_truncated_twix(tmp_path):
    pytest.importorskip("twixtools")
    junk = tmp_path / "meas_junk.dat"
    junk.write_bytes(b"\x01\x02" * 100)
    _expect(junk, "neither an HDF5 file")
    dat = shared_file("siemens_gre_phantom_2coil.dat")
    trunc = tmp_path / "meas_trunc.dat"
    trunc.write_bytes(dat.read_bytes()[:20000])
    with pytest.raises(InputError) as err:
        load_volume(trunc)
    assert str(trunc) in str(err.value) and "\n" not in str(err.value)


def test_crop_readout_is_exact_on_a_fully_sampled_case():
    rng = np.random.default_rng(0)
    k = torch.from_numpy((rng.standard_normal((3, 64, 20)) + 1j * rng.standard_normal((3, 64, 20))).astype(np.complex64))
    cropped = crop_readout(k, 32)
    assert cropped.shape == (3, 32, 20)
    assert torch.allclose(ifft2c(cropped), center_crop(ifft2c(k), (32, 20)), atol=1e-5)


def test_cli_reads_ismrmrd_and_twix_and_writes_nifti(ismrmrd_files, tmp_path, tiny_file):
    nib = pytest.importorskip("nibabel")
    full, under = ismrmrd_files
    folder = tmp_path / "mixed"
    folder.mkdir()
    for src in (full, under, tiny_file):
        _copy(src, folder / src.name)
    out = tmp_path / "out"
    assert main(["--data", str(folder), "--out", str(out), "--methods", "oes,zf", "--save", "nifti", *FAST]) == 0
    recs = {(r["file"].rsplit("/", 1)[-1], r["method"]): r for r in json.loads((out / "metrics.json").read_text())}
    assert recs[("full.h5", "oes")]["psnr"] is not None                # fully sampled: scored
    assert recs[("under.h5", "zf")]["psnr"] is None                   # prospectively undersampled: no target
    assert recs[("under.h5", "zf")]["acceleration"] == pytest.approx(36 / _sampled(36).sum())
    img = nib.load(out / "oes" / "full.nii.gz")
    assert img.shape == (32, 32, 2)
    assert img.header.get_zooms() == pytest.approx((0.5, 0.6, 3.0))
    assert np.allclose(img.affine, np.diag([0.5, 0.6, 3.0, 1.0]))
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    with h5py.File(out / "oes" / "full.h5") as hf:
        rec = hf["reconstruction"][()]
    data = img.get_fdata()
    assert np.allclose(data, rec.transpose(1, 2, 0), atol=rec.max() / 30000)   # int16 with scl_slope
    assert img.header["cal_max"] > 0 and img.header["cal_min"] == 0
    assert (out / "zf" / "under.nii.gz").exists() and (out / "zf" / "tiny_vol.nii.gz").exists()


def test_cli_reconstructs_twix(tmp_path):
    """The twix file end to end: same mask seed, same zero-filled image as its converted h5
    (on the recon grid the oversampled readout is cropped away; scale sqrt(2), see above)."""
    pytest.importorskip("twixtools")
    dat = shared_file("siemens_gre_phantom_2coil.dat")
    h5 = shared_file("phantom_gre_2coil.h5")
    args = ["--methods", "zf,sense", "--seed", "0", "--no-figures", "--quiet"]
    assert main(["--data", str(dat), "--out", str(tmp_path / "a"), *args]) == 0
    assert main(["--data", str(h5), "--out", str(tmp_path / "b"), *args]) == 0
    recs = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert {r["method"] for r in recs} == {"zf", "sense"} and all(r["psnr"] > 15 for r in recs)
    with h5py.File(tmp_path / "a" / "zf" / "siemens_gre_phantom_2coil_dat.h5") as a, \
            h5py.File(tmp_path / "b" / "zf" / "phantom_gre_2coil.h5") as b:
        ra, rb = a["reconstruction"][()], b["reconstruction"][()]
    assert ra.shape == rb.shape == (1, 160, 160)
    assert np.abs(ra * np.sqrt(0.5) - rb).max() < 1e-3 * rb.max()


def test_folder_lists_every_kind(tmp_path, ismrmrd_files):
    (tmp_path / "notes.txt").write_text("x")
    for name in ("a.h5", "b.dat", "c.mrd"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_volumes(tmp_path)] == ["a.h5", "b.dat", "c.mrd"]
