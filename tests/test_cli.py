"""The command line as a user runs it: help everywhere, clear errors, broker/ingest/tail."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf

from streamgenre.apps.devbroker import DevBroker, free_port
from streamgenre.config import Settings
from tests.audio import tone_mix
from tests.conftest import read_topic

COMMANDS = ["run", "broker", "ingest", "relay", "tail", "demo", "index", "similar"]


def streamgenre(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamgenre.apps.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help(command: str) -> None:
    result = streamgenre(command, "--help")
    assert result.returncode == 0 and "usage: streamgenre" in result.stdout


def test_missing_model_is_a_clear_error() -> None:
    result = streamgenre("run", env={"STREAMGENRE_MODEL_PATH": "/nonexistent/model.onnx"})
    assert result.returncode == 2
    assert "model not found: /nonexistent/model.onnx" in result.stderr


def test_bad_path_is_a_clear_error() -> None:
    result = streamgenre("ingest", "/nonexistent.wav", "--stream-id", "x")
    assert result.returncode == 2 and "/nonexistent.wav: no such file" in result.stderr


@pytest.mark.parametrize(("argv", "message"), [
    (["similar", "x.wav", "--catalog", "c", "-k", "0"], "streamgenre similar: error: -k must be at least 1, got 0"),
    (["similar", "/nonexistent.wav", "--catalog", "c"], "streamgenre similar: error: no such audio file"),
    (["index", "/nonexistent", "--out", "{tmp}/c"], "streamgenre index: error: no such file or folder"),
    (["classify", "{tmp}", "--workers", "0"], "streamgenre classify: error: --workers must be at least 1"),
    (["report", "--stream-id", "sgtest-never-seen", "--out", "{tmp}/r"],
     "streamgenre report: error: no segments or windows for stream 'sgtest-never-seen'"),
])
def test_every_command_reports_user_errors_as_one_line_and_exit_2(argv: list[str], message: str,
                                                                  tmp_path: Path) -> None:
    result = streamgenre(*(a.format(tmp=tmp_path) for a in argv))
    assert result.returncode == 2
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr


@pytest.mark.integration  # starts tansu: not in `make test-fast`
def test_broker_command_prints_its_address() -> None:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "streamgenre.apps.cli", "broker", "--port", str(port)],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        assert f"127.0.0.1:{port}" in process.stdout.readline()
    finally:
        process.terminate()
        process.wait(30)  # the CLI waits up to 10 s for tansu to stop before killing it
    assert _port_closes(port, within_s=15), "SIGTERM must stop the broker too, not only the CLI"


def _port_closes(port: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.integration
def test_ingest_publishes_chunks_with_seq_ts_and_eos(broker: DevBroker, settings: Settings,
                                                            tmp_path: Path) -> None:
    path = tmp_path / "clip.wav"
    sf.write(path, tone_mix(2.0, 44100, 2, seed=5), 44100)
    env = {"STREAMGENRE_BOOTSTRAP_SERVERS": broker.bootstrap, "STREAMGENRE_INPUT_TOPIC": settings.input_topic}
    result = streamgenre("ingest", str(path), "--stream-id", "clip", "--speed", "0", "--chunk-s", "0.25", env=env)
    assert result.returncode == 0, result.stderr
    messages = read_topic(broker.bootstrap, settings.input_topic, expected=8)
    assert len(messages) == 8 and {m.key for m in messages} == {b"clip"}
    headers = [dict(m.headers) for m in messages]
    assert [int(h["seq"]) for h in headers] == list(range(8))
    assert headers[-1].get("eos") == b"1" and all("eos" not in h for h in headers[:-1])
    assert int(headers[1]["ts"]) - int(headers[0]["ts"]) == 250
    assert (headers[0]["sample-rate"], headers[0]["channels"]) == (b"44100", b"2")


def test_the_daemon_never_imports_torch() -> None:
    code = ("import sys, streamgenre.apps.cli, streamgenre.stream.daemon, streamgenre.model.similarity; "
            "streamgenre.apps.cli.build_parser(); print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stderr
