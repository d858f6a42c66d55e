"""Issue 29's defects, one test each (a table where they share a shape): every case exits 0
with a right result or 2 with one line naming the file or flag."""

from __future__ import annotations

import json
import os
import shutil

import h5py
import numpy as np
import pytest

from oes_mri.recon import main

ZF = ["--methods", "zf", "--no-figures", "--quiet"]
TINY = ["--arch", "hourglass-tiny", "--steps", "10", "--prune-steps", "3", "--fast-path", "fp32"]
GIVEN = ["--arch", "hourglass-tiny", "--steps", "10", "--fast-path", "fp32"]     # TINY for a given pruning mask


def _run(capsys, *args) -> tuple[int, str]:
    rc = main([*args])
    return rc, capsys.readouterr().err.strip()


@pytest.mark.parametrize("defect,args,flag", [
    ("11_accel_100", ["--accel", "100"], "--accel"),
    ("11_centre_beyond_accel", ["--center-fraction", "0.9", "--accel", "8"], "--center-fraction"),
    ("12_no_centre_lines", ["--center-fraction", "0.0001"], "--center-fraction"),
    ("12_equispaced_1000", ["--sampling", "equispaced", "--accel", "1000"], "--accel"),
    ("13_centre_fraction_1", ["--center-fraction", "1"], "--center-fraction"),
    ("13_density_1", ["--methods", "oes", "--density", "1"], "--density"),
    ("14_accel_1e9", ["--accel", "1e9"], "--accel"),
    ("15_seed_negative", ["--seed", "-1"], "--seed"),
    ("15_seed_beyond_2_64", ["--seed", str(2**64 + 1)], "--seed"),
    ("16_poisson_accel_1", ["--sampling", "poisson", "--accel", "1"], "--sampling poisson"),
    ("36_14_start_with_folds", ["--methods", "dip", "--start", "l1", "--holdout-folds", "2"],
     "--start 'l1' does not combine with --holdout-folds 2"),
    ("36_14_empty_range", ["--slices", "1:0"], "the range '1:0' is empty"),
    ("36_14_slice_outside", ["--slices", "0,7"], "the volume has slices 0 to 1 (asked for 7)"),
    ("36_7_density_with_mask", ["--methods", "oes-channels", "--density", "0.9", "--pruning-mask",
                                "bank:channels25"], "--density with --pruning-mask"),
    ("36_7_prune_steps_with_mask", ["--methods", "oes-channels", "--prune-steps", "9", "--pruning-mask",
                                    "bank:channels25"], "--prune-steps with --pruning-mask"),
])
def test_settings_that_cannot_make_a_measurement_exit_2(tiny_file, tmp_path, capsys, defect, args, flag):
    rc, err = _run(capsys, "--data", str(tiny_file), "--out", str(tmp_path), *ZF, *args)
    assert rc == 2 and len(err.splitlines()) == 1 and flag in err and "Traceback" not in err, (defect, err)


@pytest.mark.parametrize("defect,args", [("11_accel_1", ["--accel", "1"]),
                                         ("11_file_mask_all_ones", ["--accel", "1", "--center-fraction", "0.5"])])
def test_nothing_to_hold_out_falls_back(tiny_file, tmp_path, capsys, caplog, defect, args):
    """Fully sampled: nothing can be held out; the fits run without self-validation, say so, exit 0."""
    rc, err = _run(capsys, "--data", str(tiny_file), "--out", str(tmp_path), "--methods", "sense,dip", *TINY,
                   "--no-figures", "--quiet", *args)
    assert rc == 0, err
    assert "without self-validation" in caplog.text
    recs = json.loads((tmp_path / "metrics.json").read_text())
    assert all(r["psnr"] > 40 for r in recs)


