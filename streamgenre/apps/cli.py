"""``streamgenre`` command line: builds Settings from the environment and flags, then hands off.

Each subcommand is a thin shell around a module that does the work (daemon, devbroker,
ingest, tail, demo, catalog_cli, bench), so everything here is argument parsing and errors.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading

from kafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

from streamgenre.config import Settings


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
    from streamgenre.apps.ingest import ingest
    from streamgenre.apps.radio import is_live_url

    if any(is_live_url(source) for source in args.sources):
        from streamgenre.apps.relay import ingest_live

        return ingest_live(settings, args.sources, args.stream_id, chunk_s=args.chunk_s,
                           file_options=args.speed != 1.0 or args.loop or args.format != "s16le")

    sent = ingest(settings, args.sources, args.stream_id, speed=args.speed, chunk_s=args.chunk_s,
                  fmt=args.format, loop=args.loop)
    print(f"published {sent} chunks of stream {args.stream_id!r} to {settings.input_topic}")
    return 0


def _cmd_tail(args: argparse.Namespace, settings: Settings) -> int:
    from streamgenre.apps.tail import follow

    with contextlib.suppress(KeyboardInterrupt):
        follow(settings, threading.Event(), timeout_s=args.timeout, max_messages=args.max_messages)
    return 0


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from streamgenre.apps.demo import run_demo

    return run_demo(settings, args.files, speed=args.speed, max_streams=args.max_streams)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamgenre",
        description="Real-time music-genre classification of live audio streams. Settings come from "
        "STREAMGENRE_* environment variables (see README).",
    )
    parser.add_argument("--log-level", default=None, help="override STREAMGENRE_LOG_LEVEL")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon (consumes audio.chunks, publishes predictions)")
    run.set_defaults(handler=_cmd_run)

    broker = sub.add_parser("broker", help="run the embedded dev broker (tansu) in the foreground")
    broker.add_argument("--port", type=int, default=9092)
    broker.add_argument("--storage", default="memory://tansu/", help="tansu storage engine URL")
    broker.set_defaults(handler=_cmd_broker)

    ing = sub.add_parser("ingest", help="publish audio files as one live stream of chunks, or relay one live "
                         "http(s) radio URL until stopped")
    ing.add_argument("sources", nargs="+", metavar="PATH|URL")
    ing.add_argument("--stream-id", required=True)
    ing.add_argument("--speed", type=float, default=1.0, help="x real time; 0 = as fast as possible")
    ing.add_argument("--chunk-s", type=float, default=0.5, help="seconds of audio per chunk")
    ing.add_argument("--format", choices=["s16le", "f32le"], default="s16le")
    ing.add_argument("--loop", action="store_true", help="repeat the sources forever (no eos)")
    ing.set_defaults(handler=_cmd_ingest)

    tail = sub.add_parser("tail", help="print the live genre timeline of every stream")
    tail.add_argument("--timeout", type=float, default=None, help="stop after this many seconds")
    tail.add_argument("--max-messages", type=int, default=None)
    tail.set_defaults(handler=_cmd_tail)

    demo = sub.add_parser("demo", help="broker + Redis + daemon + audio + live timeline, all local")
    demo.add_argument("files", nargs="*", help="audio files (default: GTZAN clips if present, else tones)")
    demo.add_argument("--speed", type=float, default=1.0, help="x real time")
    demo.add_argument("--max-streams", type=int, default=10)
    demo.set_defaults(handler=_cmd_demo)

    _register_optional(sub)
    return parser


def _register_optional(sub: argparse._SubParsersAction) -> None:
    """Subcommands that live in their own modules register themselves."""
    from streamgenre.apps import catalog, relay
    from streamgenre.bench import command as bench_command

    catalog.register(sub)
    bench_command.register(sub)
    relay.register(sub)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()
    logging.basicConfig(level=(args.log_level or settings.log_level).upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from streamgenre.apps.devbroker import BrokerError
    from streamgenre.apps.ingest import IngestError
    from streamgenre.model.contract import ModelError
    from streamgenre.model.similarity import CatalogError

    try:
        return args.handler(args, settings)
    except (ModelError, IngestError, BrokerError, CatalogError, FileNotFoundError) as exc:
        print(f"streamgenre {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (KafkaConnectionError, KafkaTimeoutError):
        print(f"streamgenre {args.command}: error: no Kafka broker answers at {settings.bootstrap_servers}",
              file=sys.stderr)
        return 2
    except KafkaError as exc:
        print(f"streamgenre {args.command}: Kafka error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
