"""The mask bank: shipped OES channel masks load, fit their generator and are small; the bank's
command rebuilds the same bytes; a run with a shipped mask equals a run given its file; a mask
that does not fit is refused in one line."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from oes_mri.app import bank as bank_app
from oes_mri.nets.generator import ArchConfig, build_generator
from oes_mri.pruning import bank
from oes_mri.pruning.channels import is_channel_mask, shrink
from oes_mri.recon import main


def test_shipped_masks_load_fit_their_generator_and_are_small():
    assert bank.names(), "the package ships no mask"
    for name in bank.names():
        size = bank.path(name).stat().st_size
        assert size < 8192, f"{name}: {size} bytes"               # kept-channel vectors, not 3 MB of weight masks
        wm = bank.load(name)
        assert is_channel_mask(wm) and bank.is_pattern(wm) and wm.meta["bank"] == name
        assert wm.meta["mask_steps"] >= 1000 and wm.meta["method"] == "oes-channels"
        for shape in ((64, 64), (160, 96)):                           # a channel mask does not depend on the size
            gen = build_generator(ArchConfig(), shape)
            wm.check_fits(gen)
            small = shrink(gen, wm)
            assert sum(p.numel() for p in small.parameters()) < 0.1 * sum(p.numel() for p in gen.parameters())
            assert torch.isfinite(small()).all()


def test_bank_rebuilt_twice_gives_the_same_bytes(tmp_path):
    """Same seed, same bytes (at a tiny budget, on one CPU), and the compact file expands to
    the mask it was made from."""
    for d in ("a", "b"):
        assert bank_app.main(["--out", str(tmp_path / d), "--steps", "3"]) == 0
    for name in bank_app.SPECS:
        a, b = (tmp_path / d / f"{name}{bank.SUFFIX}" for d in ("a", "b"))
        assert a.read_bytes() == b.read_bytes()
        wm = bank.load_file(a)
        assert wm.meta["mask_steps"] == 3 and wm.meta["source"] == "built-in sample"


def test_a_mask_that_does_not_fit_is_refused_in_one_line(tmp_path, capsys):
    for arg, match in (("bank:nope", "no shipped pruning mask 'nope'; the bank has"),
                       (str(tmp_path / "none.safetensors"), "not found")):
        assert main(["--methods", "oes-channels", "--pruning-mask", arg, "--steps", "2", "--out",
                     str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--pruning-mask" in err and match in err, err
    bad = tmp_path / "tiny.safetensors"                                  # a channel file for another architecture
    bank.save(bank.load(bank.names()[0]), bad)
    raw = bank.WeightMask.load(bad)
    bank.WeightMask(raw.masks, {**raw.meta, "arch": ArchConfig("hourglass-tiny").to_dict()}).save(bad)
    assert main(["--methods", "oes-channels", "--pruning-mask", str(bad), "--steps", "2", "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and "does not fit hourglass-tiny" in err, err


def test_shipped_mask_run_equals_a_run_given_its_file(tmp_path):
    """``--pruning-mask bank:NAME`` and ``--pruning-mask <its file>`` give the same image; the
    run names the mask it used; a bank mask is a pattern: ``--dip-seed`` changes the init."""
    name = bank.names()[0]
    common = ["--methods", "oes-channels", "--steps", "20", "--quiet", "--no-figures"]
    images = {}
    for label, arg, seed in (("bank", f"bank:{name}", "0"), ("file", str(bank.path(name)), "0"),
                             ("seed1", f"bank:{name}", "1")):
        out = tmp_path / label
        assert main([*common, "--pruning-mask", arg, "--dip-seed", seed, "--out", str(out)]) == 0
        (f,) = (out / "oes-channels").glob("*.h5")
        with h5py.File(f) as h:
            images[label] = h["reconstruction"][()]
        rec = json.loads((out / "metrics.json").read_text())[0]
        assert rec["pruning_mask"] == arg
    assert np.array_equal(images["bank"], images["file"])
    assert not np.array_equal(images["bank"], images["seed1"])


@pytest.mark.parametrize("pattern", [True, False])
def test_only_a_pattern_mask_takes_the_runs_init(pattern):
    """A bank mask (a pattern) starts from the run's seed; any other given mask from the init
    it was made with (its ``init_seed``), as before."""
    from oes_mri.fit.jobs import _init_seed
    from oes_mri.fit.config import DipConfig

    wm = bank.load(bank.names()[0])
    meta = {**wm.meta, "init_seed": 7, "pattern_only": pattern}
    assert _init_seed(DipConfig(seed=3), bank.WeightMask(wm.masks, meta)) == (3 if pattern else 7)


def test_api_takes_a_shipped_mask_and_refuses_it_where_unused():
    """``oes_mri.reconstruct(..., pruning_mask="bank:NAME")`` fits with the shipped pattern (the
    CLI's ``--pruning-mask``); a method without a pruning mask refuses it instead of dropping it."""
    import oes_mri
    from oes_mri.physics.masks import fastmri_mask

    vol = oes_mri.load_volume(oes_mri.sample_path())
    k = vol.kspace[0]
    m = fastmri_mask(k.shape[-2:], 4, 0.08, seed=0)
    name = bank.names()[0]
    out = oes_mri.reconstruct(k, m, "oes-channels", recon_size=vol.recon_size, steps=3, pruning_mask=f"bank:{name}")
    assert out.weight_mask.meta["bank"] == name and out.steps == 3
    with pytest.raises(ValueError, match="does not take a pruning mask"):
        oes_mri.reconstruct(k, m, "sense", recon_size=vol.recon_size, pruning_mask=f"bank:{name}")
