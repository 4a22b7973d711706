"""Speed on the device (bench/gpu.py, stages 2-5) on the largest shape, served by the
transformers engine in its default dtype (bf16 on a GPU):

- ``peak``: a dense matmul in that dtype, the ceiling the model's FLOP/s is set against;
- ``throughput``: the engine in-process on ~1,000-token prompts, in length-sorted batches
  within the service's own limits: items/s, prompt tokens/s and model FLOP/s over the peak;
- ``batch_tokens``: the same with the batch budget (``JUDGE_MAX_BATCH_TOKENS``, which
  the pass budget) swept;
- ``layers_prefix``: LAGER and ``return_layers`` against plain scoring on the same items
  (paired), and 16 responses under one rubric against one (the prefix cache);
- ``overhead``: the real server process under 64 concurrent clients against the
  in-process throughput run, on the same items (paired).

Every timed run starts with the prefix cache emptied, so no run reuses an earlier one's
prompts.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import torch
from judge_client.protocol import score_request

from bench import figures, gpu_serving, overhead, prefix, roofline
from bench.gpu_budget import Stage
from bench.gpu_exactness import WORDS
from service.offline.intervals import fmt

T = TypeVar("T")


class InProcess:
    """The in-process judge (the runtime every command shares) on its own event loop, so
    that the stages, plain functions, can run its coroutines one after another."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.stack = contextlib.AsyncExitStack()
        self.runtime: Any = None

    def open(self, **settings: Any) -> None:
        from service.cli.judge import open_runtime
        from service.config import Settings

        self.runtime = self.run(self.stack.enter_async_context(open_runtime(Settings(**settings))))

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def close(self) -> None:
        if self.loop.is_closed():
            return
        with contextlib.suppress(Exception):
            self.run(self.stack.aclose())
        self.runtime = None
        self.loop.close()


def matmul_peak(stage: Stage, report: dict[str, Any], device: torch.device, tiny: bool) -> None:
    """FLOP/s of a dense square matmul in the engine's dtype: 10 samples of ``inner``
    products each, after 3 untimed."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    size, inner = (512, 2) if tiny else (8192, 10)
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    seconds = []
    for _ in range(10):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(inner):
            a @ b
        _sync(device)
        seconds.append((time.perf_counter() - t0) / inner)
    mean, bounds = figures.mean(seconds)
    flop = 2 * size**3
    report["peak"] = {
        "dtype": str(dtype).removeprefix("torch."),
        "size": size,
        "tflops": flop / mean / 1e12,
        # FLOP/s falls as time rises: the bounds of the mean time are the rate's, swapped.
        "tflops_ci": [flop / bounds[1] / 1e12, flop / bounds[0] / 1e12],
        "seconds": seconds,
    }
    print(f"[peak] {report['peak']['dtype']} matmul {size}^3: {report['peak']['tflops']:.4g} TFLOP/s", flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def items(count: int, tiny: bool) -> list[dict[str, str]]:
    """``count`` distinct raw prompts of ~1,000 tokens (~100 with ``tiny``), no two sharing
    a prefix the engine would reuse."""
    rng = random.Random(1)
    words = (70, 110) if tiny else (700, 1100)
    out = []
    for i in range(count):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(*words)))
        out.append({"id": str(i), "prompt": f"{rng.random():.6f} {text} Score:"})
    return out


async def timed_batches(
    runtime: Any, request: dict[str, Any], batch_size: int, budget: int | None = None
) -> dict[str, Any]:
    """The request's tasks through the engine in-process, in length-sorted batches within
    ``batch_size`` and ``budget`` (default: the engine's pass budget; the engine's best case, as in
    bench/overhead.py), after emptying the prefix cache: figures.run's figures, plus each
    item's prompt tokens and the batches formed."""
    from service.requests.score import prepare_score

    engine = runtime.engine
    budget = budget or runtime.capabilities.pass_budget
    # Emptied first: batches are formed on what the cache holds, as the queue forms them.
    await engine.reset_prefix_cache()
    tasks = prepare_score(score_request(request), *runtime.require_ready(), runtime.model_name).tasks
    named = sorted(zip([item["id"] for item in request["items"]], tasks, strict=True), key=lambda p: p[1].length)
    batches: list[list[Any]] = [[]]
    for pair in named:
        batch = batches[-1]
        if batch and (len(batch) >= batch_size or engine.batch_cost([t for _, t in batch] + [pair[1]]) > budget):
            batches.append([])
        batches[-1].append(pair)
    sent, done, latencies = {}, {}, []
    started = time.perf_counter()
    for batch in batches:
        t0 = time.perf_counter()
        await engine.score([task for _, task in batch])
        t1 = time.perf_counter()
        latencies.append(t1 - t0)
        for name, _ in batch:
            sent[name], done[name] = t0 - started, t1 - started
    row = {"path": "a: engine in-process", **figures.run(sent, done, latencies)}
    tokens = {name: task.length for name, task in named}
    return row | {"prompt_tokens": [tokens[i] for i in row["item_ids"]], "batches": len(batches)}