def test_05_a_fit_that_diverges_finitely_exits_2(tiny_file, tmp_path, capsys):
    rc, err = _run(capsys, "--data", str(tiny_file), "--out", str(tmp_path), "--methods", "dip", *TINY,
                   "--lr", "1e6", "--no-figures", "--quiet")
    assert rc == 2 and err.splitlines()[-1].startswith("error: tiny_vol.h5:") and "data error" in err
    assert not (tmp_path / "dip" / "tiny_vol.h5").exists()


def test_01_same_stem_other_extension_never_share_outputs(tiny_file, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(tiny_file, data / "vol.h5")
    shutil.copy(tiny_file, data / "vol.hdf5")
    rc, err = _run(capsys, "--data", str(data), "--out", str(tmp_path / "out"), *ZF)
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "out" / "zf").iterdir()) == ["vol.h5", "vol_hdf5.h5"]
    assert len(json.loads((tmp_path / "out" / "metrics.json").read_text())) == 2


def test_02_overwrite_never_deletes_the_input(tiny_file, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "zf").mkdir(parents=True)
    src = out / "zf" / "x.h5"
    shutil.copy(tiny_file, src)
    before = src.read_bytes()
    rc, err = _run(capsys, "--data", str(src), "--out", str(out), *ZF, "--overwrite")
    assert rc == 2 and "input file itself" in err and len(err.splitlines()) == 1
    assert src.read_bytes() == before


def test_03_another_pruning_mask_under_the_same_name_is_not_reused(tiny_file, tmp_path, capsys):
    from oes_mri.nets.generator import ArchConfig, build_generator
    from oes_mri.pruning.baselines import baseline_mask

    gen = build_generator(ArchConfig("hourglass-tiny"), (32, 36))
    path = tmp_path / "m.safetensors"
    meta = {"arch": ArchConfig("hourglass-tiny").to_dict()}
    baseline_mask("random", gen, 0.2, seed=0, meta=meta).save(path)
    args = ["--data", str(tiny_file), "--out", str(tmp_path / "out"), "--methods", "oes", *GIVEN,
            "--pruning-mask", str(path), "--no-figures", "--quiet", "--slices", "0"]
    assert _run(capsys, *args)[0] == 0
    baseline_mask("random", gen, 0.2, seed=1, meta=meta).save(path)          # same name, other mask
    rc, err = _run(capsys, *args)
    assert rc == 2 and "other settings" in err


def test_04_input_rewritten_with_same_size_and_mtime_is_noticed(tiny_file, tmp_path, capsys):
    src = tmp_path / "x.h5"
    shutil.copy(tiny_file, src)
    args = ["--data", str(src), "--out", str(tmp_path / "out"), *ZF]
    assert _run(capsys, *args)[0] == 0
    st = os.stat(src)
    with h5py.File(src, "r+") as f:                    # same size: one k-space value changed
        k = f["kspace"]
        k[0, 0, 10, 10] = k[0, 0, 10, 10] * 2
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(src).st_size == st.st_size and os.stat(src).st_mtime_ns == st.st_mtime_ns
    rc, err = _run(capsys, *args)
    assert rc == 2 and "other settings" in err


@pytest.mark.parametrize("bad", ["nan", "zeros"])
def test_06_unscorable_target_says_no_target(tiny_file, tmp_path, capsys, recwarn, bad):
    src = tmp_path / "x.h5"
    shutil.copy(tiny_file, src)
    with h5py.File(src, "r+") as f:
        t = f["reconstruction_rss"]
        t[...] = np.nan if bad == "nan" else 0.0
    rc, err = _run(capsys, "--data", str(src), "--out", str(tmp_path / "out"), *ZF)
    assert rc == 0
    rec = json.loads((tmp_path / "out" / "metrics.json").read_text())[0]
    assert rec["psnr"] is None and rec["ssim"] is None
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


