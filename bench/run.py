"""`rbr bench`: the distilled scorer against full LLM grading, side by side in one run.

Each system runs in its own process (`bench.worker`) on the same conversations, so
peak RSS is per system and one system's threads do not slow another's. LLM grading is
slow, so it grades a fixed prefix of the rows (`--llm-rows`); per-conversation times
make the ratios comparable. The fp32 GEMM peak of the machine is measured in the same
run, and the scorer's achieved GFLOP/s is computed from the padded shapes it ran.

Results go to a marked section of BENCHMARKS.md and to PNG charts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

BEGIN_MARK = "<!-- rbr bench: begin -->"
END_MARK = "<!-- rbr bench: end -->"
STUDENT_SYSTEMS = ("torch-eager", "onnx-fp32", "onnx-int8", "ort-raw")
LABELS = {
    "llm-naive": "(a) LLM grading, naive",
    "llm-best": "(b) LLM grading, prefix reuse + batching",
    "torch-eager": "(c) student, PyTorch eager fp32",
    "onnx-fp32": "(d) ONNX fp32 via runtime.Scorer",
    "onnx-int8": "(e) ONNX int8 via runtime.Scorer",
    "ort-raw": "(f) raw ONNX Runtime session, pre-tokenised",
    "cuda-fp16": "(g) ONNX fp16 on CUDA",
}


def gemm_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best fp32 GEMM rate of numpy's BLAS on this machine, in GFLOP/s."""
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    a @ b  # warm-up
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def encoder_flops(batch: int, tokens: int, layers: int, hidden: int, intermediate: int, heads_out: int) -> float:
    """Count the FLOPs (2 per multiply-add) of a BERT-style encoder pass on a padded batch.

    Per token and layer there are the Q, K, V and output projections (4 H^2 MACs), the
    feed-forward block (2 H I MACs) and attention scores and mixing (2 T H MACs). The
    heads add H K MACs per sequence.
    """
    per_token_layer = 4 * hidden * hidden + 2 * hidden * intermediate + 2 * tokens * hidden
    macs = batch * tokens * layers * per_token_layer + batch * hidden * heads_out
    return 2.0 * macs


def _backbone_shape(student_dir: Path) -> dict[str, int]:
    config = json.loads((student_dir / "config.json").read_text())
    backbone = config.get("backbone") or config
    return {
        "layers": int(backbone["num_hidden_layers"]),
        "hidden": int(backbone["hidden_size"]),
        "intermediate": int(backbone["intermediate_size"]),
    }


def run_worker(system: str, args: argparse.Namespace, rows: int, out_dir: Path) -> dict[str, Any] | None:
    out = out_dir / f"{system}.json"
    cmd = [sys.executable, "-m", "bench.worker", system, "--data", str(args.data), "--rows", str(rows),
           "--batch-sizes", args.batch_sizes, "--min-seconds", str(args.min_seconds), "--out", str(out)]
    if args.bundle:
        cmd += ["--bundle", str(args.bundle)]
    if args.student:
        cmd += ["--student", str(args.student)]
    print(f"[bench] {LABELS[system]} on {rows} conversations ...", flush=True)
    started = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        print(f"[bench] {system} failed:\n{result.stderr[-3000:]}", flush=True)
        return None
    print(f"[bench] {system} done in {time.perf_counter() - started:.0f} s", flush=True)
    return json.loads(out.read_text())


def throughput(samples: list[float], batch_size: int) -> float:
    return batch_size * len(samples) / sum(samples)


