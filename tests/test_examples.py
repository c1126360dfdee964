"""Every script in examples/ runs as `python examples/X.py` from a foreign directory and prints what it claims.

References: each example's own printed pairs (functional vs closed form, compute() vs the mean of the
returned values, per-rank states vs the synced epoch value), checked here rather than trusted.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parents[1] / "examples"
NUMBER = r"(-?\d+\.\d+)"


def run_example(name: str, tmp_path: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"}
    env.update(WANDB_MODE="disabled", WANDB_SILENT="true", OMP_NUM_THREADS="1", WANDB_DIR=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def values(pattern: str, text: str) -> list[tuple[float, ...]]:
    """The numbers captured by ``pattern``, one tuple per matching line."""
    found = re.findall(pattern, text)
    assert found, f"no line matches {pattern!r} in:\n{text}"
    return [tuple(map(float, match if isinstance(match, tuple) else (match,))) for match in found]


def test_byo_detector_logs_every_term_for_two_epochs(tmp_path):
    """Reference: the mixin's contract: {stage}/{term} per term, {stage}/loss their sum, train epoch means."""
    out = run_example("byo_detector.py", tmp_path)
    assert "loss_bbox=L1Loss(" in out  # the replaced term
    train = rf"train/loss_cls_epoch={NUMBER} train/loss_bbox_epoch={NUMBER} train/loss_epoch={NUMBER}"
    val = rf"val/loss_cls={NUMBER} val/loss_bbox={NUMBER} val/loss={NUMBER}"
    epochs = values(rf"epoch (\d): {train} \| {val}", out)
    assert [e[0] for e in epochs] == [0, 1], out
    for _, cls, box, total, val_cls, val_box, val_total in epochs:
        assert all(math.isfinite(v) and v > 0 for v in (cls, box, val_cls, val_box))
        assert total == pytest.approx(cls + box, abs=2e-4)  # the mean of sums is the sum of means
        assert val_total == pytest.approx(val_cls + val_box, abs=2e-4)
    logged = out.split("logged keys:")[1]
    for key in ("train/loss_cls_epoch", "train/loss_bbox_step", "train/loss_epoch", "val/loss_cls", "val/loss"):
        assert key in logged


def test_functional_matches_closed_form_and_module_running_mean(tmp_path):
    """Reference: the closed-form focal loss and the plain mean of the values each module returned."""
    out = run_example("functional_and_metric.py", tmp_path)
    assert float(re.search(r"max \|diff\| vs closed form (\S+)", out).group(1)) < 1e-5
    pairs = values(rf"functional={NUMBER} closed form={NUMBER}", out)
    assert len(pairs) == 3  # mean, weight, avg_factor
    module = values(rf"mean={NUMBER} sum \(reduction_override\)={NUMBER} vs functional sum={NUMBER}", out)
    (module_mean, module_sum, functional_sum), functional_mean = module[0], pairs[0][0]
    pairs += [(module_mean, functional_mean), (module_sum, functional_sum)]
    pairs += values(rf"GIoULoss module={NUMBER} functional giou_loss={NUMBER}", out)
    for got, want in pairs:
        assert got == pytest.approx(want, rel=1e-5, abs=2e-6)
    epochs = values(rf"loss_cls.compute\(\)={NUMBER} \(mean of \d+ returned values {NUMBER}\)", out)
    assert len(epochs) == 4
    for computed, by_hand in epochs:
        assert computed == pytest.approx(by_hand, abs=2e-6)
    assert epochs[-1][0] < epochs[0][0]  # it trains
    assert "after reset(): loss_cls holds 0 calls" in out


