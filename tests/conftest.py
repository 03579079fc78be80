"""Shared fixtures: the real embedded broker, the real Redis, a small contract model, a daemon."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from kafka import KafkaConsumer, TopicPartition

from streamgenre.apps.devbroker import DevBroker, ensure_topics, free_port
from streamgenre.config import Settings
from streamgenre.stream.daemon import Daemon
from streamgenre.stream.neighbours import NeighbourIndex
from tests.faults_harness import RESULTS_ENV as RELIABILITY_RESULTS_ENV
from tests.modelgen import make_test_model

REDIS_URL = "redis://127.0.0.1:6379/0"
SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session", autouse=True)
def results_under_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests write only under the temporary folder: figures go to the tracked results file only
    when ``make reliability`` names it in STREAMGENRE_RELIABILITY_RESULTS."""
    if RELIABILITY_RESULTS_ENV in os.environ:
        yield
        return
    os.environ[RELIABILITY_RESULTS_ENV] = str(tmp_path_factory.mktemp("results") / "reliability.json")
    try:
        yield
    finally:
        del os.environ[RELIABILITY_RESULTS_ENV]


@pytest.fixture(autouse=True)
def no_broker_unless_marked(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """``make test-fast`` deselects the integration and fault tests and must then start no broker:
    any other test that asks for one, or starts one in-process, fails and says how to mark it."""
    if request.node.get_closest_marker("integration") or request.node.get_closest_marker("fault"):
        return
    message = "this test needs a broker: mark it integration (or fault), so that make test-fast runs without one"
    if "broker" in request.fixturenames:
        pytest.fail(message)

    def refuse(_broker: DevBroker, *_args: object, **_kwargs: object) -> DevBroker:
        pytest.fail(message)

    monkeypatch.setattr(DevBroker, "start", refuse)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevBroker]:
    with DevBroker(log_path=tmp_path_factory.mktemp("broker") / "tansu.log") as running:
        yield running


@pytest.fixture(scope="session")
def test_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_model(tmp_path_factory.mktemp("model"))


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A unique key prefix on the machine's Redis, deleted afterwards."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError:
        pytest.fail(f"the tests need a real Redis at {REDIS_URL}")
    prefix = f"sgtest-{uuid.uuid4().hex[:8]}"
    yield prefix
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)


def isolated_settings(bootstrap: str, model_path: Path, redis_prefix: str, **overrides: object) -> Settings:
    """Settings with fresh topic names, group and metrics port, so tests never see each other's data."""
    run = uuid.uuid4().hex[:8]
    fields: dict[str, object] = {
        "bootstrap_servers": bootstrap, "group_id": f"g-{run}", "input_topic": f"in-{run}",
        "output_topic": f"out-{run}", "events_topic": f"ev-{run}", "dlq_topic": f"dlq-{run}",
        "segments_topic": f"seg-{run}", "alerts_topic": f"alert-{run}",
        "redis_url": REDIS_URL, "redis_prefix": redis_prefix, "model_path": model_path,
        "metrics_host": "127.0.0.1", "metrics_port": free_port(),
    }
    return Settings(**{**fields, **overrides})


@pytest.fixture
def settings(broker: DevBroker, test_model: Path, redis_prefix: str) -> Settings:
    configured = isolated_settings(broker.bootstrap, test_model, redis_prefix, change_min_s=2.0)
    ensure_topics(configured, partitions=4)
    return configured


@contextlib.contextmanager
def running_daemon(settings: Settings, catalog: NeighbourIndex | None = None) -> Iterator[Daemon]:
    daemon = Daemon(settings, catalog=catalog)
    thread = threading.Thread(target=daemon.run, name="test-daemon")
    thread.start()
    try:
        assert daemon.started.wait(60), "daemon did not start"
        yield daemon
    finally:
        daemon.stop()
        thread.join(30)
        assert not thread.is_alive(), "daemon did not shut down"


def read_topic(bootstrap: str, topic: str, expected: int, timeout_s: float = 60.0) -> list:
    """All messages of a topic from the beginning, waiting until ``expected`` have arrived."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        messages: list = []
        deadline = time.monotonic() + timeout_s
        while len(messages) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                messages.extend(batch)
        # A short extra poll catches duplicates or surplus messages beyond the expected count.
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            for batch in consumer.poll(timeout_ms=200).values():
                messages.extend(batch)
        return messages
    finally:
        consumer.close()


def predictions(messages: list) -> list[dict]:
    return [json.loads(m.value) for m in messages]
