"""No silent wrong result: the reliability probe's cases (issue 17), each a test."""

import fcntl
import json
import os
import shutil

import h5py
import numpy as np
import pytest

from oes_mri.recon import main

ZF = ["--methods", "zf", "--no-figures", "--quiet"]


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err


def _recon(path):
    with h5py.File(path) as hf:
        return hf["reconstruction"][()]


def _records(out):
    return {(os.path.basename(r["file"]), r["method"]): r for r in json.loads((out / "metrics.json").read_text())}


def test_same_name_other_input_is_not_reused(tiny_file, two_volumes, tmp_path, capsys):
    """Checkpoints of x.h5 are not reused for another x.h5 (other folder, or edited in place)."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    shutil.copy(tiny_file, a / "x.h5")
    shutil.copy(two_volumes / "vol0.h5", b / "x.h5")
    out = tmp_path / "out"
    assert main(["--data", str(a / "x.h5"), "--out", str(out), *ZF]) == 0
    assert main(["--data", str(b / "x.h5"), "--out", str(out), *ZF]) == 2
    assert "other settings" in _err(capsys)
    assert main(["--data", str(b / "x.h5"), "--out", str(out), "--overwrite", *ZF]) == 0
    fresh = tmp_path / "fresh"
    assert main(["--data", str(b / "x.h5"), "--out", str(fresh), *ZF]) == 0
    assert np.array_equal(_recon(out / "zf" / "x.h5"), _recon(fresh / "zf" / "x.h5"))
    assert _records(out)[("x.h5", "zf")]["psnr"] == _records(fresh)[("x.h5", "zf")]["psnr"]
    shutil.copy(two_volumes / "vol1.h5", b / "x.h5")                    # edited in place
    assert main(["--data", str(b / "x.h5"), "--out", str(out), *ZF]) == 2


def test_wider_slices_rebuild_the_final_file(two_volumes, tmp_path):
    out = tmp_path / "out"
    vol = str(two_volumes / "vol0.h5")
    assert main(["--data", vol, "--out", str(out), "--slices", "1", *ZF]) == 0
    assert _recon(out / "zf" / "vol0.h5").shape[0] == 1
    assert main(["--data", vol, "--out", str(out), "--slices", "0:3", *ZF]) == 0
    assert _recon(out / "zf" / "vol0.h5").shape[0] == 3
    assert _records(out)[("vol0.h5", "zf")]["slices"] == 3


def test_second_run_into_the_same_out_is_refused(tiny_file, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)              # a run in progress
        assert main(["--data", str(tiny_file), "--out", str(out), *ZF]) == 2
        err = _err(capsys)
        assert "another oes_mri run is writing" in err and str(out) in err and len(err.splitlines()) == 1
    assert main(["--data", str(tiny_file), "--out", str(out), *ZF]) == 0


def test_corrupt_map_cache_entry_is_recomputed(tiny_file, tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("OES_MRI_CACHE", str(tmp_path / "cache"))      # only this test's entries
    assert main(["--data", str(tiny_file), "--out", str(tmp_path / "a"), "--methods", "sense", "--no-figures",
                 "--quiet"]) == 0
    entries = list((tmp_path / "cache" / "maps").glob("*.npz"))
    assert len(entries) == 2
    for p in entries:
        p.write_bytes(p.read_bytes()[:100])                         # truncated npz
    assert main(["--data", str(tiny_file), "--out", str(tmp_path / "b"), "--methods", "sense", "--no-figures",
                 "--quiet"]) == 0
    assert "unreadable map cache entry" in caplog.text
    assert np.array_equal(_recon(tmp_path / "a" / "sense" / tiny_file.name),
                          _recon(tmp_path / "b" / "sense" / tiny_file.name))


@pytest.mark.parametrize("damage", ["truncate", "garbage_values"])
def test_bad_checkpoint_is_named_and_recomputed(tiny_file, tmp_path, caplog, damage):
    out = tmp_path / "out"
    assert main(["--data", str(tiny_file), "--out", str(out), *ZF]) == 0
    good = _recon(out / "zf" / tiny_file.name)
    ck = out / ".checkpoints" / tiny_file.stem / "zf" / "slice_0001.npz"
    if damage == "truncate":
        ck.write_bytes(ck.read_bytes()[:50])
    else:
        with np.load(ck) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["image"] = np.full_like(arrays["image"], 1e3)          # a valid npz with garbage values
        np.savez(ck, **arrays)
    assert main(["--data", str(tiny_file), "--out", str(out), *ZF]) == 0
    assert str(ck) in caplog.text and "recomputing" in caplog.text
    assert np.array_equal(_recon(out / "zf" / tiny_file.name), good)


@pytest.mark.parametrize("name", ["config.json", "metrics.json"])
def test_corrupt_run_files_are_named(tiny_file, tmp_path, capsys, name):
    out = tmp_path / "out"
    assert main(["--data", str(tiny_file), "--out", str(out), *ZF]) == 0
    path = out / ".checkpoints" / tiny_file.stem / "zf" / name if name == "config.json" else out / name
    path.write_text("{not json")
    assert main(["--data", str(tiny_file), "--out", str(out), *ZF]) == 2
    err = _err(capsys)
    assert str(path) in err and len(err.splitlines()) == 1


def test_out_is_a_file_or_unwritable(tiny_file, tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["--data", str(tiny_file), "--out", str(f), *ZF]) == 2
    assert "--out is a file" in _err(capsys)
    if os.geteuid() != 0:                                   # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        assert main(["--data", str(tiny_file), "--out", str(ro / "o"), *ZF]) == 2
        assert "cannot be written" in _err(capsys)


def test_disk_full_exits_2_one_line(tiny_file, tmp_path, capsys, monkeypatch):
    import errno

    from oes_mri.app import pipeline

    def full(path, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    monkeypatch.setattr(pipeline, "write_reconstruction", full)
    assert main(["--data", str(tiny_file), "--out", str(tmp_path / "o"), *ZF]) == 2
    err = _err(capsys)
    assert "No space left on device" in err and tiny_file.stem in err and len(err.splitlines()) == 1


def test_diverging_fit_exits_2(tiny_file, tmp_path, capsys):
    argv = ["--data", str(tiny_file), "--out", str(tmp_path / "o"), "--methods", "dip", "--arch", "hourglass-tiny",
            "--steps", "5", "--lr", "1e30", "--slices", "0", "--no-figures", "--quiet"]
    assert main(argv) == 2
    err = _err(capsys)
    assert "lower --lr" in err and len(err.splitlines()) == 1


def _h5(path, **datasets):
    with h5py.File(path, "w") as hf:
        for k, v in datasets.items():
            hf.create_dataset(k, data=v)
    return path


@pytest.mark.parametrize("case,match", [
    ("width1", "too small to undersample"),
    ("huge", "GiB per slice"),
    ("zero_coils", "0 coils"),
    ("nan_mask", "NaN"),
])
def test_bad_files_exit_2_naming_them(tmp_path, capsys, case, match):
    p = tmp_path / f"{case}.h5"
    k = np.ones((1, 2, 16, 16), np.complex64)
    if case == "width1":
        _h5(p, kspace=np.ones((1, 2, 16, 1), np.complex64))
    elif case == "huge":
        with h5py.File(p, "w") as hf:
            hf.create_dataset("kspace", shape=(2, 15, 640 * 64, 368 * 64), dtype=np.complex64, chunks=(1, 1, 64, 64))
    elif case == "zero_coils":
        _h5(p, kspace=np.ones((1, 0, 16, 16), np.complex64))
    else:
        m = np.ones(16, np.float32)
        m[3] = np.nan
        _h5(p, kspace=k, mask=m)
    assert main(["--data", str(p), "--out", str(tmp_path / "o"), *ZF]) == 2
    err = _err(capsys)
    assert str(p) in err and match in err and len(err.splitlines()) == 1


def test_one_bad_file_does_not_stop_a_folder(tiny_file, tmp_path, capsys):
    folder = tmp_path / "vols"
    folder.mkdir()
    (folder / "a_trunc.h5").write_bytes(tiny_file.read_bytes()[:3000])
    shutil.copy(tiny_file, folder / "b_good.h5")
    out = tmp_path / "out"
    assert main(["--data", str(folder), "--out", str(out), *ZF]) == 2
    err = capsys.readouterr()
    assert "a_trunc.h5" in err.err and "1 file(s) failed" in err.err
    assert (out / "zf" / "b_good.h5").exists() and ("b_good.h5", "zf") in _records(out)
    assert "zf" in err.out                                           # the table of what finished


def test_minor_input_cases(tiny_file, tmp_path, capsys):
    import torch

    from oes_mri.pruning.weightmask import WeightMask

    out = tmp_path / "o"
    assert main(["--data", str(tiny_file), "--out", str(out), "--slices", "abc", *ZF]) == 2
    assert "use e.g. '10:20'" in _err(capsys)
    assert main(["--data", str(tiny_file), "--out", str(out), "--accel", "inf", *ZF]) == 2
    assert "--accel inf" in _err(capsys)
    assert main(["--data", str(tiny_file), "--out", str(out), "--methods", "zf,zf", "--no-figures", "--quiet"]) == 0
    assert [r["method"] for r in json.loads((out / "metrics.json").read_text())] == ["zf"]
    empty = tmp_path / "empty.safetensors"
    WeightMask({"w": torch.zeros(3, 3, dtype=torch.bool)}, {}).save(empty)
    assert main(["--data", str(tiny_file), "--out", str(out), "--weight-mask", str(empty), *ZF]) == 2
    assert "keeps no weight" in _err(capsys)


def test_metrics_json_is_strict_and_outputs_follow_the_umask(tmp_path):
    from oes_mri.app.storage import write_metrics

    old = os.umask(0o022)
    try:
        write_metrics(tmp_path, [{"file": "f", "method": "zf", "acceleration": 4.0, "center_fraction": 0.08,
                                  "slices": 1, "nmse": 0.0, "psnr": float("inf"), "ssim": 1.0, "seconds": 0.1,
                                  "device": "cpu"}])
    finally:
        os.umask(old)
    text = (tmp_path / "metrics.json").read_text()
    assert "Infinity" not in text and json.loads(text)[0]["psnr"] is None
    assert (os.stat(tmp_path / "metrics.json").st_mode & 0o777) == 0o644


def test_evaluate_reports_missing_and_nan(tiny_file, tmp_path, capsys):
    from oes_mri.evaluate import main as eval_main

    out = tmp_path / "out"
    assert main(["--data", str(tiny_file), "--out", str(out), *ZF]) == 0
    targets = tmp_path / "t"
    targets.mkdir()
    shutil.copy(tiny_file, targets / tiny_file.name)
    shutil.copy(tiny_file, targets / "other.h5")
    capsys.readouterr()
    assert eval_main(["--target", str(targets), "--pred", str(out / "zf")]) == 0
    assert "no prediction" in capsys.readouterr().err
    with h5py.File(out / "zf" / tiny_file.name, "r+") as hf:
        hf["reconstruction"][0, 0, 0] = np.nan
    assert eval_main(["--target", str(targets), "--pred", str(out / "zf")]) == 2
    assert "NaN" in capsys.readouterr().err
