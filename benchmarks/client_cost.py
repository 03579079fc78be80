"""What does keeping kafka-python cost? It against librdkafka, on the daemon's own traffic (issue 20, point 2)

The bench's real-time producer sends ``--streams`` streams of 1-s chunks to tansu. Four processes
run at once and report the CPU they used (all their threads) over the same ``--seconds``:

* two consumers of that topic, which drop every record: the daemon's own
  :class:`~streamgenre.stream.source.ChunkSource` with the daemon's settings (kafka-python), and
  ``confluent_kafka.Consumer`` with the same fetch sizes and waits (librdkafka);
* two producers of what the daemon publishes at that many streams (a 600-byte prediction per
  window, 333 a second, in micro-batch bursts): the daemon's :class:`~streamgenre.stream.sinks.KafkaSink`
  (kafka-python, acks all, 5-ms linger) and ``confluent_kafka.Producer`` set the same way.

confluent-kafka is not one of our dependencies, so its side runs under the Python of
``--confluent-python``, a venv of its own:

    python3 -m venv build/ck && build/ck/bin/pip install confluent-kafka
    PYTHONPATH=. .venv/bin/python benchmarks/client_cost.py --streams 500 --seconds 20

All run at once so that the broker, the feed and the box are the same for both clients; the
ratio is the figure, the result goes to ``benchmarks/results/client-cost-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def consume_kafka_python(job: dict[str, Any]) -> dict[str, float]:
    """Poll with the daemon's source and drop what comes."""
    from streamgenre.config import Settings
    from streamgenre.stream.source import ChunkSource

    settings = Settings(bootstrap_servers=job["bootstrap"], input_topic=job["topic"],
                        group_id=f"client-cost-kp-{time.time_ns()}")
    source = ChunkSource(settings, on_revoked=lambda _: None, on_assigned=lambda _: None)
    try:
        return _measure(lambda: [len(r.value) for r in source.poll(timeout_ms=100)], job)
    finally:
        source.close()


def consume_librdkafka(job: dict[str, Any]) -> dict[str, float]:
    """The same with confluent-kafka, its fetch settings the daemon's (passed in ``job``)."""
    from confluent_kafka import OFFSET_END, Consumer, TopicPartition

    consumer = Consumer({
        "bootstrap.servers": job["bootstrap"], "group.id": f"client-cost-rd-{time.time_ns()}",
        "auto.offset.reset": "latest", "enable.auto.commit": False,
        "fetch.min.bytes": job["fetch_min_bytes"], "fetch.wait.max.ms": job["fetch_max_wait_ms"],
    })
    # Every partition assigned directly: with tansu, librdkafka's group join left some unread.
    topic = job["topic"]
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_END) for p in partitions])

    def poll() -> list[int]:
        return [len(m.value()) for m in consumer.consume(num_messages=500, timeout=0.1) if m.error() is None]

    try:
        return _measure(poll, job)
    finally:
        consumer.close()


def produce_kafka_python(job: dict[str, Any]) -> dict[str, float]:
    """Send predictions with the daemon's own sink, a micro-batch at a time, as its worker does."""
    from streamgenre.config import Settings
    from streamgenre.stream.sinks import KafkaSink, OutMessage

    sink = KafkaSink(Settings(bootstrap_servers=job["bootstrap"], group_id="client-cost",
                              producer_linger_ms=job["linger_ms"]))

    def burst(keys: list[bytes]) -> None:
        for key in keys:
            sink.send(OutMessage(job["topic"], key, PREDICTION))
        sink.acknowledged()

    try:
        return _paced(burst, job)
    finally:
        sink.flush()