def model_flops(runtime: Any, tokens: list[int]) -> list[float]:
    """Each item's model FLOPs, by bench/roofline.py's count: the LM head runs on the
    scoring position alone, so an untied head is left out of the per-token part too."""
    model = runtime.engine.model
    params = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    outside = embedding.numel() + (0 if head is embedding else head.numel())
    return [roofline.model_flops(model.config, 1, t, params, outside) for t in tokens]


def throughput(stage: Stage, report: dict[str, Any], judge: InProcess, prompts: list[dict[str, str]]) -> None:
    """Stage 2: the in-process engine at the service's own limits; also path (a) of the overhead."""
    runtime = judge.runtime
    judge.run(timed_batches(runtime, {"items": prompts[: min(8, len(prompts))]}, 8))  # warm-up, untimed
    row = judge.run(timed_batches(runtime, {"items": prompts}, runtime.settings.max_batch_size))
    shares = figures.shares(row["start_s"], row["done_s"])
    tokens_per_s, tokens_ci = figures.rate(shares, row["prompt_tokens"])
    flops, flops_ci = figures.rate(shares, model_flops(runtime, row["prompt_tokens"]))
    peak = report.get("peak", {}).get("tflops")
    section = {
        "items": len(prompts),
        "mean_prompt_tokens": sum(row["prompt_tokens"]) / len(prompts),
        "max_batch_tokens": runtime.capabilities.pass_budget,
        "max_batch_size": runtime.settings.max_batch_size,
        "dtype": str(runtime.engine.dtype).removeprefix("torch."),
        "items_per_s": row["items_per_s"],
        "items_per_s_ci": row["items_per_s_ci"],
        "prompt_tokens_per_s": tokens_per_s,
        "prompt_tokens_per_s_ci": tokens_ci,
        "model_tflops": flops / 1e12,
        "model_tflops_ci": [b / 1e12 for b in flops_ci],
        "run": row,
    }
    if peak:
        section |= {"fraction_of_peak": flops / 1e12 / peak, "fraction_of_peak_ci": [b / 1e12 / peak for b in flops_ci]}
    report["throughput"] = section
    ratio = fmt(section.get("fraction_of_peak"), section.get("fraction_of_peak_ci"), 2) if peak else "n/a"
    print(f"[throughput] {figures.describe(row)}, {tokens_per_s:.0f} prompt tokens/s, of the peak: {ratio}", flush=True)


def batch_tokens(
    stage: Stage, report: dict[str, Any], judge: InProcess, prompts: list[dict[str, str]], budgets: list[int]
) -> None:
    """Stage 4: items/s at each batch budget; the batch size is no limit here (the most
    prompts fit the largest budget), so the budget alone forms the batches."""
    default = judge.runtime.capabilities.pass_budget
    rows = []
    report["batch_tokens"] = {"items": len(prompts), "default": default, "rows": rows}
    for budget in budgets:
        if not stage.allows(f"JUDGE_MAX_BATCH_TOKENS={budget}", 1.5 * max((r["seconds"] for r in rows), default=0)):
            continue
        t0 = time.perf_counter()
        row = judge.run(timed_batches(judge.runtime, {"items": prompts}, len(prompts), budget))
        rows.append(
            {
                "max_batch_tokens": budget,
                "items_per_s": row["items_per_s"],
                "items_per_s_ci": row["items_per_s_ci"],
                "batches": row["batches"],
                "seconds": time.perf_counter() - t0,
            }
        )
        print(f"[batch_tokens] {budget}: {fmt(row['items_per_s'], row['items_per_s_ci'], 2)} items/s", flush=True)
    if rows:
        report["batch_tokens"]["best"] = max(rows, key=lambda r: r["items_per_s"])["max_batch_tokens"]


