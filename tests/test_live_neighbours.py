"""Live neighbours: the daemon attaches catalogue tracks to a stream's latest prediction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
import soundfile as sf
from kafka import KafkaProducer

from streamgenre.config import Settings
from streamgenre.model.contract import GenreModel
from streamgenre.model.similarity import Catalog, CatalogError, build_catalog
from streamgenre.stream.daemon import Daemon
from tests.audio import chunked_stream, tone_mix
from tests.conftest import REDIS_URL, read_topic, running_daemon
from tests.modelgen import make_test_model

pytestmark = pytest.mark.integration


def test_latest_carries_catalogue_neighbours(settings: Settings, test_model: Path, tmp_path: Path) -> None:
    for i in range(4):
        sf.write(tmp_path / f"track{i}.wav", tone_mix(3.0, 16000, 1, seed=100 + i), 16000)
    build_catalog([tmp_path], GenreModel(test_model), tmp_path / "catalog", progress=False)
    # Through the setting, as `streamgenre run` and `demo` load it.
    settings = settings.model_copy(update={"neighbours_k": 3, "catalog_path": tmp_path / "catalog"})

    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    for chunk in chunked_stream(tone_mix(3.0, 16000, 1, seed=101), 16000, "s16le", 0, [4000]):
        producer.send(settings.input_topic, key=b"live", value=chunk.value, headers=chunk.headers)
    producer.flush()
    with running_daemon(settings):
        read_topic(settings.bootstrap_servers, settings.output_topic, expected=2)
    latest = json.loads(redis.Redis.from_url(REDIS_URL).get(f"{settings.redis_prefix}:live:latest"))
    neighbours = latest["neighbours"]
    assert len(neighbours) == 3
    assert [n["score"] for n in neighbours] == sorted((n["score"] for n in neighbours), reverse=True)
    assert neighbours[0]["path"].endswith("track1.wav")  # the same audio is the closest track


def test_catalogue_of_another_model_is_refused(settings: Settings, tmp_path: Path) -> None:
    sf.write(tmp_path / "track.wav", tone_mix(2.0, 16000, 1, seed=1), 16000)
    other = make_test_model(tmp_path / "other", seed=7)
    build_catalog([tmp_path / "track.wav"], GenreModel(other), tmp_path / "catalog", progress=False)
    with pytest.raises(CatalogError):
        Daemon(settings, catalog=Catalog.load(tmp_path / "catalog")).startup()
