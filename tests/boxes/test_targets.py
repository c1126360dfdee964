"""pad_targets: hand-worked padding of per-image dicts, and the boundary checks that name the argument;
gather_boxes and the FCOS centerness target by hand."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_losses.boxes import centerness_target, gather_boxes, pad_targets


def target(boxes: list[list[float]], labels: list[int]) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels).long()}


def test_pad_targets_hand_worked_shapes_mask_and_padding() -> None:
    """Hand-worked: counts (3, 0, 1) → (3, 3) padded; real rows first, padding zero boxes with label -1."""
    t0 = target([[0, 0, 4, 4], [1, 2, 3, 4], [5, 5, 9, 9]], [2, 0, 7])
    t1 = target([], [])
    t2 = target([[10, 10, 20, 30]], [1])
    out = pad_targets([t0, t1, t2])
    assert out.boxes.shape == (3, 3, 4)
    assert out.labels.shape == (3, 3)
    assert out.mask.shape == (3, 3)
    assert out.boxes.dtype == torch.float32
    assert out.labels.dtype == torch.int64
    assert out.mask.dtype == torch.bool
    assert out.mask.tolist() == [[True, True, True], [False, False, False], [True, False, False]]
    assert out.labels.tolist() == [[2, 0, 7], [-1, -1, -1], [1, -1, -1]]
    torch.testing.assert_close(out.boxes[0], t0["boxes"])
    torch.testing.assert_close(out.boxes[1], torch.zeros(3, 4))
    torch.testing.assert_close(out.boxes[2], torch.tensor([[10.0, 10, 20, 30], [0, 0, 0, 0], [0, 0, 0, 0]]))


def test_pad_targets_keeps_at_least_one_column() -> None:
    """Hand-worked: a batch without any box pads to (B, 1) with the mask all False and label -1."""
    out = pad_targets([target([], []), target([], [])])
    assert out.boxes.shape == (2, 1, 4)
    assert out.mask.tolist() == [[False], [False]]
    assert out.labels.tolist() == [[-1], [-1]]


def test_pad_targets_casts_integer_boxes_and_int32_labels() -> None:
    """Hand-worked: int boxes become float32, int32 labels int64; the device argument is honoured."""
    out = pad_targets(
        [{"boxes": torch.tensor([[1, 2, 3, 4]]), "labels": torch.tensor([5], dtype=torch.int32)}], device="cpu"
    )
    assert out.boxes.dtype == torch.float32
    assert out.labels.dtype == torch.int64
    assert out.boxes.tolist() == [[[1.0, 2.0, 3.0, 4.0]]]
    assert out.labels.tolist() == [[5]]
    assert out.boxes.device.type == "cpu"


@pytest.mark.parametrize(
    ("targets", "error", "match"),
    [
        ({"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}, TypeError, r"`targets`"),
        (torch.zeros(2, 4), TypeError, r"`targets`"),
        ([], ValueError, r"`targets`"),
        ([{"boxes": torch.zeros(1, 4)}], TypeError, r"`targets\[0\]`"),
        ([target([], []), "boxes"], TypeError, r"`targets\[1\]`"),
        ([{"boxes": torch.zeros(4), "labels": torch.zeros(1).long()}], ValueError, r"`targets\[0\]\['boxes'\]`"),
        ([{"boxes": torch.zeros(2, 5), "labels": torch.zeros(2).long()}], ValueError, r"`targets\[0\]\['boxes'\]`"),
        (
            [target([], []), {"boxes": torch.zeros(2, 4), "labels": torch.zeros(3).long()}],
            ValueError,
            r"`targets\[1\]\['labels'\]`",
        ),
        ([{"boxes": torch.zeros(2, 4), "labels": torch.zeros(2, 1).long()}], ValueError, r"`targets\[0\]\['labels'\]`"),
        ([{"boxes": torch.zeros(2, 4), "labels": torch.zeros(2)}], TypeError, r"`targets\[0\]\['labels'\]`.*integer"),
    ],
)
def test_pad_targets_rejects_bad_input_naming_the_argument(targets: object, error: type, match: str) -> None:
    """Boundary checks: wrong container, missing key, bad shape or float labels raise naming the argument."""
    with pytest.raises(error, match=match):
        pad_targets(targets)  # type: ignore[arg-type]


def test_pad_targets_rejects_non_tensor_boxes() -> None:
    """Boundary check: a list of boxes is refused with the argument's name (TypeError or ValueError)."""
    with pytest.raises((TypeError, ValueError), match=r"`targets\[0\]\['boxes'\]`"):
        pad_targets([{"boxes": [[0.0, 0.0, 1.0, 1.0]], "labels": torch.zeros(1).long()}])


def test_gather_boxes_hand_worked_rows_per_image() -> None:
    """Hand-worked: each image gathers its own rows; any row width (boxes, or wider rows)."""
    boxes = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(2, 3, 5)
    index = torch.tensor([[2, 0, 2, 1], [1, 1, 0, 2]])
    out = gather_boxes(boxes, index)
    assert out.shape == (2, 4, 5)
    for b in range(2):
        for p in range(4):
            assert out[b, p].tolist() == boxes[b, index[b, p]].tolist()


def test_centerness_target_closed_form() -> None:
    """FCOS paper: sqrt(min(l, r)/max(l, r) · min(t, b)/max(t, b)); 1 at the center, symmetric in l↔r, t↔b."""
    distances = torch.tensor([[1.0, 2.0, 4.0, 2.0], [4.0, 2.0, 1.0, 2.0], [3.0, 3.0, 3.0, 3.0], [1.0, 1.0, 9.0, 4.0]])
    want = torch.tensor([math.sqrt(1 / 4), math.sqrt(1 / 4), 1.0, math.sqrt(1 / 9 * 1 / 4)])
    torch.testing.assert_close(centerness_target(distances), want)
    assert centerness_target(torch.ones(2, 3, 4)).shape == (2, 3)