def produce_librdkafka(job: dict[str, Any]) -> dict[str, float]:
    """The same with confluent-kafka's producer, set as the daemon's (acks all, 5-ms linger)."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": job["bootstrap"], "acks": "all", "linger.ms": job["linger_ms"]})

    def burst(keys: list[bytes]) -> None:
        for key in keys:
            producer.produce(job["topic"], key=key, value=PREDICTION)
        producer.poll(0)  # delivery reports, as the daemon's acknowledged()

    try:
        return _paced(burst, job)
    finally:
        producer.flush(10)


#: A published prediction's size (a window of the demo's ``genre.predictions``: ~600 bytes of JSON).
PREDICTION = b"x" * 600
#: Windows a second at 500 streams (3-s windows, 1.5-s hop), published in bursts as micro-batches finish.
WINDOWS_PER_S, BURSTS_PER_S = 333, 22


def _paced(burst: Callable[[list[bytes]], None], job: dict[str, Any]) -> dict[str, float]:
    keys = [f"s-{i}".encode() for i in range(WINDOWS_PER_S // BURSTS_PER_S)]
    ticks = 0
    start = time.time()

    def send() -> list[int]:
        nonlocal ticks
        ticks += 1
        burst(keys)
        time.sleep(max(0.0, start + ticks / BURSTS_PER_S - time.time()))
        return [len(PREDICTION)] * len(keys)

    return _measure(send, job)


def _measure(poll: Callable[[], list[int]], job: dict[str, Any]) -> dict[str, float]:
    """Call ``poll`` until ``job["to"]``; records, bytes and this process's CPU from ``job["from"]``."""
    records = payload = 0
    cpu0 = wall0 = None
    while (now := time.time()) < job["to"]:
        sizes = poll()
        if now >= job["from"]:
            if cpu0 is None:
                cpu0, wall0 = time.process_time(), now
            else:
                records, payload = records + len(sizes), payload + sum(sizes)
    if cpu0 is None or wall0 is None:
        raise RuntimeError("no poll returned inside the measured window: raise --seconds")
    span = time.time() - wall0
    return {"records_per_s": round(records / span, 1), "mb_per_s": round(payload / span / 1e6, 2),
            "cpu_s_per_s": round((time.process_time() - cpu0) / span, 4)}


CHILDREN = {"kafka-python": consume_kafka_python, "librdkafka": consume_librdkafka,
            "kafka-python-out": produce_kafka_python, "librdkafka-out": produce_librdkafka}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=8.0)
    parser.add_argument("--confluent-python", default="build/ck/bin/python")
    parser.add_argument("--child", choices=list(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child](json.loads(args.job))), flush=True)
        return 0

    from streamgenre.apps.devbroker import DevBroker
    from streamgenre.bench.daemons import run_settings
    from streamgenre.bench.models import PAPER_CNN
    from streamgenre.bench.producer import start_producer
    from streamgenre.bench.report import machine_info

    with DevBroker() as broker:
        settings = run_settings(broker.bootstrap, f"cc{time.time_ns()}", PAPER_CNN, partitions=8)
        start_at = time.time() + 12.0  # both consumers joined and assigned before the first chunk
        job = {"bootstrap": broker.bootstrap,
               "from": start_at + args.warmup, "to": start_at + args.warmup + args.seconds,
               "fetch_min_bytes": settings.fetch_min_bytes, "fetch_max_wait_ms": settings.fetch_max_wait_ms,
               "linger_ms": settings.producer_linger_ms}
        children = {
            name: subprocess.Popen(
                [args.confluent_python if "librdkafka" in name else sys.executable, __file__, "--child", name, "--job",
                 json.dumps({**job, "topic": settings.output_topic if name.endswith("out") else settings.input_topic})],
                stdout=subprocess.PIPE, text=True)
            for name in CHILDREN
        }
        producer, _ = start_producer(broker.bootstrap, settings.input_topic, args.streams,
                                     args.warmup + args.seconds + 2.0, 1.0, start_at)
        results = {name: json.loads(child.communicate(timeout=args.warmup + args.seconds + 120)[0])
                   for name, child in children.items()}
        producer.join(30)
    report = {"streams": args.streams, "seconds": args.seconds, "chunk_s": 1.0, "clients": results,
              "kafka_python_cpu_s_per_s": round(results["kafka-python"]["cpu_s_per_s"]
                                                + results["kafka-python-out"]["cpu_s_per_s"], 4),
              "librdkafka_cpu_s_per_s": round(results["librdkafka"]["cpu_s_per_s"]
                                              + results["librdkafka-out"]["cpu_s_per_s"], 4),
              "machine": machine_info()}
    print(json.dumps(report, indent=1))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"client-cost-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
