"""Demo models: output layouts of each preset, gradients, decoded predictions, a 1-epoch fit, checkpoint reload."""

from collections.abc import Callable

import lightning as L
import pytest
import torch
from torch import nn

from lightning_losses.boxes import PointGenerator, bbox2distance
from lightning_losses.demo import (
    ATSSDetector,
    FCOSDetector,
    GFLDetector,
    PIDNetSegmenter,
    RetinaNetDetector,
    SyntheticShapesDataModule,
    YOLOXDetector,
)
from lightning_losses.demo.dense import level_priors, select_detections
from lightning_losses.presets import FCOSCriterion, RetinaNetCriterion

pytestmark = [
    pytest.mark.filterwarnings("ignore:Attribute 'criterion' is an instance of `nn.Module`"),
    pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)` but the `self.trainer`"),
]

C, B, SIZE = 3, 2, 64
LEVELS = [(SIZE // s, SIZE // s) for s in (8, 16, 32)]
TINY = {"image_size": SIZE, "num_train": 4, "num_val": 2, "batch_size": B}


def _maps(*channels: int) -> list[list[tuple[int, ...]]]:
    return [[(B, ch, h, w) for h, w in LEVELS] for ch in channels]


# The criterion's documented input layout: per-level maps (B, channels, H_l, W_l).
LAYOUTS: dict[type, Callable[[], list[list[tuple[int, ...]]]]] = {
    RetinaNetDetector: lambda: _maps(9 * C, 9 * 4),
    FCOSDetector: lambda: _maps(C, 4, 1),
    ATSSDetector: lambda: _maps(C, 4, 1),
    GFLDetector: lambda: _maps(C, 4 * 9),
    YOLOXDetector: lambda: _maps(5 + C),
}
DETECTORS = list(LAYOUTS)


def _shapes(outputs: object) -> list[list[tuple[int, ...]]]:
    if isinstance(outputs, list):  # YOLOX: one list of fused maps
        return [[tuple(m.shape) for m in outputs]]
    return [[tuple(m.shape) for m in maps] for maps in outputs]


def _batch(task: str = "detection") -> tuple:
    dm = SyntheticShapesDataModule(task=task, **TINY)
    return next(iter(dm.train_dataloader()))


def _trainer(**kwargs: object) -> L.Trainer:
    return L.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def _assert_all_grads_finite(model: nn.Module) -> None:
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without a gradient: {missing}"
    for name, p in model.named_parameters():
        assert torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("cls", DETECTORS)
def test_forward_matches_the_criterion_layout(cls: type):
    torch.manual_seed(0)
    model = cls(num_classes=C, channels=16)
    outputs = model(torch.rand(B, 3, SIZE, SIZE))
    assert _shapes(outputs) == LAYOUTS[cls]()
    if cls is FCOSDetector:
        assert all((m > 0).all() for m in outputs[1])  # exp(): positive distances


@pytest.mark.parametrize("cls", DETECTORS)
def test_training_step_gives_a_finite_loss_and_a_gradient_for_every_parameter(cls: type):
    torch.manual_seed(0)
    model = cls(num_classes=C, channels=16)
    loss = model.training_step(_batch(), 0)
    assert loss.ndim == 0
    assert torch.isfinite(loss)
    loss.backward()
    _assert_all_grads_finite(model)


@pytest.mark.parametrize("cls", DETECTORS)
def test_predict_returns_well_formed_boxes_inside_the_image(cls: type):
    torch.manual_seed(0)
    model = cls(num_classes=C, channels=16, score_thr=0.0, max_det=20).eval()
    detections = model.predict(torch.rand(B, 3, SIZE, SIZE))
    assert len(detections) == B
    for det in detections:
        boxes, scores, labels = det["boxes"], det["scores"], det["labels"]
        assert 0 < len(boxes) <= 20
        assert boxes.shape == (len(scores), 4)
        assert labels.shape == scores.shape
        assert labels.dtype == torch.int64
        assert labels.min() >= 0
        assert labels.max() < C
        assert (scores >= 0).all()
        assert (scores <= 1).all()
        assert (scores[:-1] >= scores[1:]).all()
        assert (boxes >= 0).all()
        assert (boxes <= SIZE).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()


@pytest.mark.parametrize("cls", DETECTORS)
def test_one_epoch_fit_logs_losses_and_map(cls: type):
    torch.manual_seed(0)
    model = cls(num_classes=C, channels=16)
    trainer = _trainer()
    trainer.fit(model, SyntheticShapesDataModule(**TINY))
    metrics = trainer.callback_metrics
    terms = [k for k in metrics if k.startswith("val/loss_")]
    assert {"val/loss", "val/map_50", "val/map", "train/loss_epoch"} <= set(metrics)
    assert terms, "no per-term validation loss was logged"
    assert torch.isfinite(metrics["val/loss"])
    assert 0 <= float(metrics["val/map_50"]) <= 1


def test_pidnet_outputs_training_step_and_predict():
    torch.manual_seed(0)
    model = PIDNetSegmenter(num_classes=C + 1, channels=16)
    images, masks = _batch("segmentation")
    aux, logits, boundary = model(images)
    assert aux.shape == logits.shape == (B, C + 1, SIZE // 4, SIZE // 4)
    assert boundary.shape == (B, 1, SIZE // 4, SIZE // 4)
    loss = model.training_step((images, masks), 0)
    assert torch.isfinite(loss)
    loss.backward()
    _assert_all_grads_finite(model)
    classes = model.eval().predict(images)
    assert classes.shape == (B, SIZE, SIZE)
    assert classes.dtype == torch.int64
    assert classes.min() >= 0
    assert classes.max() <= C


def test_pidnet_one_epoch_fit_logs_losses_and_miou():
    torch.manual_seed(0)
    model = PIDNetSegmenter(num_classes=C + 1, channels=16)
    trainer = _trainer()
    trainer.fit(model, SyntheticShapesDataModule(task="segmentation", **TINY))
    metrics = trainer.callback_metrics
    assert {"val/loss", "val/loss_sem", "val/loss_boundary", "val/miou"} <= set(metrics)
    assert 0 <= float(metrics["val/miou"]) <= 1


def test_checkpoint_rebuilds_a_custom_criterion_from_hparams(tmp_path):
    torch.manual_seed(0)
    criterion = RetinaNetCriterion(C, strides=(8, 16, 32), octave_base_scale=3.0)
    model = RetinaNetDetector(num_classes=C, criterion=criterion, channels=16)
    assert model.hparams["criterion"] is criterion
    assert RetinaNetDetector(num_classes=C, channels=16).hparams["criterion"] is None  # the default stays implicit
    trainer = _trainer()
    trainer.fit(model, SyntheticShapesDataModule(**TINY))
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    reloaded = RetinaNetDetector.load_from_checkpoint(path, weights_only=False)
    assert reloaded.criterion.anchor_generator.scales[0] == 3.0
    images = torch.rand(1, 3, SIZE, SIZE)
    for a, b in zip(model.eval()(images)[0], reloaded.eval()(images)[0], strict=True):
        assert torch.equal(a, b)


def test_rejects_a_criterion_that_does_not_fit_the_model():
    with pytest.raises(ValueError, match="strides"):
        RetinaNetDetector(criterion=RetinaNetCriterion(C))
    with pytest.raises(ValueError, match="num_classes"):
        FCOSDetector(num_classes=C, criterion=FCOSCriterion(2, strides=(8, 16, 32)))


def test_test_and_predict_loops():
    torch.manual_seed(0)
    model = RetinaNetDetector(num_classes=C, channels=16, score_thr=0.0, max_det=5)
    data = SyntheticShapesDataModule(**TINY)
    trainer = _trainer()
    trainer.test(model, data, verbose=False)
    assert {"test/loss", "test/loss_cls", "test/map_50", "test/map"} <= set(trainer.callback_metrics)
    batches = trainer.predict(model, dataloaders=data.val_dataloader())
    assert len(batches) == 1
    assert len(batches[0]) == B
    assert all(d["boxes"].shape[1] == 4 and len(d["boxes"]) <= 5 for d in batches[0])


GT = torch.tensor([12.0, 20.0, 40.0, 52.0])


def _to_maps(flat: torch.Tensor) -> list[torch.Tensor]:
    """Inverse of ``flatten_levels``: rows ``(level, y, x, a)`` of ``(B, N, K)`` to maps ``(B, A·K, H_l, W_l)``."""
    per_cell = flat.shape[1] // sum(h * w for h, w in LEVELS)
    maps, start = [], 0
    for h, w in LEVELS:
        chunk = flat[:, start : start + h * w * per_cell]
        maps.append(chunk.reshape(B, h, w, -1).permute(0, 3, 1, 2))
        start += h * w * per_cell
    return maps


def _zeros(num_priors: int, channels: int) -> list[torch.Tensor]:
    return _to_maps(torch.zeros(B, num_priors, channels))


@pytest.mark.parametrize("cls", [RetinaNetDetector, ATSSDetector])
def test_anchor_decoding_inverts_the_criterion_encoding(cls: type):
    """Reference: the criterion's own ``coder.encode`` of one box from every anchor."""
    model = cls(num_classes=C, channels=16)
    anchors = torch.cat(model.criterion.anchor_generator.grid_priors(LEVELS))
    deltas = model.criterion.coder.encode(anchors, GT.expand_as(anchors))
    bbox_preds = _to_maps(deltas.expand(B, -1, -1))
    outputs = (_zeros(len(anchors), C), bbox_preds)
    if cls is ATSSDetector:
        outputs = (*outputs, _zeros(len(anchors), 1))
    boxes, scores = model.decode(outputs, (SIZE, SIZE))
    assert scores.shape == (B, len(anchors), C)
    torch.testing.assert_close(boxes, GT.expand_as(boxes), atol=1e-3, rtol=0)


def test_point_decoding_inverts_the_criterion_encoding():
    """Reference: ``bbox2distance`` of one box from FCOS's points."""
    model = FCOSDetector(num_classes=C, channels=16)
    points = torch.cat(model.criterion.point_generator.grid_priors(LEVELS))
    distances = bbox2distance(points, GT.expand(len(points), 4))
    outputs = (_zeros(len(points), C), _to_maps(distances.expand(B, -1, -1)), _zeros(len(points), 1))
    boxes, _ = model.decode(outputs, (SIZE, SIZE))
    torch.testing.assert_close(boxes, GT.expand_as(boxes), atol=1e-4, rtol=0)


def test_distribution_decoding_recovers_distances_in_stride_units():
    """Reference: two-bin distributions whose expectation is the anchor-center distance in strides."""
    model = GFLDetector(num_classes=C, channels=16)
    anchors = torch.cat(model.criterion.anchor_generator.grid_priors(LEVELS))
    stride = torch.repeat_interleave(torch.tensor([8.0, 16.0, 32.0]), torch.tensor([h * w for h, w in LEVELS]))
    centers = (anchors[:, :2] + anchors[:, 2:]) / 2
    distances = bbox2distance(centers, GT.expand(len(anchors), 4)) / stride[:, None]
    representable = ((distances >= 0) & (distances <= model.reg_max)).all(dim=1)
    assert representable.any()
    d = distances.clamp(0, model.reg_max)
    low = d.floor().clamp(max=model.reg_max - 1)
    probs = torch.zeros(len(anchors), 4, model.reg_max + 1)
    probs.scatter_(2, low.long()[..., None], (1 - (d - low))[..., None])
    probs.scatter_add_(2, low.long()[..., None] + 1, (d - low)[..., None])
    logits = probs.clamp(min=1e-12).log().reshape(len(anchors), -1)
    outputs = (_zeros(len(anchors), C), _to_maps(logits.expand(B, -1, -1)))
    boxes, _ = model.decode(outputs, (SIZE, SIZE))
    torch.testing.assert_close(boxes[:, representable], GT.expand(B, int(representable.sum()), 4), atol=1e-3, rtol=0)


def test_yolox_decoding_inverts_the_criterion_l1_target():
    """Reference: YOLOXCriterion's L1 target ``(c/s - g, log(wh/s))`` of one box at every cell."""
    model = YOLOXDetector(num_classes=C, channels=16)
    stride = torch.repeat_interleave(torch.tensor([8.0, 16.0, 32.0]), torch.tensor([h * w for h, w in LEVELS]))
    cells = torch.cat([torch.stack(torch.meshgrid(torch.arange(w), torch.arange(h), indexing="xy"), -1).reshape(-1, 2)
                       for h, w in LEVELS]).float()  # fmt: skip
    center, size = (GT[:2] + GT[2:]) / 2, GT[2:] - GT[:2]
    raw = torch.cat([center / stride[:, None] - cells, torch.log(size / stride[:, None])], dim=1)
    fused = torch.cat([raw, torch.zeros(len(raw), 1 + C)], dim=1)
    boxes, scores = model.decode(_to_maps(fused.expand(B, -1, -1)), (SIZE, SIZE))
    torch.testing.assert_close(boxes, GT.expand_as(boxes), atol=1e-4, rtol=0)
    torch.testing.assert_close(scores, torch.full_like(scores, 0.25))


# A non-square 48 × 80 image: ceil(H / s) × ceil(W / s) cells per level.
WIDE_LEVELS = [(6, 10), (3, 5), (2, 3)]


def _cell_centres(offset: float) -> torch.Tensor:
    """Reference: ``((x + offset)·s, (y + offset)·s)`` per level, rows ``y``-major, then ``x``."""
    rows = []
    for (h, w), s in zip(WIDE_LEVELS, (8, 16, 32), strict=True):
        rows += [[(x + offset) * s, (y + offset) * s] for y in range(h) for x in range(w)]
    return torch.tensor(rows)


@pytest.mark.parametrize("offset", [0.0, 0.5])  # YOLOX's grid (corners), FCOS / YOLOv8 points (centres)
def test_level_priors_of_a_non_square_image_are_row_major_cells_per_level(offset: float):
    maps = [torch.zeros(B, 5, h, w) for h, w in WIDE_LEVELS]
    sizes, points = level_priors(maps, PointGenerator((8, 16, 32), offset=offset))
    assert sizes == WIDE_LEVELS
    assert points.dtype == torch.float32
    torch.testing.assert_close(points, _cell_centres(offset), rtol=0, atol=0)


def test_level_priors_of_a_non_square_image_put_each_cells_anchors_together():
    """RetinaNet's 9 anchors per cell are centred on the cell's corner ``(x·s, y·s)``, cell by cell."""
    model = RetinaNetDetector(num_classes=C, channels=16)
    maps = [torch.zeros(B, 9 * C, h, w) for h, w in WIDE_LEVELS]
    sizes, anchors = level_priors(maps, model.criterion.anchor_generator)
    assert sizes == WIDE_LEVELS
    centres = ((anchors[:, :2] + anchors[:, 2:]) / 2).reshape(-1, 9, 2)
    torch.testing.assert_close(centres, _cell_centres(0.0)[:, None].expand(-1, 9, -1), rtol=0, atol=1e-4)


def test_level_priors_rejects_what_is_not_a_list_of_level_maps():
    generator = PointGenerator((8, 16, 32))
    with pytest.raises(TypeError, match="`maps`"):
        level_priors(torch.zeros(3, B, 5, 4, 4), generator)
    with pytest.raises(ValueError, match="`maps`"):
        level_priors([], generator)


def test_select_detections_thresholds_clips_and_suppresses_per_class():
    """Hand-worked: two overlapping boxes of class 0 (one suppressed), the same box as class 1 kept, clipping."""
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [50.0, 50.0, 80.0, 70.0]]])
    scores = torch.tensor([[[0.9, 0.0], [0.8, 0.7], [0.01, 0.3]]])
    (det,) = select_detections(boxes, scores, (64, 64), score_thr=0.05, nms_iou=0.5, max_det=10)
    assert det["labels"].tolist() == [0, 1, 1]
    assert det["scores"].tolist() == pytest.approx([0.9, 0.7, 0.3])
    assert det["boxes"].tolist() == [[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 64, 64]]
