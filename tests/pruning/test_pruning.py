import pytest
import torch

from oes_mri.errors import InputError
from oes_mri.nets.generator import ArchConfig, build_generator
from oes_mri.pruning.baselines import baseline_mask, imp_mask
from oes_mri.pruning.oes import (DegenerateMaskError, bernoulli_kl, check_pruned, learn_oes_logits,
                                 oes_mask)
from oes_mri.pruning.weightmask import WeightMask, prunable_names, topk_masks
from oes_mri.fit.engine import fit

CFG = ArchConfig("hourglass", {"channels": [4, 8, 8]})


def _gen(seed=0, shape=(16, 16)):
    return build_generator(CFG, shape, seed=seed)


def _target(shape=(16, 16)):
    y, x = torch.meshgrid(torch.linspace(-1, 1, shape[0]), torch.linspace(-1, 1, shape[1]), indexing="ij")
    return ((x**2 + y**2) < 0.5).to(torch.complex64) * 0.3


def _loss(out):
    return (out[0] - _target()).abs().pow(2).sum() / _target().abs().pow(2).sum()


def test_prunable_scopes():
    gen = _gen()
    conv = prunable_names(gen, "conv")
    assert "net.out.weight" not in conv and all(n.endswith("weight") for n in conv)
    assert "net.out.weight" in prunable_names(gen, "conv+out")
    assert len(prunable_names(gen, "all")) == len(list(gen.parameters()))


@pytest.mark.parametrize("density", [0.013, 0.05, 0.2, 1.0])
@pytest.mark.parametrize("floor", [0.0, 0.01])
def test_topk_density_exact(density, floor):
    g = torch.Generator().manual_seed(0)
    scores = {"a": torch.rand(100, 70, generator=g), "b": torch.rand(330, generator=g),
              "c": torch.rand(20, 20, generator=g)}
    masks = topk_masks(scores, density, min_layer_density=floor)
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept == round(density * 7730)
    if floor:
        assert all(m.any() for m in masks.values())


def test_topk_floor_prevents_collapse():
    scores = {"big": torch.ones(100), "small": torch.zeros(10)}
    assert not topk_masks(scores, 0.1)["small"].any()
    assert int(topk_masks(scores, 0.1, min_layer_density=0.2)["small"].sum()) == 2


def test_masked_weights_stay_zero_through_training():
    gen = _gen()
    mask = baseline_mask("random", gen, 0.3, seed=1)
    fit(gen, _loss, 15, 1e-2, mask)
    params = dict(gen.named_parameters())
    for n, m in mask.masks.items():
        assert torch.all(params[n][~m] == 0)
        assert torch.any(params[n][m] != 0)
    # hooks removed after the fit: a new dense gradient is not masked
    gen.zero_grad()
    _loss(gen()).backward()
    n0 = next(iter(mask.masks))
    assert params[n0].grad[~mask.masks[n0]].abs().sum() > 0


def test_save_load_roundtrip(tmp_path):
    gen = _gen()
    mask = baseline_mask("magnitude", gen, 0.1, min_layer_density=0.01, meta={"arch": CFG.to_dict(), "init_seed": 0, "source": "x.h5:3"})
    path = tmp_path / "m.safetensors"
    mask.save(path)
    back = WeightMask.load(path)
    assert back.meta == mask.meta and back.meta["source"] == "x.h5:3"
    assert set(back.masks) == set(mask.masks)
    assert all(torch.equal(back.masks[n], mask.masks[n]) for n in mask.masks)
    assert abs(back.density - 0.1) < 1e-3


def test_mask_refuses_mismatched_architecture(tmp_path):
    mask = baseline_mask("random", _gen(), 0.1, meta={"arch": CFG.to_dict()})
    other = build_generator(ArchConfig("hourglass", {"channels": [4, 6, 8]}), (16, 16))
    with pytest.raises(InputError, match="architecture mismatch"):
        mask.check_fits(other, "m.safetensors")
    with pytest.raises(InputError):
        mask.apply_(other)


