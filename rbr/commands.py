"""Subcommands that need only numpy and pyyaml: spec check, classes, fit, rank-eval."""

from __future__ import annotations

import argparse
import collections
import json
import logging
from dataclasses import fields, replace
from pathlib import Path

import yaml

from rbr.errors import DataError

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    spec = subparsers.add_parser("spec", help="inspect rule specs")
    spec_sub = spec.add_subparsers(dest="spec_command", metavar="SUBCOMMAND")
    spec_sub.required = True
    check = spec_sub.add_parser("check", help="validate a spec file and print a summary")
    check.add_argument("file", nargs="?", default="default", help="spec YAML (project or reference format); default: the built-in spec")
    check.set_defaults(handler=cmd_spec_check)
    show = spec_sub.add_parser("show", help="print a spec in the project's YAML format")
    show.add_argument("file", nargs="?", default="default")
    show.set_defaults(handler=cmd_spec_show)

    classes = subparsers.add_parser("classes", help="derive completion classes from human proposition labels")
    classes.add_argument("--data", required=True, help="conversations JSONL with human 'propositions'")
    classes.add_argument("--spec", default="default", help="spec file (default: built-in)")
    classes.add_argument("--out", help="write the rows with a 'label' field (the derived class) to this JSONL")
    classes.set_defaults(handler=cmd_classes)

    fit = subparsers.add_parser("fit", help="fit RBR weights with a pairwise hinge loss")
    _add_fit_inputs(fit)
    fit.add_argument("--out", required=True, help="weights JSON to write")
    fit.add_argument("--bundle", help="also store the weights in this bundle's manifest")
    fit.set_defaults(handler=cmd_fit)

    rank = subparsers.add_parser("rank-eval", help="pairwise ranking accuracy of weights per class pair")
    _add_fit_inputs(rank)
    rank.add_argument("--weights", required=True, help="weights JSON from `rbr fit`")
    rank.set_defaults(handler=cmd_rank_eval)


def _add_fit_inputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="JSONL rows: response_type, label, prompt_id, base_reward, propositions or features")
    parser.add_argument("--spec", default="default", help="spec file (default: built-in)")
    parser.add_argument("--config", help="YAML with orderings, margins, default_margin, ignore_features, weight_decay, pairing, ...")
    parser.add_argument("--pairing", choices=["prompt", "cross-prompt"], help="pair completions of the same prompt (default) or across prompts")
    parser.add_argument("--labels-from-propositions", action="store_true", help="use the completion class derived from each row's propositions as its label")
    parser.add_argument("--ignore-features", help="comma-separated feature names whose weight stays 0")
    parser.add_argument("--weight-decay", type=float, help="L2 coefficient (default 1e-3)")
    parser.add_argument("--margin", type=float, help="default hinge margin in reward units (default 1.0)")
    parser.add_argument("--val-fraction", type=float, help="share of prompts held out for validation (default 0.2)")
    parser.add_argument("--steps", type=int, help="optimisation steps per response type (default 300)")
    parser.add_argument("--seed", type=int, help="random seed (default 0)")
    parser.add_argument("--prior", choices=["class-order", "zero"], help="weights the fit starts from and decays towards (default class-order)")


def cmd_spec_check(args: argparse.Namespace) -> int:
    from rbr.spec import load_spec

    spec = load_spec(args.file)
    print(f"{spec.source}: valid spec")
    print(f"  simple propositions:  {len(spec.simple)}")
    print(f"  derived propositions: {len(spec.derived)}")
    print(f"  completion classes:   {len(spec.classes)} ({' > '.join(spec.class_names)})")
    print(f"  response types:       {len(spec.response_types)} ({', '.join(spec.response_types)})")
    print(f"  spec hash:            {spec.hash()[:16]}")
    return 0


def cmd_spec_show(args: argparse.Namespace) -> int:
    from rbr.spec import load_spec

    print(yaml.safe_dump(load_spec(args.file).to_dict(), sort_keys=False, allow_unicode=True, width=100))
    return 0


