"""PNG charts for the benchmark reports in bench/results.

Each benchmark calls its chart function after writing its JSON; this script redraws every
chart from the JSON reports present:

    .venv/bin/python bench/charts.py [REPORT.json ...]

A figure that has a 95% interval in its report (``<figure>_ci``) is drawn with it as an
error bar; reports written before the intervals were kept are drawn without.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.figures import tail_key  # noqa: E402
from service.offline.intervals import fmt  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _save(fig: plt.Figure, out: Path) -> None:
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"wrote {out}")


def _errors(values: Sequence[float], bounds: Sequence[Sequence[float] | None]) -> list[list[float]] | None:
    """Error-bar lengths (below, above) for ``values`` from their intervals; nan (no bar)
    where an interval is missing or undefined; None when none has one."""
    below, above = [], []
    for value, bound in zip(values, bounds, strict=True):
        ok = bound is not None and all(isinstance(b, int | float) and math.isfinite(b) for b in bound)
        below.append(value - bound[0] if ok and bound else math.nan)
        above.append(bound[1] - value if ok and bound else math.nan)
    return None if all(math.isnan(b) for b in below) else [below, above]


def _ci(row: Mapping[str, Any], key: str, scale: float = 1.0) -> list[float] | None:
    """``row[key + "_ci"]`` times ``scale``, or None where the report has none."""
    bound = row.get(f"{key}_ci")
    return None if bound is None else [scale * b for b in bound]


def overhead(report: dict, out: Path) -> None:
    rows = report["rows"]
    names = [row["path"] for row in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    rates = [row["items_per_s"] for row in rows]
    xerr = _errors(rates, [_ci(row, "items_per_s") for row in rows])
    left.barh(names, rates, xerr=xerr, capsize=4, color=["#4c72b0", "#55a868", "#c44e52"])
    left.invert_yaxis()
    left.set_xlabel("items/s")
    ratio = fmt(report["ratio_b_over_a"], report.get("ratio_b_over_a_ci"))
    left.set_title(f"{report['engine']}: {report['items']} items, b/a = {ratio}", fontsize=10)
    width = 0.38
    positions = range(len(rows))
    p50 = [row["p50_ms"] for row in rows]
    tail = [row[tail_key(row)] for row in rows]
    right.bar(
        [p - width / 2 for p in positions],
        p50,
        width,
        yerr=_errors(p50, [_ci(row, "p50_ms") for row in rows]),
        capsize=3,
        label="p50",
    )
    label = "p99" if all(tail_key(row) == "p99_ms" for row in rows) else "p99 (slowest, below 100 requests)"
    right.bar(
        [p + width / 2 for p in positions],
        tail,
        width,
        yerr=_errors(tail, [_ci(row, tail_key(row)) for row in rows]),
        capsize=3,
        label=label,
    )
    right.set_xticks(list(positions), [name.split(":")[0] for name in names])
    right.set_ylabel("latency (ms)")
    right.set_title(f"latency per request (a: {report.get('a_latency', 'per batch')})", fontsize=9)
    right.legend()
    _save(fig, out)


def peer(report: dict, out: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    names = {
        "ours_items_per_s": "ours, default\n(capture on)",
        "ours_lager_items_per_s": "ours, every\nrequest lager",
        "ours_no_capture_items_per_s": "ours, no capture\n(LAYERS=false)",
        "peer_items_per_s": "vLLM server\n(logprobs=20)",
    }
    keys = [key for key in names if key in report]
    values = [report[key] for key in keys]
    yerr = _errors(values, [_ci(report, key) for key in keys])
    left.bar([names[key] for key in keys], values, yerr=yerr, capsize=4, color="#4c72b0")
    left.set_ylabel("items/s")
    left.set_title(f"{report['items']} items, {report['concurrency']} concurrent")
    left.tick_params(axis="x", labelsize=8)
    errors = report.get("peer_expected_score_errors") or []
    right.hist(errors, bins=20, color="#c44e52")
    right.set_xlabel("|expected score from top-20 - exact|")
    right.set_ylabel("items")
    missing = fmt(100 * report["peer_top20_missing_a_label"], _ci(report, "peer_top20_missing_a_label", 100), 0)
    right.set_title(f"peer's top-20 missed a label on {missing}% of items", fontsize=10)
    _save(fig, out)


def prefix(report: dict, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for reuse in (True, False):
        rows = sorted((r for r in report["rows"] if r["prefix_reuse"] is reuse), key=lambda r: r["n"])
        label = "prefix reuse on" if reuse else "prefix reuse off"
        ms = [1000 * r["seconds_per_item"] for r in rows]
        yerr = _errors(ms, [_ci(r, "seconds_per_item", 1000) for r in rows])
        ax.errorbar([r["n"] for r in rows], ms, yerr=yerr, marker="o", capsize=3, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N responses sharing one rubric and instruction")
    ax.set_ylabel("ms per item")
    ratio = report.get("ratio_16_over_1")
    engine = report.get("engine", "transformers")
    ax.set_title(f"{engine}: N=16 / N=1 = {fmt(ratio, _ci(report, 'ratio_16_over_1'), 2)}" if ratio else engine)
    ax.set_ylim(bottom=0)
    ax.legend()
    _save(fig, out)


def roofline(report: dict, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    keys = ["achieved_gflops", "matmul_gflops"]
    values = [report[key] for key in keys]
    xerr = _errors(values, [_ci(report, key) for key in keys])
    ax.barh(["model forward", "dense fp32 matmul"], values, xerr=xerr, capsize=4, color=["#4c72b0", "#8c8c8c"])
    ax.set_xlabel("GFLOP/s")
    ratio = fmt(report["ratio"], _ci(report, "ratio"), 2)
    ax.set_title(f"batch {report['batch']} x {report['tokens_per_item']} tokens: ratio {ratio}", fontsize=10)
    _save(fig, out)


def scaling(report: dict, out: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    rows = report["concurrency"]
    levels = [r["concurrency"] for r in rows]
    rates = [r["items_per_s"] for r in rows]
    yerr = _errors(rates, [_ci(r, "items_per_s") for r in rows])
    left.errorbar(levels, rates, yerr=yerr, marker="o", capsize=3, color="#4c72b0")
    left.set_xscale("log", base=2)
    left.set_xlabel("concurrent clients")
    left.set_ylabel("items/s", color="#4c72b0")
    twin = left.twinx()
    tail = [r[tail_key(r)] / 1000 for r in rows]
    yerr = _errors(tail, [_ci(r, tail_key(r), 1 / 1000) for r in rows])
    twin.errorbar(levels, tail, yerr=yerr, marker="s", capsize=3, color="#c44e52")
    # Of fewer than 100 requests the p99 is the slowest one (max_ms).
    label = "p99 latency" if all(tail_key(r) == "p99_ms" for r in rows) else "slowest request"
    twin.set_ylabel(f"{label} (s)", color="#c44e52")
    left.set_title(f"{report['engine']}: throughput and {label}")
    left.set_ylim(bottom=0)
    twin.set_ylim(bottom=0)
    memory = report["memory"]
    peaks = [m["peak_rss_mib"] for m in memory]
    yerr = _errors(peaks, [_ci(m, "peak_rss_mib") for m in memory])
    right.errorbar([m["batch_tokens"] for m in memory], peaks, yerr=yerr, marker="o", capsize=3)
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
        ms = [1000 * entry["seconds_per_item"][str(k)] for k in ks]
        bounds = entry.get("seconds_per_item_ci", {})
        yerr = _errors(ms, [[1000 * b for b in bounds[str(k)]] if str(k) in bounds else None for k in ks])
        ax.errorbar(ks, ms, yerr=yerr, marker="o", capsize=3, label=template)
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
    yerr = _errors(taus, [_ci(row, "kendall_tau") for row in rows])
    ax.bar(names, taus, yerr=yerr, capsize=4, color="#4c72b0")
    ax.set_ylim(0, 1)
    ax.set_ylabel("Kendall tau with the all-pairs ranking")
    ax.set_title("O(N log N) design against all pairs (95% bootstrap interval)")
    _save(fig, out)


def labels(report: dict, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    rates = report["items_per_s"]
    bounds = report.get("items_per_s_ci", {})
    yerr = _errors(list(rates.values()), [bounds.get(name) for name in rates])
    ax.bar(list(rates), list(rates.values()), yerr=yerr, capsize=4, color=["#4c72b0", "#55a868"])
    ax.set_ylabel("items/s")
    ratio = fmt(report["ratio_10_over_5"], _ci(report, "ratio_10_over_5"))
    ax.set_title(f"{report['engine']}: {report['items']} items, 1-10 / 1-5 = {ratio}", fontsize=9)
    _save(fig, out)


def critique(report: dict, out: Path) -> None:
    runs = report["critique"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    rates = [run["items_per_s"] for run in runs]
    yerr = _errors(rates, [_ci(run, "items_per_s") for run in runs])
    left.bar([str(run["max_tokens"]) for run in runs], rates, yerr=yerr, capsize=4, color="#4c72b0")
    left.set_xlabel("critique tokens")
    left.set_ylabel("items/s")
    left.set_title(f"{report['engine']}: critique items/s, {runs[0]['items']} at once")
    keys = ["plain_idle_p50_ms", "plain_loaded_p50_ms"]
    p50 = [report[key] for key in keys]
    yerr = _errors(p50, [_ci(report, key) for key in keys])
    right.bar(["idle", "under critique load"], p50, yerr=yerr, capsize=4)
    right.set_ylabel("plain-score p50 (ms)")
    ratio = fmt(report["ratio_loaded_over_idle"], _ci(report, "ratio_loaded_over_idle"), 2)
    right.set_title(f"plain score p50: loaded / idle = {ratio}", fontsize=10)
    _save(fig, out)


def engines(report: dict, out: Path) -> None:
    rows = report["rows"]
    names = [row["setup"].replace("-no-", "\nno ").replace("-", "\n") for row in rows]
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(3 + 2.6 * len(rows), 3.8))
    panels = ((left, "items_per_s", "items/s", "#4c72b0"), (middle, "startup_s", "start-up (s)", "#55a868"))
    panels += ((right, "peak_rss_gib", "peak memory (GiB)", "#c44e52"),)
    for ax, key, ylabel, color in panels:
        values = [row[key] for row in rows]
        yerr = _errors(values, [_ci(row, key) for row in rows])
        ax.bar(names, values, yerr=yerr, capsize=4, color=color)
        ax.set_ylabel(ylabel)
        ax.tick_params(axis="x", labelsize=8)
    ratios = [
        f"/ {name} = {fmt(report[key], _ci(report, key), 2)}"
        for name, key in (
            ("vLLM", "ratio_transformers_over_vllm"),
            ("no capture", "ratio_transformers_over_vllm_no_capture"),
            ("unpacked", "ratio_transformers_over_transformers_unpacked"),
        )
        if key in report
    ]
    suffix = (", transformers " + ", ".join(ratios)) if ratios else ""
    fig.suptitle(f"{report['items']} items, {report['concurrency']} clients{suffix}", fontsize=9)
    _save(fig, out)


def critique_routes(report: dict, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.8))
    keys = {"stop_and_read_items_per_s": "stop-and-read\n(served)", "one_request_items_per_s": "one request"}
    values = [report[key] for key in keys]
    yerr = _errors(values, [_ci(report, key) for key in keys])
    ax.bar(list(keys.values()), values, yerr=yerr, capsize=4, color=["#4c72b0", "#55a868"])
    ax.set_ylabel("critique items/s")
    key = "ratio_one_request_over_stop_and_read"
    ratio = fmt(report[key], _ci(report, key))
    ax.set_title(
        f"vLLM, {report['items']} items, {report['max_tokens']} tokens: one request / served = {ratio}", fontsize=9
    )
    _save(fig, out)


def batch_jobs(report: dict, out: Path) -> None:
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(12, 3.8))
    speed, latency, recovery = report["throughput"], report["latency"], report["recovery"]
    ratio = fmt(speed["ratio_batch_over_command"], speed["ratio_batch_over_command_ci"], 2)
    left.bar(["batch job", "judge-service score"], [speed["batch_items_per_s"], speed["command_items_per_s"]])
    left.set_ylabel("items/s")
    left.set_title(f"{speed['items']} items, engine idle: batch/command {ratio}", fontsize=9)
    rows = [("idle", latency["idle"]), ("beside a batch", latency["beside_batch"])]
    tails = [row[tail_key(row)] for _, row in rows]
    tail_errors = _errors(tails, [_ci(row, tail_key(row)) for _, row in rows])
    p50 = [row["p50_ms"] for _, row in rows]
    positions = range(len(rows))
    middle.bar([p - 0.2 for p in positions], p50, 0.4, yerr=_errors(p50, [_ci(r, "p50_ms") for _, r in rows]))
    middle.bar([p + 0.2 for p in positions], tails, 0.4, yerr=tail_errors, label="p99 / max")
    middle.set_xticks(list(positions), [name for name, _ in rows])
    middle.set_ylabel("ms, one item a request")
    middle.legend(["p50", "p99 / max"], fontsize=8)
    beside = fmt(latency["p50_ratio"], latency["p50_ratio_ci"], 2)
    middle.set_title(f"online latency, {latency['background_items']}-item batch: p50 x{beside}", fontsize=9)
    names = ["answered before\nthe kill", "redone after\nthe restart", "one chunk"]
    values = [recovery["answered_before_kill"], recovery["redone"], recovery["chunk_items"]]
    right.bar(names, values, color=["#4c72b0", "#c44e52", "#999999"])
    right.set_ylabel("lines")
    right.tick_params(axis="x", labelsize=8)
    right.set_title(f"SIGKILL mid-job, {recovery['items']} lines", fontsize=9)
    if report.get("quick"):
        fig.suptitle("--quick: a check that the benchmark runs, not a measurement", fontsize=9)
    _save(fig, out)


CHARTS: dict[str, Callable[[dict, Path], None]] = {
    "batch-jobs": batch_jobs,
    "critique-routes": critique_routes,
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
    """Draw the chart for one report, named after it (``overhead-vllm.json`` -> ``.png``):
    by its whole name where a chart has it (``critique-routes``), else by its first part."""
    kind = json_path.stem if json_path.stem in CHARTS else json_path.stem.split("-")[0]
    if kind in CHARTS:
        CHARTS[kind](json.loads(json_path.read_text()), json_path.with_suffix(".png"))


def main() -> None:
    paths = [Path(p) for p in sys.argv[1:]] or sorted(RESULTS.glob("*.json"))
    for path in paths:
        draw(path)


if __name__ == "__main__":
    main()
