"""PNG charts for the benchmark reports in bench/results.

Each benchmark calls its chart function after writing its JSON; this script redraws every
chart from the JSON reports present:

    .venv/bin/python bench/charts.py
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

RESULTS = Path(__file__).resolve().parent / "results"


def _save(fig: plt.Figure, out: Path) -> None:
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"wrote {out}")


def overhead(report: dict, out: Path) -> None:
    rows = report["rows"]
    names = [row["path"] for row in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.barh(names, [row["items_per_s"] for row in rows], color=["#4c72b0", "#55a868", "#c44e52"])
    left.invert_yaxis()
    left.set_xlabel("items/s")
    left.set_title(f"{report['engine']}: {report['items']} items, b/a = {report['ratio_b_over_a']:.3f}")
    width = 0.38
    positions = range(len(rows))
    right.bar([p - width / 2 for p in positions], [row["p50_ms"] for row in rows], width, label="p50")
    right.bar([p + width / 2 for p in positions], [row["p99_ms"] for row in rows], width, label="p99")
    right.set_xticks(list(positions), [name.split(":")[0] for name in names])
    right.set_ylabel("latency (ms)")
    right.set_title(f"latency per request (a: {report.get('a_latency', 'per batch')})", fontsize=9)
    right.legend()
    _save(fig, out)


def peer(report: dict, out: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    names = {
        "ours_items_per_s": "ours (default:\nlayer capture, eager)",
        "ours_compiled_items_per_s": "ours, compiled\n(JUDGE_VLLM_LAYERS=false)",
        "peer_items_per_s": "vLLM OpenAI server\n(logprobs=20)",
    }
    bars = {label: report[key] for key, label in names.items() if key in report}
    left.bar(list(bars), list(bars.values()), color="#4c72b0")
    left.set_ylabel("items/s")
    left.set_title(f"{report['items']} items, {report['concurrency']} concurrent")
    left.tick_params(axis="x", labelsize=8)
    errors = report.get("peer_expected_score_errors") or []
    right.hist(errors, bins=20, color="#c44e52")
    right.set_xlabel("|expected score from top-20 - exact|")
    right.set_ylabel("items")
    missing = 100 * report["peer_top20_missing_a_label"]
    right.set_title(f"peer's top-20 missed a label on {missing:.0f}% of items")
    _save(fig, out)


def prefix(report: dict, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for reuse in (True, False):
        rows = sorted((r for r in report["rows"] if r["prefix_reuse"] is reuse), key=lambda r: r["n"])
        label = "prefix reuse on" if reuse else "prefix reuse off"
        ax.plot([r["n"] for r in rows], [1000 * r["seconds_per_item"] for r in rows], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N responses sharing one rubric and instruction")
    ax.set_ylabel("ms per item")
    ratio = report.get("ratio_16_over_1")
    title = f"{report.get('engine', 'transformers')}: N=16 / N=1 = {ratio:.2f}" if ratio else report.get("engine", "")
    ax.set_title(title)
    ax.set_ylim(bottom=0)
    ax.legend()
    _save(fig, out)


def roofline(report: dict, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    values = [report["achieved_gflops"], report["matmul_gflops"]]
    ax.barh(["model forward", "dense fp32 matmul"], values, color=["#4c72b0", "#8c8c8c"])
    ax.set_xlabel("GFLOP/s")
    ax.set_title(f"batch {report['batch']} x {report['tokens_per_item']} tokens: ratio {report['ratio']:.2f}")
    _save(fig, out)


def scaling(report: dict, out: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    rows = report["concurrency"]
    levels = [r["concurrency"] for r in rows]
    left.plot(levels, [r["items_per_s"] for r in rows], marker="o", color="#4c72b0")
    left.set_xscale("log", base=2)
    left.set_xlabel("concurrent clients")
    left.set_ylabel("items/s", color="#4c72b0")
    twin = left.twinx()
    twin.plot(levels, [r["p99_ms"] / 1000 for r in rows], marker="s", color="#c44e52")
    twin.set_ylabel("p99 latency (s)", color="#c44e52")
    left.set_title(f"{report['engine']}: throughput and p99")
    left.set_ylim(bottom=0)
    twin.set_ylim(bottom=0)
    memory = report["memory"]
    right.plot([m["batch_tokens"] for m in memory], [m["peak_rss_mib"] for m in memory], marker="o")
    right.set_xscale("log", base=2)
    right.set_xlabel("tokens in one batch")
    right.set_ylabel("peak RSS (MiB)")
    right.set_title("memory peak")
    right.set_ylim(bottom=0)
    _save(fig, out)


def criteria(report: dict, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for template, entry in report["templates"].items():
        ks = sorted(int(k) for k in entry["seconds_per_item"])
        ax.plot(ks, [1000 * entry["seconds_per_item"][str(k)] for k in ks], marker="o", label=template)
    ax.set_xlabel("criteria per item (K)")
    ax.set_ylabel("ms per item")
    ax.set_title(f"{report['engine']}: {report['items']} Topical-Chat items, one request each")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, out)


def rank(report: dict, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    rows = report["rows"]
    names = [f"N={row['n']}" for row in rows]
    taus = [row["kendall_tau"] for row in rows]
    errors = [
        [t - row["kendall_tau_ci"][0] for t, row in zip(taus, rows, strict=True)],
        [row["kendall_tau_ci"][1] - t for t, row in zip(taus, rows, strict=True)],
    ]
    ax.bar(names, taus, yerr=errors, capsize=4, color="#4c72b0")
    ax.set_ylim(0, 1)
    ax.set_ylabel("Kendall tau with the all-pairs ranking")
    ax.set_title("O(N log N) design against all pairs (95% bootstrap interval)")
    _save(fig, out)


def labels(report: dict, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    rates = report["items_per_s"]
    ax.bar(list(rates), list(rates.values()), color=["#4c72b0", "#55a868"])
    ax.set_ylabel("items/s")
    ax.set_title(
        f"{report['engine']}: {report['items']} items, 1-10 / 1-5 = {report['ratio_10_over_5']:.3f}", fontsize=10
    )
    _save(fig, out)


def critique(report: dict, out: Path) -> None:
    runs = report["critique"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.bar([str(run["max_tokens"]) for run in runs], [run["items_per_s"] for run in runs], color="#4c72b0")
    left.set_xlabel("critique tokens")
    left.set_ylabel("items/s")
    left.set_title(f"{report['engine']}: critique items/s, {runs[0]['items']} at once")
    right.bar(["idle", "under critique load"], [report["plain_idle_p50_ms"], report["plain_loaded_p50_ms"]])
    right.set_ylabel("plain-score p50 (ms)")
    right.set_title(f"plain score p50: loaded / idle = {report['ratio_loaded_over_idle']:.2f}")
    _save(fig, out)


def engines(report: dict, out: Path) -> None:
    rows = report["rows"]
    names = [row["setup"].replace("-no-", "\nno ").replace("-", "\n") for row in rows]
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(12, 3.8))
    left.bar(names, [row["items_per_s"] for row in rows], color="#4c72b0")
    left.set_ylabel("items/s")
    ratios = [
        f"/ {name} = {report[key]:.2f}"
        for name, key in (
            ("vLLM", "ratio_transformers_over_vllm"),
            ("compiled", "ratio_transformers_over_vllm_compiled"),
        )
        if key in report
    ]
    suffix = (", transformers " + ", ".join(ratios)) if ratios else ""
    left.set_title(f"{report['items']} items, {report['concurrency']} clients{suffix}", fontsize=9)
    middle.bar(names, [row["startup_s"] for row in rows], color="#55a868")
    middle.set_ylabel("start-up (s)")
    right.bar(names, [row["peak_rss_gib"] for row in rows], color="#c44e52")
    right.set_ylabel("peak memory (GiB)")
    for ax in (left, middle, right):
        ax.tick_params(axis="x", labelsize=8)
    _save(fig, out)


CHARTS: dict[str, Callable[[dict, Path], None]] = {
    "engines": engines,
    "critique": critique,
    "overhead": overhead,
    "peer": peer,
    "prefix": prefix,
    "roofline": roofline,
    "scaling": scaling,
    "criteria": criteria,
    "rank": rank,
    "labels": labels,
}


def draw(json_path: Path) -> None:
    """Draw the chart for one report, named after it (``overhead-vllm.json`` -> ``.png``)."""
    kind = json_path.stem.split("-")[0]
    if kind in CHARTS:
        CHARTS[kind](json.loads(json_path.read_text()), json_path.with_suffix(".png"))


def main() -> None:
    paths = [Path(p) for p in sys.argv[1:]] or sorted(RESULTS.glob("*.json"))
    for path in paths:
        draw(path)


if __name__ == "__main__":
    main()
