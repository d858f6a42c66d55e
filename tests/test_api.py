"""The Python API: ``oes_mri.reconstruct`` equals the command line, the method objects, the
CLI's outputs pinned across the reshape of issue 28, and every Python block of the README."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import oes_mri
from oes_mri.data.sample import sample_path
from oes_mri.methods import METHODS, CGSense, SparseDIP, make
from oes_mri.app.slices import Sampling
from oes_mri.fit.config import DipConfig

ROOT = Path(__file__).resolve().parent.parent
PIN = Path(__file__).parent / "fixtures" / "recon_pin.npz"
PIN_ARGS = ["--methods", "zf,sense,l1,tv,oes", "--steps", "30", "--prune-steps", "10", "--dip-seed", "3",
            "--fast-path", "fp32", "--no-figures", "--quiet", "--device", "cpu"]
"""The pinned run: the built-in sample at 4x; ``recon_pin.npz`` holds the images the code
before issue 28's reshape wrote with one thread (bit-identical after it, on that CPU), and
the Sparse-DIP image per CPU (model and vector instructions) as the code before issue 33's
reshape wrote it there."""


def _cpu() -> str:
    """The CPU as far as a fit's rounding depends on it: the model name and the vector
    instructions torch dispatches to ("AMD EPYC" names AVX2 and AVX512 machines alike)."""
    name = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            name = line.split(":", 1)[1].strip()
            break
    return f"{name}|{torch.backends.cpu.get_cpu_capability()}"


def _images(out: Path) -> dict[str, np.ndarray]:
    images = {}
    for f in out.glob("*/*.h5"):
        with h5py.File(f) as h:
            images[f.parent.name] = h["reconstruction"][()]
    return images


def test_cli_outputs_pinned(tmp_path):
    """``python -m oes_mri.recon`` on the sample (one thread) gives the pinned images: the
    classical methods to rounding (rel. 1e-4: their solvers are not chaotic), Sparse-DIP
    bit-identical where the CPU and torch are those of the pin (a 30-step fit with a learned
    mask amplifies rounding: one thread against two already moves it 2.5 %)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OES_MRI_CACHE": os.environ["OES_MRI_CACHE"]}
    subprocess.run([sys.executable, "-m", "oes_mri.recon", *PIN_ARGS, "--out", str(tmp_path)], check=True, env=env,
                   capture_output=True)
    got, ref = _images(tmp_path), np.load(PIN)
    for m in ("zf", "sense", "l1", "tv"):
        assert np.linalg.norm(got[m] - ref[m]) <= 1e-4 * np.linalg.norm(ref[m]), m
    pinned = [k.split("|", 1)[1] for k in ref.files if k.startswith("oes|")]
    if f"oes|{_cpu()}" not in ref.files or str(ref["torch"]) != torch.__version__:
        pytest.skip(f"Sparse-DIP pinned on {pinned} with torch {ref['torch']}, not {_cpu()} / {torch.__version__}")
    assert np.array_equal(got["oes"], ref[f"oes|{_cpu()}"])


@pytest.fixture(scope="module")
def sample_slice():
    from oes_mri.data.volumes import load_volume, read_info

    path = sample_path()
    vol = load_volume(path)
    return vol.kspace[0], Sampling(accel=4.0).mask(read_info(path)), vol.recon_size


def test_reconstruct_equals_cli(sample_slice, tmp_path):
    """The one call gives the CLI's image for that slice with the same settings."""
    from oes_mri.recon import main

    k, smask, size = sample_slice
    assert main(["--methods", "zf,sense,oes", "--steps", "20", "--prune-steps", "5", "--no-figures", "--quiet",
                 "--device", "cpu", "--out", str(tmp_path)]) == 0
    cli = _images(tmp_path)
    for method in ("zf", "sense"):
        assert np.array_equal(oes_mri.reconstruct(k, smask, method, recon_size=size).image, cli[method][0]), method
    out = oes_mri.reconstruct(k.numpy(), smask, "oes", recon_size=size, steps=20, **{"pruning.steps": 5})
    assert np.array_equal(out.image, cli["oes"][0])
    assert out.steps == 20 and out.weight_mask is not None and out.image.shape == tuple(size)


def test_default_sparse_dip_equals_cli(sample_slice, tmp_path):
    """Without a method, the one call runs the CLI's default Sparse-DIP for the device (random
    channels on the CPU), with the same image."""
    from oes_mri.pruning.channels import is_channel_mask
    from oes_mri.recon import main

    k, smask, size = sample_slice
    assert main(["--steps", "20", "--no-figures", "--quiet", "--device", "cpu", "--out", str(tmp_path)]) == 0
    out = oes_mri.reconstruct(k, smask, recon_size=size, steps=20)
    assert np.array_equal(out.image, _images(tmp_path)["random-channels"][0])
    assert is_channel_mask(out.weight_mask) and out.history["lr"] == 3e-2