def cmd_classes(args: argparse.Namespace) -> int:
    import numpy as np

    from rbr.data import read_conversations
    from rbr.features import FeatureModel
    from rbr.spec import load_spec

    spec = load_spec(args.spec)
    model = FeatureModel(spec)
    rows = read_conversations(args.data)
    for row in rows:
        missing = [n for n in spec.proposition_names if row.propositions is None or n not in row.propositions]
        if missing:
            raise DataError(f"{args.data}: row {row.id} has no human label for {', '.join(missing[:5])}; every row needs all of them.")
        if row.response_type is None:
            raise DataError(f"{args.data}: row {row.id} has no response_type.")
    p_yes = np.array([[float(r.propositions[n]) for n in spec.proposition_names] for r in rows])  # (N, K)
    rt_index = model.response_type_indices([r.response_type for r in rows])
    classes = model.classify(p_yes, rt_index)
    names = [spec.class_names[c] if c >= 0 else "(none)" for c in classes]

    print(f"Completion classes derived from human labels ({spec.source}, {len(rows)} rows)\n")
    print("| response type | " + " | ".join(spec.class_names) + " | (none) | total |")
    print("|---|" + "---:|" * (len(spec.class_names) + 2))
    for r, rt in enumerate(spec.response_types):
        counts = collections.Counter(n for n, i in zip(names, rt_index) if i == r)
        cells = [str(counts.get(c, 0)) for c in [*spec.class_names, "(none)"]]
        print(f"| {rt} | " + " | ".join(cells) + f" | {sum(counts.values())} |")

    if args.out:
        from rbr.data import iter_jsonl

        with open(args.out, "w", encoding="utf-8") as out:
            for (_, obj), row, label in zip(iter_jsonl(args.data), rows, names):
                out.write(json.dumps({**obj, "id": row.id, "prompt_id": row.prompt_id, "label": label}, ensure_ascii=False) + "\n")
        print(f"\nwrote {len(rows)} labelled rows to {args.out}")
    return 0


def _fit_config(args: argparse.Namespace):
    from rbr.fit import FitConfig

    config = FitConfig()
    if args.config:
        try:
            raw = yaml.safe_load(Path(args.config).read_text("utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise DataError(f"cannot read fit config {args.config}: {exc}") from None
        known = {f.name for f in fields(FitConfig)}
        unknown = set(raw) - known
        if unknown:
            raise DataError(f"{args.config}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}.")
        if "ignore_features" in raw:
            raw["ignore_features"] = tuple(raw["ignore_features"])
        config = replace(config, **raw)
    overrides = {
        "pairing": args.pairing,
        "weight_decay": args.weight_decay,
        "default_margin": args.margin,
        "val_fraction": args.val_fraction,
        "steps": args.steps,
        "seed": args.seed,
        "prior": args.prior,
        "ignore_features": tuple(f.strip() for f in args.ignore_features.split(",") if f.strip()) if args.ignore_features else None,
    }
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})


def cmd_fit(args: argparse.Namespace) -> int:
    from rbr.fit import fit_weights, load_fit_rows
    from rbr.spec import load_spec

    spec = load_spec(args.spec)
    config = _fit_config(args)
    data = load_fit_rows(args.data, spec, config, labels_from_propositions=args.labels_from_propositions)
    log.info("read %d rows from %s; pairing=%s", len(data.rank), args.data, config.pairing)
    weights, report = fit_weights(data, spec, config)
    weights.save(args.out)
    print(report.markdown())
    print(f"\nfitted in {report.seconds:.2f} s; wrote {args.out}")
    if args.bundle:
        from rbr.bundle import attach_weights

        attach_weights(args.bundle, weights)
        print(f"stored the weights in {args.bundle}/manifest.json")
    return 0


def cmd_rank_eval(args: argparse.Namespace) -> int:
    from rbr.fit import load_fit_rows, ranking_accuracy
    from rbr.reward import RbrWeights
    from rbr.spec import load_spec

    spec = load_spec(args.spec)
    config = _fit_config(args)
    weights = RbrWeights.load(args.weights, spec).aligned(spec)
    data = load_fit_rows(args.data, spec, config, labels_from_propositions=args.labels_from_propositions)
    table = ranking_accuracy(weights, data, spec, config)
    print("| response type | better | worse | pairs | accuracy |")
    print("|---|---|---|---:|---:|")
    for row in table:
        print(f"| {row['response_type']} | {row['better']} | {row['worse']} | {row['pairs']} | {row['accuracy']:.3f} |")
    total = sum(r["pairs"] for r in table)
    if total:
        overall = sum(r["pairs"] * r["accuracy"] for r in table) / total
        print(f"| all | | | {total} | {overall:.3f} |")
    return 0
