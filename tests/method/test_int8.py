"""int8 logits (method/int8.py) checked on hand-made rows."""

import numpy as np
import torch

from kdstore.method.int8 import CLIP_RANGE, dequantize, quantize
from kdstore.method.sparse_targets import bytes_per_view


def _round_trip(rows):
    codes, scale, offset = quantize(np.asarray(rows, dtype=np.float32))
    return codes, scale, offset, dequantize(codes, scale, offset)


def test_a_row_spans_its_codes_from_min_to_max():
    # -20 .. 43.75 in steps of 1/4 (a range below CLIP_RANGE): every value is a code exactly
    row = np.arange(256, dtype=np.float32) / 4 - 20.0
    codes, scale, offset, back = _round_trip([row])
    assert codes.dtype == np.int8 and codes[0, 0] == -128 and codes[0, -1] == 127
    assert scale[0] == 0.25 and offset[0] == 12.0  # lo + 128 * scale = -20 + 32
    np.testing.assert_array_equal(back[0], row)


def test_rounding_error_is_at_most_half_a_step():
    row = np.array([0.0, 0.3, 1.0, 2.55], dtype=np.float32)  # step (2.55 - 0) / 255 = 0.01
    codes, scale, offset, back = _round_trip([row])
    np.testing.assert_allclose(scale, [0.01], rtol=1e-6)
    assert np.abs(back - row).max() <= 0.005 + 1e-6
    assert back[0, -1] == np.float32(2.55) or abs(back[0, -1] - 2.55) < 1e-6  # the max is kept


def test_a_constant_row_comes_back_exactly():
    codes, scale, offset, back = _round_trip([[3.25] * 5])
    assert scale[0] == 0.0 and (codes == -128).all() and offset[0] == 3.25
    np.testing.assert_array_equal(back, [[3.25] * 5])


def test_one_huge_logit_keeps_the_max_and_clips_the_rest():
    # 1000 against zeros: the zeros lie more than CLIP_RANGE below the max and are raised to
    # max - CLIP_RANGE, where softmax at tau = 1 still gives them e^-64 of the max's weight
    codes, scale, offset, back = _round_trip([[1000.0, 0.0, 0.0]])
    assert back[0, 0] == 1000.0 and np.allclose(back[0, 1:], 1000.0 - CLIP_RANGE)
    assert scale[0] == np.float32(CLIP_RANGE / 255)
    p = torch.softmax(torch.from_numpy(back), 1)
    assert p[0, 0] == 1.0 and p[0, 1] < 1e-27


def test_minus_inf_like_values_are_clipped_and_keep_the_others_fine():
    row = np.array([5.0, 3.0, -1e4, -65504.0, -np.inf], dtype=np.float32)
    codes, scale, offset, back = _round_trip([row])
    assert np.isfinite(back).all() and np.isfinite(scale).all()
    np.testing.assert_allclose(back[0, :2], [5.0, 3.0], atol=CLIP_RANGE / 510 + 1e-5)
    np.testing.assert_allclose(back[0, 2:], 5.0 - CLIP_RANGE, atol=1e-4)
    # softmax at tau = 4 of the kept pair barely moves: the clipped three add e^-16 each at most
    p_full = torch.softmax(torch.tensor(row[:2]) / 4, 0)
    p_back = torch.softmax(torch.from_numpy(back[0]) / 4, 0)[:2]
    assert (p_back - p_full).abs().max() < 1e-3


def test_ties_stay_ties_and_order_is_kept():
    row = np.array([1.0, 2.0, 2.0, -1.0, 2.0, 0.5], dtype=np.float32)
    codes, _, _, back = _round_trip([row])
    assert codes[0, 1] == codes[0, 2] == codes[0, 4] == 127
    assert (np.argsort(back[0], kind="stable") == np.argsort(row, kind="stable")).all()


def test_nan_or_plus_inf_give_a_nan_scale():
    for bad in (np.nan, np.inf):
        _, scale, _, _ = _round_trip([[1.0, bad, 0.0]])
        assert np.isnan(scale[0])


def test_rows_of_views_and_the_device_dequantise_to_the_same_bits():
    z = np.random.default_rng(0).normal(0, 4, (6, 3, 100)).astype(np.float32)  # (N, K, C) views
    codes, scale, offset = quantize(z)
    assert codes.shape == z.shape and scale.shape == offset.shape == (6, 3)
    assert np.array_equal(quantize(z[2, 1])[0], codes[2, 1])  # a row's codes depend on that row only
    host = dequantize(codes, scale, offset)
    torch_ = dequantize(torch.from_numpy(codes), torch.from_numpy(scale), torch.from_numpy(offset)).numpy()
    assert host.dtype == torch_.dtype == np.float32 and np.array_equal(host, torch_)
    assert np.abs(host - z).max() <= scale.max() / 2 + 1e-5


def test_bytes_of_int8_rows():
    assert bytes_per_view("logits", 0, 1000, "int8") == 1008  # 1,000 codes + a float32 scale and offset
    assert bytes_per_view("logits", 0, 1000, "int8") / bytes_per_view("logits", 0, 1000) <= 0.55
    assert bytes_per_view("topk", 10, 1000, "int8") == 10 * 5 + 4 + 8
