"""``streamgenre demo``: the whole product on one machine, started and stopped by itself.

Starts the embedded broker, uses Redis at the configured URL (or starts a private
``redis-server`` when none answers), runs the daemon, streams audio into it as concurrent live
streams and prints the live timeline; then shuts everything down in reverse order.

Its Redis keys go under a prefix of their own (``streamgenre-demo-<random>``, printed at the
start), never under the production default, and are deleted on exit unless ``--keep`` is given.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import redis
import soundfile as sf
from pydantic import SecretStr

from streamgenre.apps.devbroker import DevBroker, ensure_topics, free_port, wait_for_port
from streamgenre.apps.ingest import SourceReport, ingest
from streamgenre.apps.tail import follow
from streamgenre.config import Settings
from streamgenre.stream.daemon import Daemon, StartupError

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
AUDIO_SUFFIXES = {".wav", ".au", ".ogg", ".flac", ".mp3"}


def demo_sources(files: list[str], per_genre: int = 1) -> list[Path]:
    """Files given on the command line, else GTZAN (full, then the mini copy), else nothing."""
    if files:
        return [Path(f) for f in files]
    for root in (SHARED_DATA / "gtzan", SHARED_DATA / "gtzan-mini"):
        if root.is_dir():
            picked = []
            for genre_dir in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "splits"):
                clips = sorted(p for p in genre_dir.iterdir() if p.suffix in AUDIO_SUFFIXES)
                picked.extend(clips[-per_genre:])
            if picked:
                return picked
    return []


def generated_tones(directory: Path, seconds: float = 20.0, sample_rate: int = 22050) -> list[Path]:
    """Three synthetic 'stations' (chord, noise bursts, chirps) for machines without audio data."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    rng = np.random.default_rng(7)
    signals = {
        "chords": sum(0.2 * np.sin(2 * np.pi * f * t) for f in (261.6, 329.6, 392.0)),
        "beats": rng.normal(0, 0.3, t.size) * (np.sin(2 * np.pi * 2 * t) > 0.6),
        "chirps": 0.4 * np.sin(2 * np.pi * (200 + 400 * (t % 2)) * t),
    }
    paths = []
    for name, signal in signals.items():
        path = directory / f"generated_{name}.wav"
        sf.write(path, signal.astype(np.float32), sample_rate)
        paths.append(path)
    return paths


@contextlib.contextmanager
def redis_for_demo(url: str) -> Iterator[str]:
    """Yield a Redis URL that answers: the configured one, or a private redis-server."""
    try:
        redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()
        yield url
        return
    except redis.RedisError:
        pass
    binary = shutil.which("redis-server")
    if binary is None:
        raise StartupError(f"no Redis answers at {url} and redis-server is not on PATH")
    port = free_port()
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", port, 10)
        print(f"started redis-server on 127.0.0.1:{port}")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait()


def demo_stream_id(path: Path) -> str:
    """A valid stream id from a file name (spaces and other characters become '-')."""
    return re.sub(r"[^A-Za-z0-9._:/@+-]+", "-", path.stem)[:64] or "stream"


def delete_prefix(redis_url: str, prefix: str) -> int:
    """Delete every ``{prefix}:*`` key; returns how many there were."""
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
        return len(keys)
    finally:
        client.close()


def _say_problems(report: SourceReport) -> None:
    """A file that gives no audio, or less than it declares, is said so in the timeline."""
    if report.error is not None:
        print(f"error: {report.line()}", flush=True)
    elif report.warning is not None:
        print(f"warning: {report.source}: {report.warning}", flush=True)


def run_demo(settings: Settings, files: list[str], speed: float, max_streams: int, keep: bool = False) -> int:
    with tempfile.TemporaryDirectory(prefix="streamgenre-demo-") as tmp:
        sources = demo_sources(files)[:max_streams] or generated_tones(Path(tmp))
        for source in sources:
            if not source.is_file():
                raise FileNotFoundError(f"{source}: no such file")
        print("starting the broker (tansu)...", flush=True)
        with DevBroker(log_path=Path(tmp) / "broker.log") as broker, redis_for_demo(
            settings.redis_url.get_secret_value()
        ) as redis_url:
            print(f"broker (tansu) on {broker.bootstrap}")
            prefix = f"streamgenre-demo-{uuid.uuid4().hex[:8]}"
            print(f"Redis keys under {prefix}:* ({'kept after the demo' if keep else 'deleted when the demo ends'})")
            settings = settings.model_copy(update={
                "bootstrap_servers": broker.bootstrap, "redis_url": SecretStr(redis_url), "metrics_port": free_port(),
                "change_min_s": min(settings.change_min_s, 6.0), "redis_prefix": prefix,
            })
            try:
                return _run_with_daemon(settings, sources, speed, redis_url)
            finally:
                if not keep:
                    deleted = delete_prefix(redis_url, prefix)
                    print(f"deleted {deleted} Redis keys under {prefix}:* (--keep keeps them)")


def _run_with_daemon(settings: Settings, sources: list[Path], speed: float, redis_url: str) -> int:
    ensure_topics(settings, partitions=4)
    print("starting the daemon (loading the model, warming up, joining the group)...", flush=True)
    daemon = Daemon(settings)
    failure: list[BaseException] = []

    def run_daemon() -> None:
        try:
            daemon.run()
        except BaseException as exc:  # reported below as one line, not as a thread traceback
            failure.append(exc)

    daemon_thread = threading.Thread(target=run_daemon, name="daemon")
    daemon_thread.start()
    while not daemon.started.wait(0.2):
        if not daemon_thread.is_alive():
            reason = f": {failure[0]}" if failure else " (see the error above)"
            raise StartupError(f"the daemon failed to start{reason}")
    print(f"daemon up: metrics on http://127.0.0.1:{settings.metrics_port}/metrics")
    print(f"streaming {len(sources)} files at {speed}x real time:")
    ingesters = [
        threading.Thread(target=ingest, args=(settings, [str(src)], demo_stream_id(src)),
                         kwargs={"speed": speed, "on_source_done": _say_problems}, daemon=True)
        for src in sources
    ]
    for thread in ingesters:
        thread.start()
    stop = threading.Event()
    watcher = threading.Thread(target=follow, args=(settings, stop), daemon=True)
    watcher.start()
    try:
        for thread in ingesters:
            thread.join()
        time.sleep(5.0)  # the last windows of each stream are still in flight
    except KeyboardInterrupt:
        print("interrupted")
    finally:
        stop.set()
        watcher.join(5)
        daemon.stop()
        daemon_thread.join(30)
    snapshot = redis.Redis.from_url(redis_url)
    latest = {k.decode() for k in snapshot.keys(f"{settings.redis_prefix}:*:latest")}
    snapshot.close()
    print(f"done: {int(daemon.metrics.windows._value.get())} windows classified; "
          f"{len(latest)} streams have a latest prediction in Redis")
    return 0
