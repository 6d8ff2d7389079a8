"""The transport=sign wire format: 1 bit per coordinate, 0 → +."""

import pytest
import torch

from verl_commeff.mergers.sign_bits import PackedSigns, pack_signs, sign_mask, unpack_signs

from .reference import pack_bool_by_hand, sign_pm1


@pytest.mark.parametrize("shape", [(1,), (7,), (8,), (9,), (13, 3), (2, 3, 5), (0,), (4, 0)])
def test_round_trip_odd_sizes(shape):
    gen = torch.Generator().manual_seed(1)
    t = torch.randn(shape, generator=gen)
    if t.numel():
        t.view(-1)[0] = 0.0  # exact zero packs as +
    packed = pack_signs([t])
    n = t.numel()
    assert packed.bits[0].dtype == torch.uint8 and packed.bits[0].shape == ((n + 7) // 8,)
    assert packed.shapes == [torch.Size(shape)]
    for dtype in (torch.float32, torch.bfloat16):
        out = unpack_signs(packed, dtype=dtype)[0]
        assert out.dtype == dtype and out.shape == t.shape
        assert torch.equal(out, sign_pm1(t).to(dtype))
    assert torch.equal(sign_mask(packed.bits[0], t.shape), t >= 0)


def test_bit_layout_lsb_first():
    # coordinate i → bit i % 8 of byte i // 8, 1 = +; 0 and -0.0 are +.
    t = torch.tensor([1.0, -1.0, -2.0, 0.0, -0.0, 3.0, 4.0, 5.0, -1.0, 2.0])
    bits = pack_signs([t]).bits[0]
    assert bits.tolist() == [1 + 8 + 16 + 32 + 64 + 128, 2]


def test_several_tensors_and_bytes():
    ts = [torch.randn(3, 5), torch.randn(17), torch.randn(1)]
    packed = pack_signs(ts)
    assert len(packed) == 3 and packed.nbytes() == 2 + 3 + 1
    for out, t in zip(unpack_signs(packed), ts):
        assert torch.equal(out, sign_pm1(t))


def test_packed_signs_validates():
    with pytest.raises(ValueError, match=r"bits\[0\] must be a 1-D uint8 tensor of 2 bytes for shape \(9,\)"):
        PackedSigns(bits=[torch.zeros(3, dtype=torch.uint8)], shapes=[(9,)])
    with pytest.raises(ValueError, match="len"):
        PackedSigns(bits=[], shapes=[(9,)])


def test_bit_weights_are_made_once_per_device_not_per_call():
    """No host→device copy per matrix per tick: the (8,) bit weights are cached per device (issue 11)."""
    from verl_commeff.mergers import sign_bits

    tensors = [torch.randn(5, 7), torch.randn(3)]
    packed = pack_signs(tensors)
    misses = sign_bits._bit_weights.cache_info().misses
    for _ in range(3):
        unpack_signs(pack_signs(tensors))
    assert sign_bits._bit_weights.cache_info().misses == misses
    assert sign_bits._bit_weights(packed.bits[0].device) is sign_bits._bit_weights(torch.device("cpu"))


def test_pack_bool_every_byte_value():
    """All 256 patterns of 8 flags (the int64-word packing gathers each byte's flags without carries)."""
    from verl_commeff.mergers.sign_bits import pack_bool, unpack_bool

    flags = ((torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1).bool()  # (256, 8): row v = bits of v
    assert pack_bool(flags).tolist() == list(range(256))
    assert torch.equal(unpack_bool(pack_bool(flags), flags.numel()), flags.reshape(-1))
    # the same patterns at every word of a longer mask, in reverse order
    assert pack_bool(flags.flip(0)).tolist() == list(range(255, -1, -1))


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1003])
@pytest.mark.parametrize("density", [0.0, 0.1, 0.5, 1.0])
def test_pack_bool_matches_packing_by_hand(n, density):
    from verl_commeff.mergers.sign_bits import pack_bool, unpack_bool

    gen = torch.Generator().manual_seed(n)
    mask = torch.rand(n, generator=gen) < density
    packed = pack_bool(mask)
    assert packed.dtype == torch.uint8 and packed.shape == ((n + 7) // 8,)
    assert packed.tolist() == pack_bool_by_hand(mask.tolist())
    assert torch.equal(unpack_bool(packed, n), mask)


def test_pack_bool_of_views():
    """A slice at an offset that is not a multiple of 8, and a non-contiguous 2-D mask, pack row-major."""
    from verl_commeff.mergers.sign_bits import pack_bool

    gen = torch.Generator().manual_seed(3)
    base = torch.rand(203, generator=gen) < 0.4
    for view in (base[3:], base[5:110], base[8:200]):
        assert pack_bool(view).tolist() == pack_bool_by_hand(view.tolist())
    grid = (torch.rand(9, 13, generator=gen) < 0.5).t()  # (13, 9), non-contiguous
    assert pack_bool(grid).tolist() == pack_bool_by_hand(grid.reshape(-1).tolist())
