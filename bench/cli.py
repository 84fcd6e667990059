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

    # the command line as typed, recorded in BENCHMARKS.md next to the figures
    args.command_line = "rbr " + " ".join(sys.argv[1:])
    if args.data is None:
        args.data = str(default_data())
    return cmd_bench(args)
