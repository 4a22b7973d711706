"""``judge-service batch``: a server-side batch job over HTTP (``/v1/files`` and
``/v1/batches``), for files of requests in the OpenAI batch format.

    judge-service batch submit requests.jsonl [--endpoint /v1/score] [--wait] [-o out.jsonl]
    judge-service batch status ID
    judge-service batch download ID -o out.jsonl [--errors errors.jsonl]
    judge-service batch cancel ID
    judge-service batch list

Each command prints the batch as JSON on standard output; ``--wait`` shows progress on
standard error until the batch ends.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from judge_client import Batch, JudgeClient, JudgeError

from service.cli.judge import JudgeFailed

ENDPOINTS = ("/v1/score", "/v1/compare", "/v1/rank")


def _client(args: argparse.Namespace) -> JudgeClient:
    return JudgeClient(args.url, api_key=args.api_key, retries=args.retries)


def _show(batch: Batch) -> None:
    print(batch.model_dump_json())


def _progress(batch: Batch) -> None:
    counts = batch.request_counts
    sys.stderr.write(f"\r{batch.id} {batch.status}: {counts.completed + counts.failed}/{counts.total} done, ")
    sys.stderr.write(f"{counts.failed} failed  ")
    if batch.done:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _download(judge: JudgeClient, batch: Batch, output: Path | None, errors: Path | None) -> None:
    for file_id, path in ((batch.output_file_id, output), (batch.error_file_id, errors)):
        if path is not None:
            path.write_bytes(judge.file_content(file_id) if file_id else b"")


def submit(args: argparse.Namespace, judge: JudgeClient) -> Batch:
    uploaded = judge.upload_batch_file(args.input)
    batch = judge.create_batch(uploaded.id, args.endpoint, args.completion_window)
    if args.wait or args.output is not None:
        batch = judge.wait_batch(batch.id, args.poll_s, None if args.no_progress else _progress)
        _download(judge, batch, args.output, args.errors)
    return batch


def download(args: argparse.Namespace, judge: JudgeClient) -> Batch:
    batch = judge.batch(args.batch_id)
    if not batch.done:
        raise JudgeFailed(409, f"batch {batch.id} is {batch.status}; its files come when it ends")
    _download(judge, batch, args.output, args.errors)
    return batch


def batch_command(args: argparse.Namespace) -> None:
    with _client(args) as judge:
        try:
            if args.action == "list":
                for entry in judge.list_batches(args.limit):
                    _show(entry)
                return
            actions = {
                "submit": submit,
                "status": lambda a, j: j.batch(a.batch_id),
                "download": download,
                "cancel": lambda a, j: j.cancel_batch(a.batch_id),
            }
            _show(actions[args.action](args, judge))
        except JudgeError as exc:
            raise JudgeFailed(exc.status, exc.message) from exc


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the service (default: %(default)s)")
    parser.add_argument("--api-key", default=os.environ.get("JUDGE_API_KEY"), help="bearer key (env JUDGE_API_KEY)")
    parser.add_argument("--retries", type=int, default=5, help="retries of a 429, 503 or failed connection")


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("batch", help="Run a server-side batch job (OpenAI batch format) and fetch it.")
    actions = parser.add_subparsers(dest="action", required=True)
    sub = actions.add_parser("submit", help="upload a JSONL file of requests and start a batch on it")
    sub.add_argument("input", type=Path, help='JSONL: {"custom_id", "method": "POST", "url", "body"} a line')
    sub.add_argument("--endpoint", default="/v1/score", choices=ENDPOINTS)
    sub.add_argument("--completion-window", default="24h", help="e.g. 24h; the batch expires after it")
    sub.add_argument("--wait", action="store_true", help="poll until the batch ends")
    sub.add_argument("-o", "--output", type=Path, help="write the output file here once it ends (implies --wait)")
    sub.add_argument("--errors", type=Path, help="write the error file here once it ends")
    sub.add_argument("--poll-s", type=float, default=2.0, help="seconds between polls")
    sub.add_argument("--no-progress", action="store_true", help="hide the progress line")
    for name, text in (("status", "show a batch"), ("cancel", "cancel a batch")):
        sub = actions.add_parser(name, help=text)
        sub.add_argument("batch_id")
    sub = actions.add_parser("download", help="write an ended batch's output (and error) file")
    sub.add_argument("batch_id")
    sub.add_argument("-o", "--output", type=Path, required=True)
    sub.add_argument("--errors", type=Path)
    sub = actions.add_parser("list", help="this key's batches, newest first")
    sub.add_argument("--limit", type=int, default=20)
    for sub in actions.choices.values():
        _common(sub)
    parser.set_defaults(handler=batch_command)
