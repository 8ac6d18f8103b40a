import numpy as np
import pytest

from onnxq import qparams as qp
from onnxq.formats import BlockInt4Format


@pytest.mark.parametrize("block", [16, 32, 64, 128, 256])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("k,n", [(256, 3), (100, 7), (33, 1)])
def test_pack_dequantize_matches_qparams_reference(block, symmetric, k, n):
    rng = np.random.default_rng(k * n + block)
    w = rng.standard_normal((k, n)).astype(np.float32)
    fmt = BlockInt4Format(block, symmetric)
    packed = fmt.quantize(w)
    assert packed.packed.shape == fmt.packed_shape(k, n)
    assert packed.scales.shape == (n, -(-k // block))
    ref = qp.fake_quantize(w, fmt.choose_params(w))
    np.testing.assert_array_equal(packed.dequantize(), ref)


def test_nibble_order_low_first_and_tail_holds_zero_point():
    fmt = BlockInt4Format(16, symmetric=True)
    codes = np.arange(3, dtype=np.uint8).reshape(3, 1) + 1  # k=3 codes 1, 2, 3
    packed = fmt.pack_codes(codes, np.full((1, 1), 8, np.uint8))
    assert packed.shape == (1, 1, 8)
    assert packed[0, 0, 0] == 0x21  # k=0 low nibble, k=1 high nibble
    assert packed[0, 0, 1] == 0x83  # k=2 low, tail (zero point 8) high
    assert np.all(packed[0, 0, 2:] == 0x88)
    np.testing.assert_array_equal(fmt.unpack_codes(packed, 3), codes)


def test_zero_point_packing_roundtrip_odd_blocks():
    z = np.array([[1, 2, 3], [15, 0, 7]], dtype=np.uint8)
    packed = BlockInt4Format.pack_zero_points(z)
    assert packed.shape == (2, 2)
    assert packed[0, 0] == 0x21 and packed[0, 1] == 0x03
    np.testing.assert_array_equal(BlockInt4Format.unpack_zero_points(packed, 3), z)


def test_unsupported_block_size_message():
    with pytest.raises(ValueError, match="block_size 48 is not supported"):
        BlockInt4Format(48)
