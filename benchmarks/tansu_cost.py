"""Does tansu's CPU rise within a run, and which storage configuration bounds it? (issue 20, point 6)

The transport alone (the bench's real-time producer → tansu → the daemon's ``ChunkSource``,
which drops every record) for each configuration in turn: ``memory://`` with 8 and with 32
partitions (if the cost follows what one partition holds, more partitions slow the rise), and
``s3://`` on a local S3 (``moto_server``, in the test extra). The broker's CPU for every second
goes to ``benchmarks/results/tansu-cost-<time>.json``; compare the first and last seconds.

    PYTHONPATH=. .venv/bin/python benchmarks/tansu_cost.py --streams 300 --seconds 20
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from streamgenre.apps.devbroker import free_port, wait_for_port
from streamgenre.bench import E2EConfig, measure_transport
from streamgenre.bench.report import machine_info

RESULTS = Path(__file__).resolve().parent / "results"


def start_moto(log: Path) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    """A local S3 with the bucket ``tansu`` (as tests/faults_harness.py's MotoServer)."""
    import boto3

    port = free_port()
    with open(log, "ab") as out:
        process = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1",
                                    "-p", str(port)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    wait_for_port("127.0.0.1", port, 30)
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                 region_name="us-east-1").create_bucket(Bucket="tansu")
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT": endpoint, "AWS_ALLOW_HTTP": "true"}
    return process, env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--configs", nargs="*", default=["memory/8", "memory/32", "s3/8"])
    args = parser.parse_args()
    runs = []
    for config in args.configs:
        engine, partitions = config.split("/")
        cfg = E2EConfig(streams=args.streams, seconds=args.seconds, chunk_s=0.5, warmup_s=0.0,
                        partitions=int(partitions))
        moto = None
        if engine == "s3":
            moto, env = start_moto(Path(tempfile.mkdtemp()) / "moto.log")
            storage = "s3://tansu/"
        else:
            env, storage = {}, "memory://tansu/"
        try:
            r = measure_transport(cfg, verbose=False, storage=storage, broker_env=env)
        finally:
            if moto is not None:
                moto.terminate()
                moto.wait(10)
        series = r["broker_cpu_s_per_s_by_second"]
        print(f"{config}: broker {r['broker_cpu_s_per_s']} CPU-s/s, first 3 s {series[:3]}, last 3 s {series[-3:]}, "
              f"{r['records_per_s']} records/s", flush=True)
        runs.append({"config": config, **r})
    path = RESULTS / f"tansu-cost-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    path.write_text(json.dumps({"machine": machine_info(), "command": " ".join(sys.argv), "runs": runs}, indent=2)
                    + "\n")
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
