"""The chart of bench/gpu.py's report: exactness per shape, items/s per batch budget, the
ratios against their targets, and the items/s behind them, each with its 95% interval
(as bench/charts.py draws them). A stage the report lacks leaves its panel saying so.

    .venv/bin/python bench/gpu_chart.py [REPORT.json ...]    (redraws; default bench/results/gpu*.json)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.charts import _ci, _errors, _save, plt  # noqa: E402

# (report section, figure, label, target, whether the target is a ceiling)
RATIOS = [
    ("throughput", "fraction_of_peak", "model FLOP/s\n/ matmul peak", 0.5, False),
    ("overhead", "ratio_b_over_a", "HTTP (64 clients)\n/ in-process", 0.95, False),
    ("layers", "ratio_lager_over_final", "LAGER\n/ final", None, False),
    ("layers", "ratio_return_layers_over_final", "return_layers\n/ final", None, False),
    ("prefix", "ratio_16_over_1", "per item, N=16\n/ N=1", 0.25, True),
]


def _missing(ax: Any, what: str, report: dict) -> None:
    stage = report.get("stages", {}).get(what, {})
    ax.text(0.5, 0.5, f"{what}: {stage.get('status', 'not run')}", ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def exactness(ax: Any, report: dict) -> None:
    rows = [r for r in report.get("exactness", {}).get("models", []) if "fp32_max_abs_error" in r]
    if not rows:
        return _missing(ax, "exactness", report)
    positions = range(len(rows))
    fp32 = [max(r["fp32_max_abs_error"], 1e-12) for r in rows]
    bf16 = [max(r["bf16_max_abs_error"], 1e-12) for r in rows]
    ax.bar([p - 0.2 for p in positions], fp32, 0.4, label="float32", color="#4c72b0")
    ax.bar([p + 0.2 for p in positions], bf16, 0.4, label="bf16", color="#c44e52")
    ax.axhline(report["exactness"]["tolerance_fp32"], color="k", ls="--", lw=1, label="float32 tolerance")
    ax.set_yscale("log")
    ax.set_ylim(top=100 * max(fp32 + bf16))  # room for the legend above the bars
    ax.set_xticks(list(positions), [r["shape"] for r in rows])
    ax.set_ylabel("max |served - forward| (log-prob)")
    ax.set_title("exactness against the model's own forward pass", fontsize=10)
    ax.legend(fontsize=8)


def batch_tokens(ax: Any, report: dict) -> None:
    section = report.get("batch_tokens", {})
    rows = section.get("rows", [])
    if not rows:
        return _missing(ax, "batch_tokens", report)
    rates = [r["items_per_s"] for r in rows]
    ax.errorbar(
        [r["max_batch_tokens"] for r in rows],
        rates,
        yerr=_errors(rates, [_ci(r, "items_per_s") for r in rows]),
        marker="o",
        capsize=3,
    )
    ax.axvline(section["default"], color="grey", ls=":", lw=1, label=f"default {section['default']}")
    ax.set_xscale("log", base=2)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("JUDGE_MAX_BATCH_TOKENS")
    ax.set_ylabel("items/s")
    ax.set_title(f"{section['items']} prompts; best {section.get('best')}", fontsize=10)
    ax.legend(fontsize=8)


def ratios(ax: Any, report: dict) -> None:
    shown = [
        (report[s], key, label, target, ceiling)
        for s, key, label, target, ceiling in RATIOS
        if key in report.get(s, {})
    ]
    if not shown:
        return _missing(ax, "throughput", report)
    values = [section[key] for section, key, *_ in shown]
    ax.bar(
        [label for _, _, label, *_ in shown],
        values,
        yerr=_errors(values, [_ci(section, key) for section, key, *_ in shown]),
        capsize=4,
        color="#55a868",
    )
    for i, (_, _, _, target, ceiling) in enumerate(shown):
        if target is not None:
            ax.plot([i - 0.4, i + 0.4], [target, target], color="k", lw=1.5, ls="--" if ceiling else "-")
    ax.tick_params(axis="x", labelsize=7)
    ax.set_title("ratios (line: target; dashed: at most)", fontsize=10)


def rates(ax: Any, report: dict) -> None:
    bars = []
    if "overhead" in report:
        bars += [(row["path"].split(",")[0], row) for row in report["overhead"]["rows"]]
    elif "throughput" in report:
        bars.append(("a: engine in-process", report["throughput"]))
    layers = report.get("layers", {})
    bars += [
        (name, {"items_per_s": layers[f"{name}_items_per_s"], "items_per_s_ci": layers[f"{name}_items_per_s_ci"]})
        for name in ("final", "lager", "return_layers")
        if f"{name}_items_per_s" in layers
    ]
    if not bars:
        return _missing(ax, "throughput", report)
    values = [row["items_per_s"] for _, row in bars]
    ax.bar(
        [name for name, _ in bars], values, yerr=_errors(values, [_ci(r, "items_per_s") for _, r in bars]), capsize=4
    )
    ax.tick_params(axis="x", labelsize=7)
    ax.set_ylabel("items/s")
    shape = report.get("load", {}).get("shape", "")
    ax.set_title(f"{shape}: items/s by path and method", fontsize=10)


def draw(report: dict, out: Path) -> None:
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for panel, ax in zip((exactness, batch_tokens, ratios, rates), axes.flat, strict=True):
        panel(ax, report)
    name = report.get("device_name") or report.get("device")
    fig.suptitle(f"{name}, torch {report.get('torch')}{' (tiny models)' if report.get('tiny') else ''}", fontsize=10)
    _save(fig, out)


def main() -> None:
    paths = [Path(p) for p in sys.argv[1:]] or sorted((ROOT / "bench" / "results").glob("gpu*.json"))
    for path in paths:
        draw(json.loads(path.read_text()), path.with_suffix(".png"))


if __name__ == "__main__":
    main()
