"""YOLOv8Detector: the head's layout is the criterion's, and decoding inverts known bin distributions."""

from __future__ import annotations

import torch

from lightning_losses.demo import YOLOv8Detector
from lightning_losses.presets import YOLOv8Criterion


def test_forward_layout_matches_the_criterion():
    model = YOLOv8Detector(num_classes=3, channels=16)
    outputs = model(torch.zeros(2, 3, 64, 64))
    assert [tuple(m.shape) for m in outputs] == [(2, 4 * 8 + 3, 8, 8), (2, 35, 4, 4), (2, 35, 2, 2)]
    assert isinstance(model.criterion, YOLOv8Criterion)
    assert model.criterion.reg_max == 8


def test_decode_inverts_peaked_bins():
    """Bins peaked at (1, 2, 3, 4) give distances of that many strides from each cell centre (hand reference)."""
    model = YOLOv8Detector(num_classes=2, channels=16)
    sizes, strides = [(4, 4), (2, 2), (1, 1)], (8, 16, 32)
    outputs = []
    for h, w in sizes:
        m = torch.zeros(1, 4 * 8 + 2, h, w)
        for side, bin_ in enumerate((1, 2, 3, 4)):
            m[:, side * 8 + bin_] = 60.0  # softmax ≈ one-hot
        m[:, 32] = 2.0
        outputs.append(m)
    boxes, scores = model.decode(outputs, (32, 32))
    expected = []
    for (h, w), s in zip(sizes, strides, strict=True):
        for y in range(h):
            for x in range(w):
                cx, cy = (x + 0.5) * s, (y + 0.5) * s
                expected.append([cx - 1 * s, cy - 2 * s, cx + 3 * s, cy + 4 * s])
    torch.testing.assert_close(boxes[0], torch.tensor(expected))
    torch.testing.assert_close(scores[0, :, 0], torch.full((21,), torch.tensor(2.0).sigmoid().item()))
    torch.testing.assert_close(scores[0, :, 1], torch.full((21,), 0.5))
