"""Prior generators: MMDetection 3.x hand values (MMDetection 3.x), grid order and the valid-flag rule."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_losses.boxes import AnchorGenerator, PointGenerator, flatten_levels, level_indices, valid_flags

RETINA_STRIDES = [8, 16, 32, 64, 128]


def retinanet_generator() -> AnchorGenerator:
    return AnchorGenerator(strides=RETINA_STRIDES, ratios=[0.5, 1.0, 2.0], octave_base_scale=4, scales_per_octave=3)


def test_retinanet_stride8_base_anchors_equal_mmdet_hand_values() -> None:
    """MMDetection hand values for stride 8 (float32): a0, a3, a4, a5, a8 and the ratio-major, scale-minor order."""
    base = retinanet_generator().base_anchors[0]
    assert base.shape == (9, 4)
    assert base.dtype == torch.float32
    expected = {
        0: [-22.627417, -11.313708, 22.627417, 11.313708],  # r=0.5, s=4
        3: [-16.0, -16.0, 16.0, 16.0],  # r=1, s=4
        4: [-20.158737, -20.158737, 20.158737, 20.158737],  # r=1, s=4·2^(1/3)
        5: [-25.398417, -25.398417, 25.398417, 25.398417],  # r=1, s=4·2^(2/3)
        8: [-17.959393, -35.918785, 17.959393, 35.918785],  # r=2, s=4·2^(2/3)
    }
    for a, values in expected.items():
        torch.testing.assert_close(base[a], torch.tensor(values), rtol=0, atol=1e-5)


def test_retinanet_base_anchors_closed_form_every_level() -> None:
    """Closed form: w = s·k/√r, h = s·k·√r, centred at 0, a = ratio_idx·3 + scale_idx, for every stride."""
    gen = retinanet_generator()
    for stride, base in zip(RETINA_STRIDES, gen.base_anchors, strict=True):
        for ri, r in enumerate([0.5, 1.0, 2.0]):
            for si in range(3):
                k = 4 * 2 ** (si / 3)
                w, h = stride * k / math.sqrt(r), stride * k * math.sqrt(r)
                want = torch.tensor([-w / 2, -h / 2, w / 2, h / 2])
                torch.testing.assert_close(base[ri * 3 + si], want, rtol=1e-6, atol=1e-4)


def test_anchor_grid_order_is_y_x_anchor() -> None:
    """Independent loop: row ((y·W + x)·A + a) is base[a] + (x·s, y·s, x·s, y·s), levels concatenated in order."""
    gen = retinanet_generator()
    sizes = [(3, 5), (2, 3), (1, 2), (1, 1), (1, 1)]
    priors = gen.grid_priors(sizes)
    assert len(priors) == 5
    for level, ((height, width), stride) in enumerate(zip(sizes, RETINA_STRIDES, strict=True)):
        anchors = priors[level]
        assert anchors.shape == (height * width * 9, 4)
        assert anchors.dtype == torch.float32
        base = gen.base_anchors[level]
        for y in range(height):
            for x in range(width):
                for a in range(9):
                    shift = torch.tensor([x * stride, y * stride, x * stride, y * stride], dtype=torch.float32)
                    torch.testing.assert_close(anchors[(y * width + x) * 9 + a], base[a] + shift, rtol=0, atol=0)


def test_atss_gfl_one_square_anchor_of_side_8s() -> None:
    """MMDetection ATSS/GFL config: ratio 1, octave_base_scale 8, one scale → [-4s, -4s, 4s, 4s] + (x·s, y·s)."""
    gen = AnchorGenerator(strides=RETINA_STRIDES, ratios=[1.0], octave_base_scale=8, scales_per_octave=1)
    assert gen.num_base_priors == 1
    priors = gen.grid_priors([(2, 3), (2, 2), (1, 1), (1, 1), (1, 1)])
    for stride, level in zip(RETINA_STRIDES, priors, strict=True):
        torch.testing.assert_close(level[0], torch.tensor([-4.0, -4.0, 4.0, 4.0]) * stride)
    # stride 8, 2×3 map: row 4 is (y=1, x=1) → center (8, 8)
    torch.testing.assert_close(priors[0][4], torch.tensor([-24.0, -24.0, 40.0, 40.0]))
    torch.testing.assert_close(priors[0][2], torch.tensor([-16.0, -32.0, 48.0, 32.0]))


def test_anchor_center_offset_shifts_base_center() -> None:
    """MMDetection center_offset: base center = offset · base_size (0.5 → the cell center)."""
    gen = AnchorGenerator(strides=[16], ratios=[1.0], scales=[2.0], center_offset=0.5)
    torch.testing.assert_close(
        gen.grid_priors([(1, 2)])[0], torch.tensor([[-8.0, -8.0, 24.0, 24.0], [8.0, -8.0, 40.0, 24.0]])
    )


def test_anchor_generator_argument_checks() -> None:
    """Boundary checks: scales xor octave_base_scale; one size per level; feature maps per stride."""
    with pytest.raises(ValueError, match="scales"):
        AnchorGenerator(strides=[8])
    with pytest.raises(ValueError, match="scales"):
        AnchorGenerator(strides=[8], scales=[1.0], octave_base_scale=4)
    with pytest.raises(ValueError, match="base_sizes"):
        AnchorGenerator(strides=[8, 16], scales=[1.0], base_sizes=[8])
    with pytest.raises(ValueError, match="center_offset"):
        AnchorGenerator(strides=[8], scales=[1.0], center_offset=1.0)
    with pytest.raises(ValueError, match="strides"):
        retinanet_generator().grid_priors([(2, 2)])


def test_point_generator_offset_half_positions() -> None:
    """MMDetection MlvlPointGenerator(offset=0.5): ((x + 0.5)·s, (y + 0.5)·s), row y·W + x."""
    points = PointGenerator(strides=[8, 16]).grid_priors([(2, 3), (1, 2)])
    expected0 = torch.tensor([[4.0, 4.0], [12.0, 4.0], [20.0, 4.0], [4.0, 12.0], [12.0, 12.0], [20.0, 12.0]])
    torch.testing.assert_close(points[0], expected0)
    torch.testing.assert_close(points[1], torch.tensor([[8.0, 8.0], [24.0, 8.0]]))
    # offset 0 (YOLOX decoding): cell corners
    corners = PointGenerator(strides=[32], offset=0.0).grid_priors([(2, 2)])[0]
    torch.testing.assert_close(corners, torch.tensor([[0.0, 0.0], [32.0, 0.0], [0.0, 32.0], [32.0, 32.0]]))
    with pytest.raises(ValueError, match="strides"):
        PointGenerator(strides=[8, 16]).grid_priors([(2, 2)])


def reference_valid_flags(featmap_sizes, strides, num_base_priors, pad_shape) -> torch.Tensor:
    """Literal MMDetection rule for one image: cell valid iff y < min(ceil(H/s), H_l) and x < min(ceil(W/s), W_l)."""
    flags = []
    for (feat_h, feat_w), stride in zip(featmap_sizes, strides, strict=True):
        valid_h = min(math.ceil(pad_shape[0] / stride), feat_h)
        valid_w = min(math.ceil(pad_shape[1] / stride), feat_w)
        for y in range(feat_h):
            for x in range(feat_w):
                flags.extend([y < valid_h and x < valid_w] * num_base_priors)
    return torch.tensor(flags)


def test_valid_flags_match_ceil_pad_over_stride_rule() -> None:
    """Literal per-image loop of the ceil(pad / stride) rule, clamped to the map size, repeated per anchor."""
    strides = [8, 16, 32]
    featmap_sizes = [(16, 16), (8, 8), (4, 4)]  # batch padded to 128 × 128
    pad_shapes = torch.tensor([[100, 60], [128, 128], [33, 7], [400, 400]])
    flags = valid_flags(featmap_sizes, strides, 3, pad_shapes)
    assert flags.shape == (4, (256 + 64 + 16) * 3)
    assert flags.dtype == torch.bool
    for i, shape in enumerate(pad_shapes.tolist()):
        torch.testing.assert_close(flags[i], reference_valid_flags(featmap_sizes, strides, 3, shape))
    # hand count: image 0 at stride 8 has 13 × 8 valid cells; image 2 at stride 32 has 2 × 1
    assert int(flags[0, : 256 * 3].sum()) == 13 * 8 * 3
    assert int(flags[2, (256 + 64) * 3 :].sum()) == 2 * 1 * 3
    assert bool(flags[1].all())
    assert bool(flags[3].all())


def test_level_indices() -> None:
    """Hand-worked: counts (3, 0, 2) → [0, 0, 0, 2, 2]."""
    assert level_indices([3, 0, 2]).tolist() == [0, 0, 0, 2, 2]
    assert level_indices([1, 1]).dtype == torch.int64


def test_flatten_levels_rows_follow_the_prior_order() -> None:
    """Hand-worked: channel ``a·K + k`` of cell ``(y, x)`` becomes row ``(y·W + x)·A + a``, levels concatenated;
    a 3-D ``(B, N, K)`` level is kept as it is."""
    level0 = torch.arange(2 * 2 * 2 * 3, dtype=torch.float32).reshape(1, 2 * 2, 2, 3)  # A=2, K=2, H=2, W=3
    level1 = torch.full((1, 4, 2), -1.0)
    flat = flatten_levels([level0, level1], 2, "maps")
    assert flat.shape == (1, 2 * 3 * 2 + 4, 2)
    for y in range(2):
        for x in range(3):
            for a in range(2):
                row = (y * 3 + x) * 2 + a
                assert flat[0, row].tolist() == [level0[0, a * 2 + k, y, x].item() for k in range(2)]
    assert bool((flat[0, 12:] == -1).all())


def test_flatten_levels_errors_name_the_argument_and_level() -> None:
    with pytest.raises(TypeError, match=r"`cls_scores\[0\]` must be a tensor"):
        flatten_levels([[1.0]], 2, "cls_scores")
    with pytest.raises(ValueError, match=r"`cls_scores\[1\]` has 3 channels, not a multiple of 2"):
        flatten_levels([torch.zeros(1, 2, 1, 1), torch.zeros(1, 3, 1, 1)], 2, "cls_scores")
    with pytest.raises(ValueError, match=r"`bbox_preds\[0\]` must be \(B, A·4, H, W\) or \(B, N, 4\)"):
        flatten_levels([torch.zeros(1, 5, 3)], 4, "bbox_preds")
