"""``judge-service serve`` and ``judge-service prepare``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from service.config import Settings
from service.observability.logs import configure_logging


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


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from service.app import create_app
    from service.engines.memory import map_large_blocks, returns_freed_memory
    from service.http.auth import KeysFileError
    from service.http.server import DrainingServer

    settings = settings_from_args(args)
    if returns_freed_memory(settings.return_freed_memory, settings.memory_limit_mb):
        map_large_blocks()
    configure_logging(settings.log_level, settings.log_format)
    try:
        app = create_app(settings)
    except KeysFileError as exc:
        sys.exit(f"judge-service serve: {exc}")
    # One worker per pod: the model and the queue live in this process. The graceful close
    # of connections gets what is left of the one grace budget (see service.http.server).
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
    )
    runtime, lifecycle = app.state.runtime, app.state.lifecycle
    server = DrainingServer(config, lifecycle, lambda: runtime.scheduler.depth if runtime.scheduler is not None else 0)
    server.run()
    code = lifecycle.exit_code or (1 if lifecycle.failed else 0)
    if code:
        sys.exit(code)


def prepare(args: argparse.Namespace) -> None:
    from service.engines.model_store import resolve_model

    settings = settings_from_args(args)
    configure_logging(settings.log_level)
    print(resolve_model(settings.model, settings.cache_dir))


def register(commands: argparse._SubParsersAction) -> None:
    serve_parser = commands.add_parser("serve", help="Serve the HTTP API (the default command).")
    _add_setting_flags(serve_parser)
    serve_parser.set_defaults(handler=serve)
    prepare_parser = commands.add_parser("prepare", help="Convert the configured model into the cache, then exit.")
    _add_setting_flags(prepare_parser)
    prepare_parser.set_defaults(handler=prepare)
