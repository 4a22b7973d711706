"""Every benchmark in sequence, each with the arguments its row on the docs' benchmarks page gives: regenerates
every report and chart under bench/results in one run (hours on a CPU: run it on an
otherwise idle machine, nothing else measuring).

    .venv/bin/python bench/all.py [--only NAME,...] [--dry-run]    (or: make bench)

Each benchmark runs as its own process. Runs that need vLLM are skipped, with a message,
when vllm cannot be imported; the engines comparison then runs its transformers setups
only. A run that fails is reported and the others still run; the exit status is 1 if any
failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
PYTHON = sys.executable


class Run(NamedTuple):
    name: str
    command: list[str]
    needs_vllm: bool = False
    # The command instead, when vllm cannot be imported (None: skip the run).
    without_vllm: list[str] | None = None


def bench(script: str, *args: str) -> list[str]:
    return [PYTHON, f"bench/{script}", *args]


RUNS = [
    Run("overhead-transformers", bench("overhead.py", "--engine", "transformers")),
    Run("overhead-vllm", bench("overhead.py", "--engine", "vllm"), needs_vllm=True),
    Run("peer", bench("peer.py"), needs_vllm=True),
    Run(
        "engines",
        bench("engines.py"),
        needs_vllm=True,
        without_vllm=bench("engines.py", "--setups", "transformers,transformers-no-cache"),
    ),
    Run("prefix-transformers", bench("prefix.py")),
    Run("prefix-vllm", bench("prefix.py", "--engine", "vllm", "--sizes", "1,4,16"), needs_vllm=True),
    Run("roofline", bench("roofline.py")),
    Run("batch-jobs", bench("batch_jobs.py")),
    Run("scaling-transformers", bench("scaling.py")),
    Run("scaling-vllm", bench("scaling.py", "--engine", "vllm"), needs_vllm=True),
    Run("labels-transformers", bench("labels.py")),
    Run("critique-transformers", bench("critique.py", "--engine", "transformers")),
    Run("critique-vllm", bench("critique.py", "--engine", "vllm"), needs_vllm=True),
    Run("critique-routes", bench("critique_routes.py"), needs_vllm=True),
    Run("criteria-transformers", bench("criteria.py", "--items", "12")),
    Run("rank-agreement", bench("rank.py", "--sets", "3")),
    Run("pairwise_pandalm", bench("pairwise.py", "--limit", "240")),
    Run("lager_pandalm", bench("lager_pairwise.py")),
    Run(
        "lager_topical_chat",
        [
            str(Path(PYTHON).with_name("judge-service")),
            "eval",
            str(DATA / "topical_chat_usr.jsonl"),
            "--group-by",
            "system",
            "--report",
            "bench/results/lager_topical_chat.json",
            "--no-progress",
        ],
    ),
]


def vllm_importable() -> bool:
    """Whether ``import vllm`` works in this environment (tried in a child process)."""
    probe = subprocess.run([PYTHON, "-c", "import vllm"], capture_output=True, timeout=600)
    return probe.returncode == 0


def plan(runs: list[Run], have_vllm: bool) -> list[tuple[str, list[str] | None]]:
    """Each run's command, or None where it is skipped for want of vLLM."""
    return [(run.name, run.command if have_vllm or not run.needs_vllm else run.without_vllm) for run in runs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated run names, of: " + ", ".join(run.name for run in RUNS))
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args()
    wanted = args.only.split(",") if args.only else [run.name for run in RUNS]
    unknown = sorted(set(wanted) - {run.name for run in RUNS})
    if unknown:
        parser.error(f"unknown run names: {', '.join(unknown)}")
    runs = [run for run in RUNS if run.name in wanted]
    have_vllm = not any(run.needs_vllm for run in runs) or vllm_importable()
    if not have_vllm:
        print("vllm cannot be imported here: the vLLM runs are skipped (engines: transformers setups only)")
    failed = []
    for name, command in plan(runs, have_vllm):
        if command is None:
            print(f"== {name}: skipped (needs vLLM)", flush=True)
            continue
        print(f"== {name}: {' '.join(command)}", flush=True)
        if args.dry_run:
            continue
        started = time.perf_counter()
        status = subprocess.run(command, cwd=ROOT).returncode
        minutes = (time.perf_counter() - started) / 60
        print(f"== {name}: {'done' if status == 0 else f'FAILED (exit {status})'} in {minutes:.1f} min", flush=True)
        if status != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
