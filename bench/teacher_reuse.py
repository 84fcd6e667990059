"""Measure the local teacher's throughput with and without KV prefix reuse.

For each prompt order (the built-in template, which puts the question after the
conversation, and the same sections with the question first) it grades the same
items three ways and prints items/s:

- naive: one full prompt per forward pass, no reuse;
- batched: full prompts in length-sorted batches, no reuse;
- reuse: the shared prefix of each group once, then the suffixes in batches.

It also prints the largest |P(yes) difference| of each mode against the first mode
measured for that order.

    python -m bench.teacher_reuse --data ../shared/data/rbr-gold/test.jsonl --rows 4
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import replace

from distill.teacher import GradeRequest, embedded_teacher_path
from distill.teacher_local import LocalTeacher, LocalTeacherConfig
from rbr.data import read_conversations
from rbr.spec import load_spec

QUESTION_FIRST_TEMPLATE = (
    "You are reviewing a chat between a user and an AI assistant. Judge only the assistant's final reply.\n\n"
    "## Question\n{question}\n\n"
    "## Conversation\n{conversation}\n\n"
    "## Final assistant reply\n<reply>\n{response}\n</reply>\n\n"
    "Answer with exactly one word: yes or no."
)

MODES = {
    "naive": dict(batch_size=1, reuse_prefix=False),
    "batched": dict(reuse_prefix=False),
    "reuse": dict(reuse_prefix=True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="conversations JSONL file")
    parser.add_argument("--rows", type=int, default=4, help="conversations to grade (default 4)")
    parser.add_argument("--teacher", default="embedded", help="'embedded', a model folder or a .gguf file")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per forward pass in batched modes (default 32)")
    parser.add_argument("--orders", default="conversation_first,question_first", help="prompt orders to measure")
    parser.add_argument("--modes", default="naive,batched,reuse", help="modes to measure for each order")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    spec = load_spec(None)
    conversations = read_conversations(args.data, limit=args.rows)
    requests = [GradeRequest(c, p) for c in conversations for p in spec.simple]
    teacher = LocalTeacher(embedded_teacher_path() if args.teacher == "embedded" else args.teacher)
    teacher.load()
    templates = {"conversation_first": spec.template, "question_first": QUESTION_FIRST_TEMPLATE}

    print(f"{len(conversations)} conversations x {len(spec.simple)} propositions = {len(requests)} items, "
          f"teacher {teacher.teacher_id}, device {teacher.device}, batch size {args.batch_size}")
    print("| prompt order | mode | items/s | seconds | max abs P(yes) diff vs the first mode |")
    print("|---|---|---|---|---|")
    for order in args.orders.split(","):
        template = templates[order]
        reference = None
        for mode in args.modes.split(","):
            settings = MODES[mode]
            teacher.config = replace(LocalTeacherConfig(batch_size=args.batch_size), **settings)
            started = time.perf_counter()
            grades = {(r.conversation.id, r.proposition.name): g.p_yes for r, g in teacher.grade(requests, template)}
            seconds = time.perf_counter() - started
            if reference is None:
                reference = grades
            diff = max(abs(grades[key] - reference[key]) for key in reference)
            print(f"| {order} | {mode} | {len(requests) / seconds:.2f} | {seconds:.1f} | {diff:.2e} |", flush=True)


if __name__ == "__main__":
    main()
