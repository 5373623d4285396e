"""Shared fixtures: the repository's test data, and the GPU backend the
tests run on (Mesa's lavapipe in CI), which must exist unless
TRM_SKIP_GPU=1 says to skip, as for the crate's own GPU tests."""

import os
import sys
from pathlib import Path

import pytest

# the helpers beside this file (st, reference) import as modules
sys.path.insert(0, str(Path(__file__).parent))
# no device-select layer chatter when XDG_RUNTIME_DIR is unset
os.environ.setdefault("NODEVICE_SELECT", "1")

import trm_wgpu  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
GOLDEN = DATA / "golden"
SUDOKU_EASY = REPO / "data" / "sudoku-easy"


@pytest.fixture(scope="session")
def gpu_backend():
    """The GPU API the GPU tests use: the first adapter's (vulkan on
    lavapipe), or WGPU_BACKEND's."""
    usable = [a for a in trm_wgpu.adapters() if a["unsuitable"] is None]
    wanted = os.environ.get("WGPU_BACKEND")
    if wanted:
        usable = [a for a in usable if a["api"] == wanted]
    if not usable:
        if os.environ.get("TRM_SKIP_GPU") == "1":
            pytest.skip("no GPU adapter (TRM_SKIP_GPU=1)")
        pytest.fail(
            "the GPU tests need an adapter, and wgpu finds none: install Mesa's lavapipe "
            "(apt-get install mesa-vulkan-drivers), or set TRM_SKIP_GPU=1 to skip them"
        )
    return usable[0]["api"]
