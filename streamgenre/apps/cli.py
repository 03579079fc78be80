"""``streamgenre`` command line: builds Settings from the environment and flags, then hands off.

Each subcommand is a thin shell around a module that does the work (daemon, devbroker,
ingest, tail, demo, catalog, bench), so everything here is argument parsing and errors.

Exit codes, the same for every command:

* **0** — done.
* **2** — a usage or start-up error, nothing done: a bad option (argparse's own message), a bad
  ``STREAMGENRE_*`` setting, or an error the user can fix —
  :class:`~streamgenre.apps.errors.UsageError` (and its subclasses), a missing or invalid model
  (``ModelError``) or catalogue (``CatalogError``), a missing file, bad ingest input, the dev
  broker failing to start, a daemon start-up failure (``StartupError``: a busy metrics port, ...),
  no Kafka broker answering within ``STREAMGENRE_CLI_BROKER_TIMEOUT_S``. Printed as one line,
  ``streamgenre COMMAND: error: MESSAGE``, on stderr, without a traceback. :func:`main` is the
  one place that maps these errors to messages; a command raises them, it does not print and return.
* **1** — the command ran but some of its inputs failed (``ingest``, ``classify``: each failure
  and a summary on stderr); also what Python exits with on a bug, with its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading

from kafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError
from pydantic import ValidationError

from streamgenre.config import DEFAULT_CHUNK_S, Settings


def _run_workers(settings: Settings) -> int:
    """``workers > 1``: one ``streamgenre run`` child per worker, same group; signals are forwarded.

    Separate processes because the per-chunk work (decode, framing, JSON) holds the GIL; the
    consumer group spreads the partitions over them. Worker ``i`` serves metrics on
    ``metrics_port + i``.
    """
    import os
    import signal
    import subprocess

    children = [
        subprocess.Popen([sys.executable, "-m", "streamgenre.apps.cli", "run"],
                         env={**os.environ, "STREAMGENRE_WORKERS": "1",
                              "STREAMGENRE_METRICS_PORT": str(settings.metrics_port + i)})
        for i in range(settings.workers)
    ]

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    codes = [child.wait() for child in children]
    return max(codes, default=0)


def _cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    if settings.workers > 1:
        return _run_workers(settings)
    from streamgenre.stream.daemon import Daemon

    Daemon(settings).run()
    return 0


def _cmd_broker(args: argparse.Namespace, settings: Settings) -> int:
    from streamgenre.apps.devbroker import DevBroker

    # tansu runs in its own session, so it would outlive us if SIGTERM killed this process
    # outright; turning SIGTERM into SystemExit lets the finally block stop it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    broker = DevBroker(port=args.port, storage=args.storage).start()
    try:
        # Inside the try: a SIGTERM right after this line is read must still stop tansu.
        print(f"tansu broker listening on {broker.bootstrap} (storage {args.storage}); Ctrl-C stops it", flush=True)
        assert broker.process is not None
        broker.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        broker.stop()
    return 0


def _cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    """One line per input (errors and warnings on stderr); exit 2 when nothing was published,
    1 when some of several inputs gave no audio (the others are published), 0 when all gave audio."""
    from streamgenre.apps.ingest import SourceReport, ingest
    from streamgenre.apps.radio import is_live_url

    if any(is_live_url(source) for source in args.sources):
        from streamgenre.apps.relay import ingest_live

        return ingest_live(settings, args.sources, args.stream_id, chunk_s=args.chunk_s,
                           file_options=args.speed != 1.0 or args.loop or args.format != "s16le")

    def report(source: SourceReport) -> None:
        if source.error is not None:
            print(f"streamgenre ingest: error: {source.line()}", file=sys.stderr, flush=True)
            return
        print(source.line(), flush=True)
        if source.warning is not None:
            print(f"streamgenre ingest: warning: {source.source}: {source.warning}", file=sys.stderr, flush=True)

    reports = ingest(settings, args.sources, args.stream_id, speed=args.speed, chunk_s=args.chunk_s,
                     fmt=args.format, loop=args.loop, on_source_done=report)
    chunks, seconds = sum(r.chunks for r in reports), sum(r.seconds for r in reports)
    failed = sum(r.error is not None for r in reports)
    if not chunks:
        if len(reports) > 1:  # with one input, its own error line says it all
            print(f"streamgenre ingest: error: none of the {len(reports)} inputs gave audio; nothing published",
                  file=sys.stderr)
        return 2
    print(f"published {chunks} chunks ({seconds:.2f} s) of stream {args.stream_id!r} to {settings.input_topic}")
    if failed:
        print(f"streamgenre ingest: error: {failed} of {len(reports)} inputs gave no audio", file=sys.stderr)
    return 1 if failed else 0


def _cmd_tail(args: argparse.Namespace, settings: Settings) -> int:
    from streamgenre.apps.tail import follow

    with contextlib.suppress(KeyboardInterrupt):
        follow(settings, threading.Event(), timeout_s=args.timeout, max_messages=args.max_messages)
    return 0


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from streamgenre.apps.demo import run_demo

    return run_demo(settings, args.files, speed=args.speed, max_streams=args.max_streams, keep=args.keep)


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, unless the help already states it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)".strip()


def _settings_epilog() -> str:
    """``run --help``'s list of the settings the daemon reads, with their defaults."""
    rows = [f"  STREAMGENRE_{name.upper()}={field.default}" for name, field in Settings.model_fields.items()]
    return ("settings (environment variables; meaning of each: python -m streamgenre.config, or the README):\n"
            + "\n".join(rows))


