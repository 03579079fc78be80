"""A real radio station for the tests: Debian's Icecast 2 server plus ffmpeg as the source client.

The station airs a rendered programme (song -> speech -> silence -> song, from ``../shared/data``)
on a loop at real time (``ffmpeg -re``) and sets the ICY ``StreamTitle`` of each item through
Icecast's admin ``metadata`` request, as radio automation does. Both processes are started with
their own config in their own folder on a free 127.0.0.1 port and stopped by PID.

Icecast refuses to run as root: it then needs ``<changeowner>`` and drops to ``nobody``, so its
folder lives outside pytest's (root-only) tmp tree and is handed to that user.
"""

from __future__ import annotations

import base64
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from streamgenre.apps.devbroker import free_port

SOURCE_PASSWORD = "src-pw"
ADMIN_PASSWORD = "adm-pw"
PROGRAMME_RATE = 44100

ICECAST_XML = """<icecast>
  <location>streamgenre tests</location><admin>tests@localhost</admin>
  <limits><clients>50</clients><sources>5</sources><queue-size>524288</queue-size>
    <client-timeout>10</client-timeout><header-timeout>5</header-timeout><source-timeout>5</source-timeout>
    <burst-on-connect>1</burst-on-connect><burst-size>16384</burst-size></limits>
  <authentication><source-password>{source}</source-password><relay-password>{source}</relay-password>
    <admin-user>admin</admin-user><admin-password>{admin}</admin-password></authentication>
  <hostname>127.0.0.1</hostname>
  <listen-socket><port>{port}</port><bind-address>127.0.0.1</bind-address></listen-socket>
  <fileserve>1</fileserve>
  <paths><basedir>{base}</basedir><logdir>{base}/log</logdir><webroot>/usr/share/icecast2/web</webroot>
    <adminroot>/usr/share/icecast2/admin</adminroot><pidfile>{base}/icecast.pid</pidfile></paths>
  <logging><accesslog>access.log</accesslog><errorlog>error.log</errorlog><loglevel>3</loglevel></logging>
  {security}
</icecast>
"""
# Icecast exits with "You should not run icecast2 as root" unless it may drop privileges.
SECURITY_AS_ROOT = ("<security><chroot>0</chroot>"
                    "<changeowner><user>nobody</user><group>nogroup</group></changeowner></security>")


def require(tool: str) -> str:
    """Path of a system tool the radio tests need; a clear failure (never a skip) when it is missing."""
    path = shutil.which(tool)
    if path is None:
        raise RuntimeError(f"{tool} is not installed: the radio tests need Debian's icecast2 and ffmpeg "
                           "(apt-get install -y icecast2 ffmpeg)")
    return path


@dataclass(frozen=True)
class Item:
    """One programme item: what airs, for how long, and the title the station announces."""

    title: str
    kind: str  # music | speech | silence
    path: Path | None
    offset_s: float
    duration_s: float


NEWS = "News - LibriSpeech 3436-172162 and 198-209"


def default_programme(examples: Path, seconds: float = 10.0, silence_s: float = 6.0) -> list[Item]:
    """Song -> speech -> silence -> song from ``examples/`` (labels in its ``labels.tsv``)."""
    return [
        Item("Kevin MacLeod - Vibe Ace", "music", examples / "macleod_vibe_ace.ogg", 5.0, seconds),
        # A bulletin of two readers: 198-209 alone (a reader in a noisy room, 14 s) is read as
        # "mixed" in about one radio run of four (model card, content states).
        Item(NEWS, "speech", examples / "librispeech_3436-172162-0000.ogg", 0.0, seconds),
        Item(NEWS, "speech", examples / "librispeech_198-209-0000.ogg", 0.0, seconds),
        Item("Station break", "silence", None, 0.0, silence_s),
        Item("Karissa Hobbs - Lets Go Fishin", "music", examples / "hobbs_lets_go_fishin.ogg", 20.0, seconds),
    ]


def render(programme: list[Item], path: Path) -> None:
    """Write the programme as one 44.1 kHz mono WAV, so one source connection airs all of it."""
    parts = []
    for item in programme:
        n = round(item.duration_s * PROGRAMME_RATE)
        if item.path is None:
            parts.append(np.zeros(n, np.float32))
            continue
        with sf.SoundFile(str(item.path)) as audio:
            audio.seek(round(item.offset_s * audio.samplerate))
            data = audio.read(round(item.duration_s * audio.samplerate), dtype="float32", always_2d=True).mean(axis=1)
            rate = audio.samplerate
        if rate != PROGRAMME_RATE:
            data = soxr.resample(data, rate, PROGRAMME_RATE)
        parts.append(np.pad(data, (0, max(0, n - data.shape[0])))[:n])
    sf.write(str(path), np.concatenate(parts), PROGRAMME_RATE, subtype="PCM_16")


