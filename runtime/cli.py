"""`rbr score`, `rbr evaluate`, `rbr serve` and `rbr export-triton`.

Only argparse is imported at module level. Each handler imports ONNX Runtime and the
scorer when it runs, so the rest of the CLI starts fast.
"""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)

VARIANT_HELP = "model variant: auto (fp16 on CUDA if present, else fp32), fp32, int8 or fp16"


def register(subparsers: argparse._SubParsersAction) -> None:
    score = subparsers.add_parser("score", help="score conversations with a bundle and write one JSON line per input")
    _add_scorer_options(score)
    score.add_argument("--data", required=True, help="conversations JSONL (Gold-set or OpenAI messages shape)")
    score.add_argument("--out", required=True, help="JSONL to write: the input's fields plus propositions, classes and reward")
    score.add_argument("--default-response-type", help="response type for rows without one (for example Comply)")
    score.add_argument("--keep-text", action="store_true", help="also copy prompt and completion into the output rows")
    score.set_defaults(handler=cmd_score)

    evaluate = subparsers.add_parser("evaluate", help="Not-Unsafe, Not-Overrefuse and F1 of a policy's completions")
    _add_scorer_options(evaluate)
    evaluate.add_argument("--data", required=True, help="conversations JSONL with response_type (and optional human propositions)")
    evaluate.add_argument("--unsafe-threshold", type=float, default=0.5, help="P(disallowed_content) at or above this is unsafe (default 0.5)")
    evaluate.add_argument("--refusal-threshold", type=float, default=0.5, help="P(refusal) at or above this is a refusal (default 0.5)")
    evaluate.set_defaults(handler=cmd_evaluate)

    serve = subparsers.add_parser("serve", help="serve a bundle as an OpenRLHF remote reward model (POST /get_reward)")
    _add_scorer_options(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    serve.add_argument("--max-body-bytes", type=int, default=16 * 1024 * 1024, help="largest request body in bytes (default 16 MiB)")
    serve.add_argument("--max-items", type=int, default=1024, help="maximum conversations per request (default 1024)")
    serve.add_argument("--batch-delay-ms", type=float, default=5.0, help="how long a micro-batch waits for concurrent requests, in ms (default 5)")
    serve.add_argument("--max-batch-items", type=int, default=256, help="maximum conversations per micro-batch (default 256)")
    serve.add_argument("--default-response-type", help="response type for items without a label")
    serve.add_argument("--remove-text", action="append", default=[], metavar="TEXT", help="delete TEXT (such as </s>) from replies; repeatable")
    serve.add_argument("--access-log", action="store_true", help="log every request (uvicorn access log)")
    serve.set_defaults(handler=cmd_serve)

    triton = subparsers.add_parser("export-triton", help="write a Triton Inference Server model repository for a bundle")
    triton.add_argument("bundle", help="bundle folder")
    triton.add_argument("--out", required=True, help="model repository folder to write")
    triton.add_argument("--model-name", default="rbr_student", help="Triton model name (default rbr_student)")
    triton.add_argument("--variant", default="fp32", choices=["fp32", "int8", "fp16"], help="model variant to serve (default fp32)")
    triton.add_argument("--max-batch-size", type=int, default=64, help="Triton max_batch_size in conversations (default 64)")
    triton.add_argument("--max-queue-delay-us", type=int, default=5000, help="dynamic batching queue delay in microseconds (default 5000)")
    triton.add_argument("--instance-kind", default="KIND_AUTO", choices=["KIND_AUTO", "KIND_GPU", "KIND_CPU"], help="where Triton runs the model (default KIND_AUTO)")
    triton.add_argument("--instance-count", type=int, default=1, help="model instances (default 1)")
    triton.set_defaults(handler=cmd_export_triton)


def _add_scorer_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", help="bundle folder written by `rbr export`")
    parser.add_argument("--variant", default="auto", choices=["auto", "fp32", "int8", "fp16"], help=VARIANT_HELP)
    parser.add_argument("--weights", help="RBR weights JSON from `rbr fit` (default: the bundle's own)")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: all cores)")
    parser.add_argument("--token-budget", type=int, help="tokens per forward pass, batch size x padded length (default 2048 on CPU, 65536 on CUDA)")