@pytest.mark.parametrize("defect", ["09_10_group_kspace"])
def test_a_bad_file_of_a_folder_is_reported_and_the_others_done(tiny_file, tmp_path, capsys, caplog, defect):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(tiny_file, data / "a_good.h5")
    with h5py.File(data / "b_bad.h5", "w") as f:          # 'kspace' stored as a group
        f.create_group("kspace")
    rc, err = _run(capsys, "--data", str(data), "--out", str(tmp_path / "out"), *ZF)
    assert rc == 2 and "b_bad.h5" in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert (tmp_path / "out" / "zf" / "a_good.h5").exists()


def test_19_invalid_map_cache_entries_are_recomputed(tiny_file, tmp_path, capsys, caplog):
    from oes_mri.data.sample import cache_dir

    out, src = tmp_path / "out", tmp_path / "x.h5"
    shutil.copy(tiny_file, src)
    with h5py.File(src, "r+") as f:                       # content of its own: map cache entries of its own
        f["kspace"][0, 0, 0, 0] += 1e-9
    before = set((cache_dir() / "maps").glob("*.npz"))
    assert _run(capsys, "--data", str(src), "--out", str(out), "--methods", "sense", "--no-figures",
                "--quiet")[0] == 0
    ref = json.loads((out / "metrics.json").read_text())[0]["psnr"]
    entries = sorted(set((cache_dir() / "maps").glob("*.npz")) - before)
    assert len(entries) == 2
    for bad, path in zip(("zeros", "huge"), entries):
        with np.load(path) as z:
            maps, method = z["maps"], z["method"]
        np.savez(path, maps=maps * (0 if bad == "zeros" else 1e20), method=method)
    rc, err = _run(capsys, "--data", str(src), "--out", str(tmp_path / "again"), "--methods", "sense",
                   "--no-figures", "--quiet")
    assert rc == 0 and caplog.text.count("invalid map cache entry") == 2
    assert json.loads((tmp_path / "again" / "metrics.json").read_text())[0]["psnr"] == pytest.approx(ref)


