"""Registers `rbr bench`; the benchmark modules load only when it runs."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    from bench.run import register_arguments

    parser = subparsers.add_parser("bench", help="benchmark the scorer against LLM grading; writes BENCHMARKS.md")
    register_arguments(parser)
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from bench.run import cmd_bench, default_data

    args.argv = [a for a in sys.argv[2:]] if len(sys.argv) > 1 and sys.argv[1] == "bench" else []
    if args.data is None:
        args.data = str(default_data())
    return cmd_bench(args)
