"""The HTTP API on a real uvicorn server: every codec, the error statuses, jobs through a real
broker + daemon + Redis, the committed OpenAPI document, and schemathesis over every endpoint."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import schemathesis
import soundfile as sf
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from streamgenre.apps.api import TokenBuckets, create_app, key_digest
from streamgenre.apps.devbroker import DevBroker, ensure_topics, free_port
from streamgenre.apps.serve import build_server
from streamgenre.config import Settings
from streamgenre.model.contract import load_spec
from streamgenre.stream.streamstate import expected_windows
from streamgenre.stream.tracks import TRACK_STREAM_ID, aligned_anchor_ms
from tests.audio import tone_mix
from tests.conftest import isolated_settings, running_daemon
from tests.faults_hostile import flac_claiming

pytestmark = pytest.mark.integration

KEY = "test-key-" + uuid.uuid4().hex
OPENAPI = Path(__file__).resolve().parents[1] / "docs" / "openapi.json"
RATE = 22050
SECONDS = 9.0
AUTH = {"Authorization": f"Bearer {KEY}"}


def encode(fmt: str, seconds: float = SECONDS, rate: int = RATE) -> bytes:
    audio = tone_mix(seconds, rate, 2, seed=11)
    if fmt == "mp3":  # libsndfile writes no mp3 here: ffmpeg does, as an upload platform receives it
        wav = encode("wav", seconds, rate)
        return subprocess.run(["ffmpeg", "-v", "error", "-f", "wav", "-i", "-", "-f", "mp3", "-"],
                              input=wav, capture_output=True, check=True).stdout
    if fmt == "aac":  # not a format soundfile reads at all: the API's ffmpeg path
        wav = encode("wav", seconds, rate)
        return subprocess.run(["ffmpeg", "-v", "error", "-f", "wav", "-i", "-", "-c:a", "aac", "-f", "adts", "-"],
                              input=wav, capture_output=True, check=True).stdout
    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, format={"wav": "WAV", "flac": "FLAC", "ogg": "OGG"}[fmt])
    return buffer.getvalue()


def api_settings(bootstrap: str, model: Path, prefix: str, **overrides: object) -> Settings:
    fields: dict[str, object] = {"api_key_hashes": [key_digest(KEY)], "api_rate_per_s": 1000.0,
                                 "api_rate_burst": 1000, "api_max_upload_bytes": 2_000_000,
                                 "max_wait_ms": 5.0, **overrides}
    return isolated_settings(bootstrap, model, prefix, **fields)


@pytest.fixture(scope="module")
def api(broker: DevBroker, test_model: Path) -> Iterator[tuple[str, Settings]]:
    """A real uvicorn server on a free port; yields (base URL, its settings)."""
    configured = api_settings(broker.bootstrap, test_model, f"sgtest-{uuid.uuid4().hex[:8]}")
    ensure_topics(configured, partitions=2)
    port = free_port()
    server = build_server(configured, "127.0.0.1", port)
    thread = threading.Thread(target=server.run, name="test-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the API did not start"
    yield f"http://127.0.0.1:{port}", configured
    server.should_exit = True
    thread.join(30)


@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg", "mp3", "aac"])
def test_every_codec_is_classified(api: tuple[str, Settings], test_model: Path, fmt: str) -> None:
    base, _ = api
    data = encode(fmt)
    response = httpx.post(f"{base}/v1/classify", content=data, headers=AUTH, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    spec = load_spec(test_model)
    hop_samples = spec.hop_frames * spec.recipe.hop_length
    # Every whole window of the track, the first at its first sample (mp3/aac add codec padding).
    n = round(body["duration_s"] * spec.recipe.sample_rate)
    expected = expected_windows(TRACK_STREAM_ID, aligned_anchor_ms(TRACK_STREAM_ID, spec.recipe.sample_rate,
                                                                     hop_samples),
                                n, spec.recipe.sample_rate, spec.recipe, spec.hop_frames)
    assert body["windows"] == len(body["timeline"]) == expected >= 2
    assert body["timeline"][0]["t_start"] == 0.0
    assert body["duration_s"] == pytest.approx(SECONDS, abs=0.15)  # mp3: encoder delay and padding
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    assert body["genre"] == max(body["probabilities"], key=body["probabilities"].get)
    assert body["model_version"] == spec.version and body["neighbours"] is None
    assert body["states"] == {"music": 1.0} and body["timeline"][0]["state"] == "music"


def test_multipart_upload_gives_the_raw_body_result(api: tuple[str, Settings]) -> None:
    base, _ = api
    data = encode("flac")
    raw = httpx.post(f"{base}/v1/classify", content=data, headers=AUTH, timeout=60).json()
    form = httpx.post(f"{base}/v1/classify", files={"file": ("song.flac", data, "audio/flac")}, headers=AUTH,
                      timeout=60)
    assert form.status_code == 200 and form.json() == raw
    missing = httpx.post(f"{base}/v1/classify", files={"other": ("x", b"1")}, headers=AUTH, timeout=60)
    assert missing.status_code == 422 and missing.json()["reason"] == "missing_file"


def test_errors_are_4xx_with_a_reason_and_nothing_sensitive_is_logged(
        api: tuple[str, Settings], caplog: pytest.LogCaptureFixture) -> None:
    base, configured = api
    data = encode("wav")
    caplog.set_level(logging.DEBUG)
    cases = [
        ({}, data, 401, "unauthenticated"),
        ({"Authorization": "Bearer wrong"}, data, 401, "unauthenticated"),
        (AUTH, b"\x00" * (configured.api_max_upload_bytes + 1), 413, "oversized"),
        (AUTH, flac_claiming(3 * 3600), 413, "decompression_bomb"),
        (AUTH, b"this is not audio at all" * 10, 422, "corrupt_container"),
        (AUTH, b"", 422, "empty_payload"),
        (AUTH, encode("wav", seconds=0.0), 422, "no_audio"),
    ]
    for headers, body, status, reason in cases:
        response = httpx.post(f"{base}/v1/classify", content=body, headers=headers, timeout=60)
        assert (response.status_code, response.json()["reason"]) == (status, reason), response.text
    # Shorter than a window: one window of its own audio, as the daemon gives an ended short stream.
    short = httpx.post(f"{base}/v1/classify", content=encode("wav", seconds=0.5), headers=AUTH, timeout=60).json()
    assert short["windows"] == 1 and short["timeline"][0]["t_end"] == pytest.approx(0.5, abs=0.01)
    assert httpx.get(f"{base}/v1/streams/x", timeout=10).status_code == 401
    assert httpx.get(f"{base}/v1/jobs/{uuid.uuid4().hex}", headers=AUTH, timeout=10).status_code == 404
    assert httpx.get(f"{base}/v1/jobs/not-a-job", headers=AUTH, timeout=10).json()["reason"] == "invalid_request"
    logged = caplog.text
    assert KEY not in logged and key_digest(KEY) not in logged
    assert "this is not audio" not in logged


def test_rate_limit_per_key(test_model: Path) -> None:
    other = "second-" + uuid.uuid4().hex
    configured = Settings(model_path=test_model, api_key_hashes=[key_digest(KEY), key_digest(other)],
                          api_rate_per_s=0.5, api_rate_burst=3)
    with TestClient(create_app(configured)) as client:
        codes = [client.get("/v1/jobs/" + "0" * 32, headers=AUTH).status_code for _ in range(5)]
        assert codes[3:] == [429, 429] and 429 not in codes[:3]
        limited = client.get("/v1/jobs/" + "0" * 32, headers=AUTH)
        assert limited.json()["reason"] == "rate_limited" and int(limited.headers["retry-after"]) >= 1
        # Another key has its own bucket.
        assert client.get("/v1/jobs/" + "0" * 32, headers={"Authorization": f"Bearer {other}"}).status_code != 429


def test_token_buckets_refill_at_their_rate() -> None:
    buckets = TokenBuckets(rate=2.0, burst=2)
    assert [buckets.take("k", 0.0) for _ in range(3)] == [0.0, 0.0, 0.5]
    assert buckets.take("k", 0.5) == 0.0  # one token back after 0.5 s
    assert buckets.take("other", 0.5) == 0.0


def test_async_job_through_kafka_matches_the_sync_result(api: tuple[str, Settings]) -> None:
    """?async=true publishes to audio.chunks; the daemon classifies it; GET /v1/jobs reads Redis."""
    base, configured = api
    data = encode("ogg", seconds=14.0)
    sync = httpx.post(f"{base}/v1/classify", content=data, headers=AUTH, timeout=60).json()
    with running_daemon(configured):
        accepted = httpx.post(f"{base}/v1/classify", params={"async": "true"}, content=data, headers=AUTH, timeout=60)
        assert accepted.status_code == 202, accepted.text
        job = accepted.json()
        assert job["windows_expected"] == sync["windows"]
        deadline = time.monotonic() + 60
        while True:
            status = httpx.get(f"{base}{job['result_url']}", headers=AUTH, timeout=10).json()
            if status["status"] == "done" or time.monotonic() > deadline:
                break
            time.sleep(0.3)
    assert status["status"] == "done", status
    result = status["result"]
    assert result["genre"] == sync["genre"] and result["windows"] == sync["windows"]
    for via_kafka, direct in zip(result["timeline"], sync["timeline"], strict=True):
        assert via_kafka["t_start"] == pytest.approx(direct["t_start"], abs=1e-3)
        assert via_kafka["probs"] == pytest.approx(direct["probs"], abs=2e-3)
    live = httpx.get(f"{base}/v1/streams/{job['stream_id']}", headers=AUTH, timeout=10).json()
    assert live["latest"]["window_seq"] == live["timeline"][-1]["window_seq"]
    assert len(live["timeline"]) == sync["windows"]


def test_health_and_metrics(api: tuple[str, Settings]) -> None:
    base, _ = api
    assert httpx.get(f"{base}/healthz").json() == {"alive": True}
    ready = httpx.get(f"{base}/readyz").json()
    assert ready["ready"] is True and ready["redis"] == "ok"
    page = httpx.get(f"{base}/metrics").text
    for name in ("streamgenre_inference_seconds_count", "streamgenre_batch_size_bucket", "streamgenre_windows_total",
                 "streamgenre_api_requests_total", "streamgenre_api_request_seconds_bucket", "streamgenre_model_info"):
        assert name in page


def test_committed_openapi_document_is_current(api: tuple[str, Settings]) -> None:
    """docs/openapi.json is what the server serves (regenerate: python -m streamgenre.apps.api)."""
    base, _ = api
    served = httpx.get(f"{base}/openapi.json").json()
    assert json.loads(OPENAPI.read_text()) == served, "docs/openapi.json is stale: python -m streamgenre.apps.api"


# Operations of the committed document (the test above keeps it equal to the served one). Not
# schemathesis' pytest plugin: it does not work with this pytest; its strategies through hypothesis do.
OPERATIONS = {result.ok().label: result.ok() for result in
              schemathesis.openapi.from_dict(json.loads(OPENAPI.read_text())).get_all_operations()}


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_schemathesis_no_server_errors(api: tuple[str, Settings], label: str) -> None:
    """Generated requests (valid and invalid) to every endpoint, with a valid key: never a 5xx,
    every status and body as documented. 12 examples per endpoint keep the whole under a minute."""
    base, _ = api
    operation = OPERATIONS[label]
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

    @given(case=cases)
    @settings(max_examples=12, deadline=None, database=None, derandomize=True, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    def check(case: schemathesis.Case) -> None:
        response = case.call(base_url=base, headers=AUTH, timeout=30)
        assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code}"
        case.validate_response(response, checks=[status_code_conformance, response_schema_conformance])

    check()


def test_openapi_document_lists_every_endpoint() -> None:
    paths = set(json.loads(OPENAPI.read_text())["paths"])
    assert paths == {"/v1/classify", "/v1/jobs/{job_id}", "/v1/streams/{stream_id}", "/healthz", "/readyz",
                     "/metrics"}


def test_silence_is_classified_as_silence_without_a_genre(api: tuple[str, Settings]) -> None:
    """Content states come with every window; as in the daemon, only music has a genre."""
    base, _ = api
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(RATE * 4, np.float32), RATE, format="WAV")
    response = httpx.post(f"{base}/v1/classify", content=buffer.getvalue(), headers=AUTH, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["genre"] is None and body["probabilities"] is None and body["states"] == {"silence": 1.0}
    assert all(w["state"] == "silence" and w["genre"] is None for w in body["timeline"])

