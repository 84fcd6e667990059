import pytest

from bench.run import BEGIN_MARK, END_MARK, encoder_flops, throughput, update_benchmarks_md
from bench.worker import time_batches


def test_benchmarks_md_section_replaced(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\nmanual notes\n")
    update_benchmarks_md(path, "first run")
    update_benchmarks_md(path, "second run")
    text = path.read_text()
    assert "manual notes" in text
    assert "second run" in text
    assert "first run" not in text
    assert text.count(BEGIN_MARK) == 1
    assert text.count(END_MARK) == 1


def test_encoder_flops_minilm_shape():
    # one 256-token sequence through 6 layers of hidden 384, intermediate 1536, 23 heads
    per_token_layer = 4 * 384**2 + 2 * 384 * 1536 + 2 * 256 * 384
    expected = 2 * (256 * 6 * per_token_layer + 384 * 23)
    assert encoder_flops(1, 256, 6, 384, 1536, 23) == expected
    assert encoder_flops(4, 256, 6, 384, 1536, 23) == pytest.approx(4 * expected, rel=1e-3)


def test_time_batches_covers_every_row():
    seen = []
    samples = time_batches(lambda batch: seen.extend(batch), list(range(10)), batch_size=4, min_seconds=0.0, max_calls=3)
    assert len(samples) == 3
    assert set(seen) == set(range(10))
    assert throughput([0.5, 0.5], 4) == 8.0
