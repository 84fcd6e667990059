"""`rbr quickstart`: the whole pipeline on embedded defaults, offline, in one command.

Stages, each the same `rbr` subcommand a user would run:
label (embedded teacher) -> eval-teacher -> classes -> distill (student from teacher
labels) -> export (ONNX, verified) -> score -> fit (weights, stored in the bundle) ->
score again with the weights -> plot-rewards (PNG).

The conversations are the package's `rbr/data/quickstart.jsonl`: 40 conversations written
for this project that cover the four response types and the five completion classes,
with human proposition labels that derive the intended class.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
from importlib import resources
from pathlib import Path

from rbr.errors import RbrError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("quickstart", help="run the whole pipeline on the built-in sample, offline")
    parser.add_argument("--out", default="quickstart-out", help="output folder (default quickstart-out)")
    parser.add_argument("--epochs", type=int, default=6, help="student training epochs (default 6)")
    parser.add_argument("--limit", type=int, help="use only the first N sample conversations")
    parser.set_defaults(handler=cmd_quickstart)


def sample_path() -> Path:
    return Path(str(resources.files("rbr").joinpath("data/quickstart.jsonl")))


def _run_stage(name: str, argv: list[str], timings: list[tuple[str, float, str]], output: str, echo: bool = True) -> str:
    """Run one `rbr` subcommand in-process; return what it printed."""
    from rbr.cli import main

    print(f"\n== {name}: rbr {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(argv)
    printed = buffer.getvalue()
    if echo:
        print(printed, end="")
    seconds = time.perf_counter() - start
    if code != 0:
        raise RbrError(f"quickstart stage {name!r} failed with exit code {code}; see the messages above.")
    timings.append((name, seconds, output))
    print(f"-- {name} done in {seconds:.1f} s -> {output}", flush=True)
    return printed


def cmd_quickstart(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = sample_path()
    if args.limit:
        subset = out / "sample.jsonl"
        subset.write_text("".join(data.read_text("utf-8").splitlines(keepends=True)[: args.limit]), encoding="utf-8")
        data = subset
    store, student, bundle = out / "labels", out / "student", out / "bundle"
    labelled, scores, weights = out / "labelled.jsonl", out / "scores.jsonl", out / "weights.json"
    figure = out / "reward_separation.png"
    timings: list[tuple[str, float, str]] = []
    started = time.perf_counter()

    _run_stage("label", ["label", "--data", str(data), "--teacher", "embedded", "--store", str(store)], timings, str(store))
    teacher_table = _run_stage("eval-teacher", ["eval-teacher", "--data", str(data), "--store", str(store)], timings, "(printed)")
    _run_stage("classes", ["classes", "--data", str(data), "--out", str(labelled)], timings, str(labelled))
    _run_stage(
        "distill",
        ["distill", "--data", str(data), "--labels", str(store), "--out", str(student), "--epochs", str(args.epochs)],
        timings,
        str(student),
    )
    _run_stage("export", ["export", str(student), "--out", str(bundle), "--int8", "--data", str(data)], timings, str(bundle))
    _run_stage("score", ["score", str(bundle), "--data", str(labelled), "--out", str(scores)], timings, str(scores))
    _run_stage(
        "fit",
        ["fit", "--data", str(scores), "--pairing", "cross-prompt", "--val-fraction", "0", "--out", str(weights), "--bundle", str(bundle)],
        timings,
        f"{weights} (also stored in {bundle}/manifest.json)",
    )
    _run_stage("score with weights", ["score", str(bundle), "--data", str(labelled), "--out", str(scores)], timings, str(scores))
    _run_stage("plot-rewards", ["plot-rewards", "--scores", str(scores), "--out", str(figure), "--title", "Quickstart: reward by completion class (student probabilities, fitted weights)"], timings, str(figure))

    _print_summary(timings, time.perf_counter() - started, scores, teacher_table)
    return 0


def _print_summary(timings, total_seconds: float, scores: Path, teacher_table: str) -> None:
    from distill.report import read_scored_rows, separation_summary
    from rbr.spec import load_spec

    spec = load_spec()
    rows = read_scored_rows(scores)
    summary = separation_summary(rows, spec.class_names)

    print("\n## Quickstart summary\n")
    print("| stage | seconds | output |")
    print("|---|---:|---|")
    for name, seconds, output in timings:
        print(f"| {name} | {seconds:.1f} | {output} |")
    print(f"| total | {total_seconds:.1f} | |")

    print("\nMean reward per completion class (student probabilities, fitted weights):\n")
    print("| response type | " + " | ".join(spec.class_names) + " |")
    print("|---|" + "---:|" * len(spec.class_names))
    for rt, per_class in summary.items():
        cells = [f"{per_class[c]:+.3f}" if c in per_class else "" for c in spec.class_names]
        print(f"| {rt} | " + " | ".join(cells) + " |")
    macro = [line for line in teacher_table.splitlines() if "macro" in line.lower()]
    if macro:
        print("\nTeacher (embedded SmolLM2-135M) against the sample's human labels: " + macro[0].strip())
    print(
        "\nThe embedded teacher is a 135M model and grades near chance; the pipeline is what this run "
        "shows. Point `rbr label --teacher` at your own OpenAI-compatible server for real labels."
    )
