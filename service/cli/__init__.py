"""Command line: ``judge-service serve`` (also ``python -m service``) and the commands
that score files (in-process or through a service, or as a server-side batch job), fit
LAGER weights, calibrations and probes, and evaluate against human scores."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from service.cli import batch, calibration, evaluate, layers, probe, score_file, serve
from service.cli.judge import JudgeFailed
from service.observability.logs import configure_logging


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="judge-service", description="LLM-as-a-judge scoring service.")
    commands = parser.add_subparsers(dest="command")
    serve.register(commands)
    layers.register(commands)
    evaluate.register(commands)
    calibration.register(commands)
    probe.register(commands)
    score_file.register(commands)
    batch.register(commands)
    words = list(sys.argv[1:] if argv is None else argv)
    if not words or (words[0].startswith("-") and words[0] not in ("-h", "--help")):
        words.insert(0, "serve")
    args = parser.parse_args(words)
    if args.command not in ("serve", "prepare"):
        configure_logging("warning")
    try:
        args.handler(args)
    except JudgeFailed as exc:
        # The judge refused or failed: its message, not a stack trace.
        sys.exit(f"judge-service {args.command}: the judge answered {exc.status}: {exc.message}")


if __name__ == "__main__":
    main()