class RadioStation:
    """Icecast + an ffmpeg source client + a title announcer; every process stopped by its PID."""

    def __init__(self, programme: list[Item], mount: str = "/radio.mp3") -> None:
        self.icecast_bin, self.ffmpeg_bin = require("icecast2"), require("ffmpeg")
        self.programme, self.mount = programme, mount
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="sg-icecast-"))
        (self.base / "log").mkdir()
        as_root = os.geteuid() == 0
        if as_root:
            nobody = pwd.getpwnam("nobody")
            for folder in (self.base, self.base / "log"):
                os.chown(folder, nobody.pw_uid, nobody.pw_gid)
        self.base.chmod(0o755)
        self.config = self.base / "icecast.xml"
        self.config.write_text(ICECAST_XML.format(
            source=SOURCE_PASSWORD, admin=ADMIN_PASSWORD, port=self.port, base=self.base,
            security=SECURITY_AS_ROOT if as_root else ""))
        self.wav = self.base / "programme.wav"
        render(programme, self.wav)
        self.server: subprocess.Popen | None = None
        self.source: subprocess.Popen | None = None
        self._announcer: threading.Thread | None = None
        self._stop_announcer = threading.Event()
        self.aired_from = 0.0  # wall clock at which the current source connection began airing item 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.mount}"

    @property
    def cycle_s(self) -> float:
        return sum(item.duration_s for item in self.programme)

    # -- server ------------------------------------------------------------------------------
    def start_server(self) -> None:
        self.server = subprocess.Popen([self.icecast_bin, "-c", str(self.config)], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise RuntimeError(f"icecast2 exited ({self.server.returncode}): {self.server.stderr.read().decode()}"
                                   f"{self._log('error.log')}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/status-json.xsl", timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"icecast2 did not listen on {self.port}: {self._log('error.log')}")

    def kill_server(self) -> None:
        """SIGKILL the server (a crash, not a shutdown); the source client loses its connection."""
        _stop(self.server, kill=True)
        self.server = None
        self._stop_source()

    # -- source and titles ---------------------------------------------------------------------
    def start_source(self) -> None:
        self.source = subprocess.Popen(
            [self.ffmpeg_bin, "-v", "error", "-re", "-stream_loop", "-1", "-i", str(self.wav),
             "-c:a", "libmp3lame", "-b:a", "96k", "-content_type", "audio/mpeg", "-ice_name", "streamgenre test FM",
             "-f", "mp3", f"icecast://source:{SOURCE_PASSWORD}@127.0.0.1:{self.port}{self.mount}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.aired_from = time.time()
        deadline = time.monotonic() + 15
        while not self.mount_is_live():
            if self.source.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ffmpeg source did not go live: {self.source.stderr.read().decode()}")
            time.sleep(0.1)
        self._stop_announcer.clear()
        self._announcer = threading.Thread(target=self._announce, name="icy-titles", daemon=True)
        self._announcer.start()

    def mount_is_live(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/status-json.xsl", timeout=1) as reply:
                return self.mount.encode() in reply.read()
        except OSError:
            return False

    def item_at(self, seconds: float) -> Item:
        position = seconds % self.cycle_s
        for item in self.programme:
            if position < item.duration_s:
                return item
            position -= item.duration_s
        return self.programme[-1]

    def _announce(self) -> None:
        """Set the ICY title whenever the programme moves to the next item (and once at the start)."""
        current = None
        while not self._stop_announcer.is_set():
            item = self.item_at(time.time() - self.aired_from)
            if item is not current:
                try:
                    self.set_title(item.title)
                    current = item
                except OSError:
                    pass  # server restarting: retried on the next tick
            self._stop_announcer.wait(0.1)

    def set_title(self, title: str) -> None:
        query = urllib.parse.urlencode({"mount": self.mount, "mode": "updinfo", "song": title})
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/admin/metadata?{query}")
        token = f"admin:{ADMIN_PASSWORD}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(token).decode())
        urllib.request.urlopen(request, timeout=2).close()

    def _stop_source(self) -> None:
        self._stop_announcer.set()
        if self._announcer is not None:
            self._announcer.join(5)
        _stop(self.source)
        self.source = None

    # -- whole station -------------------------------------------------------------------------
    def start(self) -> RadioStation:
        self.start_server()
        self.start_source()
        return self

    def stop(self) -> None:
        self._stop_source()
        _stop(self.server)
        self.server = None
        shutil.rmtree(self.base, ignore_errors=True)

    def _log(self, name: str) -> str:
        path = self.base / "log" / name
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


def _stop(process: subprocess.Popen | None, kill: bool = False) -> None:
    if process is None or process.poll() is not None:
        return
    if kill:
        process.kill()
    else:
        process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


if __name__ == "__main__":
    # A station to try the relay against by hand: python -m tests.radio (Ctrl-C or SIGTERM stops it).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # SystemExit runs the finally below
    station = RadioStation(default_programme(Path(__file__).resolve().parents[2] / "shared" / "data" / "examples"))
    station.start()
    print(station.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        station.stop()