def _agreement(candidate: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    mask = ~np.isnan(reference) & ~np.isnan(candidate)
    if not mask.any():
        return float("nan"), float("nan")
    delta = np.abs(candidate[mask] - reference[mask])
    agree = (candidate[mask] >= 0.5) == (reference[mask] >= 0.5)
    return float(delta.mean()), float(agree.mean())


def _human_metrics(p_yes: np.ndarray, human: np.ndarray) -> tuple[float, float]:
    from rbr.metrics import evaluate_binary, macro_mean

    results = [evaluate_binary(human[:, k], p_yes[:, k]) for k in range(human.shape[1])]
    return macro_mean([r.auroc for r in results]), float(np.mean((p_yes >= 0.5) == human))


def build_report(results: Mapping[str, dict], args: argparse.Namespace, peak: float, shape: dict[str, int] | None,
                 human: np.ndarray | None, names: list[str]) -> tuple[str, dict[str, Any]]:
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    k = len(names)
    lines: list[str] = []
    figures: dict[str, Any] = {"conv_per_s": {}, "latency": {}}

    # seconds per conversation: LLM systems grade their rows in one timed run
    per_conv: dict[str, float] = {}
    for system in ("llm-naive", "llm-best"):
        if system in results:
            per_conv[system] = results[system]["latency"]["all"][0] / results[system]["rows"]
    best_batch: dict[str, int] = {}
    for system, r in results.items():
        if system.startswith("llm-"):
            continue
        rates = {b: throughput(r["latency"][str(b)], b) for b in batch_sizes}
        best_batch[system] = max(rates, key=rates.get)
        per_conv[system] = 1.0 / rates[best_batch[system]]

    lines += ["### Throughput and memory", "",
              "| system | conversations/s | propositions/s | best batch | load s | peak RSS (MB) |",
              "|---|---:|---:|---:|---:|---:|"]
    for system, r in results.items():
        rate = 1.0 / per_conv[system]
        figures["conv_per_s"][system] = rate
        batch = "n/a" if system.startswith("llm-") else str(best_batch[system])
        lines.append(f"| {LABELS[system]} | {rate:,.2f} | {rate * k:,.1f} | {batch} | {r['load_seconds']:.1f} | {r['peak_rss_mb']:.0f} |")

    lines += ["", "### Latency per call (ms), p50 / p99", "",
              "| system | " + " | ".join(f"batch {b}" for b in batch_sizes) + " |",
              "|---|" + "---:|" * len(batch_sizes)]
    for system, r in results.items():
        if system.startswith("llm-"):
            continue
        cells = []
        for b in batch_sizes:
            samples = np.array(r["latency"][str(b)]) * 1000
            cells.append(f"{np.percentile(samples, 50):,.0f} / {np.percentile(samples, 99):,.0f} (n={len(samples)})")
            figures["latency"].setdefault(system, {})[b] = float(np.percentile(samples, 50))
        lines.append(f"| {LABELS[system]} | " + " | ".join(cells) + " |")

    ratios = []
    def ratio(a: str, b: str, label: str, goal: float | None) -> None:
        if a in per_conv and b in per_conv:
            value = per_conv[b] / per_conv[a]
            goal_text, verdict = "", ""
            if goal is not None:
                goal_text = f">= {goal:g}x"
                verdict = "met" if value >= goal else "not met"
            ratios.append(f"| {label} | {value:,.2f}x | {goal_text} | {verdict} |")
    ratio("onnx-fp32", "llm-naive", "ONNX fp32 vs naive LLM grading (per conversation)", 2000)
    ratio("onnx-int8", "llm-naive", "ONNX int8 vs naive LLM grading (per conversation)", 2000)
    ratio("onnx-fp32", "llm-best", "ONNX fp32 vs best LLM grading path", 300)
    ratio("onnx-int8", "llm-best", "ONNX int8 vs best LLM grading path", 300)
    ratio("llm-best", "llm-naive", "LLM prefix reuse + batching vs naive", 3)
    ratio("onnx-int8", "torch-eager", "ONNX int8 vs PyTorch eager", 2)
    ratio("onnx-fp32", "torch-eager", "ONNX fp32 vs PyTorch eager", None)
    if "onnx-fp32" in results and "ort-raw" in results:
        for b in batch_sizes:
            e2e = throughput(results["onnx-fp32"]["latency"][str(b)], b)
            raw = throughput(results["ort-raw"]["latency"][str(b)], b)
            verdict = "met" if e2e / raw >= 0.9 else "not met"
            ratios.append(f"| runtime end-to-end / raw session, batch {b} | {e2e / raw:.2f} | >= 0.90 | {verdict} |")
    if "onnx-fp32" in results:
        rss = results["onnx-fp32"]["peak_rss_mb"]
        ratios.append(f"| runtime peak RSS (fp32 process) | {rss:.0f} MB | <= 400 MB | {'met' if rss <= 400 else 'not met'} |")

    gflops_lines = []
    if shape is not None:
        for system in ("onnx-fp32", "ort-raw", "onnx-int8", "torch-eager"):
            if system not in results:
                continue
            b = str(best_batch[system])
            log = results[system]["shapes"][b]
            flops = sum(encoder_flops(s[0], s[1], shape["layers"], shape["hidden"], shape["intermediate"], k) for s in log["shapes"])
            per_call = flops / log["calls"]
            seconds = float(np.mean(results[system]["latency"][b]))
            achieved = per_call / seconds / 1e9
            share = achieved / peak
            note = ""
            if system == "onnx-fp32":
                note = " (goal >= 50%: " + ("met" if share >= 0.5 else "not met") + ")"
            elif system == "onnx-int8":
                note = " (int8 work counted as FLOPs)"
            gflops_lines.append(f"| {LABELS[system]} | {b} | {achieved:,.1f} | {share:.0%}{note} |")

    lines += ["", "### Goals", "", "| figure | value | goal | verdict |", "|---|---:|---:|---|", *ratios]
    lines += ["", f"### Achieved GFLOP/s against the fp32 GEMM peak ({peak:,.1f} GFLOP/s, numpy sgemm 2048^3, same run)", "",
              "| system | batch | GFLOP/s | share of peak |", "|---|---:|---:|---:|", *gflops_lines]

    # agreement
    llm_rows = min((results[s]["rows"] for s in ("llm-naive", "llm-best") if s in results), default=0)
    lines += ["", "### Agreement", "",
              f"P(yes) of all {k} propositions; mean |delta P| and decision agreement at 0.5 against the LLM "
              f"grader on the {llm_rows} conversations it graded, and macro AUROC / accuracy at 0.5 against "
              "the human labels on all scored conversations.", "",
              "| system | vs (a) mean abs delta | vs (a) agreement | vs (b) mean abs delta | vs (b) agreement | human macro AUROC | human accuracy |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for system, r in results.items():
        p = np.array(r["p_yes"], dtype=float)
        cells = []
        for ref in ("llm-naive", "llm-best"):
            if ref in results and ref != system:
                ref_p = np.array(results[ref]["p_yes"], dtype=float)
                n = min(len(ref_p), len(p))
                mad, agree = _agreement(p[:n], ref_p[:n])
                cells += [f"{mad:.3f}", f"{agree:.1%}"]
            else:
                cells += ["", ""]
        if human is not None:
            auroc, acc = _human_metrics(p, human[: len(p)])
            cells += [f"{auroc:.3f}", f"{acc:.1%}"]
        else:
            cells += ["", ""]
        lines.append(f"| {LABELS[system]} | " + " | ".join(cells) + " |")
    return "\n".join(lines), figures


def write_charts(figures: Mapping[str, Any], charts_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    charts_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    rates = figures["conv_per_s"]
    fig, ax = plt.subplots(figsize=(8, 4))
    systems = list(rates)
    ax.barh([LABELS[s] for s in systems], [rates[s] for s in systems])
    ax.set_xscale("log")
    ax.set_xlabel("conversations per second (log scale)")
    ax.set_title("Scoring all propositions of a conversation")
    fig.tight_layout()
    paths.append(charts_dir / "throughput.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for system, by_batch in figures["latency"].items():
        ax.plot(list(by_batch), list(by_batch.values()), marker="o", label=LABELS[system])
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size (conversations)")
    ax.set_ylabel("p50 latency per call (ms)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(charts_dir / "latency.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def update_benchmarks_md(path: Path, section: str) -> None:
    text = path.read_text("utf-8") if path.exists() else "# Benchmarks\n"
    block = f"{BEGIN_MARK}\n{section}\n{END_MARK}"
    if BEGIN_MARK in text and END_MARK in text:
        head, rest = text.split(BEGIN_MARK, 1)
        tail = rest.split(END_MARK, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text, "utf-8")


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = [f"Python {platform.python_version()}"]
    for package in ("numpy", "torch", "transformers", "onnxruntime-gpu", "onnxruntime", "tokenizers"):
        try:
            parts.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            continue
    return ", ".join(parts)


def _machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {model}, {platform.machine()}"


def _cuda_available() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers() and Path("/dev/nvidia0").exists()


def prepare_student(args: argparse.Namespace, scratch: Path) -> None:
    """Without --student, build one with untrained heads so the speed figures still run."""
    if args.student and args.bundle:
        return
    if not args.student:
        from distill.student import create_student, save_student
        from rbr.spec import load_spec

        print("[bench] no --student given: using the packaged backbone with untrained heads; "
              "agreement figures are then meaningless", flush=True)
        args.student = save_student(create_student(load_spec(), seed=0), scratch / "student")
        args.untrained = True
    if not args.bundle:
        from distill.export import export_bundle

        args.bundle = scratch / "bundle"
        export_bundle(args.student, args.bundle, int8=True)


def cmd_bench(args: argparse.Namespace) -> int:
    from rbr.data import read_conversations
    from rbr.spec import load_spec

    args.untrained = False
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    spec = load_spec()
    rows = read_conversations(args.data, limit=args.rows)
    n_rows = len(rows)
    human = None
    if all(r.propositions and all(n in r.propositions for n in spec.proposition_names) for r in rows):
        human = np.array([[r.propositions[n] for n in spec.proposition_names] for r in rows], dtype=bool)

    with tempfile.TemporaryDirectory(prefix="rbr-bench-") as tmp:
        scratch = Path(tmp)
        prepare_student(args, scratch)
        systems = [s for s in args.systems.split(",") if s]
        if "cuda-fp16" in systems and not _cuda_available():
            systems.remove("cuda-fp16")
            print("[bench] no CUDA provider and GPU: skipping (g) fp16 on CUDA", flush=True)
        peak = gemm_peak_gflops()
        print(f"[bench] fp32 GEMM peak: {peak:.1f} GFLOP/s", flush=True)
        results = {}
        for system in systems:
            count = min(args.llm_rows, n_rows) if system.startswith("llm-") else n_rows
            result = run_worker(system, args, count, scratch)
            if result is not None:
                results[system] = result
        shape = _backbone_shape(Path(args.student))

    if not results:
        print("error: every benchmarked system failed", file=sys.stderr)
        return 1
    report, figures = build_report(results, args, peak, shape, human, spec.proposition_names)
    charts = write_charts(figures, Path(args.charts))
    command = getattr(args, "command_line", "rbr bench")
    header = [
        f"## Distilled scorer against LLM grading (`rbr bench`)", "",
        f"Command: `{command}`  ",
        f"Date: {started}; machine: {_machine()}; {_versions()}.  ",
        f"Data: first {n_rows} conversations of `{Path(args.data).name}`; LLM grading on the first "
        f"{min(args.llm_rows, n_rows)} of them, all {len(spec.proposition_names)} propositions each.  ",
        f"Student: `{args.student}`" + (" (untrained heads: agreement figures are meaningless)" if args.untrained else "") + ".  ",
        "Charts: " + ", ".join(f"[{p.name}]({p.as_posix()})" for p in charts), "",
    ]
    section = "\n".join(header) + report + "\n"
    update_benchmarks_md(Path(args.out), section)
    print(section)
    print(f"[bench] wrote {args.out} and {len(charts)} charts in {args.charts}")
    return 0


def register_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="conversations JSONL (default: the Gold test split beside the checkout, else the quickstart sample)")
    parser.add_argument("--rows", type=int, help="score only the first N conversations (default: all)")
    parser.add_argument("--llm-rows", type=int, default=3, help="conversations graded by the LLM systems (default 3)")
    parser.add_argument("--student", help="trained student folder (default: untrained heads on the packaged backbone)")
    parser.add_argument("--bundle", help="bundle exported from --student with an int8 variant (default: exported here)")
    parser.add_argument("--systems", default="llm-naive,llm-best,torch-eager,onnx-fp32,onnx-int8,ort-raw,cuda-fp16",
                        help="comma-separated systems to run")
    parser.add_argument("--batch-sizes", default="1,8,64,256", help="batch sizes for latency and throughput")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="minimum timed seconds per batch size and system")
    parser.add_argument("--out", default="BENCHMARKS.md", help="Markdown file whose rbr-bench section is replaced")
    parser.add_argument("--charts", default="docs/bench", help="folder for PNG charts")


def default_data() -> Path:
    gold = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "rbr-gold" / "test.jsonl"
    if gold.exists():
        return gold
    from distill.quickstart import sample_path

    return sample_path()
