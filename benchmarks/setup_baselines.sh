#!/usr/bin/env bash
# Vendor NetsPresso Trainer 1.4.1, the baseline of the YOLOX and RetinaNet rows, into benchmarks/_vendor/.
#
# Its loss modules (losses/detection/{yolox,retinanet}.py, losses/common.py, utils/bbox_utils.py) need
# only torch and torchvision, which the project venv already has, so the wheel goes in with --no-deps and
# nothing else is installed; benchmarks/baselines.py imports those files without the trainer's __init__.
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