def build_parser() -> argparse.ArgumentParser:
    from streamgenre.stream.wire import STREAM_ID_CHARACTERS, STREAM_ID_MAX_LENGTH

    parser = argparse.ArgumentParser(
        prog="streamgenre",
        description="Real-time music-genre classification of live audio streams. Settings come from "
        "STREAMGENRE_* environment variables (see README).",
        formatter_class=_DefaultsFormatter,
    )
    parser.add_argument("--log-level", default=None, help="override STREAMGENRE_LOG_LEVEL")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon (consumes audio.chunks, publishes predictions)",
                         description="Run the daemon. It has no options: every setting comes from the "
                         "environment, listed below.",
                         epilog=_settings_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    run.set_defaults(handler=_cmd_run)

    broker = sub.add_parser("broker", help="run the embedded dev broker (tansu) in the foreground")
    broker.add_argument("--port", type=int, default=9092, help="port to listen on, 127.0.0.1")
    broker.add_argument("--storage", default="memory://tansu/", help="tansu storage engine URL")
    broker.set_defaults(handler=_cmd_broker)

    ing = sub.add_parser("ingest", help="publish audio files as one live stream of chunks, or relay one live "
                         "http(s) radio URL until stopped")
    ing.add_argument("sources", nargs="+", metavar="PATH|URL")
    ing.add_argument("--stream-id", required=True,
                     help=f"Kafka key of every chunk: 1-{STREAM_ID_MAX_LENGTH} characters of {STREAM_ID_CHARACTERS}")
    ing.add_argument("--speed", type=float, default=1.0, help="x real time; 0 = as fast as possible")
    ing.add_argument("--chunk-s", type=float, default=DEFAULT_CHUNK_S, help="seconds of audio per chunk")
    ing.add_argument("--format", choices=["s16le", "f32le"], default="s16le", help="PCM sample format")
    ing.add_argument("--loop", action="store_true", help="repeat the sources forever (no eos)")
    ing.set_defaults(handler=_cmd_ingest)

    tail = sub.add_parser("tail", help="print the live genre timeline of every stream")
    tail.add_argument("--timeout", type=float, default=None, help="stop after this many seconds (default: never)")
    tail.add_argument("--max-messages", type=int, default=None,
                      help="stop after printing this many lines (default: no limit)")
    tail.set_defaults(handler=_cmd_tail)

    demo = sub.add_parser("demo", help="broker + Redis + daemon + audio + live timeline, all local")
    demo.add_argument("files", nargs="*", help="audio files (default: GTZAN clips if present, else tones)")
    demo.add_argument("--speed", type=float, default=1.0, help="x real time")
    demo.add_argument("--max-streams", type=int, default=10, help="at most this many files, one stream each")
    demo.add_argument("--keep", action="store_true",
                      help="keep the demo's Redis keys (its own prefix, printed at start) instead of deleting them")
    demo.set_defaults(handler=_cmd_demo)

    _register_optional(sub)
    for command in sub.choices.values():
        if command.formatter_class is argparse.HelpFormatter:
            command.formatter_class = _DefaultsFormatter
        for action in command._actions:
            # argparse prints no help line, hence no default, for an option without help text.
            if action.help is None and action.option_strings and action.default not in (None, False):
                action.help = "default: %(default)s"
    return parser


def _register_optional(sub: argparse._SubParsersAction) -> None:
    """Subcommands that live in their own modules register themselves."""
    from streamgenre.apps import catalog, classify, relay, report, serve
    from streamgenre.bench import command as bench_command

    catalog.register(sub)
    bench_command.register(sub)
    relay.register(sub)
    report.register(sub)
    serve.register(sub)
    classify.register(sub)


def configure_logging(settings: Settings, level: str | None = None) -> None:
    """Our loggers at ``level`` (or the setting), kafka-python's at ``kafka_log_level``.

    kafka-python logs every connection, metadata refresh and coordinator step at INFO: three
    quarters of the demo's lines. WARNING keeps its real problems and leaves a readable log.
    """
    logging.basicConfig(level=(level or settings.log_level).upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(settings.kafka_log_level.upper())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "_".join(str(part) for part in first["loc"]).upper()
        print(f"streamgenre {args.command}: error: STREAMGENRE_{name}={first.get('input')!r}: {first['msg']}",
              file=sys.stderr)
        return 2
    configure_logging(settings, args.log_level)
    from streamgenre.apps.devbroker import BrokerError
    from streamgenre.apps.errors import UsageError
    from streamgenre.apps.ingest import IngestError
    from streamgenre.model.contract import ModelError
    from streamgenre.model.similarity import CatalogError
    from streamgenre.stream.daemon import StartupError

    try:
        return args.handler(args, settings)
    except (UsageError, ModelError, IngestError, BrokerError, CatalogError, StartupError, FileNotFoundError) as exc:
        print(f"streamgenre {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (KafkaConnectionError, KafkaTimeoutError):
        print(f"streamgenre {args.command}: error: no Kafka broker answers at {settings.bootstrap_servers} "
              f"(waited {settings.cli_broker_timeout_s:g} s: STREAMGENRE_CLI_BROKER_TIMEOUT_S)", file=sys.stderr)
        return 2
    except KafkaError as exc:
        print(f"streamgenre {args.command}: error: Kafka: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
