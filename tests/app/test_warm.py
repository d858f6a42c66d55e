"""A volume as a chain of warm-started slices: the order, the start from the neighbour's fitted
weights with the same pruning mask, the pipeline's chain, a resumed chain, the simulated volume."""

import h5py
import numpy as np
import pytest
import torch

from oes_mri.app import chain
from oes_mri.data.sample import volume_images
from oes_mri.data.simulate import write_fastmri_file
from oes_mri.recon import main
from oes_mri.fit import jobs as sparse_dip
from oes_mri.fit.jobs import reconstruct_dip
from oes_mri.app.storage import load_weights, save_weights
from tests.fit.test_fit import CFG, _slices

ARGS = ["--arch", "hourglass-tiny", "--steps", "12", "--prune-steps", "5", "--no-figures", "--quiet", "--fast-path", "fp32"]


def test_chain_runs_outward_from_the_reference():
    assert chain.parents([3, 5, 7, 9], 7) == {3: 5, 5: 7, 7: None, 9: 7}
    assert chain.children([3, 5, 7, 9], 7) == {3: [], 5: [3], 7: [5, 9], 9: []}
    order = lambda w: [[(link.index, link.parent) for link in wave] for wave in w]  # noqa: E731
    assert order(chain.waves([0, 1, 2, 3, 4], 2, [0, 1, 2, 3, 4], 2)) == [[(2, None)], [(1, 2), (3, 2)],
                                                                         [(0, 1), (4, 3)]]
    assert order(chain.waves([0, 1, 2, 3, 4], 2, [0, 1, 3, 4], 1)) == [[(1, 2)], [(3, 2)], [(0, 1)], [(4, 3)]]
    assert order(chain.waves([0, 1, 2, 3, 4], 2, [0, 4], 8)) == [[(0, 1), (4, 3)]]     # a resumed chain
    assert order(chain.waves([4], 4, [4], 2)) == [[(4, None)]]


def test_warm_start_begins_at_the_neighbours_weights_with_its_mask():
    x0, x1 = _slices(2)
    cfg = CFG.updated({"validation.share": 0.0})
    first = reconstruct_dip(x0, cfg)
    wm, weights = first.weight_mask, first.weights
    st = sparse_dip.setup_fit(x1, cfg, 0, wm, init=weights)
    params = dict(st.gen.named_parameters())
    assert params.keys() == weights.keys() and all(torch.equal(params[n], w) for n, w in weights.items())
    assert all(torch.all(params[n][~m] == 0) for n, m in wm.masks.items())       # pruned stays pruned
    warm = reconstruct_dip(x1, cfg, wm, init=weights)
    cold = reconstruct_dip(x1, cfg, wm)
    assert warm.weight_mask is wm
    assert warm.history["losses"][0] < 0.5 * cold.history["losses"][0]          # it starts near the answer
    fitted = dict(warm.weights)
    assert all(torch.all(fitted[n][~m] == 0) for n, m in wm.masks.items())
    with pytest.raises(ValueError, match="pruning mask"):
        sparse_dip.setup_fit(x1, cfg, 0, None, init=weights)                     # a mask to learn: no warm start
    slow = cfg.updated({"warm.lr": 1e-3, "warm.patience": 7})
    both = sparse_dip.reconstruct_dip_batch([x0, x1], slow, wm, inits=[None, weights])
    assert [o.history["lr"] for o in both] == [cfg.lr, 1e-3]                  # warm settings for warm fits only
    assert sparse_dip.warm_config(slow).validation.patience == 7
    assert sparse_dip.warm_config(slow).fit.steps == min(slow.warm.steps, slow.steps)       # never above the cap
    plain = cfg.updated({"warm.lr": None, "warm.patience": None, "warm.steps": None})
    assert sparse_dip.warm_config(plain) == plain                                  # nothing set: the cold settings


@pytest.fixture(scope="module")
def volume5(tmp_path_factory):
    path = tmp_path_factory.mktemp("vol5") / "vol5.h5"
    return write_fastmri_file(path, volume_images(5, 32), num_coils=4, snr=30.0, seed=3, scale=3e-4, volume=True)


def _recorded_chain(monkeypatch):
    """Record what the pipeline hands each (method, slices) call: the warm starts."""
    from oes_mri.methods.untrained import Untrained

    calls, real = [], Untrained.reconstruct_batch

    def spy(self, xs, **kw):
        results = real(self, xs, **kw)
        calls.append((self.name, [x.source.split(":")[1] for x in xs], kw.get("inits"), results))
        return results
    monkeypatch.setattr(Untrained, "reconstruct_batch", spy)
    return calls


