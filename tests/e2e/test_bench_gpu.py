"""bench/gpu.py cannot rot: its CPU dry run (--tiny) runs every stage's code path, the real
app and server process included, and its report holds every figure, exactness within
bounds."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
STAGES = ["peak", "exactness", "load", "throughput", "batch_tokens", "layers_prefix", "overhead"]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("gpu") / "gpu-tiny.json"
    # Budgets scaled far up: on a busy host the dry run must still run every stage.
    command = [sys.executable, "bench/gpu.py", "--device", "cpu", "--tiny", "--budget-scale", "20", "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert out.with_suffix(".png").stat().st_size > 0
    return json.loads(out.read_text())


@pytest.mark.slow
def test_every_stage_ran(report: dict) -> None:
    assert report["device"] == "cpu" and report["tiny"] is True
    assert list(report["stages"]) == STAGES
    for name, stage in report["stages"].items():
        assert stage["status"] == "done", (name, stage)
        assert stage["skipped"] == [] and stage["spent_s"] >= 0


@pytest.mark.slow
def test_exactness_on_three_architectures(report: dict) -> None:
    section = report["exactness"]
    models = {row["shape"]: row for row in section["models"]}
    assert list(models) == ["smollm2-135m", "llama3-8b", "qwen2.5-7b"]
    assert [row["architecture"] for row in models.values()] == [
        "LlamaForCausalLM",
        "LlamaForCausalLM",
        "Qwen2ForCausalLM",
    ]
    for row in models.values():
        # The figures are what the kept samples give: served against the forward passes.
        for served, reference, figure in (
            ("served_float32", "reference_fp32", "fp32_max_abs_error"),
            ("served_bfloat16", "reference_fp32", "bf16_max_abs_error"),
            ("served_bfloat16", "reference_bf16", "bf16_max_abs_error_vs_bf16_forward"),
        ):
            errors = [
                abs(a - b) for x, y in zip(row[served], row[reference], strict=True) for a, b in zip(x, y, strict=True)
            ]
            assert len(errors) == 8 * 5 and row[figure] == pytest.approx(max(errors))
        assert row["fp32_max_abs_error"] <= 1e-4 and row["fp32_within_tolerance"] is True
        # bf16 rounds: its error shows, and stays that of rounding, not of a wrong result.
        assert 1e-4 < row["bf16_max_abs_error"] < 0.5
        assert 0 <= row["bf16_max_distribution_error"] < 0.1
        assert set(row["paths_float32"]) == {"padded_batches", "prefix_cache", "labels_on_kv_cache"}
        # Label distributions far from uniform: the labels' log-probabilities spread widely.
        assert max(max(r) - min(r) for r in row["reference_fp32"]) > 1
        assert all(row["paths_float32"].values())


@pytest.mark.slow
def test_speed_figures(report: dict) -> None:
    assert report["peak"]["tflops"] > 0 and len(report["peak"]["seconds"]) == 10
    # The speed stages time the engine's batched paths, proven at load, not its fallbacks.
    assert all(report["load"]["paths"].values())
    throughput = report["throughput"]
    assert throughput["items"] == 32 and 70 < throughput["mean_prompt_tokens"] < 200
    for key in ("items_per_s", "prompt_tokens_per_s", "model_tflops", "fraction_of_peak"):
        low, high = throughput[f"{key}_ci"]
        assert 0 < low <= throughput[key] <= high, key
    sweep = report["batch_tokens"]
    assert [row["max_batch_tokens"] for row in sweep["rows"]] == [256, 512, 1024, 2048]
    assert sweep["best"] in {256, 512, 1024, 2048}
    # Smaller budgets form more batches of the same prompts.
    assert [row["batches"] for row in sweep["rows"]] == sorted((row["batches"] for row in sweep["rows"]), reverse=True)
    layers = report["layers"]
    for key in ("ratio_lager_over_final", "ratio_return_layers_over_final"):
        assert math.isfinite(layers[key]) and layers[key] > 0
    prefix = report["prefix"]
    # 16 responses under one ~450-token rubric: the rubric runs once, most tokens are reused.
    assert prefix["reused_token_fraction_16"] > 0.6 and prefix["ratio_16_over_1"] < 1
    overhead = report["overhead"]
    assert overhead["clients"] == 64 and overhead["ratio_b_over_a"] > 0
    assert [len(row["item_ids"]) for row in overhead["rows"]] == [32, 32]