def test_load_rejects_garbage(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises(InputError, match="not a readable weight mask"):
        WeightMask.load(bad)
    with pytest.raises(InputError, match="not found"):
        WeightMask.load(tmp_path / "none.safetensors")


def test_kl_zero_at_target_density():
    assert float(bernoulli_kl(torch.full((5,), 0.05), 0.05)) == pytest.approx(0, abs=1e-6)
    assert float(bernoulli_kl(torch.full((5,), 0.5), 0.05)) > 0


def test_magnitude_at_init_collapses_without_floor():
    with pytest.raises(DegenerateMaskError, match="layer collapse"):
        baseline_mask("magnitude", _gen(), 0.1)


def _scaled_loss(gen):
    with torch.no_grad():
        s = float(gen().norm() / _target().norm())
    return lambda out: (out[0] - s * _target()).abs().pow(2).sum() / (s * _target()).abs().pow(2).sum()


def test_oes_logits_move_and_differ_from_random():
    gen = _gen()
    loss = _scaled_loss(gen)
    before = {n: p.clone() for n, p in gen.named_parameters()}
    names = prunable_names(gen)
    logits, losses = learn_oes_logits(gen, loss, names, 0.2, 60, seed=0)
    assert all(torch.equal(before[n], p) for n, p in gen.named_parameters())  # weights frozen
    assert max(float(p.abs().max()) for p in logits.values()) > 0.1  # moved from 0
    assert sum(losses[-10:]) < sum(losses[:10])
    mask, _ = oes_mask(gen, loss, density=0.2, steps=60, seed=0)
    assert mask.meta["method"] == "oes" and abs(mask.density - 0.2) < 1e-3
    rand = baseline_mask("random", gen, 0.2, seed=0)
    same = sum(int((mask.masks[n] == rand.masks[n]).sum()) for n in mask.masks)
    total = sum(m.numel() for m in mask.masks.values())
    assert same < 0.9 * total  # two independent 20 % masks agree on about 68 %


def test_oes_same_seed_same_mask():
    a, _ = oes_mask(_gen(), _scaled_loss(_gen()), density=0.2, steps=10, seed=3)
    b, _ = oes_mask(_gen(), _scaled_loss(_gen()), density=0.2, steps=10, seed=3)
    assert all(torch.equal(a.masks[n], b.masks[n]) for n in a.masks)


def test_collapse_guard_fires():
    gen = _gen()
    names = prunable_names(gen, "all")
    scores = {n: torch.ones_like(p) for n, p in gen.named_parameters() if n in names}
    scores["net.out.weight"] = torch.zeros_like(scores["net.out.weight"])
    mask = WeightMask(topk_masks(scores, 0.5))
    assert not mask.masks["net.out.weight"].any()
    with pytest.raises(DegenerateMaskError, match="layer collapse"):
        check_pruned(gen, mask)


def test_degenerate_output_guard_fires():
    gen = _gen()
    names = prunable_names(gen, "conv+out")
    masks = {n: torch.ones_like(dict(gen.named_parameters())[n], dtype=torch.bool) for n in names}
    masks["net.out.weight"][:] = False
    masks["net.out.weight"][0, 0] = True  # not collapsed as a tensor...
    # ...but the layer before the output conv is zeroed by an all-False up-conv mask in channel 0
    up = [n for n in names if "body.up" in n and n.endswith("1.weight")][0]
    masks[up][:] = False
    masks[up][1:, 0] = True  # keeps entries, but output channel 0 sees only BatchNorm bias
    with pytest.raises(DegenerateMaskError, match="zero or constant"):
        check_pruned(gen, WeightMask(masks))


def test_snip_and_imp():
    gen = _gen()
    snip = baseline_mask("snip", gen, 0.1, loss_fn=_loss)
    assert abs(snip.density - 0.1) < 1e-3
    init = {n: p.clone() for n, p in gen.named_parameters()}
    imp = imp_mask(gen, 0.1, lambda g, m: fit(g, _loss, 5, 1e-2, m), rounds=2)
    assert abs(imp.density - 0.1) < 1e-3 and imp.meta["rounds"] == 2
    assert all(torch.equal(init[n], p) for n, p in gen.named_parameters())  # rewound


def test_closed_form_kl_gradient_matches_autograd():
    from oes_mri.pruning.oes import add_kl_grad_

    p = (torch.randn(500) * 3).requires_grad_(True)
    bernoulli_kl(torch.sigmoid(p), 0.05).backward()
    auto = p.grad.clone()
    p.grad.zero_()
    add_kl_grad_({"w": p}, 0.05, 1.0)
    assert torch.allclose(p.grad, auto, rtol=1e-4, atol=1e-6)


def test_oes_logit_inits():
    from oes_mri.pruning.oes import initial_logits

    gen = _gen()
    names = prunable_names(gen, "conv")
    params = dict(gen.named_parameters())
    zero = initial_logits(params, names, 0.05, "zero")
    dens = initial_logits(params, names, 0.05, "density")
    assert all(torch.all(zero[n] == 0) for n in names)
    assert all(torch.allclose(torch.sigmoid(dens[n]), torch.full_like(dens[n], 0.05)) for n in names)
    mag = initial_logits(params, names, 0.05, "density+magnitude")
    for n in names:                                   # per tensor, the order of the logits is that of |w|
        order = torch.argsort(mag[n].flatten())
        assert torch.all(params[n].detach().abs().flatten()[order].diff() >= 0)
    logits, _ = learn_oes_logits(gen, _loss, names, 0.05, 5, init="density")
    assert any(not torch.allclose(logits[n], dens[n]) for n in names)      # learning starts from there
    with pytest.raises(ValueError, match="logit init"):
        initial_logits(params, names, 0.05, "ones")


def test_topk_estimator_uses_the_subnetwork_and_learns():
    from oes_mri.pruning.oes import sampled_mask

    gen = _gen()
    names = prunable_names(gen, "conv")
    logits = {n: torch.zeros_like(p, requires_grad=True) for n, p in gen.named_parameters() if n in names}
    m = sampled_mask(logits, 0.2, torch.Generator().manual_seed(0), "topk", 0.1, 0.0)
    total = sum(p.numel() for p in logits.values())
    assert sum(int((v.detach() == 1).sum()) for v in m.values()) == round(0.1 * total)   # forward: exact top-k
    assert all(torch.all((v.detach() == 0) | (v.detach() == 1)) for v in m.values())
    sum((v * torch.randn_like(v)).sum() for v in m.values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in logits.values())       # straight through
    a, _ = learn_oes_logits(gen, _loss, names, 0.1, 5, estimator="topk", seed=3)
    b, _ = learn_oes_logits(gen, _loss, names, 0.1, 5, estimator="topk", seed=3)
    assert all(torch.equal(a[n], b[n]) for n in names) and any(a[n].abs().sum() > 0 for n in names)
    with pytest.raises(ValueError, match="estimator"):
        sampled_mask(logits, 0.2, None, "hard", 0.1, 0.0)