def layers_prefix(
    stage: Stage, report: dict[str, Any], judge: InProcess, prompts: list[dict[str, str]], repeats: int
) -> None:
    """Stage 5: LAGER and return_layers against plain scoring, the same items in the same
    batches (paired by item); then the prefix cache: N=16 responses under one rubric
    against N=1, per item, with a fresh rubric for every call (bench/prefix.py's)."""
    runtime = judge.runtime
    size = runtime.settings.max_batch_size
    runs = {}
    for name, extra in (("final", {}), ("lager", {"method": "lager"}), ("return_layers", {"return_layers": True})):
        if stage.allows(name, 1.5 * max((r["seconds"] for r in runs.values()), default=0)):
            t0 = time.perf_counter()
            runs[name] = judge.run(timed_batches(runtime, {"items": prompts, **extra}, size))
            runs[name]["seconds"] = time.perf_counter() - t0
    section: dict[str, Any] = {"items": len(prompts)}
    for name, row in runs.items():
        section[f"{name}_items_per_s"], section[f"{name}_items_per_s_ci"] = row["items_per_s"], row["items_per_s_ci"]
        if name != "final" and "final" in runs:
            ratio, bounds = figures.rate_ratio(figures.item_shares(row), figures.item_shares(runs["final"]))
            section[f"ratio_{name}_over_final"], section[f"ratio_{name}_over_final_ci"] = ratio, bounds
            print(f"[layers] {name} / final items/s: {fmt(ratio, bounds)}", flush=True)
    report["layers"] = section
    # 1 + 16 items a call, each about half a prompt's tokens, (repeats + 1) calls of each.
    per_item = max((r["seconds"] / len(prompts) for r in runs.values()), default=0)
    if stage.allows("prefix reuse", (repeats + 1) * 17 * per_item / 2):
        report["prefix"] = judge.run(_prefix(runtime, repeats))


async def _prefix(runtime: Any, repeats: int) -> dict[str, Any]:
    from service.requests.score import prepare_score

    engine, rng = runtime.engine, random.Random(0)
    prompts, limits = runtime.require_ready()
    calls: dict[int, list[float]] = {}
    reused = computed = 0
    for n in (1, 16):
        batches = [
            prepare_score(prefix.request(n, rng), prompts, limits, runtime.model_name).tasks for _ in range(repeats + 1)
        ]
        await engine.score(batches[0])
        calls[n] = []
        for tasks in batches[1:]:
            before = engine.prefix_tokens_reused
            t0 = time.perf_counter()
            await engine.score(tasks)
            calls[n].append((time.perf_counter() - t0) / n)
            if n == 16:
                reused += engine.prefix_tokens_reused - before
                computed += sum(task.length for task in tasks)
    ratio, bounds = figures.ratio_of_means(calls[16], calls[1])
    print(f"[prefix] per-item cost N=16 / N=1: {fmt(ratio, bounds)}, prompt tokens reused {reused / computed:.2f}")
    return {
        "repeats": repeats,
        "ratio_16_over_1": ratio,
        "ratio_16_over_1_ci": bounds,
        "reused_token_fraction_16": reused / computed,
        "seconds_per_item": {str(n): values for n, values in calls.items()},
    }


def overhead_run(
    stage: Stage, report: dict[str, Any], env: dict[str, str], prompts: list[dict[str, str]], clients: int
) -> None:
    """Stage 3: the real server process under ``clients`` concurrent one-item requests,
    against the throughput stage's in-process run (a) on the same items."""
    direct = report.get("throughput", {}).get("run")
    if direct is None:
        stage.skip("HTTP run", "no in-process run (the throughput stage) to compare with")
        return
    with gpu_serving.process(stage.deadline, env) as url:
        row = asyncio.run(overhead.http_load(url, prompts, clients))
    ratio, bounds = figures.rate_ratio(figures.item_shares(row), figures.item_shares(direct))
    report["overhead"] = {
        "clients": clients,
        "items": len(prompts),
        "ratio_b_over_a": ratio,
        "ratio_b_over_a_ci": bounds,
        "rows": [{k: v for k, v in direct.items() if k != "prompt_tokens"}, row],
    }
    print(f"[overhead] {figures.describe(row)}; b/a = {fmt(ratio, bounds)}", flush=True)
