import pytest
import torch

from lowrank_compiler.runtime.quant.group import (
    check_layer,
    dequantize,
    group_sum,
    pack,
    pack_codes,
    pack_zeros,
    quantize,
    quantize_packed,
    row_chunk,
    unpack,
    unpack_codes,
)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [16, 32, 128])
def test_round_trip_within_half_a_step(bits, group_size):
    torch.manual_seed(bits * group_size)
    w = torch.randn(40, 256) * torch.rand(40, 1) * 3  # rows of different ranges
    w[0] = w[0].abs() + 1.0  # a row with no negative weight
    w[1] = 0.0  # an all-zero row
    codes, scales, zeros = quantize(w, bits, group_size)
    qw, pz = pack_codes(codes, bits, group_size), pack_zeros(zeros, bits)
    assert qw.shape == (40, 256 // group_size, group_size * bits // 8) and qw.dtype == torch.uint8
    assert pz.shape == (40, -(-(256 // group_size) * bits // 8))
    assert int(codes.max()) <= 2**bits - 1 and int(zeros.max()) <= 2**bits - 1
    deq = dequantize(qw, scales, pz, bits, group_size)
    bound = scales.repeat_interleave(group_size, dim=1) / 2
    assert ((deq - w).abs() <= bound * (1 + 1e-6) + 1e-7).all()
    assert torch.equal(deq[1], torch.zeros(256))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_pack_unpack_identity(bits):
    codes = torch.randint(0, 2**bits, (5, 7, 64), dtype=torch.uint8)
    packed = pack(codes, bits)
    assert packed.shape == (5, 7, 64 * bits // 8)
    assert torch.equal(unpack(packed, bits, 64), codes)
    c2 = torch.randint(0, 2**bits, (3, 128), dtype=torch.uint8)
    assert torch.equal(unpack_codes(pack_codes(c2, bits, 32), bits, 32), c2)
    zeros = torch.randint(
        0, 2**bits, (3, 5), dtype=torch.uint8
    )  # 5 groups: a partial byte at the end
    assert torch.equal(unpack(pack_zeros(zeros, bits), bits, 5), zeros)


def test_byte_layout_is_matmulnbits():
    """4 bits: low nibble = even k; 2 bits: LSB first; zero points likewise along the groups."""
    codes = torch.tensor(
        [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0]], dtype=torch.uint8
    )
    assert pack_codes(codes, 4, 16).tolist() == [[[0x21, 0x43, 0x65, 0x87, 0xA9, 0xCB, 0xED, 0x0F]]]
    two = torch.tensor([[1, 2, 3, 0, 0, 1, 2, 3]], dtype=torch.uint8)
    assert pack(two, 2).tolist() == [[1 | 2 << 2 | 3 << 4, 0 | 1 << 2 | 2 << 4 | 3 << 6]]
    assert pack_zeros(torch.tensor([[3, 12, 7]], dtype=torch.uint8), 4).tolist() == [[0xC3, 0x07]]


def test_group_sum():
    x = torch.arange(64.0).reshape(2, 32)
    assert group_sum(x, 16).tolist() == [
        [sum(range(16)), sum(range(16, 32))],
        [sum(range(32, 48)), sum(range(48, 64))],
    ]


@pytest.mark.parametrize(
    "bits, group, shape, message",
    [
        (5, 32, (8, 64), "bits=5 is not one of"),
        (4, 24, (8, 64), "group_size=24 is not a power of two"),
        (4, 32, (8, 0), "an empty weight (shape [8, 0]) has nothing to quantize"),
    ],
)
def test_check_layer_messages(bits, group, shape, message):
    assert message in check_layer("blocks.0.fc", torch.zeros(shape), bits, group)


@pytest.mark.parametrize("group, width", [(128, 64), (32, 80), (32, 172), (128, 576), (128, 960)])
def test_any_width_is_held_with_a_partial_last_group(group, width):
    assert check_layer("fc", torch.zeros(8, width), 4, group) is None


def test_check_layer_non_finite():
    w = torch.zeros(8, 64)
    w[3, 5] = float("nan")
    w[4, 1] = float("inf")
    assert check_layer("fc", w, 4, 32) == "fc: weight has 2 NaN/inf value(s) (shape [8, 64])"


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize(
    "shape, group_size", [((37, 64), 16), ((1100, 2048), 128), ((3, 48000), 16)]
)
def test_chunked_quantize_and_dequantize_give_the_same_bytes(bits, shape, group_size):
    """quantize_packed / dequantize work a chunk of rows at a time; the bytes and values must
    be those of the whole-layer formulas, across chunk boundaries (1100 rows = 3 chunks)."""
    torch.manual_seed(bits)
    w = torch.randn(*shape) * torch.rand(shape[0], 1)
    codes, scales, zeros = quantize(w, bits, group_size)
    qw, sc, zp = quantize_packed(w, bits, group_size)
    assert torch.equal(qw, pack_codes(codes, bits, group_size)) and torch.equal(
        zp, pack_zeros(zeros, bits)
    )
    assert torch.equal(sc, scales)
    n, k = shape
    want = (
        (codes.float().view(n, -1, group_size) - zeros.float()[..., None]) * scales[..., None]
    ).view(n, k)
    assert torch.equal(dequantize(qw, sc, zp, bits, group_size), want)
    assert row_chunk(1100, 2048, w.device) < 1100  # the chunked path really ran
