"""What a result file says besides the figures: the machine, the ratios to the ceiling, the printed table."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    import onnxruntime

    # A VM's "model name" can be as vague as "AMD EPYC" while the host generation under it
    # changes between sessions (AVX2-only one day, AVX-512 + VNNI the next, 2x apart for the
    # models); family/model and the vector extensions say which machine a figure comes from.
    cpuinfo: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            cpuinfo.setdefault(key.strip(), value.strip())
    vector_flags = [f for f in cpuinfo.get("flags", "").split() if f.startswith(("avx", "fma")) or "vnni" in f]
    return {
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "cpu": cpuinfo.get("model name", ""),
        "cpu_family_model": f"{cpuinfo.get('cpu family', '?')}/{cpuinfo.get('model', '?')}",
        "cpu_vector_flags": vector_flags,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__,
        **{name: _version(name) for name in ("librosa", "scipy", "soxr", "kafka-python")},
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
        "loadavg": os.getloadavg(),
    }


def over_ceiling(r: dict[str, Any]) -> dict[str, Any]:
    """End-to-end and backlog figures over the mean of the ceilings measured before and after them."""
    before, after = r["ceiling"], r["ceiling_after"]
    per_cpu = (before["audio_s_per_cpu_s"] + after["audio_s_per_cpu_s"]) / 2
    ratios: dict[str, Any] = {"ceiling_drift": round(after["audio_s_per_cpu_s"] / before["audio_s_per_cpu_s"], 3)}
    if "e2e" in r:
        ratios["e2e_over_ceiling"] = round(
            r["e2e"]["audio_s_per_s"] / ((before["audio_s_per_s"] + after["audio_s_per_s"]) / 2), 3
        )
        # The same ratio per CPU-second: what the daemon's own overheads cost, whatever else runs.
        if r["e2e"]["audio_s_per_daemon_cpu_s"]:
            ratios["e2e_over_ceiling_per_cpu_s"] = round(r["e2e"]["audio_s_per_daemon_cpu_s"] / per_cpu, 3)
    if r.get("backlog", {}).get("audio_s_per_daemon_cpu_s"):
        ratios["backlog_over_ceiling_per_cpu_s"] = round(r["backlog"]["audio_s_per_daemon_cpu_s"] / per_cpu, 3)
    return ratios


def table(results: dict[str, Any]) -> str:
    rows = [
        "| model | ceiling audio-s/s | e2e audio-s/s (offered) | e2e/ceiling | baseline audio-s/s/core "
        "| ours/baseline (bound) | window→pub p50/p99 ms | chunk ts→pub p50/p99 ms | RSS MB | state B/stream "
        "| max S (sweep) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["models"].items():
        c, e, b = r.get("ceiling", {}), r.get("e2e", {}), r.get("baseline", {})
        w, ch = e.get("window_to_publish_ms", {}), e.get("chunk_ts_to_publish_ms", {})
        rows.append(
            f"| {name} | {c.get('audio_s_per_s', '-')} | {e.get('audio_s_per_s', '-')} "
            f"({e.get('offered_audio_s_per_s', '-')}) | {r.get('e2e_over_ceiling', '-')} "
            f"| {b.get('audio_s_per_s_per_core', '-')} "
            f"| {r.get('ours_over_baseline', '-')} ({r.get('bound_over_baseline', '-')}) "
            f"| {w.get('p50', '-')}/{w.get('p99', '-')} | {ch.get('p50', '-')}/{ch.get('p99', '-')} "
            f"| {e.get('rss_peak_mb', '-')} | {c.get('state_bytes_per_stream', '-')} "
            f"| {r.get('sweep', {}).get('max_streams', '-')} |"
        )
    for name, r in results["models"].items():
        if "ceiling_after" in r:
            rows.append(
                f"\n[{name}] ceiling again after the broker runs: {r['ceiling_after']['audio_s_per_s']} audio-s/s "
                f"(drift {r['ceiling_drift']} per CPU-s); per CPU-s over the mean ceiling: end to end "
                f"{r.get('e2e_over_ceiling_per_cpu_s', '-')}, backlog {r.get('backlog_over_ceiling_per_cpu_s', '-')}"
            )
        by_thread = r.get("e2e", {}).get("daemon_thread_cpu_s_per_s")
        if by_thread:
            split = ", ".join(f"{role} {cpu}" for role, cpu in sorted(by_thread.items(), key=lambda kv: -kv[1]))
            rows.append(f"[{name}] daemon CPU-s per s by thread: {split}")
    t = results.get("transport")
    if t:
        rows.append(
            f"\ntransport floor at {t['streams']} streams ({t['records_per_s']} chunks/s, no processing): "
            f"broker {t['broker_cpu_s_per_s']}, producer {t['producer_cpu_s_per_s']}, "
            f"source {t['source_cpu_s_per_s']} CPU-s per s"
        )
    return "\n".join(rows)