def test_reconstruct_takes_arrays_objects_and_checks_settings(sample_slice):
    k, smask, size = sample_slice
    by_array = oes_mri.reconstruct(k.numpy(), smask.mask.numpy()[0], "zf", recon_size=size)
    assert np.array_equal(by_array.image, oes_mri.reconstruct(k, smask, "zf", recon_size=size).image)
    fixed = oes_mri.reconstruct(k, smask, CGSense(lamda=0.05, tune=False), recon_size=size)
    assert fixed.lamda == 0.05
    assert oes_mri.reconstruct(k, smask, "sense", recon_size=size, lamda=0.05, tune=False).lamda == 0.05
    with pytest.raises(ValueError, match="unknown method"):
        oes_mri.reconstruct(k, smask, "nope")
    with pytest.raises(ValueError, match="no setting"):
        oes_mri.reconstruct(k, smask, "sense", steps_typo=3)
    with pytest.raises(ValueError, match="unknown"):
        oes_mri.reconstruct(k, smask, "oes", **{"fit.nope": 1})
    with pytest.raises(ValueError, match="complex"):
        oes_mri.reconstruct(k.abs(), smask, "zf")
    with pytest.raises(ValueError, match="mask"):
        oes_mri.reconstruct(k, np.ones(7), "zf")


def test_every_method_is_one_object():
    """A name builds its class; capabilities are attributes; settings are validated where built."""
    for name in METHODS:
        m = make(name)
        assert m.name == name and m.title
        assert m.untrained == (m.steps is not None)
    assert make("oes").volume_mask and not make("random").volume_mask and not make("dip").volume_mask
    assert SparseDIP(DipConfig(), "snip").config.pruning.method == "snip"
    with pytest.raises(ValueError):
        SparseDIP(DipConfig(), "dense")
    with pytest.raises(ValueError):
        CGSense(lamda=-1.0)


def _readme_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    """Every Python block of the README runs as written, with a small step count."""
    blocks = _readme_blocks()
    assert blocks
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        code = re.sub(r"steps=\d+", "steps=3", code)
        exec(compile(code, "README.md", "exec"), {"__name__": "readme"})


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:1"])
@pytest.mark.parametrize("flags,settings", [([], {}), (["--steps", "50", "--holdout", "0.2"], {"steps": 50, "holdout": 0.2}),
                                            (["--methods", "oes", "--lr", "0.02"], {"method": "oes", "lr": 0.02})])
def test_api_resolves_the_clis_settings(monkeypatch, device, flags, settings):
    """``oes_mri.reconstruct`` (and the deepinv adapter, through it) resolves the settings the
    command line resolves, on every device: the CUDA step cap and CUDA graphs included (no GPU
    needed: the device is only named)."""
    from oes_mri.api import resolve
    from oes_mri.recon import build_parser, make_config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    cli = make_config(build_parser().parse_args(["--device", device, *flags])).methods[0]
    method = settings.pop("method", None)
    assert resolve(method, device, **settings) == cli
    from oes_mri.defaults import generator_defaults

    own = generator_defaults(cli.config.pruning.method).steps          # 1500 random channels, 300 oes
    assert cli.config.steps == (50 if "--steps" in flags else 6000 if device.startswith("cuda") else own)
    assert cli.config.speed.cuda_graph == device.startswith("cuda")


@pytest.mark.parametrize("settings,match", [
    ({"pruning": "oes"}, "pruning: expected a PruningConfig"), ({"validation": 0.0}, "validation: expected a"),
    ({"speed": "fp32"}, "speed: expected a SpeedConfig"), ({"steps": 2.5}, "fit.steps: expected int"),
    ({"steps": "5"}, "fit.steps: expected int"), ({"steps": True}, "fit.steps: expected int"),
    ({"seed": 2**70}, r"seed .*must be in \[0, 2\*\*32\)"), ({"seed": "a"}, "seed: expected int"),
    ({"recon_size": 160}, "recon_size must be a pair")])
def test_api_names_a_setting_of_the_wrong_type(settings, match):
    """Third round, item 11: a wrong-typed setting is a ValueError naming it, before any fit
    (was an AttributeError, TypeError or OverflowError from deep inside)."""
    k = torch.zeros(2, 16, 16, dtype=torch.complex64)
    with pytest.raises(ValueError, match=match):
        oes_mri.reconstruct(k, np.ones(16), "random-channels", **settings)
    assert DipConfig().updated({"fit.steps": np.int64(5), "fit.lr": np.float32(0.01)}).steps == 5   # numpy numbers pass


