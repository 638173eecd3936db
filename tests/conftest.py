"""Shared test set-up: the ``slow`` and ``gpu`` markers (declared in pyproject.toml).

``gpu`` tests are skipped where torch sees no CUDA device; ``bench/gpu.sh``
runs them on a GPU machine. ``slow`` marks tests over 10 s on 2 CPU cores;
``pytest -m "not slow"`` leaves them out for a quick round.

The helpers that write miniature real-data layouts live in
:mod:`tests.real_layouts` (``tests`` is a package, imported from the
repository root that ``pyproject.toml`` puts on ``sys.path``).
"""

from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
