"""``judge-service score in.jsonl -o out.jsonl``: resumable batch scoring from the command line.

Each input line is one item (``id`` plus ``instruction``/``response``[/``reference_answer``]
or ``prompt``). Results are appended to the output as they arrive, so an interrupted run
resumes where it stopped: ids already in the output are skipped. Items that fail go to an
error file with the reason; none are dropped silently.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TextIO

from judge_client.fields import MAX_TIMEOUT_S
from judge_client.protocol import score_request
from pydantic import ValidationError

from service.cli.judge import JudgeFailed, add_judge_arguments, open_from_args

Scorer = Callable[[list[dict[str, Any]]], Awaitable[list[dict[str, Any]]]]


@contextlib.asynccontextmanager
async def open_scorer(args: argparse.Namespace) -> AsyncIterator[tuple[Scorer, int]]:
    """Yield (score a list of item dicts, items per request) over HTTP or in-process."""
    async with open_from_args(args) as judge:

        async def score(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
            try:
                request = score_request({"items": items, "method": args.method, "timeout_s": args.timeout_s})
            except ValidationError as exc:
                # The items themselves are malformed: the service would answer 422 too.
                first = exc.errors()[0]
                raise JudgeFailed(422, f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from exc
            response = await judge.score(request)
            return [r.model_dump() for r in response.results]

        yield score, judge.max_items


def read_items(path: Path, errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    items = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            if not isinstance(item, dict) or "id" not in item:
                raise ValueError("each line must be a JSON object with an 'id'")
            item["id"] = str(item["id"])
        except ValueError as exc:
            errors.append({"id": f"line:{number}", "status": 422, "error": str(exc)})
            continue
        items.append(item)
    return items


def done_ids(path: Path) -> set[str]:
    if not path.exists():
        return set()
    ids = set()
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            ids.add(str(json.loads(line)["id"]))
    return ids


async def score_file(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm import tqdm

    errors: list[dict[str, Any]] = []
    items = read_items(args.input, errors)
    finished = done_ids(args.output)
    todo = [item for item in items if item["id"] not in finished]
    error_path = args.errors or args.output.with_name(args.output.stem + ".errors.jsonl")
    scored: list[dict[str, Any]] = []
    bar = tqdm(total=len(todo), disable=args.no_progress, desc="scoring", unit="item")
    with args.output.open("a") as out, error_path.open("a") as err:
        for error in errors:
            err.write(json.dumps(error) + "\n")
        async with open_scorer(args) as (scorer, size):
            slots = asyncio.Semaphore(args.concurrency)

            async def run(chunk: list[dict[str, Any]]) -> None:
                async with slots:
                    await _score_chunk(scorer, chunk, out, err, scored, errors)
                bar.update(len(chunk))

            chunks = [todo[i : i + size] for i in range(0, len(todo), size)]
            await asyncio.gather(*(run(chunk) for chunk in chunks))
    bar.close()
    return {
        "input": len(items) + sum(1 for e in errors if e["id"].startswith("line:")),
        "already_done": len(items) - len(todo),
        "scored": len(scored),
        "failed": len(errors),
        "errors_file": str(error_path),
        "mean_expected_score": (
            sum(s["expected_score"] for s in scored if s["expected_score"] is not None) / len(scored)
            if scored and all(s["expected_score"] is not None for s in scored)
            else None
        ),
        "histogram": dict(sorted(Counter(s["mode"] for s in scored).items())),
    }


async def _score_chunk(
    scorer: Scorer,
    chunk: list[dict[str, Any]],
    out: TextIO,
    err: TextIO,
    scored: list[dict[str, Any]],
    errors: list[dict[str, Any]],
) -> None:
    try:
        results = await scorer(chunk)
    except JudgeFailed as exc:
        if exc.status == 422 and len(chunk) > 1:
            # One bad item rejects its whole request: retry one by one to find it.
            for item in chunk:
                await _score_chunk(scorer, [item], out, err, scored, errors)
            return
        if exc.status == 429 and len(chunk) > 1:
            # Still refused after the client's retries: too much for its deadline at this
            # load. Halves, each retried on its own, fit sooner.
            half = len(chunk) // 2
            for part in (chunk[:half], chunk[half:]):
                await _score_chunk(scorer, part, out, err, scored, errors)
            return
        for item in chunk:
            record = {"id": item["id"], "status": exc.status, "error": exc.message}
            errors.append(record)
            err.write(json.dumps(record) + "\n")
        err.flush()
        return
    for result in results:
        out.write(json.dumps(result) + "\n")
        scored.append(result)
    out.flush()


def print_summary(summary: dict[str, Any]) -> None:
    print(
        f"scored {summary['scored']}, already done {summary['already_done']}, failed {summary['failed']}"
        + (f" (see {summary['errors_file']})" if summary["failed"] else "")
    )
    if summary["mean_expected_score"] is not None:
        print(f"mean expected score {summary['mean_expected_score']:.3f}")
    histogram = summary["histogram"]
    if histogram:
        width = max(histogram.values())
        print("most probable label:")
        for label, count in histogram.items():
            print(f"  {label:>6} {'#' * max(1, round(40 * count / width))} {count}")


def score_command(args: argparse.Namespace) -> None:
    summary = asyncio.run(score_file(args))
    print_summary(summary)


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("score", help="Score a JSONL file of items; resumable.")
    parser.add_argument("input", type=Path, help="JSONL: id + instruction/response[/reference_answer] or prompt")
    parser.add_argument("-o", "--output", type=Path, required=True, help="results JSONL (appended; resumable)")
    parser.add_argument("--errors", type=Path, help="failed items JSONL (default: <output>.errors.jsonl)")
    add_judge_arguments(parser)
    parser.add_argument("--method", default="final", choices=["final", "lager", "lager_weighted"])
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=MAX_TIMEOUT_S,
        help="deadline each request asks for; a file waits as long as the service allows, which "
        "caps it at its JUDGE_MAX_REQUEST_TIMEOUT_S (default: %(default)g)",
    )
    parser.set_defaults(handler=score_command)
