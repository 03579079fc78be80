"""The daemon's lifecycle: startup → poll loop (+ worker thread) → drain → shutdown.

Two threads, because they have opposite needs:

* the **poll thread** owns the Kafka consumer (which is not thread-safe): it polls, keeps the
  group membership alive, pauses partitions when the worker falls behind (backpressure),
  commits the offsets the worker declares safe, and runs the rebalance callbacks;
* the **worker thread** owns the :class:`~streamgenre.stream.pipeline.Pipeline`: decoding, features,
  inference and publishing, all CPU-bound, so the poll loop never waits for them and
  ``max_poll_interval_ms`` is never at risk.

They talk through a bounded queue of records (poll → worker) and a dict of commit offsets
(worker → poll). A rebalance or shutdown puts a :class:`_Barrier` into the queue: when the
worker reaches it, everything before it has been processed, published and flushed.
"""

from __future__ import annotations

import gc
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer

from kafka.errors import KafkaError

from streamgenre.config import Settings
from streamgenre.model.contract import GenreModel
from streamgenre.model.similarity import Catalog
from streamgenre.stream.heap import release_free_heap
from streamgenre.stream.metrics import GcPauses, Health, Metrics, serve_http
from streamgenre.stream.neighbours import NeighbourIndex
from streamgenre.stream.pipeline import Pipeline
from streamgenre.stream.sinks import KafkaSink, RedisSink, SinkError
from streamgenre.stream.source import ChunkSource, Record

log = logging.getLogger(__name__)

CHECKPOINT_INTERVAL_S = 1.0
HOUSEKEEPING_INTERVAL_S = 2.0
# Returning the freed heap costs more than the call: the pages come back with page faults as
# the next temporaries reuse them. Every 2 s that was ~3% of the worker's CPU at 500 streams
# (mostly system time); every 10 s a fifth of it, and the holes of 10 s are reused, not added.
HEAP_RELEASE_INTERVAL_S = 10.0
# The poll thread's wait for records. A poll returns as soon as records arrive, so the long wait
# costs no latency; it bounds how often an idle poll thread goes round, and each kafka-python
# poll() that times out costs ~4 ms of CPU across its threads (0.08 CPU-s/s at 50 ms, 0.025 at
# 200 ms, measured on an idle consumer). While records wait for room in the worker's queue the
# partitions are paused and no record will end the wait, so the loop comes back sooner.
POLL_TIMEOUT_MS = 250
BACKPRESSURE_POLL_TIMEOUT_MS = 50


class StartupError(RuntimeError):
    """The daemon cannot start (a busy metrics port, say); the CLI prints it as one line, exit 2."""


def limit_native_threads() -> None:
    """One BLAS/OpenMP thread per worker process (onnxruntime has its own pool, ``ort_threads``).

    The mel filterbank is a small matmul per chunk; OpenBLAS's default thread pool (one thread
    per core) spins up for it and, with the other worker processes and the poll thread busy
    on the same cores, made it about 100x slower here (0.4 ms -> 40 ms for 128 frames).
    Parallelism comes from worker processes, not from threads inside numpy.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # threadpoolctl comes with librosa's scikit-learn; without it, keep defaults
        return
    threadpool_limits(limits=1)


@dataclass
class _Barrier:
    """Ask the worker to checkpoint, then forget the given partitions' streams."""

    drop: set[int]
    offsets: dict[int, int] = field(default_factory=dict)
    ok: bool = False
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Item:
    generation: int
    record: Record


