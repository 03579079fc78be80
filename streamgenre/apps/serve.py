"""``streamgenre serve``: the HTTP API on uvicorn.

uvicorn's own lifecycle, programmatically: a ``Config`` (app, bind, logging) and a ``Server``
that owns the event loop and the SIGINT/SIGTERM handling (it stops accepting, lets requests in
flight finish, runs the app's shutdown, which stops the inference thread and closes Kafka/Redis).
One process, one model: scale out with processes or replicas (the Helm chart's ``api`` deployment).
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket

import uvicorn

from streamgenre.apps.errors import UsageError
from streamgenre.config import Settings

log = logging.getLogger(__name__)


def build_server(settings: Settings, host: str | None = None, port: int | None = None) -> uvicorn.Server:
    """Load the model (and catalogue), build the app and its uvicorn server; does not start it."""
    from streamgenre.apps.api import create_app
    from streamgenre.model.contract import GenreModel
    from streamgenre.model.similarity import Catalog
    from streamgenre.stream.daemon import limit_native_threads

    limit_native_threads()
    model = GenreModel(settings.model_path, threads=settings.ort_threads)
    catalog = Catalog.load(settings.catalog_path) if settings.catalog_path else None
    app = create_app(settings, model, catalog)
    # log_config=None keeps the process's logging set-up (cli.main); uvicorn's access log
    # names the path and status only, never headers (the API key) or bodies (the audio).
    config = uvicorn.Config(app, host=host or settings.api_host, port=port or settings.api_port,
                            log_config=None, server_header=False, timeout_graceful_shutdown=30)
    return uvicorn.Server(config)


def _check_port_free(host: str, port: int) -> None:
    """uvicorn reports a busy port as several log lines and exit 3; say it in one line, exit 2."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (set --port or "
                             "STREAMGENRE_API_PORT)") from exc


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    _check_port_free(args.host or settings.api_host, args.port or settings.api_port)
    server = build_server(settings, args.host, args.port)
    log.info("HTTP API on %s:%d (model %s)", server.config.host, server.config.port, settings.model_path.name)
    # uvicorn drains on SIGTERM/SIGINT, then re-raises the signal to the handler it found before:
    # the default one would end a clean shutdown with 143 or a KeyboardInterrupt traceback. With
    # these, a drained server exits 0, as the daemon does (docs/ARCHITECTURE.md, exit codes).
    for handled in (signal.SIGTERM, signal.SIGINT):
        signal.signal(handled, lambda _sig, _frame: None)
    try:
        server.run()
    except SystemExit:  # uvicorn exits 3 when it cannot bind: the port taken since _check_port_free
        raise UsageError(f"cannot listen on {server.config.host}:{server.config.port} (see the log above)") from None
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser(
        "serve", help="HTTP API: classify uploads, read jobs and live streams",
        description="POST /v1/classify, GET /v1/jobs/{id}, GET /v1/streams/{id}, /healthz, /readyz, /metrics "
                    "(OpenAPI document at /openapi.json and docs/openapi.json). Settings: STREAMGENRE_API_*.",
    )
    serve.add_argument("--host", default=None, help="bind address (default STREAMGENRE_API_HOST)")
    serve.add_argument("--port", type=int, default=None, help="port (default STREAMGENRE_API_PORT)")
    serve.set_defaults(handler=_cmd_serve)
