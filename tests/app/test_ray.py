"""Scale-out on Ray: same outputs as the serial path, a killed worker loses nothing, no Ray -> exit 2."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from oes_mri.recon import main

ARGS = ["--methods", "oes,dip,zf", "--arch", "hourglass-tiny", "--steps", "15", "--mask-steps", "5", "--fast-path", "fp32",
        "--no-figures", "--quiet"]


def _outputs(out):
    recs = {(r["file"], r["method"]): (r["psnr"], r["ssim"], r["nmse"], r["slices"])
            for r in json.loads((out / "metrics.json").read_text())}
    images = {}
    for f in sorted(out.glob("*/*.h5")):
        with h5py.File(f) as hf:
            images[f.relative_to(out).as_posix()] = hf["reconstruction"][()]
    return recs, images


@pytest.fixture(scope="module")
def serial(two_volumes, tmp_path_factory):
    """The serial run, one torch thread like each 1-CPU Ray task."""
    out = tmp_path_factory.mktemp("serial")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["--data", str(two_volumes), "--out", str(out), *ARGS]) == 0
    finally:
        torch.set_num_threads(threads)
    return _outputs(out)


def _assert_same(a, b):
    assert a[0] == b[0]                       # metrics.json records, exactly
    assert a[1].keys() == b[1].keys() and len(a[1]) == 6
    for k in a[1]:
        assert np.array_equal(a[1][k], b[1][k]), k


def test_ray_matches_serial(two_volumes, tmp_path, serial):
    pytest.importorskip("ray")
    out = tmp_path / "ray"
    assert main(["--data", str(two_volumes), "--out", str(out), "--ray", "local", "--ray-workers", "2", *ARGS]) == 0
    _assert_same(_outputs(out), serial)
    ck = sorted(p.relative_to(out).as_posix() for p in (out / ".checkpoints").rglob("slice_????.npz"))
    assert len(ck) == 2 * 3 * 3
    warm = sorted(p.name for p in (out / ".checkpoints").rglob("*.weights.npz"))   # the chains' two ends
    assert warm == sorted(["slice_0000.weights.npz", "slice_0002.weights.npz"] * 4)


def _killing_once(task, marker: str):
    """``task`` that first kills its own worker process (SIGKILL) if ``marker`` does not exist
    yet (and creates it). A nested function: Ray pickles it by value, so the workers run it."""
    def killing(*args):
        if not os.path.exists(marker):
            Path(marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return task(*args)
    return killing


def test_killed_worker_is_retried(two_volumes, tmp_path, serial, monkeypatch):
    """A task kills its own worker process once (marked by a file): Ray retries it, the run
    completes with every slice and the same outputs."""
    pytest.importorskip("ray")
    from oes_mri.app import ray_runner

    marker = tmp_path / "killed"
    for name in ("_learn_mask", "_reconstruct"):
        monkeypatch.setattr(ray_runner, name, _killing_once(getattr(ray_runner, name), str(marker)))
    out = tmp_path / "ray"
    assert main(["--data", str(two_volumes), "--out", str(out), "--ray", "local", "--ray-workers", "2", *ARGS]) == 0
    assert marker.exists()
    _assert_same(_outputs(out), serial)


def test_no_ray_exits_2(tiny_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)          # import ray -> ImportError
    assert main(["--data", str(tiny_file), "--out", str(tmp_path / "o"), "--ray", "local", *ARGS]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'oes-mri[ray]'" in err


def test_serial_path_never_imports_ray(tiny_file, tmp_path):
    code = ("import sys; from oes_mri.recon import main; "
            f"assert main(['--data', {str(tiny_file)!r}, '--out', {str(tmp_path / 'o')!r}, '--methods', 'zf', "
            "'--no-figures', '--quiet']) == 0; assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_no_running_cluster_exits_2(tiny_file, tmp_path, capsys):
    pytest.importorskip("ray")
    out = tmp_path / "o"
    assert main(["--data", str(tiny_file), "--out", str(out), "--ray", "auto", *ARGS]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--ray auto: cannot connect to Ray" in err
    assert not out.exists()


def test_ray_one_bad_file_does_not_stop_a_folder(tiny_file, tmp_path, capsys):
    """On Ray too, a bad file of a folder is reported and the others are reconstructed."""
    pytest.importorskip("ray")
    import shutil

    folder = tmp_path / "vols"
    folder.mkdir()
    (folder / "a_trunc.h5").write_bytes(tiny_file.read_bytes()[:3000])
    shutil.copy(tiny_file, folder / "b_good.h5")
    out = tmp_path / "out"
    assert main(["--data", str(folder), "--out", str(out), "--methods", "zf", "--quiet", "--no-figures",
                 "--ray", "local", "--ray-workers", "1"]) == 2
    cap = capsys.readouterr()
    assert "a_trunc.h5" in cap.err and "1 file(s) failed" in cap.err
    assert (out / "zf" / "b_good.h5").exists() and "zf" in cap.out      # the table of what finished
