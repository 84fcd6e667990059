"""fp16 parity and throughput of a bundle on an NVIDIA GPU, as one Markdown table.

python -m bench.gpu_check BUNDLE [--data FILE]

Parity: the fp16 variant on the CUDA provider against the fp32 variant on the CPU
provider, over the conversations of --data (max |P(yes) difference| and the worst
per-proposition decision agreement at 0.5). Throughput: conversations per second of
`runtime.Scorer` on CUDA at batch 256 and 1,024 (the rows are cycled to fill a batch).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--data", help="conversations JSONL (default: the quickstart sample)")
    args = parser.parse_args()

    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        print("error: this onnxruntime has no CUDAExecutionProvider; install onnxruntime-gpu", file=sys.stderr)
        return 1
    return run(args.bundle, _rows(args.data))


def run(bundle: str, rows: list) -> int:
    from runtime import Scorer

    gpu = Scorer(bundle, providers=["CUDAExecutionProvider"], variant="fp16" if _has_fp16(bundle) else "fp32")
    if gpu.provider != "CUDAExecutionProvider":
        print(f"error: the CUDA provider did not start (got {gpu.provider})", file=sys.stderr)
        return 1
    cpu = Scorer(bundle, providers=["CPUExecutionProvider"], variant="fp32")
    types = [r.response_type or "Comply" for r in rows]
    reference = cpu.score(rows, response_types=types).p_yes
    candidate = gpu.score(rows, response_types=types).p_yes
    diff = np.abs(candidate - reference)
    agreement = ((candidate >= 0.5) == (reference >= 0.5)).mean(axis=0)

    print(f"| figure | value |\n|---|---:|")
    print(f"| variant on CUDA | {gpu.variant} |")
    print(f"| parity rows | {len(rows)} |")
    print(f"| max abs P(yes) difference vs CPU fp32 | {diff.max():.2e} |")
    print(f"| worst per-proposition decision agreement | {agreement.min():.4f} |")
    for batch_size in (256, 1024):
        batch = [rows[i % len(rows)] for i in range(batch_size)]
        batch_types = [r.response_type or "Comply" for r in batch]
        gpu.score(batch, response_types=batch_types)  # warm-up
        seconds = []
        for _ in range(3):
            t0 = time.perf_counter()
            gpu.score(batch, response_types=batch_types)
            seconds.append(time.perf_counter() - t0)
        print(f"| conversations/s at batch {batch_size} (best of 3) | {batch_size / min(seconds):,.0f} |")
    return 0


def _rows(path: str | None) -> list:
    """Conversations of `path`, or the package's quickstart sample (no torch import)."""
    from importlib import resources

    from rbr.data import read_conversations

    return read_conversations(path or str(resources.files("rbr").joinpath("data/quickstart.jsonl")))


def _has_fp16(bundle: str) -> bool:
    from rbr.bundle import load_manifest

    return "fp16" in load_manifest(bundle).models


if __name__ == "__main__":
    sys.exit(main())
