import math

import pytest
import torch

from oes_mri.nets.generator import ArchConfig, build_generator
from oes_mri.pruning.allocation import ALLOCATIONS, erk_densities, layer_budget
from oes_mri.pruning.baselines import baseline_mask
from oes_mri.pruning.oes import initial_logits, oes_mask
from oes_mri.pruning.weightmask import prunable_names, topk_masks

CFG = ArchConfig("hourglass", {"channels": [4, 8, 8]})


def _weights(seed=0):
    gen = build_generator(CFG, (16, 16), seed=seed)
    params = dict(gen.named_parameters())
    return gen, {n: params[n] for n in prunable_names(gen)}


def test_erk_hits_the_target_caps_at_one_and_favours_small_tensors():
    shapes = {"first": (16, 2, 3, 3), "mid": (64, 64, 3, 3), "wide": (128, 128, 5, 5)}
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    for density in (0.05, 0.3):
        d = erk_densities(shapes, density)
        assert sum(d[n] * sizes[n] for n in shapes) == pytest.approx(density * sum(sizes.values()))
        assert d["first"] >= d["mid"] > d["wide"] and max(d.values()) <= 1
    assert erk_densities(shapes, 0.3)["first"] == 1.0          # capped, the rest rescaled


@pytest.mark.parametrize("allocation", [a for a in ALLOCATIONS if a != "global"])
@pytest.mark.parametrize("density", [0.05, 0.2])
def test_budget_counts_are_exact(allocation, density):
    _, w = _weights()
    budget = layer_budget(w, density, allocation)
    total = sum(t.numel() for t in w.values())
    assert sum(budget.values()) == round(density * total)
    assert all(0 <= budget[n] <= w[n].numel() for n in w)
    masks = topk_masks({n: torch.rand(t.shape) for n, t in w.items()}, density, budget=budget)
    assert {n: int(m.sum()) for n, m in masks.items()} == budget


def test_global_has_no_budget_and_unknown_is_refused():
    _, w = _weights()
    assert layer_budget(w, 0.1, "global") is None
    with pytest.raises(ValueError, match="allocation"):
        layer_budget(w, 0.1, "random")


def test_magnitude_budget_is_the_split_of_global_magnitude_pruning():
    gen, w = _weights()
    budget = layer_budget(w, 0.1, "magnitude", min_layer_density=0.05)
    mag = baseline_mask("magnitude", gen, 0.1, min_layer_density=0.05)
    assert budget == {n: int(m.sum()) for n, m in mag.masks.items()}
    assert len({round(budget[n] / w[n].numel(), 2) for n in w}) > 1      # not uniform


def test_budget_floor():
    _, w = _weights()
    budget = layer_budget(w, 0.02, "erk", min_layer_density=0.05)
    assert all(budget[n] >= math.ceil(0.05 * w[n].numel()) for n in w)


def test_random_mask_under_a_budget_keeps_each_tensors_count():
    gen, w = _weights()
    budget = layer_budget(w, 0.1, "magnitude", min_layer_density=0.05)
    rand = baseline_mask("random", gen, 0.1, min_layer_density=0.05, seed=1, allocation="magnitude")
    assert {n: int(m.sum()) for n, m in rand.masks.items()} == budget
    mag = baseline_mask("magnitude", gen, 0.1, min_layer_density=0.05)
    assert any(not torch.equal(rand.masks[n], mag.masks[n]) for n in w)    # same split, other weights
    assert rand.meta["allocation"] == "magnitude"


def _loss_for(gen):
    with torch.no_grad():
        target = gen()[0].roll(3, -1).detach()
    return lambda out: (out[0] - target).abs().pow(2).sum() / target.abs().pow(2).sum()


@pytest.mark.parametrize("estimator", ["relaxed", "topk"])
def test_oes_under_a_budget(estimator):
    gen, w = _weights()
    budget = layer_budget(w, 0.1, "erk", min_layer_density=0.01)
    mask, losses = oes_mask(gen, _loss_for(gen), 0.1, steps=5, min_layer_density=0.01, seed=0,
                            init="density", estimator=estimator, allocation="erk")
    assert {n: int(m.sum()) for n, m in mask.masks.items()} == budget
    assert mask.meta["allocation"] == "erk" and len(losses) == 5
    logits = initial_logits(dict(gen.named_parameters()), list(w), 0.1, "density", budget)
    for n in w:                                      # "density" init: each tensor at its own budget
        assert float(torch.sigmoid(logits[n]).mean()) == pytest.approx(budget[n] / w[n].numel(), rel=1e-4)