def test_20_metrics_json_holding_nan_is_rewritten(tiny_file, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text('[{"file": "old.h5", "method": "zf", "psnr": NaN}]')
    (out / "zf").mkdir()
    (out / "zf" / "old.h5").touch()                  # the record's output exists: it is kept
    rc, err = _run(capsys, "--data", str(tiny_file), "--out", str(out), *ZF)
    assert rc == 0, err
    recs = json.loads((out / "metrics.json").read_text())
    assert {r["file"].split("/")[-1] for r in recs} == {"old.h5", "tiny_vol.h5"} and recs[0]["psnr"] is None


def _kspace_group(f: h5py.File) -> None:
    k = f["kspace"][()]
    del f["kspace"]
    f.create_group("kspace")["data"] = k


def _mask_without_centre(f: h5py.File) -> None:
    W = f["kspace"].shape[-1]
    m = np.zeros(W, bool)
    m[::3] = True
    m[W // 2 - 3:W // 2 + 3] = False
    f["kspace"][...] = f["kspace"][()] * m
    f["mask"] = m


@pytest.mark.parametrize("edit,problem", [(_kspace_group, "'kspace' is an HDF5 group, not an array"),
                                          (_mask_without_centre, "mask has 0 calibration line(s)")])
def test_36_12_a_file_the_cli_cannot_use_exits_2_naming_it(tiny_file, tmp_path, capsys, edit, problem):
    """Item 12: a fastMRI file whose 'kspace' is a group, or whose own mask has no centre lines
    (no ESPIRiT maps), is one line naming the file, exit 2, nothing written."""
    bad = tmp_path / "bad.h5"
    shutil.copy(tiny_file, bad)
    with h5py.File(bad, "a") as f:
        edit(f)
    rc, err = _run(capsys, "--data", str(bad), "--out", str(tmp_path / "out"), "--methods", "sense,zf", "--no-figures",
                   "--quiet")
    assert rc == 2 and err.startswith("error: ") and "bad.h5" in err and problem in err and len(err.splitlines()) == 1, err
    assert not list((tmp_path / "out").glob("*/bad.h5"))


def test_36_14_changing_only_the_slices_or_the_methods_order_resumes(tiny_file, tmp_path, capsys):
    """Item 14: another --slices selection or another order of --methods is the same run's
    settings: it resumes and extends, no 'outputs made with other settings' error."""
    out = str(tmp_path / "out")
    base = ["--data", str(tiny_file), "--out", out, "--no-figures", "--quiet"]
    assert _run(capsys, *base, "--methods", "zf,sense", "--slices", "0")[0] == 0
    rc, err = _run(capsys, *base, "--methods", "sense,zf", "--slices", "0:2")
    assert rc == 0, err
    with h5py.File(tmp_path / "out" / "sense" / tiny_file.name) as f:
        assert f["reconstruction"].shape[0] == 2


def test_36_4_metric_records_follow_the_output_files(tiny_file, tmp_path, capsys, monkeypatch):
    """One record per output file, whatever spelling of the input made it; a record whose
    output is gone is dropped (issue 36, item 4)."""
    monkeypatch.chdir(tiny_file.parent)
    out = tmp_path / "out"
    assert _run(capsys, "--data", str(tiny_file), "--out", str(out), *ZF)[0] == 0
    assert _run(capsys, "--data", tiny_file.name, "--slices", "1", "--out", str(out), *ZF)[0] == 0
    recs = json.loads((out / "metrics.json").read_text())
    assert [(r["output"], r["slices"]) for r in recs] == [(f"zf/{tiny_file.stem}.h5", 1)]
    with h5py.File(out / "zf" / f"{tiny_file.stem}.h5") as f:
        assert f["reconstruction"].shape[0] == 1
    other = tmp_path / "b" / tiny_file.name                  # another file of the same name
    other.parent.mkdir()
    shutil.copy(tiny_file, other)
    assert _run(capsys, "--data", str(other), "--out", str(out), "--overwrite", *ZF)[0] == 0
    recs = json.loads((out / "metrics.json").read_text())
    assert [r["file"] for r in recs] == [str(other)]
    csv_rows = (out / "metrics.csv").read_text().splitlines()
    assert len(csv_rows) == 2 and csv_rows[1].startswith(f"{other},zf,zf/{tiny_file.stem}.h5,")


def test_23_wrong_pruning_mask_names_the_flag_and_file(tiny_file, tmp_path, capsys):
    from oes_mri.nets.generator import ArchConfig, build_generator
    from oes_mri.pruning.baselines import baseline_mask

    path = tmp_path / "other.safetensors"
    gen = build_generator(ArchConfig("hourglass", {"channels": [4, 4]}), (32, 36))
    baseline_mask("random", gen, 0.2, seed=0, meta={}).save(path)           # no arch in its metadata
    rc, err = _run(capsys, "--data", str(tiny_file), "--out", str(tmp_path / "out"), "--methods", "oes", *GIVEN,
                   "--pruning-mask", str(path), "--no-figures", "--quiet")
    assert rc == 2 and "--pruning-mask" in err and str(path) in err and len(err.splitlines()) == 1


def test_25_own_sampling_says_accel_does_not_apply(tmp_path, capsys, caplog):
    from tests.conftest import shared_file

    path = shared_file("brain_t1_8coil_poisson8_undersampled.h5")
    rc, _ = _run(capsys, "--data", str(path), "--out", str(tmp_path), *ZF, "--accel", "8")
    assert rc == 0 and "--accel and --center-fraction do not apply" in caplog.text


def test_26_report_command_is_shell_quoted(tiny_file, tmp_path, capsys):
    out = tmp_path / "with space"
    assert _run(capsys, "--data", str(tiny_file), "--out", str(out), "--methods", "zf", "--quiet")[0] == 0
    assert f"--out '{out}'" in (out / "report.md").read_text()


def test_explicit_centre_fraction_equal_to_the_default_is_the_same_run(tiny_file, tmp_path, capsys):
    args = ["--data", str(tiny_file), "--out", str(tmp_path), *ZF]
    assert _run(capsys, *args)[0] == 0
    rc, err = _run(capsys, *args, "--center-fraction", "0.08")
    assert rc == 0, err


@pytest.mark.parametrize("defect,args,flag", [
    ("08_no_workers", ["--ray", "local", "--ray-workers", "0"], "--ray-workers"),
    ("08_gpu_tasks_without_gpu", ["--ray", "local", "--ray-task-gpus", "1"], "--ray-task-gpus"),
    ("08_nothing_listens", ["--ray", "127.0.0.1:1"], "--ray 127.0.0.1:1"),
])
def test_08_ray_options_that_would_hang_exit_2(tiny_file, tmp_path, capsys, defect, args, flag):
    import torch

    if "gpu" in defect and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    rc, err = _run(capsys, "--data", str(tiny_file), "--out", str(tmp_path), *ZF, *args)
    assert rc == 2 and flag in err and len(err.splitlines()) == 1, err


def test_07_implausible_kspace_scale_warns(caplog):
    from pathlib import Path

    from oes_mri.data.volumes import check_scale

    k = (np.random.default_rng(0).standard_normal((2, 4, 16, 16)) * 1e-4).astype(np.complex64)
    check_scale(k, Path("scan.dat"))
    assert "implausible" not in caplog.text
    k[0, 0, 3, 3] = 6.5e7                                     # a bit-flipped sample
    check_scale(k, Path("scan.dat"))
    assert "scan.dat: implausible k-space values" in caplog.text


def _ismrmrd(tmp_path, name):
    from oes_mri.data.ismrmrd_io import write_ismrmrd
    from oes_mri.data.volumes import load_volume
    from tests.conftest import phantom_image
    from oes_mri.data.simulate import write_fastmri_file

    src = write_fastmri_file(tmp_path / "src.h5", phantom_image(32)[None], num_coils=2, snr=40.0, seed=0)
    vol = load_volume(src)
    path = tmp_path / name
    write_ismrmrd(path, vol.kspace.numpy(), vol.recon_size)
    return path


def test_17_ismrmrd_claiming_a_huge_matrix_is_refused_before_allocating(tmp_path, capsys):
    path = _ismrmrd(tmp_path, "huge.h5")
    with h5py.File(path, "r+") as f:
        xml = f["dataset"]["xml"][0]
        xml = (xml.decode() if isinstance(xml, bytes) else xml).replace("<x>64</x>", "<x>4000000</x>", 1)
        del f["dataset"]["xml"]
        f["dataset"].create_dataset("xml", data=[xml.encode()])
    rc, err = _run(capsys, "--data", str(path), "--out", str(tmp_path / "out"), *ZF)
    assert rc == 2 and "huge.h5" in err and "GiB" in err and len(err.splitlines()) == 1, err


def test_24_ismrmrd_without_acquisitions_says_so(tmp_path, capsys):
    path = _ismrmrd(tmp_path, "empty.h5")
    with h5py.File(path, "r+") as f:
        del f["dataset"]["data"]
    rc, err = _run(capsys, "--data", str(path), "--out", str(tmp_path / "out"), *ZF)
    assert rc == 2 and "no acquisitions" in err and len(err.splitlines()) == 1, err


def test_18_truncated_twix_is_one_line(tmp_path, capsys):
    pytest.importorskip("twixtools")
    from tests.conftest import shared_file

    src = shared_file("siemens_gre_phantom_2coil.dat")
    cut = tmp_path / "cut.dat"
    data = src.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    rc, err = _run(capsys, "--data", str(cut), "--out", str(tmp_path / "out"), *ZF)
    assert rc == 2 and "cut.dat" in err and len(err.splitlines()) == 1 and "Traceback" not in err, err


def test_21_22_file_system_errors_name_the_file_and_the_cache_variable(tmp_path):
    import errno

    from oes_mri.atomic import atomic_path
    from oes_mri.data.sample import cache_dir
    from oes_mri.recon import _one_line

    target = tmp_path / "o.h5"
    with pytest.raises(OSError) as info:
        with atomic_path(target):
            raise OSError("Can't write data (file write failed: errno = 28, error message = 'No space left on "
                          "device')\\nsecond line")
    assert info.value.filename == str(target) and "No space left" in _one_line(info.value)
    assert len(_one_line(info.value).splitlines()) == 1
    ro = OSError(errno.EACCES, "Permission denied", str(cache_dir() / "maps" / "x.npz"))
    line = _one_line(ro)
    assert "OES_MRI_CACHE" in line and "rerun" not in line


def _descendants(root: int) -> dict[int, str]:
    """pid -> start time of every process below ``root`` (from /proc)."""
    kids: dict[int, list[int]] = {}
    start: dict[int, str] = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            kids.setdefault(int(fields[1]), []).append(int(pid))
            start[int(pid)] = fields[19]
    out, todo = {}, [root]
    while todo:
        for c in kids.get(todo.pop(), []):
            out[c] = start[c]
            todo.append(c)
    return out


def _alive(procs: dict[int, str]) -> list[int]:
    left = []
    for pid, when in procs.items():
        try:
            if open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[19] == when:
                left.append(pid)
        except OSError:
            pass
    return left


@pytest.mark.parametrize("ray", [False, True])
def test_36_16_sigterm_ends_a_run_like_ctrl_c(tiny_file, tmp_path, ray):
    """Item 16: SIGTERM (serial or ``--ray local``) ends with exit 143 and the line saying how to
    resume, no traceback and no Ray stack dump."""
    import signal
    import subprocess
    import sys
    import time

    if ray:
        pytest.importorskip("ray")
    extra = ["--ray", "local", "--ray-workers", "1"] if ray else []
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "oes_mri.recon", "--data", str(tiny_file), "--out",
                                 str(tmp_path / "out"), "--methods", "dip", *TINY[:2], "--steps", "20000",
                                 "--no-figures", *extra], stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.time() + 120
        while time.time() < deadline and "to do" not in log.read_text():
            time.sleep(0.5)
        time.sleep(2)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    text = log.read_text()
    assert rc == 143, text
    assert text.strip().splitlines()[-1] == ("interrupted: finished slices are kept; run the same command again "
                                             "to resume"), text
    assert "Traceback" not in text and "SIGTERM received" not in text


def test_08_kill_9_of_a_ray_run_leaves_no_ray_process(tiny_file, tmp_path):
    """kill -9 of the driver: the watchdog ends every process the local Ray instance started."""
    import signal
    import subprocess
    import sys
    import time

    pytest.importorskip("ray")
    if not os.path.isdir("/proc"):
        pytest.skip("needs /proc")
    proc = subprocess.Popen([sys.executable, "-m", "oes_mri.recon", "--data", str(tiny_file), "--out", str(tmp_path),
                             "--methods", "dip", *TINY[:2], "--steps", "5000", "--ray", "local", "--ray-workers", "1",
                             "--no-figures", "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs: dict[int, str] = {}
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            time.sleep(1)
            procs.update(_descendants(proc.pid))
            names = " ".join(open(f"/proc/{p}/cmdline", errors="replace").read() for p in _alive(procs))
            if "raylet" in names and "Agent" in names:           # the head and its agents are up
                break
        assert procs, "Ray did not start"
        time.sleep(3)
        procs.update(_descendants(proc.pid))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.time() + 30
    while time.time() < deadline and _alive(procs):
        time.sleep(1)
    left = _alive(procs)
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, f"processes left behind: {sorted(left)}"


@pytest.mark.parametrize("flag", ["--data", "--out"])
def test_25_empty_paths_are_refused(tiny_file, tmp_path, capsys, flag):
    args = {"--data": str(tiny_file), "--out": str(tmp_path)}
    args[flag] = ""
    rc, err = _run(capsys, "--data", args["--data"], "--out", args["--out"], *ZF)
    assert rc == 2 and flag in err and "empty path" in err


def test_13_ismrmrd_with_a_zero_recon_matrix(tmp_path, capsys):
    path = _ismrmrd(tmp_path, "zero.h5")
    with h5py.File(path, "r+") as f:
        xml = f["dataset"]["xml"][0]
        xml = xml.decode() if isinstance(xml, bytes) else xml
        head, _, tail = xml.partition("<reconSpace><matrixSize><x>")
        xml = head + "<reconSpace><matrixSize><x>0" + tail[tail.index("</x>"):]
        del f["dataset"]["xml"]
        f["dataset"].create_dataset("xml", data=[xml.encode()])
    rc, err = _run(capsys, "--data", str(path), "--out", str(tmp_path / "out"), *ZF)
    assert rc == 2 and "zero.h5" in err and "recon matrix" in err and len(err.splitlines()) == 1, err


def test_06_evaluate_says_no_target_for_an_unscorable_one(tiny_file, tmp_path, capsys):
    from oes_mri.evaluate import main as evaluate_main

    targets, preds = tmp_path / "t", tmp_path / "p"
    targets.mkdir()
    shutil.copy(tiny_file, targets / "x.h5")
    with h5py.File(targets / "x.h5", "r+") as f:
        f["reconstruction_rss"][...] = np.nan
        shape = f["reconstruction_rss"].shape
    assert _run(capsys, "--data", str(targets / "x.h5"), "--out", str(preds), *ZF)[0] == 0
    rc = evaluate_main(["--target", str(targets), "--pred", str(preds / "zf")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "not scored" in err[0] and "could be scored" in err[-1] and len(err) == 2
    assert len(shape) == 3


def test_09_ray_folder_run_reports_a_bad_file_and_does_the_others(tiny_file, tmp_path, capsys):
    pytest.importorskip("ray")
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(tiny_file, data / "a_good.h5")
    with h5py.File(data / "b_bad.h5", "w") as f:
        f.create_group("kspace")
    rc, err = _run(capsys, "--data", str(data), "--out", str(tmp_path / "out"), *ZF, "--ray", "local",
                   "--ray-workers", "1")
    assert rc == 2 and "b_bad.h5" in err.splitlines()[-1] and "Traceback" not in err
    assert (tmp_path / "out" / "zf" / "a_good.h5").exists()


def test_36_08_12_evaluate_scores_a_complex_prediction_by_magnitude_and_refuses_a_group(tiny_file, tmp_path, capsys):
    """Third round, items 8 and 12: a complex prediction is scored on its magnitude (with a
    warning), not its real part; a ``reconstruction`` that is an HDF5 group is one line naming
    the file."""
    from oes_mri.evaluate import evaluate, main as evaluate_main

    targets, preds = tmp_path / "t", tmp_path / "p"
    targets.mkdir(), preds.mkdir()
    shutil.copy(tiny_file, targets / "x.h5")
    with h5py.File(targets / "x.h5", "r") as f:
        target = f["reconstruction_rss"][()]
    noisy = target * (1 + 0.01 * np.random.default_rng(0).standard_normal(target.shape))
    with h5py.File(preds / "x.h5", "w") as f:
        f["reconstruction"] = noisy.astype(np.float32)
    real = evaluate(targets, preds)["x.h5"].psnr
    with h5py.File(preds / "x.h5", "w") as f:
        f["reconstruction"] = (noisy * np.exp(2j)).astype(np.complex64)
    assert evaluate(targets, preds)["x.h5"].psnr == pytest.approx(real, abs=1e-3)
    with h5py.File(preds / "x.h5", "w") as f:
        f.create_group("reconstruction")
    assert evaluate_main(["--target", str(targets), "--pred", str(preds)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert any("x.h5" in line and "group" in line for line in err) and not any("Traceback" in e for e in err)


def test_36_15_evaluate_scores_what_it_can_and_names_the_rest(tiny_file, tmp_path, capsys):
    """Item 15: one prediction covering fewer slices, or a target file without its target,
    no longer leaves nothing scored: the others are scored, the bad prediction is named and
    the exit code says so; a target without a target image is a warning."""
    from oes_mri.evaluate import main as evaluate_main

    targets, preds = tmp_path / "t", tmp_path / "p"
    targets.mkdir()
    for name in ("a.h5", "b.h5", "c.h5"):
        shutil.copy(tiny_file, targets / name)
        assert _run(capsys, "--data", str(targets / name), "--out", str(preds), *ZF)[0] == 0
    assert _run(capsys, "--data", str(targets / "b.h5"), "--out", str(preds), "--slices", "0", *ZF)[0] == 0
    with h5py.File(targets / "c.h5", "r+") as f:
        del f["reconstruction_rss"]
    capsys.readouterr()
    rc = evaluate_main(["--target", str(targets), "--pred", str(preds / "zf")])
    out, err = capsys.readouterr()
    assert rc == 2 and out.splitlines()[1].startswith("a.h5") and "mean" in out.splitlines()[-1]
    assert "c.h5" in err and "b.h5: reconstruction has shape" in err
    assert err.strip().splitlines()[-1].startswith("error: 1 prediction(s) could not be scored: b.h5")


def test_36_15_the_summary_averages_the_volumes_with_a_target():
    from oes_mri.app.report import format_table, summary_rows

    recs = [{"method": "zf", "psnr": p, "ssim": s, "nmse": n, "seconds": 1.0, "slices": 1}
            for p, s, n in ((30.0, 0.9, 0.01), (None, None, None), (20.0, 0.7, 0.03))]
    row = summary_rows(recs)[0]
    assert (row["volumes"], row["scored"], row["psnr"]) == (3, 2, 25.0)
    assert "3 (2 scored)" in format_table([row]) and "25.00" in format_table([row])


def test_36_05_no_stale_nifti_beside_a_rebuilt_output(tiny_file, tmp_path, capsys):
    """Third round, item 5: ``--slices 0 --save nifti``, then ``--slices 0:2`` without
    ``--save nifti``: the rebuilt ``.h5`` has 2 slices and no 1-slice NIfTI stays beside it."""
    out = tmp_path / "out"
    assert _run(capsys, "--data", str(tiny_file), "--out", str(out), "--slices", "0", "--save", "nifti", *ZF)[0] == 0
    nifti = out / "zf" / f"{tiny_file.stem}.nii.gz"
    assert nifti.exists()
    assert _run(capsys, "--data", str(tiny_file), "--out", str(out), "--slices", "0:2", *ZF)[0] == 0
    with h5py.File(out / "zf" / tiny_file.name) as f:
        assert f["reconstruction"].shape[0] == 2
    assert not nifti.exists()


def test_36_06_a_dense_dip_chain_is_not_extended_from_another_reference(tmp_path, capsys):
    """Third round, item 6: a dense ``dip`` chain over slices 0:3, then 0:5 into the same
    ``--out``: the chain's reference slice moved, so the earlier slices are not reused (they
    differed from a fresh run); the run is refused like the pruned methods' (``--overwrite``)."""
    from oes_mri.data.sample import sample_volume_path

    vol = sample_volume_path(5, 32, 4)
    args = ["--data", str(vol), "--methods", "dip", *TINY, "--no-figures", "--quiet", "--out", str(tmp_path / "o")]
    assert _run(capsys, *args, "--slices", "0:3")[0] == 0
    rc, err = _run(capsys, *args, "--slices", "0:5")
    assert rc == 2 and "other settings" in err
    assert _run(capsys, *args, "--slices", "0:5", "--overwrite")[0] == 0
