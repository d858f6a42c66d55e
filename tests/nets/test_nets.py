import torch

from oes_mri.nets.decoder import ConvDecoder
from oes_mri.nets.generator import ArchConfig, build_generator
from oes_mri.nets.hourglass import Hourglass


def test_oes_default_hourglass_size():
    net = Hourglass()
    n = sum(p.numel() for p in net.parameters())
    assert 2.9e6 < n < 3.1e6
    assert net.multiple == 64


def test_hourglass_shapes_and_skips():
    net = Hourglass(4, 6, channels=(4, 8), skip_channels=(2, 2))
    assert net(torch.rand(1, 4, 16, 12)).shape == (1, 6, 16, 12)


def test_generator_crops_and_is_complex():
    gen = build_generator(ArchConfig("hourglass", {"channels": [4, 8]}), (20, 13), num_images=3, seed=1)
    out = gen()
    assert out.shape == (3, 20, 13) and out.dtype == torch.complex64
    assert gen.z.shape == (1, 32, 20, 16)
    assert 0 <= float(gen.z.min()) and float(gen.z.max()) <= 0.1


def test_generator_seeded():
    cfg = ArchConfig("hourglass", {"channels": [4, 8]})
    a, b, c = (build_generator(cfg, (8, 8), seed=s) for s in (5, 5, 6))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert torch.equal(a.z, b.z) and not torch.equal(a.z, c.z)
    state = torch.random.get_rng_state()
    build_generator(cfg, (8, 8), seed=7)
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched


def test_convdecoder_and_deep_decoder():
    for name in ("convdecoder", "deepdecoder"):
        gen = build_generator(ArchConfig(name, {"channels": 8, "num_layers": 3}), (30, 22), seed=0)
        assert gen().shape == (1, 30, 22)
    assert ConvDecoder(num_layers=3, in_size=(4, 4)).sizes((32, 16))[-1] == (32, 16)
