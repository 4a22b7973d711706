"""Every GPU figure in one prepared run: exactness, throughput against the matmul peak,
service overhead, the batch budget, and the cost of per-layer scores and of prefixes.

    bash bench/gpu_run.sh OUT_DIR                       (on the GPU host: the one command)
    .venv/bin/python bench/gpu.py --device cpu --tiny   (the dry run: about a minute on a CPU)

The judges are built here with random weights at real shapes, SmolLM2-135M's, a
Llama-3-8B and a Qwen2.5-7B shape, with the default judge's tokenizer, saved to a
temporary directory (/dev/shm where it has room) and served by the real app with
``JUDGE_MODEL`` pointing at it, so the served path is what is measured. Stages, each
with its own time budget (the whole run at most --budget-s, 380 s by default: under 7
minutes on an H100 or H200, the install of the carried wheels included):

1. ``exactness``: each shape's served label log-probabilities against its own forward
   pass, float32 within 1e-4, bf16's error reported (bench/gpu_exactness.py);
2. ``throughput``: the transformers engine in-process, 8B shape, ~1,000-token prompts:
   items/s, prompt tokens/s, and model FLOP/s over a bf16 matmul's measured in the same
   run (``peak``; target >= 0.5);
3. ``overhead``: the real server process under 64 concurrent clients over (2), on the
   same items (target >= 0.95);
4. ``batch_tokens``: items/s at each ``JUDGE_MAX_BATCH_TOKENS``, and the best;
5. ``layers_prefix``: LAGER and ``return_layers`` over plain scoring; 16 responses under
   one rubric over one, per item, and the share of prompt tokens the prefix cache saved.

A step that would not fit in its stage's time is skipped and named in the report
(``stages.<name>.skipped``), as is a stage that failed (``stages.<name>.error``); the
report is written after every stage, and a watchdog writes it and ends the run past
the total. Writes OUT (default bench/results/gpu.json; gpu-tiny.json with --tiny) and
its chart beside it (.png), every figure with its bootstrap 95% interval.

On a GPU host without registry access: first, here, ``make gpu-wheels`` puts the
server's Python dependencies that such a host's CUDA image lacks (FastAPI, uvicorn,
pydantic-settings, ...; not torch or transformers) and the default judge's tokenizer
under bench/gpu-carry/ (~6 MB, ignored by git). Copy the working tree with that folder
to the host, then run there, in the tree's root: ``bash bench/gpu_run.sh OUT_DIR``. It
installs the wheels with ``pip install --no-index --find-links`` into the host's
``python3`` (the one with CUDA torch and transformers) and runs this script with
``--device cuda --out OUT_DIR/gpu.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "client")]

import torch  # noqa: E402
import transformers  # noqa: E402

from bench import figures, gpu_chart, gpu_exactness, gpu_models, gpu_serving, gpu_speed  # noqa: E402
from bench.gpu_budget import Budget, Stage  # noqa: E402

CARRIED_TOKENIZER = ROOT / "bench" / "gpu-carry" / "tokenizer"
# Each stage's seconds (full run, --tiny): they sum to the total.
BUDGETS = {
    "peak": (10, 10),
    "exactness": (145, 90),
    "load": (40, 30),
    "throughput": (25, 20),
    "batch_tokens": (45, 30),
    "layers_prefix": (35, 30),
    "overhead": (80, 60),
}
# Prompts: (throughput and overhead, batch budget sweep, per-layer runs), full and --tiny.
ITEMS = {False: (256, 128, 64), True: (32, 16, 16)}
SWEEP = {False: [4096, 8192, 16384, 32768, 65536], True: [256, 512, 1024, 2048]}
# Room the saved models need at once (the largest two, bf16) for /dev/shm to be used.
SHM_NEEDED = 40 << 30


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny random models: the dry run of every code path")
    parser.add_argument("--out", type=Path, help="the JSON report (default bench/results/gpu.json, gpu-tiny.json)")
    parser.add_argument("--tokenizer", type=Path, help="a saved copy of the default judge's tokenizer")
    parser.add_argument("--work-dir", type=Path, help="where the models are saved (default /dev/shm with room)")
    parser.add_argument("--budget-s", type=float, help="the whole run's seconds (default: the stages' sum)")
    parser.add_argument("--budget-scale", type=float, default=1.0, help="every stage's budget times this (slow hosts)")
    parser.add_argument("--clients", type=int, default=64, help="concurrent HTTP clients of the overhead stage")
    parser.add_argument("--save-tokenizer", type=Path, help="only save the default judge's tokenizer here and exit")
    args = parser.parse_args()
    args.out = args.out or ROOT / "bench" / "results" / ("gpu-tiny.json" if args.tiny else "gpu.json")
    if args.tokenizer is None and CARRIED_TOKENIZER.is_dir():
        args.tokenizer = CARRIED_TOKENIZER
    return args


def work_dir(chosen: Path | None) -> Path:
    """A fresh directory for the saved models: in memory (/dev/shm) where it has room."""
    if chosen is None and Path("/dev/shm").is_dir() and shutil.disk_usage("/dev/shm").free >= SHM_NEEDED:
        chosen = Path("/dev/shm")
    return Path(tempfile.mkdtemp(prefix="judge-gpu-", dir=chosen))


def environment(device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "tiny": args.tiny,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main() -> None:
    args = parse_args()
    if args.save_tokenizer:
        gpu_models.save_tokenizer(args.save_tokenizer)
        return
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "client"), os.environ.get("PYTHONPATH", "")])
    device = torch.device(args.device)
    budgets = {name: seconds[args.tiny] * args.budget_scale for name, seconds in BUDGETS.items()}
    models = work_dir(args.work_dir)
    report: dict[str, Any] = environment(device, args)

    def save() -> None:
        report["elapsed_s"] = round(budget.elapsed(), 1)
        report["stages"] = budget.stages
        figures.write(args.out, report)

    def stopped() -> None:
        for proc in list(gpu_serving.CHILDREN):
            proc.kill()
        shutil.rmtree(models, ignore_errors=True)
        gpu_chart.draw(report, args.out.with_suffix(".png"))

    total = args.budget_s or sum(budgets.values())
    report["budget_s"] = total
    budget = Budget(total, grace_s=15, save=save, on_timeout=stopped)
    judge = gpu_speed.InProcess()
    try:
        run_stages(budget, budgets, report, args, device, models, judge)
    finally:
        judge.close()
        budget.close()
        shutil.rmtree(models, ignore_errors=True)
        save()
    gpu_chart.draw(report, args.out.with_suffix(".png"))
    print(f"wrote {args.out}")


def run_stages(
    budget: Budget,
    budgets: dict[str, float],
    report: dict[str, Any],
    args: argparse.Namespace,
    device: torch.device,
    models: Path,
    judge: gpu_speed.InProcess,
) -> None:
    tokenizer = gpu_models.load_tokenizer(args.tokenizer)
    many, sweep_count, layer_count = ITEMS[args.tiny]
    prompts = gpu_speed.items(many, args.tiny)
    largest: list[gpu_models.Built] = []

    budget.run("peak", budgets["peak"], lambda stage: gpu_speed.matmul_peak(stage, report, device, args.tiny))

    def exactness(stage: Stage) -> None:
        kept = gpu_exactness.run(stage, report, models, tokenizer, device, args.tiny)
        largest.extend([kept] if kept else [])

    budget.run("exactness", budgets["exactness"], exactness)

    def load(stage: Stage) -> None:
        if not largest:
            largest.append(gpu_models.build("llama3-8b", models / "llama3-8b", tokenizer, device, args.tiny, [], []))
        t0 = time.perf_counter()
        judge.open(**served_settings(largest[0].directory, device, many))
        seconds = time.perf_counter() - t0
        paths = gpu_exactness.paths(judge.runtime.engine)
        report["load"] = {"shape": largest[0].name, "seconds": seconds, "paths": paths}
        if not all(paths.values()):
            stage.skip(
                "batched paths", f"the engine refused some at load ({paths}): the speed figures time its fallbacks"
            )

    budget.run("load", budgets["load"], load)

    def on_judge(work: Callable[[Stage], None]) -> Callable[[Stage], None]:
        """``work``, or its stage skipped where the in-process judge did not load."""

        def run(stage: Stage) -> None:
            if judge.runtime is None:
                stage.skip("the whole stage", "the in-process judge did not load (see the load stage)")
            else:
                work(stage)

        return run

    budget.run("throughput", budgets["throughput"], on_judge(lambda s: gpu_speed.throughput(s, report, judge, prompts)))
    sweep, layered, repeats = prompts[:sweep_count], prompts[:layer_count], 2 if args.tiny else 3
    budget.run(
        "batch_tokens",
        budgets["batch_tokens"],
        on_judge(lambda s: gpu_speed.batch_tokens(s, report, judge, sweep, SWEEP[args.tiny])),
    )
    budget.run(
        "layers_prefix",
        budgets["layers_prefix"],
        on_judge(lambda s: gpu_speed.layers_prefix(s, report, judge, layered, repeats)),
    )
    # The in-process judge lets go of the device before the server process takes it.
    judge.close()
    gpu_models.release()

    def overhead(stage: Stage) -> None:
        if not largest:
            stage.skip("the whole stage", "the 8B shape was not built")
            return
        env = {f"JUDGE_{k.upper()}": str(v) for k, v in served_settings(largest[0].directory, device, many).items()}
        gpu_speed.overhead_run(stage, report, env, prompts, args.clients)

    budget.run("overhead", budgets["overhead"], overhead)


def served_settings(directory: Path, device: torch.device, items: int) -> dict[str, Any]:
    """The settings the speed stages serve the largest shape with: the defaults, but for
    room for every prompt at once and deadlines no run reaches."""
    return {
        "model": str(directory),
        "engine": "transformers",
        "device": device.type,
        "max_items": items,
        "max_queue": max(1024, items),
        "request_timeout_s": 3600,
        "max_request_timeout_s": 3600,
    }


if __name__ == "__main__":
    main()