class Daemon:
    """One worker process of the consumer group. ``run()`` blocks until shutdown.

    The daemon loads everything the settings name — the model (``model_path``) and the
    catalogue of live neighbours (``catalog_path``) — so every command that builds one
    (``run``, ``demo``, the tests) honours the same settings.

    Everything :meth:`startup` creates is declared here as ``None``: :meth:`shutdown` releases
    what exists after a startup that stopped half-way, and nothing else.

    Parameters
    ----------
    settings : Settings
    catalog : NeighbourIndex, optional
        A catalogue already in memory; it replaces the one ``settings.catalog_path`` names.
    """

    def __init__(self, settings: Settings, catalog: NeighbourIndex | None = None) -> None:
        self.settings = settings
        self.catalog = catalog
        self.metrics = Metrics()
        self.health = Health()
        self.should_exit = threading.Event()
        self.started = threading.Event()
        self._queue: queue.Queue[_Item | _Barrier] = queue.Queue(maxsize=settings.queue_max_chunks)
        self._overflow: list[Record] = []
        self._paused = False
        self._generation = 0
        self._commit_lock = threading.Lock()
        self._to_commit: dict[int, int] = {}
        self._committed: dict[int, int] = {}
        self._worker_stop = threading.Event()
        # Created by startup(), in this order; shutdown() releases those that exist.
        self.model: GenreModel | None = None
        self.http: ThreadingHTTPServer | None = None
        self.kafka: KafkaSink | None = None
        self.redis: RedisSink | None = None
        self.pipeline: Pipeline | None = None
        self.source: ChunkSource | None = None
        self.gc_pauses: GcPauses | None = None
        self._worker: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def run(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.should_exit.set())
        self.startup()
        try:
            self.main_loop()
        finally:
            self.shutdown()

    def stop(self) -> None:
        """Ask for a graceful shutdown (what SIGTERM does)."""
        self.should_exit.set()

    def startup(self) -> None:
        s = self.settings
        limit_native_threads()
        # Each step below can take seconds on a cold machine; saying which one is running is
        # what tells a user the daemon is starting rather than stuck.
        log.info("loading model %s", s.model_path)
        self.model = GenreModel(s.model_path, threads=s.ort_threads)
        self.health.model_loaded = True
        self.metrics.model_info.labels(self.model.version).set(1)
        if self.catalog is None and s.catalog_path is not None:
            self.catalog = Catalog.load(s.catalog_path)
        if self.catalog is not None:
            self.catalog.check_model(self.model)  # embeddings of another model live in another space
        try:
            self.http = serve_http(self.metrics, lambda: self.health, s.metrics_host, s.metrics_port)
        except OSError as exc:
            raise StartupError(f"cannot serve metrics on {s.metrics_host}:{s.metrics_port}: {exc.strerror or exc} "
                               "(another daemon there? set STREAMGENRE_METRICS_PORT)") from exc
        self.kafka = KafkaSink(s)
        self.redis = RedisSink(s)
        self.health.redis_ok = self.redis.ping()
        self.pipeline = Pipeline(s, self.model, self.kafka, self.redis, self.metrics, self.catalog)
        log.info("warming up the model (first inference)")
        self.pipeline.warm_up()
        log.info("connecting to Kafka at %s and joining group %s", s.bootstrap_servers, s.group_id)
        self.source = self._connect_source()
        # Nearly everything allocated so far (libraries, model, warm-up caches) lives as long as
        # the process. Left in the collector's generations, every full collection walks all of
        # it: 75-130 ms per worker, stalling each window in flight (p99 window -> publish over
        # 200 ms at 500 streams in runs that caught one). Frozen objects are never scanned again.
        gc.freeze()
        self.gc_pauses = GcPauses(self.metrics.gc_pause)
        self._worker = threading.Thread(target=self._work, name="worker", daemon=True)
        self._worker.start()
        log.info("model %s, window %.2fs every %.2fs; consuming %s as group %s",
                 self.model.version, self.model.spec.window_s, self.pipeline.hop_s, s.input_topic, s.group_id)

    def _connect_source(self) -> ChunkSource:
        """Bounded-backoff retry until the broker answers (or we are told to exit)."""
        delay = 0.5
        while True:
            try:
                source = ChunkSource(self.settings, self._on_revoked, self._on_assigned)
                self.health.broker_ok = True
                return source
            except KafkaError as exc:
                self.health.broker_ok = False
                log.warning("broker %s unreachable (%s); retrying in %.1fs",
                            self.settings.bootstrap_servers, exc, delay)
                if self.should_exit.wait(delay):
                    raise SystemExit(0) from exc  # asked to stop before we ever connected: a clean exit
                delay = min(delay * 2, self.settings.broker_retry_max_s)

    def main_loop(self) -> None:
        self.started.set()
        next_housekeeping = 0.0
        while not self.should_exit.is_set():
            records = self.source.poll(
                timeout_ms=BACKPRESSURE_POLL_TIMEOUT_MS if self._overflow or self._paused else POLL_TIMEOUT_MS
            )
            self._overflow.extend(records)
            self._feed_worker()
            self._commit_ready()
            now = time.monotonic()
            if now >= next_housekeeping:
                next_housekeeping = now + HOUSEKEEPING_INTERVAL_S
                self._housekeeping()

    def shutdown(self) -> None:
        """Drain: stop polling, finish what the worker holds, flush, commit, leave the group.

        Records still queued are *not* processed: they are after the last commit, so the next
        owner replays them. That keeps the drain within ``drain_timeout_s`` even under a backlog.
        """
        started = time.monotonic()
        log.info("draining (budget %.1fs)", self.settings.drain_timeout_s)
        if self.gc_pauses is not None:
            self.gc_pauses.close()
        if self.source is not None:
            self._generation += 1  # makes every queued record stale
            self._overflow.clear()
            barrier = self._barrier(set(), self.settings.drain_timeout_s)
            if barrier.ok:
                self._commit_now(barrier.offsets)
            self._worker_stop.set()
            try:
                self.source.close()
            except KafkaError as exc:
                log.warning("consumer close: %s", exc)
        if self.kafka is not None:
            self.kafka.close(timeout_s=max(0.5, self.settings.drain_timeout_s - (time.monotonic() - started)))
        if self.redis is not None:
            self.redis.close()
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
        log.info("stopped after %.2fs drain", time.monotonic() - started)

    # -- poll thread -------------------------------------------------------------------------
    def _feed_worker(self) -> None:
        """Move polled records into the bounded queue; pause partitions while it is full."""
        while self._overflow:
            try:
                self._queue.put_nowait(_Item(self._generation, self._overflow[0]))
            except queue.Full:
                break
            self._overflow.pop(0)
        if self._overflow and not self._paused:
            self.source.pause(self.source.assigned())
            self._paused = True
        elif self._paused and not self._overflow and self._queue.qsize() < self._queue.maxsize // 2:
            self.source.resume(self.source.assigned())
            self._paused = False
        self.metrics.queue_depth.set(self._queue.qsize() + len(self._overflow))
        self.metrics.paused_partitions.set(len(self.source.assigned()) if self._paused else 0)

    def _commit_ready(self) -> None:
        with self._commit_lock:
            offsets, self._to_commit = self._to_commit, {}
        self._commit_now(offsets)

    def _commit_now(self, offsets: dict[int, int]) -> None:
        fresh = {p: o for p, o in offsets.items() if o > self._committed.get(p, -1)}
        # A paranoid check: the worker derives offsets from state that only moves forward; a
        # smaller offset than the last commit would mean replaying audio we already published.
        regressed = {p: o for p, o in offsets.items() if o < self._committed.get(p, -1)}
        if regressed:
            log.error("refusing to commit offsets that go backwards: %s (committed %s)", regressed, self._committed)
        if not fresh:
            return
        try:
            self.source.commit(fresh)
            self._committed.update(fresh)
        except KafkaError as exc:
            log.warning("commit failed (will retry with the next checkpoint): %s", exc)

    def _housekeeping(self) -> None:
        self.gc_pauses.flush()
        self.health.broker_ok = self.source.connected()
        self.health.redis_ok = self.redis.up or self.redis.ping()
        self.metrics.ready.set(1 if self.health.ready else 0)
        self.metrics.redis_up.set(1 if self.health.redis_ok else 0)
        for partition, lag in self.source.lag().items():
            self.metrics.consumer_lag.labels(self.settings.input_topic, str(partition)).set(lag)

    def _barrier(self, drop: set[int], timeout_s: float) -> _Barrier:
        """Queue a barrier and wait for the worker to pass it; ``timeout_s`` bounds both steps together."""
        barrier = _Barrier(drop)
        deadline = time.monotonic() + timeout_s
        try:
            self._queue.put(barrier, timeout=timeout_s)
            barrier.done.wait(max(0.0, deadline - time.monotonic()))
        except queue.Full:
            log.error("worker did not take the barrier within %.1fs", timeout_s)
        return barrier

    def _on_revoked(self, partitions: set[int]) -> None:
        """Rebalance, step 1 (poll thread): flush outputs, commit, forget those partitions."""
        log.info("partitions revoked: %s", sorted(partitions))
        self._generation += 1
        self._overflow.clear()
        barrier = self._barrier(partitions, self.settings.max_poll_interval_ms / 2000)
        if barrier.ok:
            self._commit_now({p: o for p, o in barrier.offsets.items() if p in partitions})
        for partition in partitions:
            self._committed.pop(partition, None)
        if self._paused:
            self._paused = False  # a new assignment starts unpaused
        self.metrics.assigned_partitions.set(0)  # the eager protocol revokes everything we held

    def _on_assigned(self, partitions: set[int]) -> None:
        """Rebalance, step 2: positions come from the committed offsets; nothing else to do."""
        log.info("partitions assigned: %s", sorted(partitions))
        self.health.broker_ok = True
        self.metrics.assigned_partitions.set(len(partitions))

    # -- worker thread -----------------------------------------------------------------------
    def _work(self) -> None:
        pipeline = self.pipeline
        next_checkpoint = time.monotonic() + CHECKPOINT_INTERVAL_S
        next_eviction = time.monotonic() + HOUSEKEEPING_INTERVAL_S
        next_heap_release = time.monotonic() + HEAP_RELEASE_INTERVAL_S
        while not self._worker_stop.is_set():
            wait = pipeline.batcher.seconds_until_due(time.monotonic())
            records, barrier = self._take_step(timeout_s=0.05 if wait is None else min(wait, 0.05))
            if records:
                pipeline.process(records)
            if barrier is not None:
                barrier.ok, barrier.offsets = self._checkpoint()
                pipeline.drop_partitions(barrier.drop)
                barrier.done.set()
            # Idle: nothing to wait for, so a partial batch need not wait out max_wait_ms.
            pipeline.run_due_batches(flush=not records and barrier is None)
            now = time.monotonic()
            if now >= next_checkpoint:
                pipeline.checkpoint()
                next_checkpoint = now + CHECKPOINT_INTERVAL_S
            self._collect_committable()
            if now >= next_eviction:
                pipeline.evict_idle(now)
                next_eviction = now + HOUSEKEEPING_INTERVAL_S
            if now >= next_heap_release:
                release_free_heap()
                next_heap_release = now + HEAP_RELEASE_INTERVAL_S

    def _take_step(self, timeout_s: float) -> tuple[list[Record], _Barrier | None]:
        """Up to ``step_max_records`` queued records of the current generation, and the barrier
        that ended the step if one did (the records before it are processed first).

        Waits up to ``timeout_s`` for the first item only: a step never waits for company, it
        takes what has already arrived.
        """
        records: list[Record] = []
        try:
            item = self._queue.get(timeout=timeout_s)
            while True:
                if isinstance(item, _Barrier):
                    return records, item
                if item.generation == self._generation:
                    records.append(item.record)
                if len(records) >= self.settings.step_max_records:
                    break
                item = self._queue.get_nowait()
        except queue.Empty:
            pass
        return records, None

    def _collect_committable(self) -> None:
        """Hand the poll thread the offsets whose outputs the broker has acknowledged."""
        offsets = self._acknowledged(self.pipeline.committable)
        if offsets:
            with self._commit_lock:
                self._to_commit.update(offsets)

    def _checkpoint(self) -> tuple[bool, dict[int, int]]:
        """Checkpoint and wait for the acks (barriers: rebalance and shutdown)."""
        offsets = self._acknowledged(self.pipeline.checkpoint_and_flush)
        return offsets is not None, offsets or {}

    def _acknowledged(self, offsets_of: Callable[[], dict[int, int]]) -> dict[int, int] | None:
        """The offsets ``offsets_of`` allows, or None when the outputs failed (commit nothing)."""
        try:
            return offsets_of()
        except SinkError as exc:
            self.health.broker_ok = False
            log.warning("outputs not acknowledged, not committing: %s", exc)
            return None
