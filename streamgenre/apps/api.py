"""The HTTP API (``streamgenre serve``): classify uploads, follow jobs and live streams.

``POST /v1/classify`` decodes an upload (raw body or multipart ``file``) and classifies it
through :class:`~streamgenre.stream.tracks.TrackClassifier`, i.e. the daemon's framing,
micro-batching and model, shared by all requests of the process. ``?async=true``, or audio
longer than ``api_sync_max_s``, is published to ``audio.chunks`` with ``eos`` instead and
answered with a job id; the daemon classifies it and ``GET /v1/jobs/{id}`` reads its windows
from Redis. ``GET /v1/streams/{id}`` reads a live stream's latest prediction and timeline.

Every error is a 4xx with a reason, never a 500: 401 without a valid key, 413 for an upload
over ``api_max_upload_bytes`` or audio over ``max_decoded_s``, 422 for audio that cannot be
decoded, 429 over the per-key rate, 503 when Redis or Kafka is needed and down. Neither audio nor
keys are logged: keys are compared as SHA-256 digests and never leave :func:`_authorise`.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import redis
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from streamgenre.apps.jobs import PublishError, job_state, publish_job
from streamgenre.apps.uploads import DecodedAudio, decode_bytes
from streamgenre.config import Settings
from streamgenre.model.contract import GenreModel
from streamgenre.stream.content import ContentStage
from streamgenre.stream.metrics import LATENCY_BUCKETS, Metrics
from streamgenre.stream.tracks import Neighbours, TooShort, TrackClassifier
from streamgenre.stream.wire import BadInput, Reason

log = logging.getLogger(__name__)

API_VERSION = "1"
JOB_ID_PATTERN = r"^[0-9a-f]{32}$"


# -- response models (they are the OpenAPI document) -------------------------------------------
class Problem(BaseModel):
    detail: str
    reason: str = Field(description="machine-readable cause, e.g. unauthenticated, oversized, corrupt_container")


class Window(BaseModel):
    t_start: float = Field(description="seconds from the start of the track")
    t_end: float
    genre: str | None = Field(description="null unless the window is music")
    confidence: float
    probs: dict[str, float]
    state: str | None = Field(None, description="content state: music, speech, mixed or silence")
    state_probs: dict[str, float] | None = None
    level_dbfs: float | None = None


class Classification(BaseModel):
    genre: str | None = Field(description="argmax of the mean probabilities of the music windows; null without music")
    confidence: float | None
    probabilities: dict[str, float] | None
    states: dict[str, float] = Field(description="share of the windows in each content state")
    timeline: list[Window]
    windows: int
    duration_s: float
    model_version: str
    neighbours: list[dict[str, Any]] | None = Field(None, description="k nearest catalogue tracks, when configured")


class JobAccepted(BaseModel):
    job_id: str
    status: str = "queued"
    stream_id: str
    duration_s: float
    windows_expected: int
    result_url: str


class JobStatus(BaseModel):
    job_id: str
    status: str = Field(description="pending until every expected window is in Redis, then done")
    windows_done: int
    windows_expected: int
    result: Classification | None = None


class StreamView(BaseModel):
    stream_id: str
    latest: dict[str, Any] | None
    timeline: list[dict[str, Any]]


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "description": text}
    for code, text in ((400, "malformed request (e.g. a broken multipart body)"),
                       (401, "missing or unknown API key"), (404, "no such job or stream"),
                       (413, "upload or its audio too large"),
                       (422, "undecodable audio or bad parameters"), (429, "rate limit exceeded"),
                       (503, "Redis or Kafka unavailable, or the server too busy to finish in time"))
}


# -- pure parts ----------------------------------------------------------------------------
class TokenBuckets:
    """Per-principal token buckets: ``rate`` requests per second, bursts of ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, principal: str, now: float) -> float:
        """Take one token; returns 0.0 when allowed, else the seconds until one is available."""
        with self._lock:
            tokens, last = self._buckets.get(principal, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[principal] = (tokens - 1.0, now)
                return 0.0
            self._buckets[principal] = (tokens, now)
            return (1.0 - tokens) / self.rate


def key_digest(key: str) -> str:
    """What ``api_key_hashes`` holds for a key (``printf %s KEY | sha256sum`` gives the same)."""
    return hashlib.sha256(key.encode()).hexdigest()


def problem(status: int, reason: str, detail: str, headers: dict[str, str] | None = None) -> HTTPException:
    return HTTPException(status, detail={"detail": detail, "reason": reason}, headers=headers)


def bad_input_status(exc: BadInput) -> int:
    return 413 if exc.reason in (Reason.DECOMPRESSION_BOMB, Reason.OVERSIZED) else 422


# -- the application -----------------------------------------------------------------------
class ApiState:
    """Everything the endpoints share: one model, one classifier, lazily connected Redis/Kafka."""

    def __init__(self, settings: Settings, model: GenreModel, catalog: Neighbours | None) -> None:
        self.settings = settings
        self.model = model
        self.metrics = Metrics()
        self.metrics.model_info.labels(model.version).set(1)
        self.classifier = TrackClassifier(model, settings.max_batch, settings.max_wait_ms, settings.hop_s,
                                          catalog, settings.neighbours_k, self.metrics,
                                          ContentStage(settings, model.recipe, self.metrics))
        self.key_hashes = [h.strip().lower() for h in settings.api_key_hashes]
        self.buckets = TokenBuckets(settings.api_rate_per_s, settings.api_rate_burst)
        self.redis = redis.Redis.from_url(settings.redis_url.get_secret_value(), socket_timeout=2.0,
                                          socket_connect_timeout=1.0)
        self._producer: Any = None
        self._producer_lock = threading.Lock()
        registry = self.metrics.registry
        self.requests = Counter("streamgenre_api_requests", "HTTP API requests, by route and status.",
                                ["route", "status"], registry=registry)
        self.request_seconds = Histogram("streamgenre_api_request_seconds", "HTTP API request time, by route.",
                                         ["route"], buckets=LATENCY_BUCKETS, registry=registry)

    def producer(self) -> Any:
        from streamgenre.apps.ingest import make_producer

        with self._producer_lock:
            if self._producer is None:
                self._producer = make_producer(self.settings)
            return self._producer

    def close(self) -> None:
        self.classifier.close()
        if self._producer is not None:
            self._producer.close(timeout=5)
        self.redis.close()

    def redis_key(self, stream_id: str, kind: str) -> str:
        return f"{self.settings.redis_prefix}:{stream_id}:{kind}"


BEARER = HTTPBearer(auto_error=False, description="an API key; its SHA-256 is in STREAMGENRE_API_KEY_HASHES")


def authorise(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> str:
    """The caller's principal (key digest, or client address without keys), after its rate limit."""
    state: ApiState = request.app.state.api
    if state.key_hashes:
        if credentials is None:
            raise problem(401, "unauthenticated", "send Authorization: Bearer <API key>",
                          {"WWW-Authenticate": "Bearer"})
        digest = key_digest(credentials.credentials)
        if not any(hmac.compare_digest(digest, known) for known in state.key_hashes):
            raise problem(401, "unauthenticated", "unknown API key", {"WWW-Authenticate": "Bearer"})
        principal = digest
    else:
        principal = f"ip:{request.client.host if request.client else 'unknown'}"
    retry = state.buckets.take(principal, time.monotonic())
    if retry:
        raise problem(429, "rate_limited", f"over {state.settings.api_rate_per_s:g} requests/s",
                      {"Retry-After": str(max(1, round(retry)))})
    return principal


Principal = Annotated[str, Depends(authorise)]


def create_app(settings: Settings, model: GenreModel | None = None, catalog: Neighbours | None = None) -> FastAPI:
    """The FastAPI application; loads the model unless one is given (one load per process)."""
    model = model or GenreModel(settings.model_path, threads=settings.ort_threads)
    if catalog is not None and hasattr(catalog, "check_model"):
        catalog.check_model(model)
    state = ApiState(settings, model, catalog)
    if not state.key_hashes:
        log.warning("no API keys configured (STREAMGENRE_API_KEY_HASHES): the API accepts anonymous requests")

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        state.close()

    app = FastAPI(title="streamgenre", version=API_VERSION, lifespan=lifespan,
                  description="Music-genre classification of uploads and live streams.")
    app.state.api = state

    @app.exception_handler(StarletteHTTPException)  # FastAPI's and Starlette's own (404 route, 400 multipart)
    async def _problem(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        body = exc.detail if isinstance(exc.detail, dict) else {"detail": str(exc.detail), "reason": "http_error"}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return JSONResponse({"detail": f"{where}: {first.get('msg')}", "reason": "invalid_request"}, status_code=422)

    @app.middleware("http")
    async def _count(request: Request, call_next: Any) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        name = getattr(route, "path", "unmatched")
        state.requests.labels(name, str(response.status_code)).inc()
        state.request_seconds.labels(name).observe(time.perf_counter() - started)
        return response


    @app.post(
        "/v1/classify", response_model=Classification | JobAccepted, responses={**ERRORS, 202: {"model": JobAccepted}},
        summary="Classify an uploaded audio file (raw body or multipart 'file')",
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "audio/*": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                               "properties": {"file": {"type": "string", "format": "binary"}}}},
        }}},
    )
    async def classify(request: Request, _principal: Principal,
                       run_async: Annotated[bool, Query(alias="async", description="publish as a Kafka job")] = False,
                       ) -> Response:
        data = await _read_upload(request, settings.api_max_upload_bytes)
        try:
            decoded = await run_in_threadpool(decode_bytes, data, settings.max_decoded_s, model.recipe.sample_rate)
            if run_async or decoded.duration_s > settings.api_sync_max_s:
                accepted = await run_in_threadpool(_submit_job, state, data, decoded)
                return JSONResponse(accepted.model_dump(), status_code=202)
            result = await run_in_threadpool(state.classifier.classify, decoded.first, decoded.more,
                                             decoded.sample_rate)
        except BadInput as exc:
            raise problem(bad_input_status(exc), exc.reason.value, exc.detail) from None
        except TooShort as exc:
            raise problem(422, "no_audio", str(exc)) from None
        except TimeoutError:
            raise problem(503, "overloaded", "inference did not finish in time; retry later or use ?async=true",
                          {"Retry-After": "30"}) from None
        result["duration_s"] = round(decoded.duration_s, 3)
        return JSONResponse(Classification.model_validate(result).model_dump())

    @app.get("/v1/jobs/{job_id}", response_model=JobStatus, responses=ERRORS, summary="A job's state and result")
    def job(job_id: Annotated[str, Path(pattern=JOB_ID_PATTERN)], _principal: Principal) -> JobStatus:
        try:
            record = state.redis.get(f"{settings.redis_prefix}:job:{job_id}")
            if record is None:
                raise problem(404, "unknown_job", f"no job {job_id} (unknown or expired)")
            meta = json.loads(record)
            entries = state.redis.xrange(state.redis_key(meta["stream_id"], "timeline"))
        except redis.RedisError as exc:
            raise problem(503, "redis_unavailable", f"Redis: {type(exc).__name__}") from None
        return JobStatus.model_validate(job_state(meta, [json.loads(fields[b"json"]) for _, fields in entries]))

    @app.get("/v1/streams/{stream_id}", response_model=StreamView, responses=ERRORS,
             summary="A live stream's latest prediction and recent timeline")
    def stream(stream_id: Annotated[str, Path(min_length=1, max_length=256)], _principal: Principal,
               limit: Annotated[int | None, Query(ge=1, le=10000)] = None) -> StreamView:
        count = min(limit or settings.api_timeline_max, settings.api_timeline_max)
        try:
            latest = state.redis.get(state.redis_key(stream_id, "latest"))
            entries = state.redis.xrevrange(state.redis_key(stream_id, "timeline"), count=count)
        except redis.RedisError as exc:
            raise problem(503, "redis_unavailable", f"Redis: {type(exc).__name__}") from None
        if latest is None and not entries:
            raise problem(404, "unknown_stream", f"no predictions for stream {stream_id!r}")
        return StreamView(stream_id=stream_id, latest=json.loads(latest) if latest else None,
                          timeline=[json.loads(fields[b"json"]) for _, fields in reversed(entries)])

    @app.get("/healthz", summary="Liveness")
    def healthz() -> dict[str, bool]:
        return {"alive": True}

    @app.get("/readyz", summary="Readiness: the model is loaded (Redis is reported, not required)")
    def readyz() -> JSONResponse:
        try:
            redis_ok = bool(state.redis.ping())
        except redis.RedisError:
            redis_ok = False
        body = {"ready": True, "degraded": not redis_ok, "model_loaded": True, "redis": "ok" if redis_ok else "down"}
        state.metrics.ready.set(1)
        state.metrics.redis_up.set(1 if redis_ok else 0)
        return JSONResponse(body)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    def metrics() -> Response:
        return Response(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return app


async def _read_upload(request: Request, limit: int) -> bytes:
    """The upload's bytes, refusing more than ``limit`` before reading them where the size is declared."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise problem(413, "oversized", f"{declared} bytes > limit {limit}")
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise problem(413, "oversized", f"more than {limit} bytes")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return bytes(body)

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": bytes(body), "more_body": False}

    form = await Request(request.scope, replay).form(max_files=1, max_fields=10)
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise problem(422, "missing_file", "a multipart upload needs a 'file' part")
    return await upload.read()


def _submit_job(state: ApiState, data: bytes, decoded: DecodedAudio) -> JobAccepted:
    """Publish the upload as a job and record it in Redis (see :mod:`streamgenre.apps.jobs`)."""
    settings = state.settings
    try:
        record = publish_job(settings, state.producer(), state.model.recipe, state.classifier.hop_frames, data,
                             decoded)
    except PublishError as exc:
        raise problem(503, "kafka_unavailable", str(exc)) from None
    try:
        state.redis.set(f"{settings.redis_prefix}:job:{record['job_id']}", json.dumps(record),
                        ex=settings.api_job_ttl_s)
    except redis.RedisError as exc:
        raise problem(503, "redis_unavailable", f"Redis: {type(exc).__name__}") from None
    return JobAccepted(job_id=record["job_id"], stream_id=record["stream_id"], duration_s=record["duration_s"],
                       windows_expected=record["windows_expected"], result_url=f"/v1/jobs/{record['job_id']}")


def write_openapi(path: str = "docs/openapi.json") -> None:
    """Write the OpenAPI document the server serves (a test keeps the committed copy current)."""
    from pathlib import Path as FilePath

    app = create_app(Settings())
    try:
        FilePath(path).write_text(json.dumps(app.openapi(), indent=2, sort_keys=True) + "\n")
    finally:
        app.state.api.close()


if __name__ == "__main__":
    write_openapi()
