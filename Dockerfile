# syntax=docker/dockerfile:1
# streamgenre daemon image.
#   docker build -t streamgenre:local .
#   docker run --rm -e STREAMGENRE_BOOTSTRAP_SERVERS=kafka:9092 streamgenre:local        # = `streamgenre run`
#   docker run --rm -v "$PWD/audio:/audio:ro" streamgenre:local ingest /audio/a.ogg --stream-id radio-1
#   docker run --rm -p 8080:8080 streamgenre:local serve                                   # the HTTP API
#
# Two stages: the builder has a compiler for any dependency without a wheel for this platform;
# the final image gets only the finished virtualenv, so no build tools ship.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
# Builder stage only, discarded after the build: pinning the meta-package buys nothing.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
# Same path as in the final stage: a venv's scripts hard-code their interpreter's path.
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Everything pyproject.toml packages (training/ too, so the image holds the same wheel as a
# `pip install .`; the daemon itself never imports it).
COPY pyproject.toml README.md ./
COPY streamgenre/ streamgenre/
COPY training/ training/
# Runtime dependencies only: torch & co. are the `train` extra and stay out of the image.
RUN pip install .

FROM ${PYTHON_IMAGE}
# ffmpeg: `serve` and `classify` decode what libsndfile cannot (AAC/M4A, WMA, ...), `ingest` reads
# http streams. Debian's security updates move its version: pinning would break the build.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ffmpeg \
 && rm -rf /var/lib/apt/lists/*
# A fixed numeric uid: Kubernetes' runAsNonRoot can only verify a numeric USER.
RUN groupadd --system --gid 10001 streamgenre \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin streamgenre
COPY --from=builder /opt/venv /opt/venv
# The shipped model (ONNX + JSON sidecar). The installed package lives in site-packages, so the
# Settings default (model/ beside the source tree) does not exist here: point at it explicitly.
COPY model/ /app/model/
# NUMBA_CACHE_DIR: librosa's numba functions cache compiled code next to their source by
# default; site-packages is not writable for this user (and the root fs is read-only under the
# Helm chart), so the cache goes to /tmp.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    STREAMGENRE_MODEL_DIR=/app/model \
    STREAMGENRE_CONTENT_MODEL_PATH=/app/model/content.json \
    NUMBA_CACHE_DIR=/tmp/numba-cache
WORKDIR /app
USER 10001:10001
# 9100: the daemon's /metrics and health; 8080: the HTTP API (`serve`).
EXPOSE 9100 8080
# /healthz answers 200 while the process is alive (readiness is /readyz, for orchestrators).
# Python's urllib, so the image needs no curl; it raises (exit 1) on refusal or a non-2xx status.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('STREAMGENRE_METRICS_PORT', '9100'), timeout=4)"]
ENTRYPOINT ["streamgenre"]
CMD ["run"]
