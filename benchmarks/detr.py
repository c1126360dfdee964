"""DETRCriterion against NetsPresso Trainer 1.4.1's ``detr_loss`` at RT-DETR's training scale; writes ``DETR.md``.

    python -m benchmarks.detr                      # B 8 × 300 queries × 80 classes × 50 boxes, 6 layers, 2 dn groups
    python -m benchmarks.detr --quick              # B 2 × 100 queries × 20 classes × 10 boxes (a smoke run)

Both criteria get the same inputs (RT-DETR's layout: the final decoder layer, 5 auxiliary layers and the encoder
proposals, each matched by the Hungarian algorithm, and 6 denoising layers of ``2 · 50 · G`` queries); NetsPresso
gets a fresh copy of the targets each call, since it normalises them in place. Time is one forward and backward
in float32, the two criteria alternating round by round (:func:`benchmarks.timing.time_interleaved`), the median
of per-round ratios reported with its quartiles. Matching alone (the costs of the 7 matched sets and the
assignment) is timed the same way against NetsPresso's ``HungarianMatcher`` called 7 times. The values of the
two losses are compared too.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/run.py

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.baselines import load_netspresso
from benchmarks.timing import Timing, quartiles, time_interleaved
from benchmarks.workloads import Case
from lightning_losses.assigners.hungarian import xyxy_to_cxcywh
from lightning_losses.boxes.targets import pad_targets
from lightning_losses.presets.detr import DETRCriterion

HERE = Path(__file__).resolve().parent
FULL = {"batch": 8, "queries": 300, "classes": 80, "boxes": 50, "layers": 6, "groups": 2, "size": 640}
QUICK = {"batch": 2, "queries": 100, "classes": 20, "boxes": 10, "layers": 3, "groups": 2, "size": 320}
MATCHER = {"weight_dict": {"cost_class": 2, "cost_bbox": 5, "cost_giou": 2}, "alpha": 0.25, "gamma": 2.0}
WEIGHTS = {"loss_vfl": 1, "loss_bbox": 5, "loss_giou": 2}


def inputs(p: dict[str, int], seed: int = 0) -> dict:
    """RT-DETR-shaped predictions (leaves) and targets: every image holds ``boxes`` boxes."""
    g = torch.Generator().manual_seed(seed)
    batch, queries, classes, size = p["batch"], p["queries"], p["classes"], p["size"]

    def pair(q: int) -> tuple[torch.Tensor, torch.Tensor]:
        logits = torch.randn(batch, q, classes, generator=g) * 2
        centers = torch.rand(batch, q, 2, generator=g) * 0.8 + 0.1
        sizes = torch.rand(batch, q, 2, generator=g) * 0.3 + 0.02
        return logits.requires_grad_(), torch.cat([centers, sizes], -1).requires_grad_()

    targets = []
    for _ in range(batch):
        xy = torch.rand(p["boxes"], 2, generator=g) * size * 0.8
        wh = torch.rand(p["boxes"], 2, generator=g) * size * 0.2 + 4
        labels = torch.randint(0, classes, (p["boxes"],), generator=g)
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": labels})
    dn_queries = 2 * p["boxes"] * p["groups"]
    index = tuple(
        torch.cat([torch.arange(p["boxes"]) + 2 * p["boxes"] * k for k in range(p["groups"])]) for _ in range(batch)
    )
    return {
        "final": pair(queries),
        "aux": [pair(queries) for _ in range(p["layers"])],  # layers - 1 decoder layers, then the encoder
        "dn": [pair(dn_queries) for _ in range(p["layers"])],
        "meta": {"dn_positive_idx": index, "dn_num_group": p["groups"], "dn_num_split": [dn_queries, queries]},
        "targets": targets,
        "size": (size, size),
    }


def _netspresso_out(x: dict) -> dict:
    logits, boxes = x["final"]
    return {
        "pred": torch.cat([boxes, logits], -1),
        "aux_pred": [{"pred_logits": a, "pred_boxes": b} for a, b in x["aux"]],
        "dn_aux_pred": [{"pred_logits": a, "pred_boxes": b} for a, b in x["dn"]],
        "dn_meta": x["meta"],
    }


def _targets(x: dict, classes: int) -> dict:
    gt = [{"boxes": t["boxes"].clone(), "labels": t["labels"]} for t in x["targets"]]
    return {"gt": gt, "img_size": x["size"], "num_classes": classes}


def build_case(p: dict[str, int], rtdetr: object | None) -> tuple[Case, dict[str, Callable[[], None]]]:
    """The timed candidates (loss forwards) and the matching-only callables."""
    x = inputs(p)
    leaves = [t for pair in [x["final"], *x["aux"], *x["dn"]] for t in pair]
    ours = DETRCriterion(p["classes"], num_aux_layers=p["layers"], num_dn_layers=p["layers"])

    def package() -> torch.Tensor:
        terms = ours(
            *x["final"],
            x["targets"],
            image_size=x["size"],
            aux_outputs=x["aux"],
            dn_outputs=x["dn"],
            dn_meta=x["meta"],
        )
        return torch.stack(list(terms.values())).sum()

    sets = [x["final"], *x["aux"]]

    def package_matching() -> None:
        gts = pad_targets(x["targets"])
        centers = xyxy_to_cxcywh(gts.boxes / p["size"])
        costs = [ours.matcher.cost(a.detach(), b.detach(), centers, gts.labels) for a, b in sets]
        ours.matcher.solve(torch.stack(costs), [p["boxes"]] * p["batch"])

    candidates = {"package": package}
    matching = {"package": package_matching}
    if rtdetr is not None:
        matcher = SimpleNamespace(type="HungarianMatcher", use_focal_loss=True, **MATCHER)
        theirs = rtdetr.DETRLoss(matcher, WEIGHTS, ["vfl", "boxes"], alpha=0.75, gamma=2.0)
        np_matcher = rtdetr.HungarianMatcher(MATCHER["weight_dict"], 0.25, 2.0, use_focal_loss=True)
        out = _netspresso_out(x)
        candidates["netspresso"] = lambda: theirs(out, _targets(x, p["classes"]))

        def netspresso_matching() -> None:
            gt = _targets(x, p["classes"])["gt"]
            for t in gt:
                t["boxes"] = t["boxes"] / p["size"]
            for a, b in sets:
                np_matcher({"pred_logits": a, "pred_boxes": b}, gt)

        matching["netspresso"] = netspresso_matching
    return Case(leaves, candidates), matching


def _load_rtdetr() -> tuple[object | None, str]:
    loaded = load_netspresso()
    if isinstance(loaded, str):
        return None, loaded
    try:
        return importlib.import_module("netspresso_trainer.losses.detection.rtdetr"), loaded.version
    except ImportError as err:
        return None, f"NetsPresso Trainer's rtdetr.py failed to import: {err}"


def _ratio_cell(values: list[float]) -> str:
    q1, q2, q3 = quartiles(values)
    return f"{q2:.2f}× ({q1:.2f}–{q3:.2f})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 rounds")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 7, quick 2)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=HERE / "DETR.md", help="where to write the table")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    p = QUICK if args.quick else FULL
    rounds = args.rounds or (2 if args.quick else 7)
    rtdetr, version = _load_rtdetr()
    case, matching = build_case(p, rtdetr)
    with torch.no_grad():
        value_ours = float(case.candidates["package"]())
        value_theirs = float(case.candidates["netspresso"]()) if "netspresso" in case.candidates else None
    device = torch.device("cpu")
    loss_timing = time_interleaved(case, list(case.candidates), device, rounds, rounds, budget_s=0.0, warmup=1)
    match_timing = _time_plain(matching, rounds)
    shape = (
        f"B {p['batch']} × {p['queries']} queries × {p['classes']} classes × {p['boxes']} boxes per image, "
        f"{p['layers'] - 1} auxiliary decoder layers + encoder proposals (Hungarian-matched), {p['layers']} denoising "
        f"layers of {2 * p['boxes'] * p['groups']} queries ({p['groups']} groups)"
    )
    lines = [
        "# DETRCriterion vs NetsPresso Trainer's `detr_loss`",
        "",
        f"`python -m benchmarks.detr{' --quick' if args.quick else ''}` on {dt.date.today()}, "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} threads, {rounds} rounds, load average {os.getloadavg()[0]:.1f} at the end. "
        f"NetsPresso Trainer: {version}.",
        "",
        f"Workload: {shape}; forward + backward in float32 on the CPU.",
        "",
        "| what | package (median s) | NetsPresso (median s) | package / NetsPresso per round (median, IQR) |",
        "|---|---|---|---|",
    ]
    for label, timing in (
        ("criterion, forward + backward", loss_timing),
        (f"matching only ({p['layers'] + 1} sets)", match_timing),
    ):
        ours = timing.median("package")
        if "netspresso" in timing.rounds:
            theirs = timing.median("netspresso")
            ratio = _ratio_cell(timing.ratios("package", "netspresso"))
            lines.append(f"| {label} | {ours:.3f} | {theirs:.3f} | {ratio} |")
        else:
            lines.append(f"| {label} | {ours:.3f} | – | – |")
    lines.append("")
    if value_theirs is not None:
        lines.append(
            f"Loss values: package {value_ours:.6f}, NetsPresso {value_theirs:.6f} "
            f"(relative difference {abs(value_ours - value_theirs) / abs(value_theirs):.1e})."
        )
    else:
        lines.append(f"NetsPresso rows skipped: {version}.")
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    print(text)


def _time_plain(candidates: dict[str, Callable[[], None]], rounds: int) -> Timing:
    """Rounds of callables without a backward (matching), alternating and rotating as ``time_interleaved`` does."""
    names = list(candidates)
    first = {}
    for name in names:
        start = time.perf_counter()
        candidates[name]()
        first[name] = time.perf_counter() - start
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            candidates[name]()
            times[name].append(time.perf_counter() - start)
    return Timing(times, first)


if __name__ == "__main__":
    main()
