#!/usr/bin/env bash
# Vendor NetsPresso Trainer 1.4.1, the baseline of the YOLOX, RetinaNet and YOLOv9 rows, and ultralytics 8.4,
# the baseline of the YOLOv8 rows, into benchmarks/_vendor/.
#
# Its loss modules (losses/detection/{yolox,retinanet}.py, losses/common.py, utils/bbox_utils.py) need
# only torch and torchvision, which the project venv already has, so the wheel goes in with --no-deps and
# nothing else is installed; benchmarks/baselines.py imports those files without the trainer's __init__.
# ultralytics (AGPL; a baseline only, never imported by the package) also goes in with --no-deps, plus the three
# packages its loss module's import needs beyond the venv (opencv-python-headless, psutil, py-cpuinfo);
# benchmarks/yolov8.py appends the folder to sys.path after the venv's, so nothing of the venv is shadowed.
# The project venv's pip writes to the --target folder only; the venv itself is not modified.
#
#   bash benchmarks/setup_baselines.sh            # uses .venv/bin/pip
#   PIP=/path/to/pip bash benchmarks/setup_baselines.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
pip="${PIP:-$repo/.venv/bin/pip}"
target="$here/_vendor"

"$pip" install --quiet --no-deps --upgrade --target "$target" "netspresso-trainer==1.4.1"
echo "NetsPresso Trainer $(cat "$target/netspresso_trainer/VERSION") vendored in $target"
"$pip" install --quiet --no-deps --upgrade --target "$target" "ultralytics==8.4.190" opencv-python-headless psutil py-cpuinfo
echo "ultralytics 8.4.190 vendored in $target"
