"""Settings: the one place that reads the environment (prefix ``STREAMGENRE_``).

Every field here is documented in the README's configuration table; deploy files (Helm
ConfigMap, docker-compose) use the same names, so renaming a field is an interface change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Seconds of audio per chunk that our producers (the relay, the ingest CLI, the bench) send.
#: Each record costs the daemon a fixed amount of kafka-python and decode work whatever its
#: length, so 1-s chunks carried 24% more audio per daemon CPU-second than 0.5-s chunks (docs/
#: PERFORMANCE.md, "Records per second"), at the price of 0.5 s more from capture to answer
#: (a window waits for the chunk that completes it). Windows are 3 s, so the answer's cadence
#: does not change.
DEFAULT_CHUNK_S = 1.0

SHIPPED_MODEL = Path(__file__).resolve().parent.parent / "model" / "genre_cnn.onnx"
SHIPPED_MODEL_DIR = SHIPPED_MODEL.parent
#: Model profiles (``STREAMGENRE_MODEL``): ONNX files relative to ``STREAMGENRE_MODEL_DIR``. Measured
#: side by side in ``model/MODEL_CARD.md``: ``accurate`` the musicnn tagger + genre head, ``fast`` its
#: MSD branch alone (half the tagger's cost), ``student`` a small CNN distilled from ``accurate``.
MODEL_PROFILES: dict[str, str] = {
    "accurate": "genre_cnn.onnx",
    "fast": "fast/genre_cnn.onnx",
    "student": "student/genre_cnn.onnx",
}
#: The rule (issue 16): the cheapest model within 2 clip-points of the best on gtzan-mini test. The
#: student ties the tagger (94.0%) at about 1/120 of its CPU per window.
DEFAULT_MODEL = "student"
SHIPPED_CONTENT_MODEL = SHIPPED_MODEL.parent / "content.json"


class Settings(BaseSettings):
    """Configuration of the daemon and the CLI tools, loaded from ``STREAMGENRE_*`` variables."""

    model_config = SettingsConfigDict(env_prefix="STREAMGENRE_", extra="ignore")

    # Kafka
    bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, comma-separated.")
    group_id: str = Field("streamgenre", description="Consumer group of the daemon's workers.")
    input_topic: str = Field("audio.chunks", description="Topic of incoming audio chunks.")
    output_topic: str = Field("genre.predictions", description="Topic of per-window predictions.")
    events_topic: str = Field("genre.events", description="Topic of genre-change events.")
    dlq_topic: str = Field("audio.chunks.dlq", description="Dead-letter topic for undecodable input.")
    segments_topic: str = Field("genre.segments", description="Topic of closed segments (state, genre, title).")
    alerts_topic: str = Field("genre.alerts", description="Topic of dead-air and stream-down alerts.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism when security_protocol is SASL_*."
    )
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(None, description="SASL password (never logged).")
    ssl_cafile: str | None = Field(None, description="CA bundle for Kafka TLS.")
    ssl_certfile: str | None = Field(None, description="Client certificate for Kafka mTLS.")
    ssl_keyfile: str | None = Field(None, description="Client key for Kafka mTLS.")
    session_timeout_ms: int = Field(6000, description="Consumer group session timeout.")
    heartbeat_interval_ms: int = Field(1000, description="Consumer heartbeat interval.")
    max_poll_interval_ms: int = Field(60000, description="Max time between polls before the member is evicted.")
    max_message_bytes: int = Field(16 * 1024 * 1024, description="Largest accepted chunk; larger goes to the DLQ.")
    max_decoded_s: float = Field(
        1200.0, gt=0,
        description="Most audio one container message (WAV/FLAC/Ogg) may decode to, in seconds; a file that "
        "declares or decodes to more goes to the DLQ as a decompression bomb.",
    )
    fetch_max_wait_ms: int = Field(
        100, ge=1,
        description="Longest the broker holds a fetch short of fetch_min_bytes (bounds delivery delay).",
    )
    fetch_min_bytes: int = Field(
        1 << 20, ge=1,
        description="Bytes the broker gathers before it answers a fetch, or until fetch_max_wait_ms: fewer fetches "
        "(broker and consumer CPU) for at most that much delivery delay; 1 answers at once.",
    )
    producer_linger_ms: int = Field(5, description="Producer batching delay.")
    compression_type: Literal["gzip", "snappy", "lz4", "zstd"] | None = Field(
        None, description="Producer compression of output topics."
    )
    broker_retry_max_s: float = Field(30.0, description="Upper bound of the reconnect backoff when the broker is down.")
    cli_broker_timeout_s: float = Field(
        5.0, gt=0,
        description="How long `ingest` and `tail` wait for a broker to answer before they give up (raise it "
        "for a slow or distant cluster). The daemon keeps retrying instead.",
    )

    # Redis
    redis_url: SecretStr = Field(
        SecretStr("redis://127.0.0.1:6379/0"),
        description="Redis URL (password and TLS via rediss:// go here; never logged).",
    )
    redis_prefix: str = Field("streamgenre", description="Prefix of every Redis key.")
    redis_latest_ttl_s: int = Field(3600, description="TTL of {prefix}:{stream}:latest.")
    redis_timeline_maxlen: int = Field(10000, description="Approximate cap (MAXLEN ~) of the timeline stream.")
    redis_timeline_ttl_s: int = Field(
        7 * 24 * 3600, ge=0,
        description="A timeline expires this long after its last window, plus up to an eighth of it (at most "
        "10 minutes: the TTL is renewed once per that interval, not per window); 0 keeps it forever.",
    )
    redis_segments_maxlen: int = Field(5000, description="Approximate cap (MAXLEN ~) of {prefix}:{stream}:segments.")
    redis_segments_ttl_s: int = Field(
        7 * 86400, description="{prefix}:{stream}:segments expires this long after its last segment.")
    redis_retry_s: float = Field(2.0, description="How long a failed Redis write is retried before it is skipped.")

    # Model and pipeline
    model: str = Field(
        DEFAULT_MODEL,
        description="Model to serve: a profile (`accurate`, `fast`, `student`; see the model card) or the path of "
        "an ONNX file with its JSON sidecar beside it.",
    )
    model_dir: Path = Field(SHIPPED_MODEL_DIR, description="Folder of the profiles' model files.")
    model_path: Path | None = Field(
        None, description="ONNX file to serve; overrides STREAMGENRE_MODEL (older deployments). Unset: resolved "
        "from STREAMGENRE_MODEL.",
    )
    ort_threads: int = Field(1, description="onnxruntime intra-op threads.")
    # `streamgenre run` starts this many daemon processes in one consumer group (worker i serves
    # metrics on metrics_port + i). Processes, not threads: framing and publishing hold the GIL.
    workers: int = Field(1, ge=1, description="Daemon processes started by `streamgenre run` (one per core).")
    hop_s: float | None = Field(None, description="Seconds between windows; default: the sidecar's hop_s.")
    # 16, not more: on one core both models cost the same per window from batch 1 to 16, and the
    # musicnn tagger runs at half speed at 64 (its activations no longer fit in cache).
    max_batch: int = Field(16, ge=1, description="Largest inference micro-batch.")
    # 10 rather than 20: under live load a step completes ~15 windows and the batch is time-
    # triggered; at 250 default-model streams on an AVX2 core p99 window -> publish fell from
    # 113-116 to 81-83 ms with the same CPU per window (docs/PERFORMANCE.md).
    max_wait_ms: float = Field(10.0, description="Longest a complete window waits for its batch to fill.")
    step_max_records: int = Field(
        64, ge=1, description="Records the worker takes from its queue per step; their audio shares one FFT/mel pass."
    )
    queue_max_chunks: int = Field(2000, description="Bounded work queue; partitions pause when it is full.")
    # 0.5 because the served probabilities are calibrated (sidecar temperature): below it a window's
    # genre is more likely wrong than right.
    uncertain_below: float = Field(
        0.5, ge=0, le=1, description="A prediction whose calibrated confidence is below this is flagged uncertain."
    )
    ema_alpha: float = Field(0.3, description="Weight of the newest window in the smoothed probabilities.")
    change_min_s: float = Field(6.0, description="A new genre must lead this long before a change event.")
    content_model_path: Path | None = Field(
        SHIPPED_CONTENT_MODEL,
        description="Speech/music/mixed weights (JSON); by default the `content.json` beside the served model "
        "when there is one; unset: every audible window counts as music.")
    silence_dbfs: float = Field(-55.0, description="Windows quieter than this RMS level (dBFS) are silence.")
    segment_min_s: float = Field(
        8.0, gt=0, description="A new state/genre/title must hold this long to start a segment.")
    dead_air_s: float = Field(10.0, gt=0, description="Silence at least this long is dead air (alert + metric).")
    stream_down_s: float = Field(30.0, gt=0, description="A stream without audio this long is down (alert + metric).")
    idle_timeout_s: float = Field(300.0, description="Streams silent this long are evicted.")
    max_gap_s: float = Field(1.0, description="A ts jump beyond this (vs. audio received) resets the window.")
    max_streams: int = Field(20000, description="Upper bound of concurrently tracked streams.")

    # Similarity (live neighbours in Redis)
    catalog_path: Path | None = Field(None, description="Catalogue for live neighbours; off when unset.")
    neighbours_k: int = Field(5, description="Neighbours attached to :latest when a catalogue is set.")
    neighbours_window_s: float = Field(30.0, description="Recent audio whose embeddings are averaged for neighbours.")

    # Radio relay (`streamgenre relay`, `streamgenre ingest URL`)
    relay_metrics_port: int = Field(9110, description="Port of the relay's /metrics, /healthz, /readyz.")
    relay_sample_rate: int = Field(22050, ge=8000, le=96000, description="Rate of the mono PCM the relay sends.")
    relay_chunk_s: float = Field(DEFAULT_CHUNK_S, gt=0, description="Seconds of audio per chunk the relay sends.")
    relay_read_timeout_s: float = Field(
        10.0, gt=0, description="A station that sends no bytes, or no decodable audio, this long is reconnected.")
    relay_backoff_initial_s: float = Field(1.0, gt=0, description="First reconnect delay of a station (doubles).")
    relay_backoff_max_s: float = Field(60.0, gt=0, description="Cap of a station's reconnect delay.")

    # HTTP API (`streamgenre serve`)
    api_host: str = Field("0.0.0.0", description="Bind address of the HTTP API.")
    api_port: int = Field(8080, description="Port of the HTTP API.")
    api_key_hashes: list[str] = Field(
        [],
        description="SHA-256 hex digests of the accepted API keys (JSON list; `Authorization: Bearer KEY`). "
        "Empty: no authentication (development only; logged at start).",
    )
    api_rate_per_s: float = Field(5.0, gt=0, description="Requests per second allowed per API key (token bucket).")
    api_rate_burst: int = Field(20, ge=1, description="Burst size of the per-key rate limit.")
    api_max_upload_bytes: int = Field(64 * 1024 * 1024, ge=1, description="Largest accepted upload (413 above).")
    api_sync_max_s: float = Field(
        600.0, gt=0, description="Uploads longer than this (seconds of audio) go through Kafka as a job."
    )
    api_job_ttl_s: int = Field(86400, description="How long a job's record stays in Redis.")
    api_timeline_max: int = Field(100, ge=1, description="Most timeline entries GET /v1/streams/{id} returns.")

    # Operations
    metrics_host: str = Field("0.0.0.0", description="Bind address of /metrics, /healthz, /readyz.")
    metrics_port: int = Field(9100, description="Port of /metrics, /healthz, /readyz.")
    drain_timeout_s: float = Field(5.0, description="Graceful shutdown budget after SIGTERM.")
    log_level: str = Field("INFO", description="Python logging level.")
    kafka_log_level: str = Field(
        "WARNING", description="Logging level of the kafka-python client (its INFO lines are connection chatter).",
    )

    @model_validator(mode="after")
    def _resolve_model(self) -> Settings:
        """``model_path`` is the file served: explicit, else the profile's file, else ``model`` as a path."""
        if self.model_path is None:
            profile = MODEL_PROFILES.get(self.model)
            self.model_path = self.model_dir / profile if profile else Path(self.model)
        # A content model reads the genre model's front end, so each profile ships its own
        # beside its graph; one set explicitly (or unset: level only) is left as given.
        if "content_model_path" not in self.model_fields_set:
            beside = self.model_path.parent / SHIPPED_CONTENT_MODEL.name
            if beside.is_file():
                self.content_model_path = beside
        return self

    def kafka_security(self) -> dict[str, Any]:
        """kafka-python keyword arguments for TLS/SASL, passed through unchanged."""
        options: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.sasl_mechanism:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password.get_secret_value() if self.sasl_password else None
        for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            if getattr(self, key):
                options[key] = getattr(self, key)
        return options


def settings_table() -> str:
    """The README's configuration table, generated from the fields so the two cannot drift."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, SecretStr):
            default = default.get_secret_value()
        elif isinstance(default, Path) and default.is_relative_to(SHIPPED_MODEL_DIR):
            default = default.relative_to(SHIPPED_MODEL_DIR.parent)
        rows.append(f"| `STREAMGENRE_{name.upper()}` | `{default}` | {field.description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(settings_table())
