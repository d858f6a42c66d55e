import numpy as np
import pytest
import torch

from oes_mri import MultiCoilOp
from oes_mri.physics.masks import fastmri_mask, poisson_mask


def _rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.complex64)


def _inner(a, b):
    return torch.vdot(a.flatten(), b.flatten())


def _check_adjoint(op, x, y):
    lhs, rhs = _inner(op(x), y), _inner(x, op.adjoint(y))
    assert abs(lhs - rhs) / abs(lhs) < 1e-5


@pytest.mark.parametrize("mask_kind", ["columns", "2d"])
def test_sense_adjoint(mask_kind):
    H, W, C = 24, 20, 5
    mask = fastmri_mask((H, W), 4, seed=0).mask if mask_kind == "columns" else \
        poisson_mask((H, W), 3, calib=(6, 6), seed=0).mask
    op = MultiCoilOp(mask, _rand(C, H, W, seed=1))
    _check_adjoint(op, _rand(H, W, seed=2), _rand(C, H, W, seed=3))


def test_sense_batched_adjoint_and_normal():
    B, C, H, W = 3, 4, 16, 12
    masks = torch.stack([fastmri_mask((H, W), 4, seed=i).mask for i in range(B)])[:, None]
    op = MultiCoilOp(masks, _rand(B, C, H, W, seed=1))
    x, y = _rand(B, H, W, seed=2), _rand(B, C, H, W, seed=3)
    _check_adjoint(op, x, y)
    assert torch.allclose(op.normal(x), op.adjoint(op(x)))
    assert op(x).shape == (B, C, H, W)


def test_coil_op_adjoint():
    mask = fastmri_mask((16, 14), 4, seed=0).mask
    op = MultiCoilOp(mask)
    assert not op.sense
    _check_adjoint(op, _rand(3, 16, 14, seed=1), _rand(3, 16, 14, seed=2))


def test_sense_equals_sigpy():
    import sigpy.mri

    C, H, W = 4, 20, 18
    maps, x = _rand(C, H, W, seed=5), _rand(H, W, seed=6)
    mask = fastmri_mask((H, W), 4, seed=1).mask
    ours = MultiCoilOp(mask, maps)(x).numpy()
    weights = np.broadcast_to(mask.numpy(), (H, W))
    ref = sigpy.mri.linop.Sense(maps.numpy(), weights=weights) * x.numpy()
    assert np.linalg.norm(ours - ref) / np.linalg.norm(ref) < 1e-5
    adj_ref = sigpy.mri.linop.Sense(maps.numpy(), weights=weights).H * ref
    adj = MultiCoilOp(mask, maps).adjoint(torch.from_numpy(ref)).numpy()
    assert np.linalg.norm(adj - adj_ref) / np.linalg.norm(adj_ref) < 1e-5


def test_buffers_move_with_module():
    op = MultiCoilOp(torch.ones(1, 8), _rand(2, 8, 8))
    names = {n for n, _ in op.named_buffers()}
    assert names == {"maps", "mask"}
    assert op.maps.dtype == torch.complex64


def test_real_maps_rejected():
    with pytest.raises(TypeError):
        MultiCoilOp(torch.ones(1, 4), torch.ones(2, 4, 4))


def test_normal_and_fit_mask():
    """``normal = adjoint o forward``; ``with_mask`` keeps the maps and the recon size."""
    H, W, C = 16, 12, 3
    op = MultiCoilOp(fastmri_mask((H, W), 4, seed=0).mask, _rand(C, H, W, seed=1), (8, 8))
    x = _rand(H, W, seed=2)
    assert torch.allclose(op.normal(x), op.adjoint(op(x)))
    sub = op.with_mask(torch.ones(1, W))
    assert sub.recon_size == (8, 8) and sub.maps is op.maps
    assert op.output_size((H, W)) == (8, 8) and MultiCoilOp(torch.ones(1, W)).output_size((H, W)) == (H, W)
