"""Command line: ``judge-service serve`` (also ``python -m service``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from service.config import Settings
from service.logs import configure_logging


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per setting, so flags and ``JUDGE_*`` variables never drift."""
    for name, field in Settings.model_fields.items():
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=None,
            help=f"{field.description} [env JUDGE_{name.upper()}]",
        )


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {
        name: value for name in Settings.model_fields if (value := getattr(args, name, None)) is not None
    }
    return Settings(**overrides)


def serve(settings: Settings) -> None:
    import uvicorn

    from service.app import create_app
    from service.shutdown import DrainingServer

    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
    # One worker per pod: the model and the queue live in this process.
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) + 1,
    )
    server = DrainingServer(config, app.state.judge, settings.shutdown_grace_s)
    app.state.request_exit = lambda: setattr(server, "should_exit", True)
    server.run()
    code = app.state.judge.exit_code or (1 if app.state.judge.failed else 0)
    if code:
        sys.exit(code)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="judge-service", description="LLM-as-a-judge scoring service.")
    commands = parser.add_subparsers(dest="command")
    serve_parser = commands.add_parser("serve", help="Serve the HTTP API (the default command).")
    _add_setting_flags(serve_parser)
    prepare_parser = commands.add_parser("prepare", help="Convert the configured model into the cache, then exit.")
    _add_setting_flags(prepare_parser)
    from service import batch_score
    from service import commands as lager_commands

    lager_commands.register(commands)
    batch_score.register(commands)
    words = list(sys.argv[1:] if argv is None else argv)
    if not words or (words[0].startswith("-") and words[0] not in ("-h", "--help")):
        words.insert(0, "serve")
    args = parser.parse_args(words)
    if args.command == "serve":
        serve(settings_from_args(args))
    elif args.command == "prepare":
        settings = settings_from_args(args)
        configure_logging(settings.log_level)
        from service.model_store import resolve_model

        print(resolve_model(settings.model, settings.cache_dir))
    else:
        configure_logging("warning")
        args.handler(args)


if __name__ == "__main__":
    main()
