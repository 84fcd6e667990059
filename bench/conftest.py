"""Fixtures of the pytest-benchmark suite (`make bench`).

The student is the packaged all-MiniLM-L6-v2 trunk with seeded random heads: speed does
not depend on training, so the suite runs on a fresh machine without labels. The inputs
are the package's 40 quickstart conversations.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def conversations():
    from distill.quickstart import sample_path
    from rbr.data import read_conversations

    return read_conversations(sample_path())


@pytest.fixture(scope="session")
def bench_student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from distill.student import create_student, save_student
    from rbr.spec import load_spec

    return save_student(create_student(load_spec(), seed=0), tmp_path_factory.mktemp("bench-student"))


@pytest.fixture(scope="session")
def bench_bundle(bench_student: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fp32 and int8 bundle; the int8 gate is off because untrained heads sit near 0.5."""
    from distill.export import export_bundle

    out_dir = tmp_path_factory.mktemp("bench-bundle") / "bundle"
    export_bundle(bench_student, out_dir, int8=True, parity_batch_size=16, min_agreement=0.0)
    return out_dir
