"""CI smoke of ``streamgenre bench``: the harness runs on tiny settings and writes valid JSON.

No timing assertions: timings on a shared CI machine mean nothing; the figures live in
``docs/PERFORMANCE.md`` and ``benchmarks/results/``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from streamgenre import bench
from streamgenre.apps.cli import main
from streamgenre.bench.layout import make_layout, pinned_to


def test_bench_quick_without_e2e_writes_json(
    tmp_path: Path, test_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The test model stands in for the shipped one; the random paper CNN is built with torch.
    rc = main(
        [
            "bench",
            "--quick",
            "--model",
            "both",
            "--model-path",
            str(test_model),
            "--no-e2e",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0
    [path] = tmp_path.glob("bench-*.json")
    result = json.loads(path.read_text())
    assert set(result["models"]) == {"cnn", "shipped"}
    for r in result["models"].values():
        assert r["ceiling"]["audio_s_per_s"] > 0 and r["ceiling"]["windows"] > 0
        assert r["ceiling"]["state_bytes_per_stream"] > 0
        assert r["baseline"]["windows"] > 0
        assert r["ours_over_baseline"] > 0
        # The bound (model + new-frame FFT) is printed beside the ratio in every run.
        assert r["baseline"]["bound_audio_s_per_cpu_s"] > 0 and r["bound_over_baseline"] > 0
    assert result["machine"]["nproc"] >= 1 and "cpu_vector_flags" in result["machine"]
    assert "| cnn |" in capsys.readouterr().out


def test_bench_model_choices_name_their_files(tmp_path: Path) -> None:
    assert bench.model_paths("student", tmp_path / "absent.onnx") == {"student": bench.STUDENT_MODEL}
    assert bench.model_paths("shipped", tmp_path / "absent.onnx") == {}


def test_ratios_use_the_mean_of_the_ceilings_before_and_after() -> None:
    r = {
        "ceiling": {"audio_s_per_s": 2000.0, "audio_s_per_cpu_s": 1200.0},
        "ceiling_after": {"audio_s_per_s": 1600.0, "audio_s_per_cpu_s": 800.0},
        "e2e": {"audio_s_per_s": 450.0, "audio_s_per_daemon_cpu_s": 400.0},
        "backlog": {"audio_s_per_daemon_cpu_s": 600.0},
    }
    assert bench.over_ceiling(r) == {
        "ceiling_drift": 0.667,
        "e2e_over_ceiling": 0.25,
        "e2e_over_ceiling_per_cpu_s": 0.4,
        "backlog_over_ceiling_per_cpu_s": 0.6,
    }
    # A backlog too short to sample the daemons' CPU gives no per-CPU ratio rather than a wrong one.
    r["backlog"]["audio_s_per_daemon_cpu_s"] = None
    del r["e2e"]
    assert bench.over_ceiling(r) == {"ceiling_drift": 0.667}


def test_latency_by_second_bins_by_arrival() -> None:
    samples = [(100.1, 10.0), (100.9, 30.0), (102.5, 500.0)]
    assert bench.latency_by_second(samples, start=100.0) == [
        {"s": 0, "windows": 2, "p50": 20.0, "p99": 29.8, "max": 30.0},
        {"s": 2, "windows": 1, "p50": 500.0, "p99": 500.0, "max": 500.0},
    ]
    assert bench.latency_by_second([], start=100.0) == []


def test_cpu_by_second_is_a_rate_between_samples() -> None:
    samples = [(9.0, 0.0, 0.0, 0.0), (10.0, 1.0, 0.5, 0.1), (12.0, 2.0, 1.5, 0.3)]
    assert bench.cpu_by_second(samples, start=10.0) == [{"s": 0.0, "daemons": 0.5, "broker": 0.5, "producer": 0.1}]


@pytest.mark.integration
def test_bench_e2e_tiny_on_real_broker(test_model: Path) -> None:
    cfg = bench.E2EConfig(streams=3, seconds=2.0, chunk_s=0.5, workers=1, warmup_s=3.0, partitions=2)
    r = bench.measure_e2e(test_model, cfg)
    assert r["producer_sent"] == 3 * 10
    assert r["windows"] > 0
    assert r["window_to_publish_ms"]["p99"] is not None
    by_second = r["window_to_publish_ms_by_second"]
    assert sum(b["windows"] for b in by_second) >= r["windows"]
    assert max(b["max"] for b in by_second) == r["window_to_publish_ms"]["max"]
    assert r["chunk_ts_to_publish_ms"]["p50"] is not None
    assert r["rss_peak_mb"] > 0
    # The daemon's CPU split by thread, from its own /metrics (the poll loop is MainThread).
    by_thread = r["daemon_thread_cpu_s_per_s"]
    assert {"worker", "kafka-consumer-io", "kafka-producer", "MainThread"} <= set(by_thread)
    assert all(cpu >= 0 for cpu in by_thread.values())
    json.dumps(r)  # serialisable


@pytest.mark.integration
def test_bench_backlog_tiny_on_real_broker(test_model: Path) -> None:
    # 40 streams: enough windows that the drain spans several worker steps and a measurable time.
    cfg = bench.E2EConfig(streams=40, seconds=6.0, chunk_s=0.5, workers=1, partitions=2)
    r = bench.measure_backlog(test_model, cfg, verbose=False)
    assert r["sent_chunks"] == 40 * 12
    assert r["received_windows"] >= r["expected_windows"] > 0  # the whole backlog came out
    assert r["audio_s_per_s"] > 0 and r["audio_s_per_daemon_cpu_s"] > 0
    json.dumps(r)


@pytest.mark.integration
def test_bench_transport_floor_reads_every_chunk() -> None:
    cfg = bench.E2EConfig(streams=4, seconds=2.0, chunk_s=0.25, warmup_s=1.0, partitions=2)
    r = bench.measure_transport(cfg, verbose=False)
    # 16 chunks per second offered: some arrive, and never more than was sent (a slow box may lag).
    assert 0 < r["records_per_s"] <= 32
    assert r["broker_cpu_s_per_s"] > 0 and r["source_cpu_s_per_s"] > 0
    json.dumps(r)


def test_bench_imports_neither_training_nor_torch() -> None:
    code = (
        "import sys, streamgenre.bench, streamgenre.bench.command; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('training', 'torch')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_committed_paper_cnn_is_what_training_builds(tmp_path: Path) -> None:
    # The bench measures a committed file; it must stay the graph training.cnn exports today.
    onnx = pytest.importorskip("onnx")
    from training.cnn import build_random_onnx

    build_random_onnx(tmp_path / "fresh.onnx")
    committed, fresh = onnx.load(str(bench.PAPER_CNN)), onnx.load(str(tmp_path / "fresh.onnx"))
    assert [n.op_type for n in committed.graph.node] == [n.op_type for n in fresh.graph.node]
    assert [tuple(t.dims) for t in committed.graph.initializer] == [tuple(t.dims) for t in fresh.graph.initializer]
    sidecar = json.loads(bench.PAPER_CNN.with_suffix(".json").read_text())
    assert sidecar["features"] == json.loads((tmp_path / "fresh.json").read_text())["features"]


@pytest.mark.integration
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="the pinned layout needs two CPUs")
def test_pinned_layout_places_the_daemon_apart_and_says_so(test_model: Path) -> None:
    layout = make_layout("pinned")
    cfg = bench.E2EConfig(streams=2, seconds=1.0, chunk_s=0.5, workers=1, warmup_s=3.0, partitions=1,
                          daemon_cpus=layout.daemon_cpus)
    before = os.sched_getaffinity(0)
    with pinned_to(layout.other_cpus):
        r = bench.measure_e2e(test_model, cfg, verbose=False)
    assert os.sched_getaffinity(0) == before  # restored
    assert r["affinity"]["daemons"] == [list(layout.daemon_cpus)]
    assert r["affinity"]["broker"] == r["affinity"]["producer"] == list(layout.other_cpus)
    assert r["windows"] > 0


def test_memory_run_holds_every_stream(test_model: Path) -> None:
    r = bench.measure_memory(test_model, streams=30, active=3, verbose=False)
    assert r["streams_held"] == 30 and r["windows"] >= 30  # every stream completed a window
    assert r["rss_held_mb"] >= r["rss_before_mb"] > 0
    assert r["state_bytes_per_stream"] > 0 and r["rss_bytes_per_stream"] > 0
    json.dumps(r)


def test_pinned_layout_gives_the_daemon_the_last_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3})
    layout = make_layout("pinned")
    assert (layout.daemon_cpus, layout.other_cpus) == ((3,), (0, 1, 2))
    assert layout.describe() == {"mode": "pinned", "daemon_cpus": [3], "other_cpus": [0, 1, 2]}
    assert make_layout("shared").describe() == {"mode": "shared", "daemon_cpus": [], "other_cpus": []}
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {5})
    with pytest.raises(ValueError, match="more than 1 CPU"):
        make_layout("pinned")
