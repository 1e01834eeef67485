"""Fixtures shared by several test files."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def bundled_pair():
    """``((cloud, tokenizer), (edge, tokenizer))``: the real bundled models, loaded once per module
    (a module may hook or wrap them); skips when the optional model packages are not installed."""
    from torch_curriculum.bundled import load_bundled

    try:
        return load_bundled("cloud"), load_bundled("edge")
    except ImportError as e:  # the model packages are an optional install
        pytest.skip(f"bundled models not installed: {e}")
