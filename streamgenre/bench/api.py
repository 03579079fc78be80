"""HTTP API benchmark: requests per second and latency of 30 s uploads at 1, 8 and 32 clients.

    python -m streamgenre.bench.api [--model PATH] [--clients 1 8 32] [--requests 32] [--out DIR]

Starts ``streamgenre serve`` as its own process (so the clients do not share its GIL) and, per
client count ``C``, has ``C`` concurrent clients upload the same 30 s Ogg Vorbis file (44.1 kHz
stereo, a real track from ../shared/data/examples when present, else generated) back to back
until ``--requests`` uploads are done (at least one each: at 32 clients with 32 requests, all 32
arrive at once). A fixed count, not a fixed time: with the shipped tagger one upload costs seconds
of CPU, and a time budget would end before a burst of 32 completes. Writes the figures and the
machine to a JSON file under benchmarks/results/. Not a test: the box is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import soundfile as sf

from streamgenre.apps.devbroker import free_port
from streamgenre.bench.report import machine_info
from streamgenre.config import SHIPPED_MODEL

ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = ROOT / "benchmarks" / "results"
EXAMPLE = ROOT.parent / "shared" / "data" / "examples" / "macleod_vibe_ace.ogg"


def upload_bytes(seconds: float = 30.0) -> tuple[bytes, str]:
    """A ``seconds``-long Ogg Vorbis upload, 44.1 kHz stereo, and where its audio came from."""
    rate = 44100
    if EXAMPLE.is_file():
        audio, rate = sf.read(str(EXAMPLE), frames=int(seconds * 44100), dtype="float32", always_2d=True)
        source = EXAMPLE.name
    else:
        t = np.arange(int(seconds * rate)) / rate
        mono = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * np.random.default_rng(0).normal(size=t.size)
        audio, source = np.stack([mono, mono], axis=1).astype(np.float32), "generated tone"
    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, format="OGG", subtype="VORBIS")
    return buffer.getvalue(), source


async def _client(client: httpx.AsyncClient, url: str, body: bytes, left: list[int],
                  latencies: list[float], failures: list[int]) -> None:
    while left[0] > 0:
        left[0] -= 1  # one event loop: no lock needed
        started = time.perf_counter()
        response = await client.post(url, content=body, headers={"content-type": "audio/ogg"})
        if response.status_code == 200:
            latencies.append(time.perf_counter() - started)
        else:
            failures.append(response.status_code)


async def _level(base: str, body: bytes, clients: int, total: int) -> dict[str, Any]:
    """``total`` uploads (at least one per client) by ``clients`` concurrent clients, back to back."""
    url = f"{base}/v1/classify"
    total = max(total, clients)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=3600, limits=limits) as client:
        await _client(client, url, body, [1], [], [])  # warm-up: first request pays lazy initialisation
        latencies: list[float] = []
        failures: list[int] = []
        left = [total]
        started = time.monotonic()
        await asyncio.gather(*(_client(client, url, body, left, latencies, failures) for _ in range(clients)))
        elapsed = time.monotonic() - started
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return {"clients": clients, "requests": len(latencies), "failures": len(failures), "seconds": round(elapsed, 2),
            "requests_per_s": round(len(latencies) / elapsed, 3),
            "audio_s_per_s": round(30.0 * len(latencies) / elapsed, 2),
            "latency_p50_s": round(float(np.percentile(lat, 50)), 3),
            "latency_p99_s": round(float(np.percentile(lat, 99)), 3),
            "latency_max_s": round(float(lat.max()), 3)}


def _start_server(model: Path, port: int, ort_threads: int) -> subprocess.Popen:
    env = {**os.environ, "STREAMGENRE_MODEL_PATH": str(model), "STREAMGENRE_API_KEY_HASHES": "[]",
           "STREAMGENRE_API_RATE_PER_S": "100000", "STREAMGENRE_API_RATE_BURST": "100000",
           "STREAMGENRE_ORT_THREADS": str(ort_threads), "STREAMGENRE_LOG_LEVEL": "WARNING"}
    server = subprocess.Popen([sys.executable, "-m", "streamgenre", "serve", "--host", "127.0.0.1", "--port",
                               str(port)], env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("the API did not become ready")


def run(model: Path, clients: list[int], requests: int, ort_threads: int) -> dict[str, Any]:
    body, source = upload_bytes()
    port = free_port()
    server = _start_server(model, port, ort_threads)
    try:
        levels = [asyncio.run(_level(f"http://127.0.0.1:{port}", body, c, requests)) for c in clients]
    finally:
        server.terminate()
        server.wait(30)
    return {"kind": "api", "model": str(model.relative_to(ROOT) if model.is_relative_to(ROOT) else model),
            "upload": {"seconds": 30.0, "bytes": len(body), "format": "Ogg Vorbis 44.1 kHz stereo", "source": source},
            "ort_threads": ort_threads, "requests_per_level": requests,
            "machine": machine_info(), "levels": levels}


def stage_times(model_path: Path, repeats: int = 5) -> dict[str, dict[str, float]]:
    """Median seconds of one 30 s upload's stages in this process, per upload format (no HTTP)."""
    from streamgenre.apps.uploads import decode_bytes
    from streamgenre.model.contract import GenreModel
    from streamgenre.stream.tracks import TrackClassifier

    model = GenreModel(model_path)
    classifier = TrackClassifier(model, max_batch=16, max_wait_ms=0.0)
    ogg, _ = upload_bytes()
    audio, rate = sf.read(io.BytesIO(ogg), dtype="float32", always_2d=True)
    flac = io.BytesIO()
    sf.write(flac, audio, rate, format="FLAC")
    out: dict[str, dict[str, float]] = {}
    try:
        for name, body in (("ogg", ogg), ("flac", flac.getvalue())):
            times: dict[str, list[float]] = {"decode": [], "frame": [], "infer": []}
            for _ in range(repeats):
                started = time.perf_counter()
                blocks = list(decode_bytes(body, 1200, model.recipe.sample_rate).blocks())
                decoded = time.perf_counter()
                windows = classifier.frame(blocks[0], iter(blocks[1:]) if len(blocks) > 1 else None, rate)
                framed = time.perf_counter()
                model.predict(np.stack([w.logmel for w in windows]))
                times["decode"].append(decoded - started)
                times["frame"].append(framed - decoded)
                times["infer"].append(time.perf_counter() - framed)
            out[name] = {stage: round(float(np.median(t)), 3) for stage, t in times.items()}
            out[name]["windows"] = len(windows)
    finally:
        classifier.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=SHIPPED_MODEL)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=32,
                        help="uploads per client count (at least one per client), after one unmeasured")
    parser.add_argument("--ort-threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--stages", action="store_true",
                        help="only time one upload's decode / frame / infer in this process (ogg and flac)")
    args = parser.parse_args(argv)
    if args.stages:
        print(json.dumps(stage_times(args.model.resolve()), indent=1))
        return 0
    result = run(args.model.resolve(), args.clients, args.requests, args.ort_threads)
    args.out.mkdir(parents=True, exist_ok=True)
    name = {SHIPPED_MODEL: "shipped", ROOT / "model" / "student" / "genre_cnn.onnx": "student"}.get(
        args.model.resolve(), args.model.stem)
    path = args.out / f"api-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'clients':>7} {'req/s':>7} {'p50 s':>7} {'p99 s':>7} {'failed':>6}")
    for level in result["levels"]:
        print(f"{level['clients']:>7} {level['requests_per_s']:>7.2f} {level['latency_p50_s']:>7.2f} "
              f"{level['latency_p99_s']:>7.2f} {level['failures']:>6}")
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
