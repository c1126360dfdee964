"""Root conftest: names every doctest can use, an offline W&B, and the repository on ``PYTHONPATH``.

Scripts the tests run in subprocesses (``tests/scripts/``) import shared test code as ``tests....``; the
repository root reaches them through the environment, never through ``sys.path`` edits in the scripts.
"""

import os
from pathlib import Path

import pytest
import torch

ROOT = str(Path(__file__).resolve().parent)

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
if ROOT not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace: dict) -> None:
    doctest_namespace["torch"] = torch
