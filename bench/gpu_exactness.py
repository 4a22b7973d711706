"""Exactness on the device (bench/gpu.py, stage 1): each shape's served label
log-probabilities against its own forward pass.

Every shape is built with random weights and saved; the real app loads the directory
(``JUDGE_MODEL``) twice, in float32 and in bf16, and scores the same raw prompts in one
request (``return_logprobs``), so they run as one padded batch, four of them on a
shared prefix. The float32 figures must come within 1e-4 of the float32 forward pass;
the bf16 ones are reported against both forward passes, in log-probability and in the
label distribution a user reads.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

import httpx
import torch

from bench import gpu_models, gpu_serving
from bench.gpu_budget import Stage

TOLERANCE_FP32 = 1e-4
LABELS = ["1", "2", "3", "4", "5"]
WORDS = (
    "the a judge answer question response helpful correct clear because however model data river "
    "mountain city light reason evidence detail summary error step result value number table plan"
).split()

# Seconds to build, check and serve one shape: (full size, tiny), from its parameters.
SMALL_SHAPE_S, LARGE_SHAPE_S, TINY_SHAPE_S = 20.0, 60.0, 8.0


def prompts(tiny: bool) -> list[str]:
    """Four prompts of different lengths, then four that share a long prefix."""
    rng = random.Random(0)

    def words(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    lengths, shared, tails = (
        ([10, 30, 60, 120], 80, [5, 10, 15, 20]) if tiny else ([20, 80, 300, 700], 400, [10, 25, 40, 60])
    )
    prefix = "Rate the response. " + words(shared)
    own = [f"Item {i}: {words(n)} Score:" for i, n in enumerate(lengths)]
    return own + [f"{prefix} Item {i}: {words(n)} Score:" for i, n in enumerate(tails)]


def label_ids(tokenizer: Any) -> list[int]:
    ids = [tokenizer.encode(label, add_special_tokens=False) for label in LABELS]
    if any(len(token) != 1 for token in ids):
        raise ValueError(f"labels {LABELS} are not single tokens in this tokenizer: {ids}")
    return [token[0] for token in ids]


def served(url: str, texts: list[str]) -> list[list[float]]:
    """The served log-probability of each label after each prompt, from one request."""
    body = {"items": [{"id": str(i), "prompt": text} for i, text in enumerate(texts)], "return_logprobs": True}
    response = httpx.post(f"{url}/v1/score", json=body, timeout=600)
    response.raise_for_status()
    return [[item["logprobs"][label] for label in LABELS] for item in response.json()["results"]]


def paths(engine: Any) -> dict[str, bool]:
    """Which batch paths the engine proved exact at load (each refused one falls back to a
    slower exact path): the figures above come from these."""
    return {
        "padded_batches": engine.batches_exact,
        "prefix_cache": engine.prefix_cache is not None,
        "labels_on_kv_cache": engine.continue_in_cache,
    }


def max_error(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for row_a, row_b in zip(a, b, strict=True) for x, y in zip(row_a, row_b, strict=True))


def distribution(row: list[float]) -> list[float]:
    """The label distribution a user reads: the labels' probabilities, renormalised."""
    top = max(row)
    weights = [math.exp(x - top) for x in row]
    return [w / sum(weights) for w in weights]


def check_shape(
    stage: Stage, name: str, work_dir: Path, tokenizer: Any, device: torch.device, tiny: bool
) -> tuple[dict[str, Any], gpu_models.Built]:
    """Build ``name``, serve it in float32 and in bf16, and compare with its forward passes."""
    texts = prompts(tiny)
    ids = [tokenizer.encode(text, add_special_tokens=False) for text in texts]
    started = time.monotonic()
    built = gpu_models.build(name, work_dir / name, tokenizer, device, tiny, ids, label_ids(tokenizer))
    row: dict[str, Any] = {
        "shape": name,
        "architecture": built.config.architectures[0] if built.config.architectures else built.config.model_type,
        "parameters": built.parameters,
        "layers": built.config.num_hidden_layers,
        "hidden_size": built.config.hidden_size,
        "vocab_size": built.config.vocab_size,
        "prompt_tokens": [len(x) for x in ids],
        "build_s": round(time.monotonic() - started, 2),
        "reference_fp32": built.reference_fp32,
        "reference_bf16": built.reference_bf16,
    }
    for dtype in ("float32", "bfloat16"):
        started = time.monotonic()
        settings = {"model": str(built.directory), "engine": "transformers", "device": device.type, "dtype": dtype}
        with gpu_serving.in_thread(stage.deadline, **settings) as (url, runtime):
            row[f"served_{dtype}"] = served(url, texts)
            row[f"paths_{dtype}"] = paths(runtime.engine)
        del runtime  # the engine's caches with it, before the next model loads
        gpu_models.release()
        row[f"serve_{dtype}_s"] = round(time.monotonic() - started, 2)
    fp32, bf16 = row["served_float32"], row["served_bfloat16"]
    row["fp32_max_abs_error"] = max_error(fp32, built.reference_fp32)
    row["fp32_within_tolerance"] = row["fp32_max_abs_error"] <= TOLERANCE_FP32
    row["bf16_max_abs_error"] = max_error(bf16, built.reference_fp32)
    row["bf16_max_abs_error_vs_bf16_forward"] = max_error(bf16, built.reference_bf16)
    row["bf16_max_distribution_error"] = max_error(
        [distribution(r) for r in bf16], [distribution(r) for r in built.reference_fp32]
    )
    print(
        f"[exactness] {name}: fp32 {row['fp32_max_abs_error']:.2e} (tolerance {TOLERANCE_FP32:g}), "
        f"bf16 {row['bf16_max_abs_error']:.2e} in log-probability, "
        f"{row['bf16_max_distribution_error']:.2e} in the label distribution",
        flush=True,
    )
    return row, built


def run(
    stage: Stage, report: dict[str, Any], work_dir: Path, tokenizer: Any, device: torch.device, tiny: bool
) -> gpu_models.Built | None:
    """Stage 1 over the three shapes, the 8B one second: its directory is kept for the
    speed stages, which run on it (returned; None where it was not built), and where
    time runs short it is the 7B shape that goes."""
    section: dict[str, Any] = {"tolerance_fp32": TOLERANCE_FP32, "labels": LABELS, "models": []}
    report["exactness"] = section
    kept = None
    for name in ("smollm2-135m", "llama3-8b", "qwen2.5-7b"):
        needs = TINY_SHAPE_S if tiny else SMALL_SHAPE_S if name == "smollm2-135m" else LARGE_SHAPE_S
        if not stage.allows(name, needs):
            continue
        try:
            row, built = check_shape(stage, name, work_dir, tokenizer, device, tiny)
        except Exception as exc:
            # One shape failing (say, a kernel the engine's load-time proofs refuse) must not
            # hide the others' figures.
            section["models"].append({"shape": name, "error": f"{type(exc).__name__}: {exc}"})
            stage.skip(name, f"failed: {type(exc).__name__}: {exc}")
            continue
        section["models"].append(row)
        if name == "llama3-8b":
            kept = built
        else:
            gpu_models.remove(built.directory)
    return kept
