"""Secrets (SASL password, Redis URL with its password) never show in reprs, dumps or logs."""

from __future__ import annotations

import logging

import pytest

from streamgenre.config import Settings

SASL_SECRET = "sasl-s3cr3t-value"
REDIS_SECRET = "redis-s3cr3t-value"


@pytest.fixture
def secret_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("STREAMGENRE_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("STREAMGENRE_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("STREAMGENRE_SASL_USERNAME", "monitor")
    monkeypatch.setenv("STREAMGENRE_SASL_PASSWORD", SASL_SECRET)
    monkeypatch.setenv("STREAMGENRE_REDIS_URL", f"rediss://:{REDIS_SECRET}@redis.internal:6380/0")
    return Settings()


def test_secrets_absent_from_repr_str_dump_and_logs(
    secret_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("streamgenre.test").info("settings: %s / %r", secret_settings, secret_settings)
    rendered = [
        repr(secret_settings),
        str(secret_settings),
        str(secret_settings.model_dump()),
        secret_settings.model_dump_json(),
        caplog.text,
    ]
    for text in rendered:
        assert SASL_SECRET not in text and REDIS_SECRET not in text


def test_secrets_reach_the_clients_unchanged(secret_settings: Settings) -> None:
    """SASL/TLS options pass through to kafka-python; the Redis URL keeps its password and TLS scheme."""
    options = secret_settings.kafka_security()
    assert options == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "monitor",
        "sasl_plain_password": SASL_SECRET,
    }
    assert secret_settings.redis_url.get_secret_value().startswith(f"rediss://:{REDIS_SECRET}@")