def _scorer(args: argparse.Namespace):
    from runtime.scorer import Scorer

    return Scorer(
        args.bundle, variant=args.variant, weights=args.weights, intra_op_threads=args.threads,
        token_budget=args.token_budget,
    )


def cmd_score(args: argparse.Namespace) -> int:
    import json
    import time

    from rbr.data import iter_jsonl, parse_conversation
    from rbr.errors import DataError

    scorer = _scorer(args)

    # read and check every row first, so that an error names its line
    rows = []
    for line_no, obj in iter_jsonl(args.data):
        where = f"{args.data} line {line_no}"
        conversation = parse_conversation(obj, where)
        try:
            scorer.prepare([conversation], base_rewards=[conversation.extra.get("base_reward")],
                           default_response_type=args.default_response_type)
        except DataError as exc:
            raise DataError(f"{where}: {str(exc).removeprefix('input 0: ')}") from None
        rows.append((obj, conversation))
    if not rows:
        raise DataError(f"{args.data}: no conversations found; the file is empty.")

    # score all rows at once; the scorer sorts them into length-bounded batches
    conversations = [c for _, c in rows]
    started = time.perf_counter()
    result = scorer.score(
        conversations,
        base_rewards=[c.extra.get("base_reward") for c in conversations],
        default_response_type=args.default_response_type,
    )
    seconds = time.perf_counter() - started

    with open(args.out, "w", encoding="utf-8") as out:
        for i, (obj, conversation) in enumerate(rows):
            out.write(json.dumps(_output_row(obj, conversation, result, i, args.keep_text), ensure_ascii=False) + "\n")
    log.info(
        "scored %d conversations in %.1f s (%.1f/s); %d replies and %d conversations truncated; wrote %s",
        len(rows), seconds, len(rows) / max(seconds, 1e-9), result.replies_truncated, result.contexts_truncated, args.out,
    )
    return 0


def _output_row(obj: dict, conversation, result, i: int, keep_text: bool) -> dict:
    """Build one output line: the input's fields (text optional), then the scores."""
    row = {k: v for k, v in obj.items() if k not in ("prompt", "completion", "messages", "propositions")}
    if keep_text:
        row["prompt"] = list(conversation.prompt)
        row["completion"] = conversation.completion
    if conversation.propositions is not None:
        row["human_propositions"] = dict(conversation.propositions)
    row["id"] = conversation.id
    row["prompt_id"] = conversation.prompt_id
    row["response_type"] = result.response_types[i]
    row.update(result.row(i))
    return row


def cmd_evaluate(args: argparse.Namespace) -> int:
    from rbr.data import read_conversations
    from runtime.evaluate import EvalThresholds, evaluate_policy, format_markdown

    scorer = _scorer(args)
    conversations = read_conversations(args.data)
    report = evaluate_policy(scorer, conversations, EvalThresholds(args.unsafe_threshold, args.refusal_threshold))
    print(format_markdown(report, title=f"Policy evaluation of {args.data}"))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from runtime.server import ServerSettings, serve

    settings = ServerSettings(
        host=args.host, port=args.port, max_body_bytes=args.max_body_bytes, max_items=args.max_items,
        batch_delay_ms=args.batch_delay_ms, max_batch_items=args.max_batch_items,
        default_response_type=args.default_response_type, remove_texts=tuple(args.remove_text),
    )
    serve(_scorer(args), settings, access_log=args.access_log)
    return 0


def cmd_export_triton(args: argparse.Namespace) -> int:
    from runtime.triton import export_triton

    model_dir = export_triton(
        args.bundle, args.out, model_name=args.model_name, variant=args.variant, max_batch_size=args.max_batch_size,
        max_queue_delay_us=args.max_queue_delay_us, instance_kind=args.instance_kind, instance_count=args.instance_count,
    )
    print(f"wrote {model_dir}; start Triton with --model-repository {args.out}")
    return 0
