"""The `rbr` command line.

Subcommands of this package (spec, classes, fit) are defined here. Subcommands that
need the heavy packages are registered by small modules of `distill`, `runtime` and
`bench`, which import only argparse at module level. Their handlers import torch,
transformers or onnxruntime when they run, so `rbr spec check` stays fast and works in
an install without torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from rbr.errors import RbrError

# Modules with a `register(subparsers)` function, imported when the CLI starts.
_COMMAND_MODULES = (
    "rbr.commands",
    "distill.teacher_cli",
    "distill.student_cli",
    "distill.report",
    "distill.quickstart",
    "runtime.cli",
    "bench.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rbr",
        description="Rule Based Rewards: label propositions, distill a student, score in one ONNX pass.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # that package's commands are not part of this build yet
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.handler(args) or 0)
    except RbrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
