"""Shared fixtures: the heavy target Qwen2.5-Coder-1.5B (skipped when not installed). Helpers that
are not fixtures (batches, devices, tokenizers, statistics) are in ``utils.py``."""

from __future__ import annotations

import pytest

import pyspec
import pyspec.ops  # noqa: F401  (loads the extension)
from pyspec.models.loading import ModelNotFoundError, resolve


@pytest.fixture(scope="session")
def qwen():
    """Qwen2.5-Coder-1.5B-Instruct (6 GB in fp32, loaded once), or a skip when ``make qwen`` has not
    installed it."""
    try:
        resolve("qwen2.5-coder-1.5b-instruct", progress=False)
    except ModelNotFoundError:
        pytest.skip("Qwen2.5-Coder-1.5B is not installed (make qwen)")
    return pyspec.load_model("qwen2.5-coder-1.5b-instruct", progress=False)