def test_api_gates_its_arrays_like_a_file(sample_slice):
    """Third round, items 1-3: a mask for another grid, maps of the wrong shape, non-finite or
    all-zero inputs and a mask without centre lines (maps to estimate) are refused in one line
    naming the argument, where they gave wrong images or NaNs."""
    from oes_mri import InputError
    from oes_mri.physics.masks import fastmri_mask, mask_from_array

    k, smask, rs = sample_slice
    k = torch.as_tensor(k)
    H, W = k.shape[-2:]
    maps = oes_mri.reconstruct(k, smask, "zf", recon_size=rs)            # ESPIRiT runs: a sane start
    good = torch.ones_like(k)
    nan_unmeasured = k.clone()
    nan_unmeasured[0, 0, int(torch.nonzero(smask.mask[0] == 0)[0])] = float("nan")
    no_centre = smask.mask.clone()
    no_centre[:, smask.acs[1]] = 0
    cases = [((k, fastmri_mask((H // 2, W), 4, 0.08, seed=0)), {}, "mask was made for a"),
             ((k, fastmri_mask((H, W + 8), 4, 0.08, seed=0)), {}, "mask was made for a"),
             ((k, smask), {"maps": good[0]}, "maps must be"), ((k, smask), {"maps": good[:, : H // 2]}, "maps must be"),
             ((k, smask), {"maps": good[:2]}, "maps must be"), ((k, smask), {"maps": good * float("nan")}, "NaN"),
             ((k, smask), {"maps": good * 0}, "zero everywhere"), ((nan_unmeasured, smask), {}, "NaN or Inf"),
             ((k * 0, smask), {}, "zero at every measured"), ((k * 1e30, smask), {}, "kspace peaks at .*e\\+"),
             ((k * 1e-30, smask), {}, "kspace peaks at .*e-"),
             ((k, mask_from_array(no_centre[0].numpy(), (H, W), "m")), {}, "calibration line")]
    for (kk, m), extra, match in cases:
        with pytest.raises(InputError, match=match) as err:
            oes_mri.reconstruct(kk, m, "sense", recon_size=rs, **extra)
        assert "\n" not in str(err.value)
    for extra, match in [({"recon_size": (H + 2, W)}, r"recon_size \(.*\) is larger than the k-space grid"),
                         ({"device": "tpu"}, "device 'tpu': not a torch device")]:
        with pytest.raises(ValueError, match=match):
            oes_mri.reconstruct(k, smask, "sense", **{"recon_size": rs, **extra})
    assert np.isfinite(maps.image).all()


def test_settings_a_method_does_not_use_are_refused():
    """Third round, items 7 and 14 (in part): generator settings given to a classical method,
    pruning settings to dense DIP, a weight mask to a channel-pruned method (or the reverse),
    and an empty method name are errors naming them, not silently dropped; ``all`` combines."""
    from oes_mri.api import resolve
    from oes_mri.methods import METHODS, parse_methods
    from oes_mri.pruning import bank
    from oes_mri.pruning.weightmask import WeightMask

    with pytest.raises(ValueError, match=r"'sense' does not use the setting\(s\) fit.lr, fit.steps"):
        resolve("sense", "cpu", steps=5, lr=5.0)
    with pytest.raises(ValueError, match=r"'dip' does not use the setting\(s\) pruning.density"):
        resolve("dip", "cpu", density=0.5)
    assert resolve("sense", "cpu", holdout=0.2).validation.share == 0.2          # the split it does use
    with pytest.raises(ValueError, match="unknown method ''"):
        resolve("", "cpu")
    assert parse_methods("all,zf") == list(METHODS)
    with pytest.raises(ValueError, match=r"'zf' does not use the setting\(s\) seed, validation.share"):
        resolve("zf", "cpu", holdout=0.2, seed=3)
    with pytest.raises(ValueError, match="lamda: expected float, got str"):
        resolve("l1", "cpu", lamda="a")
    with pytest.raises(ValueError, match="iters: expected int, got float"):
        resolve("l1", "cpu", iters=2.5)
    with pytest.raises(ValueError, match="'dip' has no setting\\(s\\) stepz; the generator settings: steps"):
        resolve("dip", "cpu", stepz=2)
    channel = bank.load(bank.names()[0])
    weights = WeightMask({n: torch.ones(1, dtype=torch.bool) for n in ("a",)}, {"method": "oes"})
    with pytest.raises(ValueError, match="weight mask .* does not fit method 'random-channels'"):
        resolve("random-channels", "cpu").check_mask(weights)
    with pytest.raises(ValueError, match="channel mask .* does not fit method 'oes'"):
        resolve("oes", "cpu").check_mask(channel)
    resolve("oes-channels", "cpu").check_mask(channel)


@pytest.mark.parametrize("name,value,key", [("density", 0.5, "pruning.density"), ("pruning.steps", 10, "pruning.steps"),
                                            ("oes.init", "density", "oes.init")])
def test_settings_a_given_mask_leaves_unused_are_refused(sample_slice, name, value, key):
    """Item 7: what is kept and how a mask is made cannot be set beside a given mask."""
    k, m, rs = sample_slice
    with pytest.raises(ValueError, match=f"pruning_mask fixes what is kept; the setting\\(s\\) {key} "):
        oes_mri.reconstruct(k, m, "oes-channels", recon_size=rs, pruning_mask="bank:channels25", steps=1,
                            **{name: value})