@pytest.mark.parametrize("warm", [True, False])
def test_pipeline_chains_the_slices(volume5, tmp_path, monkeypatch, warm):
    """dip with --batch-slices 2: the middle slice from the random init, then each neighbour
    from the fitted weights of the slice next to it (two at a time); off, every slice cold."""
    calls = _recorded_chain(monkeypatch)
    flag = "--warm-start" if warm else "--no-warm-start"
    out = tmp_path / "o"
    assert main(["--data", str(volume5), "--out", str(out), "--methods", "dip", "--batch-slices", "2", flag,
                 *ARGS]) == 0
    fitted = {int(s): r.weights for _, idx, _, res in calls for s, r in zip(idx, res)}
    got = {int(s): init for _, idx, inits, _ in calls for s, init in zip(idx, inits or [None] * len(idx))}
    if not warm:
        assert all(v is None for v in got.values()) and [len(c[1]) for c in calls] == [2, 2, 1]
        return
    assert [c[1] for c in calls] == [["2"], ["1", "3"], ["0", "4"]]
    parent = {0: 1, 1: 2, 3: 2, 4: 3}
    assert got[2] is None
    for s, p in parent.items():
        assert all(torch.equal(got[s][n], fitted[p][n].cpu()) for n in fitted[p])
    kept = sorted(f.name for f in (out / ".checkpoints" / "vol5" / "dip").glob("*.weights.npz"))
    assert kept == ["slice_0000.weights.npz", "slice_0004.weights.npz"]      # the chain's ends, for a rerun


def test_one_volume_mask_per_run(volume5, tmp_path, monkeypatch):
    """The default Sparse-DIP (random channels) chains the volume on one channel mask; next to
    OES, which then holds the run's volume mask, it makes its own mask per slice, unchained,
    and never fits with OES's weight mask."""
    from oes_mri.pruning.channels import is_channel_mask

    calls = _recorded_chain(monkeypatch)
    assert main(["--data", str(volume5), "--out", str(tmp_path / "a"), "--methods", "random-channels", *ARGS]) == 0
    assert [c[1] for c in calls] == [["2"], ["1"], ["3"], ["0"], ["4"]]               # the chain, one mask
    masks = [r.weight_mask for c in calls for r in c[3]]
    assert all(is_channel_mask(m) and m.masks.keys() == masks[0].masks.keys() for m in masks)
    assert all(all(torch.equal(m.masks[n], masks[0].masks[n]) for n in m.masks) for m in masks)
    calls.clear()
    assert main(["--data", str(volume5), "--out", str(tmp_path / "b"), "--methods", "oes,random-channels",
                 *ARGS]) == 0
    rch = [c for c in calls if c[0] == "random-channels"]
    assert rch and all(c[2] is None for c in rch)                                       # not chained
    assert all(is_channel_mask(r.weight_mask) for c in rch for r in c[3])
    assert not any(is_channel_mask(r.weight_mask) for c in calls if c[0] == "oes" for r in c[3])


def test_wider_rerun_continues_the_chain_from_stored_weights(volume5, tmp_path):
    """Slices 1-3 first, then all five into the same --out: slices 0 and 4 start from the
    stored weights of 1 and 3 and the volume equals an uninterrupted run's, bit for bit."""
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    base = ["--data", str(volume5), "--methods", "oes,dip", *ARGS]
    assert main([*base, "--out", str(whole)]) == 0
    assert main([*base, "--out", str(parts), "--slices", "1:4"]) == 0
    assert main([*base, "--out", str(parts)]) == 0
    for m in ("oes", "dip"):
        with h5py.File(whole / m / "vol5.h5") as a, h5py.File(parts / m / "vol5.h5") as b:
            assert np.array_equal(a["reconstruction"][()], b["reconstruction"][()]), m


def test_bad_weights_file_is_named_and_not_used(tmp_path, caplog):
    path = tmp_path / "slice_0001.weights.npz"
    save_weights(path, {"w": np.ones(3, np.float32)})
    assert np.array_equal(load_weights(path)["w"], np.ones(3))
    path.write_bytes(path.read_bytes()[:-10])
    assert load_weights(path) is None and "slice_0001.weights.npz" in caplog.text
    assert load_weights(tmp_path / "none.npz") is None


def test_simulated_volume_changes_from_slice_to_slice():
    v = volume_images(7, 64)
    assert v.shape == (7, 64, 64) and np.array_equal(v, volume_images(7, 64))           # deterministic
    corr = lambda a, b: np.corrcoef(a.ravel(), b.ravel())[0, 1]  # noqa: E731
    assert all(0.7 < corr(v[i], v[i + 1]) < 0.999 for i in range(6))                  # neighbours alike, not equal
    assert corr(v[0], v[3]) < corr(v[2], v[3])                                          # distance shows


def test_which_methods_chain():
    """DIP always, OES with one mask for the volume, never the per-slice pruning baselines or
    the classical methods, and nothing with --no-warm-start."""
    from oes_mri.methods import make
    from oes_mri.fit.config import DipConfig

    on, off = DipConfig(), DipConfig().updated({"warm.enabled": False})
    assert make("dip", on).chains(False) and make("oes", on).chains(True)
    assert make("random-channels", on).chains(True) and make("oes-channels", on).chains(True)
    assert not make("oes", on).chains(False)
    assert not any(make(m, on).chains(True) for m in ("random", "snip", "imp", "sense", "l1", "zf"))
    assert not any(make(m, off).chains(True) for m in ("dip", "oes"))


def test_volume_phase_changes_smoothly():
    """Slices of a simulated volume share a phase that drifts slowly (a random phase per slice
    would make every neighbour's generator a bad start)."""
    from oes_mri.data.simulate import volume_phase

    ph = volume_phase((32, 32), 7, np.random.default_rng(0))
    step = np.abs(np.diff(ph, axis=0)).max()
    assert ph.shape == (7, 32, 32) and 0 < step < 0.25 * np.abs(ph).max()
