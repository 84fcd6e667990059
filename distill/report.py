"""Reward-separation figure: the reward of each completion, by completion class and response type.

A good RBR puts every better class above every worse class within a response type, so
the boxes should step down from left to right in each panel.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from rbr.errors import DataError


def register(subparsers: argparse._SubParsersAction) -> None:
    plot = subparsers.add_parser("plot-rewards", help="plot reward per completion class and response type (PNG)")
    plot.add_argument("--scores", required=True, help="JSONL from `rbr score` with response_type, label and reward")
    plot.add_argument("--out", required=True, help="PNG file to write")
    plot.add_argument("--spec", default="default", help="spec whose class order sets the x axis (default: built-in)")
    plot.add_argument("--title", default="Reward by completion class")
    plot.set_defaults(handler=cmd_plot_rewards)


def reward_separation_figure(
    rows: Sequence[Mapping[str, Any]], class_order: Sequence[str], response_types: Sequence[str], out: str | Path, title: str
) -> Path:
    """Write a PNG with one panel per response type: reward (y) per completion class (x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    present = [rt for rt in response_types if any(r["response_type"] == rt for r in rows)]
    if not present:
        raise DataError("no scored rows to plot; the scores file has no known response type.")
    fig, axes = plt.subplots(1, len(present), figsize=(4.2 * len(present), 4.2), sharey=False, squeeze=False)
    rng = np.random.default_rng(0)
    for ax, rt in zip(axes[0], present):
        values = [[float(r["reward"]) for r in rows if r["response_type"] == rt and r["label"] == c] for c in class_order]
        positions = [i for i, v in enumerate(values) if v]
        ax.boxplot([values[i] for i in positions], positions=positions, widths=0.6, showfliers=False)
        for i in positions:
            jitter = rng.uniform(-0.15, 0.15, size=len(values[i]))
            ax.scatter(np.full(len(values[i]), i) + jitter, values[i], s=12, alpha=0.6)
        ax.set_xticks(range(len(class_order)))
        ax.set_xticklabels([f"{c}\n(n={len(v)})" for c, v in zip(_short_names(class_order), values)], fontsize=7)
        ax.set_title(rt)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("reward")
    fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _short_names(class_order: Sequence[str]) -> list[str]:
    """Class names shortened for axis labels: `minimum_acceptable_style` -> `minimum acceptable`."""
    short = {
        "minimum_acceptable_style": "minimum\nacceptable",
        "unacceptable_completion": "unacceptable",
        "illogical_completion": "illogical",
        "disallowed_completion": "disallowed",
    }
    return [short.get(c, c) for c in class_order]


def read_scored_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a scores JSONL that carry response_type, label and reward."""
    from rbr.data import iter_jsonl

    rows = []
    for line_no, obj in iter_jsonl(path):
        missing = [k for k in ("response_type", "label", "reward") if obj.get(k) is None]
        if missing:
            raise DataError(
                f"{path} line {line_no}: missing {', '.join(missing)}; score a file whose rows carry labels "
                "(for example the output of `rbr classes --out`)."
            )
        rows.append(obj)
    return rows


def cmd_plot_rewards(args: argparse.Namespace) -> int:
    from rbr.spec import load_spec

    spec = load_spec(args.spec)
    rows = read_scored_rows(args.scores)
    for row in rows:
        row["response_type"] = spec.response_types[spec.response_type_index(row["response_type"])]
    path = reward_separation_figure(rows, spec.class_names, spec.response_types, args.out, args.title)
    print(f"wrote {path}")
    print(json.dumps(separation_summary(rows, spec.class_names), indent=None))
    return 0


def separation_summary(rows: Sequence[Mapping[str, Any]], class_order: Sequence[str]) -> dict[str, dict[str, float]]:
    """Mean reward per response type and class, for the quickstart's summary table."""
    summary: dict[str, dict[str, float]] = {}
    for rt in sorted({r["response_type"] for r in rows}):
        per_class = {}
        for c in class_order:
            values = [float(r["reward"]) for r in rows if r["response_type"] == rt and r["label"] == c]
            if values:
                per_class[c] = round(sum(values) / len(values), 4)
        summary[rt] = per_class
    return summary
