"""Runtime throughput: conversations per second of `Scorer.score` at several call sizes.

Run: python -m bench.runtime_throughput BUNDLE [--data FILE] [--batch-sizes 1,8,64,256]

Each call size b scores the data in calls of b conversations (cycling through the data
to fill the last call), after one warm-up call. Inside a call the scorer still sorts
by length and splits by its token budget (2048 tokens by default on CPU), so large calls of
long conversations run as several forward passes. The time includes tokenisation,
the ONNX forward passes and the RBR math. Prints a Markdown table with the process's
peak RSS after each call size; the RSS column only grows, because it is a peak.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np

from rbr.data import read_conversations
from runtime.scorer import DEFAULT_TOKEN_BUDGET_CPU, Scorer

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "rbr-gold" / "test.jsonl"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure(scorer: Scorer, conversations: list, batch_size: int) -> tuple[int, float]:
    """Score ceil(N / b) calls of b conversations; returns (conversations scored, seconds)."""
    calls = -(-len(conversations) // batch_size)
    stream = [conversations[i % len(conversations)] for i in range(calls * batch_size)]
    scorer.score(stream[:batch_size])  # warm-up
    started = time.perf_counter()
    for start in range(0, len(stream), batch_size):
        scorer.score(stream[start : start + batch_size])
    return len(stream), time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", help="bundle folder")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="conversations JSONL (default: the Gold test split)")
    parser.add_argument("--batch-sizes", default="1,8,64,256", help="comma-separated call sizes (default 1,8,64,256)")
    parser.add_argument("--variant", default="auto", choices=["auto", "fp32", "int8", "fp16"], help="model variant")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: all cores)")
    parser.add_argument("--token-budget", type=int, default=DEFAULT_TOKEN_BUDGET_CPU, help="tokens per forward pass")
    args = parser.parse_args(argv)

    conversations = read_conversations(args.data)
    sizes = [int(s) for s in args.batch_sizes.split(",") if s.strip()]
    lengths = []
    rows = []
    for size in sizes:
        scorer = Scorer(args.bundle, variant=args.variant, intra_op_threads=args.threads,
                        token_budget=args.token_budget, max_batch_size=size)
        if not lengths:
            lengths = [len(ids) for ids, _ in scorer.encode(conversations).rows]
        n, seconds = measure(scorer, conversations, size)
        rows.append(f"| {size} | {n} | {seconds:.2f} | {n / seconds:.1f} | {peak_rss_mib():.0f} |")

    print(f"Runtime throughput: {args.bundle} ({scorer.variant}, {scorer.provider}), data {args.data}")
    print(
        f"{len(conversations)} conversations, mean {np.mean(lengths):.0f} tokens (max {max(lengths)}) after rendering; "
        f"token budget {args.token_budget}; {os.cpu_count()} CPUs ({platform.machine()}), "
        f"threads {args.threads or 'default'}\n"
    )
    print("| call size | conversations | seconds | conversations/s | peak RSS (MiB) |")
    print("|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
