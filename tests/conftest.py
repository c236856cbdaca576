"""Shared test helpers: the golden fixtures from NVIDIA's reference code, and CUDA skipping."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURE_DIR = Path(os.environ.get("HYMBA_FIXTURES", REPO.parent / "shared" / "fixtures")) / "hymba-ref-tiny"

# The suite runs many small models: one thread avoids OpenMP spin-waits that dominate at these sizes.
torch.set_num_threads(1)

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    if not (FIXTURE_DIR / "model.safetensors").is_file():
        pytest.skip(f"reference fixtures not found at {FIXTURE_DIR} (set HYMBA_FIXTURES)")
    return FIXTURE_DIR


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def triton_device() -> str:
    """Where a Triton kernel test runs: the GPU, or the CPU under ``TRITON_INTERPRET=1`` (Triton's
    interpreter: slow, but it runs every kernel on CPU tensors); skipped otherwise."""
    from hymba.ops.switches import triton_importable

    if torch.cuda.is_available() and triton_importable():
        return "cuda"
    if os.environ.get("TRITON_INTERPRET") == "1" and triton_importable():
        return "cpu"
    pytest.skip("needs a CUDA device with Triton (or TRITON_INTERPRET=1 with Triton installed)")
