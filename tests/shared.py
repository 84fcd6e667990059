"""Locating the real data that sits beside a checkout (absent in a user's clone)."""

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GOLD_TRAIN = SHARED_DATA / "rbr-gold" / "train.jsonl"
GOLD_TEST = SHARED_DATA / "rbr-gold" / "test.jsonl"
REFERENCE_SPEC = SHARED_DATA / "rbr-reference-config" / "proposition_prompts.yaml"


def require_shared_data(path: Path = SHARED_DATA) -> Path:
    """Skip when the real data is absent, but fail under CI (CI=true), where it must exist."""
    if not path.exists():
        message = f"real data not found at {path}; it sits beside the checkout in ../shared/data"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " and CI=true requires it")
        pytest.skip(message)
    return path
