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


def test_build_report_ratios_and_verdicts():
    import argparse

    import numpy as np

    from bench.run import build_report

    k = 2
    p_yes = np.full((4, k), 0.7).tolist()

    def student(seconds_per_call):
        return {"rows": 4, "p_yes": p_yes, "load_seconds": 0.1, "peak_rss_mb": 300.0,
                "latency": {"1": [seconds_per_call] * 4}, "shapes": {"1": {"calls": 5, "shapes": [[1, 10]] * 5}}}

    results = {
        "llm-naive": {"rows": 2, "p_yes": p_yes[:2], "load_seconds": 1.0, "peak_rss_mb": 900.0, "latency": {"all": [20.0]}},
        "llm-best": {"rows": 2, "p_yes": p_yes[:2], "load_seconds": 1.0, "peak_rss_mb": 900.0, "latency": {"all": [4.0]}},
        "onnx-fp32": student(0.01),
        "ort-raw": student(0.008),
    }
    args = argparse.Namespace(batch_sizes="1")
    human = np.array([[True, False], [False, True], [True, False], [False, True]])
    report, figures = build_report(results, args, peak=100.0, shape={"layers": 1, "hidden": 8, "intermediate": 16},
                                   human=human, names=["a", "b"])
    # naive: 10 s per conversation; fp32: 0.01 s -> 1000x, below the 2000x goal
    assert "| ONNX fp32 vs naive LLM grading (per conversation) | 1,000.00x | >= 2000x | not met |" in report
    assert "| LLM prefix reuse + batching vs naive | 5.00x | >= 3x | met |" in report
    assert "| runtime end-to-end / raw session, batch 1 | 0.80 | >= 0.90 | not met |" in report
    assert "| runtime peak RSS (fp32 process) | 300 MB | <= 400 MB | met |" in report
    assert figures["conv_per_s"]["onnx-fp32"] == 100.0
