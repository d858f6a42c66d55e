"""Structured pruning (:mod:`oes_mri.pruning.channels`): a channel mask removes whole channels
exactly, the generator rebuilt smaller computes what the masked one does, and the fits use it."""

import pytest
import torch

from oes_mri.nets.generator import ArchConfig, build_generator
from oes_mri.pruning.channels import (channel_budget, channel_oes_mask, feature_maps, is_channel_mask,
                                      kept_channels, random_channel_mask, shrink)
from oes_mri.pruning.weightmask import WeightMask
from oes_mri.fit.config import DipConfig
from oes_mri.fit.engine import fit

CFG = ArchConfig("hourglass", {"channels": [6, 8, 8, 10]})


def _gen(seed=0, shape=(32, 32)):
    return build_generator(CFG, shape, seed=seed)


def _loss(out):
    y, x = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    target = ((x**2 + y**2) < 0.5).to(torch.complex64) * 0.3
    return (out[0] - target).abs().pow(2).sum() / target.abs().pow(2).sum()


def test_feature_maps_chain_the_convolutions():
    """z -> every conv of the way down and up -> the output conv; each map's width is its
    consumer's input channels and its producer's output channels."""
    gen = _gen()
    fms = feature_maps(gen)
    modules = dict(gen.named_modules())
    assert fms[0].producer == "" and fms[0].width == 32 and fms[-1].consumer == "net.out"
    assert len(fms) == 3 * 4 + 1
    for fm in fms[1:]:
        assert modules[fm.producer].out_channels == fm.width == modules[fm.consumer].in_channels


@pytest.mark.parametrize("density", [0.5, 0.3])
def test_shrunk_generator_equals_the_channel_masked_one(density):
    """Same output at init and after the same fit steps (to rounding), fewer parameters and FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    mask = random_channel_mask(_gen(), density, seed=1)
    dense, small = _gen(), shrink(_gen(), mask)
    mask.apply_(dense)
    dense.train(), small.train()
    with torch.no_grad():
        assert torch.allclose(dense(), small(), rtol=1e-4, atol=1e-5)
    assert sum(p.numel() for p in small.parameters()) == sum(int(m.sum()) for m in mask.masks.values())
    fd, fs = fit(dense, _loss, 5, 1e-2, mask).last, fit(small, _loss, 5, 1e-2).last
    assert torch.allclose(fd, fs, rtol=1e-3, atol=1e-4)

    def flops(g):
        with FlopCounterMode(display=False) as fc:
            g().abs().sum().backward()
        return fc.get_total_flops()
    assert flops(small) < 0.6 * flops(_gen())


def test_channel_budget_and_saved_mask(tmp_path):
    gen = _gen()
    mask = random_channel_mask(gen, 0.25, seed=0, meta={"arch": CFG.to_dict()})
    kept = kept_channels(gen, mask)
    budget = channel_budget(gen, 0.25)
    assert all(len(kept[n]) == k >= 2 for n, k in budget.items())
    mask.save(tmp_path / "m.safetensors")
    back = WeightMask.load(tmp_path / "m.safetensors")
    assert is_channel_mask(back) and all(torch.equal(back.masks[n], mask.masks[n]) for n in mask.masks)
    assert torch.equal(shrink(_gen(), back)(), shrink(_gen(), mask)())


def test_channel_oes_learns_and_keeps_the_budget():
    gen = _gen()
    mask, losses = channel_oes_mask(gen, _loss, 0.5, steps=20, seed=0)
    assert len(losses) == 20 and mask.meta["method"] == "oes-channels"
    assert {n: len(i) for n, i in kept_channels(gen, mask).items()} == channel_budget(gen, 0.5)
    other, _ = channel_oes_mask(_gen(), _loss, 0.5, steps=20, seed=0)
    assert all(torch.equal(other.masks[n], mask.masks[n]) for n in mask.masks)       # same seed, same mask


def test_skip_connections_refused():
    gen = build_generator(ArchConfig("hourglass", {"channels": [4, 4], "skip_channels": [2, 2]}), (16, 16))
    with pytest.raises(ValueError, match="skip"):
        feature_maps(gen)


def test_structured_sparse_dip_fits_and_warm_starts(tiny_file):
    """``oes-channels`` through the method: the fitted weights are the small generator's, and a
    neighbour warm-started from them with the same mask fits."""
    from oes_mri.data.volumes import load_volume
    from oes_mri.methods import SparseDIP, slice_data
    from oes_mri.physics.coils import estimate_maps
    from oes_mri.physics.masks import fastmri_mask
    from oes_mri.physics.operator import MultiCoilOp

    vol = load_volume(tiny_file)
    k = vol.kspace[0]
    m = fastmri_mask(k.shape[-2:], 4, seed=0)
    y = k * m.mask + 0.0
    op = MultiCoilOp(m.mask, estimate_maps(y, m).maps, vol.recon_size)
    method = SparseDIP(DipConfig(arch=CFG).updated({"fit.steps": 10, "pruning.steps": 5, "pruning.density": 0.5}),
                       "oes-channels")
    assert method.volume_mask and method.warm_startable
    first = method.reconstruct(y, op)
    assert is_channel_mask(first.weight_mask)
    assert first.weights["net.out.weight"].shape[1] == 3                       # 6 channels halved
    second = method.reconstruct_batch([slice_data(y, op)], weight_mask=first.weight_mask, inits=[first.weights])[0]
    assert second.steps >= 1 and torch.isfinite(torch.as_tensor(second.image)).all()
