"""Weight fitting at scale: N examples, 8 completions per prompt, 30 features.

Run: python -m bench.fit_scale [--rows 1000000]
Prints rows, pairs, seconds and the process's peak RSS (MB) as one Markdown row.
The rows are synthetic (features carry a noisy signal of the label) and are built in
memory, so the figure covers pair construction and optimisation, not JSON parsing.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from rbr.fit import FitConfig, FitData, fit_weights
from rbr.spec import DEFAULT_CLASS_ORDER, Spec

N_PROPOSITIONS = 25  # + 5 completion classes = 30 features


def synthetic_spec() -> Spec:
    names = [f"p{i}" for i in range(N_PROPOSITIONS)]
    rules = {"Comply": [], "Hard Refuse": []}
    classes = {}
    for i, cls in enumerate(DEFAULT_CLASS_ORDER):
        classes[cls] = {rt: [names[i]] + [f"not {names[j]}" for j in range(i)] for rt in rules}
    return Spec.from_dict({
        "template": "{question} {response}",
        "response_types": list(rules),
        "propositions": {n: {"question": f"Is {n} true?"} for n in names},
        "classes": classes,
    })


def synthetic_data(spec: Spec, rows: int, per_prompt: int, seed: int) -> FitData:
    rng = np.random.default_rng(seed)
    n_features = N_PROPOSITIONS + len(spec.classes)
    rank = rng.integers(0, len(spec.classes), size=rows)  # (N,)
    features = rng.random((rows, n_features), dtype=np.float32)  # (N, F)
    features[np.arange(rows), N_PROPOSITIONS + rank] += 1.0  # the label's class feature is higher
    prompt_key = np.arange(rows) // per_prompt  # (N,)
    rt_index = (prompt_key % len(spec.response_types)).astype(np.int64)  # (N,)
    return FitData(
        features=features,
        rt_index=rt_index,
        rank=rank,
        prompt_key=prompt_key,
        base_reward=rng.normal(size=rows).astype(np.float32),
        labels=[spec.class_names[r] for r in rank],
        has_base_reward=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--per-prompt", type=int, default=8)
    parser.add_argument("--steps", type=int, default=FitConfig.steps)
    args = parser.parse_args()

    spec = synthetic_spec()
    data = synthetic_data(spec, args.rows, args.per_prompt, seed=0)
    start = time.perf_counter()
    _, report = fit_weights(data, spec, FitConfig(steps=args.steps))
    seconds = time.perf_counter() - start
    pairs = sum(r["train_pairs"] + r["val_pairs"] for r in report.per_type.values())
    accuracy = np.mean([r["val_accuracy"] for r in report.per_type.values()])
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("| rows | per prompt | features | pairs | steps | fit seconds | peak RSS (MB) | val pair accuracy |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.rows:,} | {args.per_prompt} | {data.features.shape[1]} | {pairs:,} | {args.steps} | "
          f"{seconds:.1f} | {peak_mb:.0f} | {accuracy:.3f} |")


if __name__ == "__main__":
    main()
