"""pad_targets: hand-worked padding of per-image dicts, and the boundary checks that name the argument."""

from __future__ import annotations

import pytest
import torch

from lightning_losses.boxes import pad_targets


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