def test_config_dialects_build_equal_losses_and_criteria(tmp_path):
    """Reference: build_loss / to_config equality, NetsPresso's weighted total and l1_activate_epoch, CLI configs."""
    out = run_example("config_dialects.py", tmp_path)
    assert "class_path FocalLoss  -> FocalLoss(gamma=2.0, alpha=0.25" in out
    assert re.search(r"class_path FocalLoss .* equal: True", out)
    assert re.search(r"criterion: focal_loss -> SigmoidFocalLoss\(.*equal to its class_path form: True", out)
    same = values(rf"same value on one-hot targets: {NUMBER}, {NUMBER}, {NUMBER}", out)[0]
    assert same[0] == same[1] == same[2]
    total, by_hand = values(rf"loss={NUMBER} \(= ce \+ 2\.0 \* focal: {NUMBER}\)", out)[0]
    assert total == pytest.approx(by_hand, abs=2e-4)
    l1 = dict(values(rf"yolox_loss, epoch (\d): .*loss_l1={NUMBER}", out))
    assert l1[1] == 0  # before l1_activate_epoch=2
    assert l1[2] > 0
    assert "CLI: visdet dialect criterion == retinanet.yaml criterion: True" in out
    visdet = re.search(r"visdet: (.*)", out).group(1)
    assert visdet == re.search(r"retinanet\.yaml: (.*)", out).group(1)


def test_multi_gpu_epoch_values_are_the_exact_global_means(tmp_path):
    """Reference: the per-rank metric states, gathered by the example: Σ sums / Σ counts == the synced value."""
    out = run_example("multi_gpu.py", tmp_path)
    assert re.search(r"^2 processes \(ddp", out, re.MULTILINE) or "gpu" in out, out
    for term in ("loss_cls", "loss_bbox"):
        line = re.search(rf"train/{term}: (.*) -> global mean {NUMBER}", out)
        ranks = [float(v) for v in re.findall(rf"rank \d {NUMBER}", line.group(1))]
        assert len(ranks) >= 2
        assert len(set(ranks)) > 1  # the ranks read different shards
        synced = float(re.search(rf"train/{term}_epoch = {NUMBER}", out).group(1))
        assert synced == pytest.approx(float(line.group(2)), abs=2e-4)
    assert math.isfinite(float(re.search(rf"val/loss = {NUMBER}", out).group(1)))


def test_torchvision_detectors_match_torchvisions_loss_and_train(tmp_path):
    """Reference: torchvision's own compute_loss on the same head outputs (printed beside the criterion's);
    FCOS's box term is centerness-weighted here (documented), so only its other terms must agree."""
    out = run_example("torchvision_detector.py", tmp_path)
    pairs = values(rf"  loss_\w+={NUMBER} torchvision \w+={NUMBER}", out)
    names = re.findall(r"  (loss_\w+)=", out)
    assert names == ["loss_cls", "loss_bbox", "loss_cls", "loss_bbox", "loss_centerness"]
    for index, (ours, theirs) in enumerate(pairs):
        if index != 3:  # FCOS loss_bbox
            assert ours == pytest.approx(theirs, rel=1e-5, abs=2e-6)
    steps = re.findall(r"after 2 steps: (.*)", out)
    assert len(steps) == 2
    for line, terms in zip(
        steps, (["loss_cls", "loss_bbox"], ["loss_cls", "loss_bbox", "loss_centerness"]), strict=True
    ):
        logged = dict(item.split("=") for item in line.split())
        assert "val/map_50" in logged
        total = sum(float(logged[f"train/{term}_epoch"]) for term in terms)
        assert float(logged["train/loss_epoch"]) == pytest.approx(total, abs=2e-4)


def test_coco_fit_maps_categories_and_writes_results_with_the_users_ids(tmp_path):
    """Reference: the data set the example writes (ids 7, 3, 12; one crowd region and one empty box per split;
    8 validation images) and its settings (score_thr=0, max_det=5: five entries per image)."""
    out = run_example("coco_fit.py", tmp_path)
    assert "classes: 3 ['ellipse', 'rectangle', 'triangle'], label -> category id [3, 7, 12]" in out
    assert "'train': {'crowd': 1, 'degenerate': 1}" in out
    assert re.search(r"after 6 steps: .*val/map=\d", out)
    found = re.search(r"predictions.json: (\d+) entries for images \[([\d, ]+)\], category ids \[([\d, ]+)\]", out)
    assert int(found.group(1)) == 8 * 5
    assert [int(i) for i in found.group(2).split(",")] == list(range(1, 9))
    assert {int(c) for c in found.group(3).split(",")} <= {3, 7, 12}
