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
