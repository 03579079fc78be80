"""``streamgenre report``: a stream's timeline from Redis as a PNG, and its segments as CSV + JSON.

    streamgenre report --stream-id radio-1 [--from 2026-12-02T14:00 --to 2026-12-02T15:00] [--out DIR]

Reads ``{prefix}:{stream}:segments`` (closed segments) and ``{prefix}:{stream}:timeline`` (the
window predictions, for the probabilities and the segment still open). The open segment is
rebuilt with the daemon's own :class:`~streamgenre.stream.segments.Segmenter` from the windows
after the last closed segment, so the report reaches the present. Writes ``segments.csv``,
``segments.json`` and ``timeline.png`` into ``--out``: state bands with segment boundaries and
titles, genre probabilities stacked (music windows only), and the level against the silence
threshold.
"""

from __future__ import annotations

import argparse
import csv
import json
from datetime import UTC, datetime
from pathlib import Path

import redis

from streamgenre.apps.errors import UsageError
from streamgenre.config import Settings
from streamgenre.stream.segments import Segmenter, WindowState

STATE_COLOURS = {"music": "#4c72b0", "speech": "#dd8452", "mixed": "#8172b3", "silence": "#c7c7c7"}
CSV_FIELDS = ("start", "end", "start_utc", "end_utc", "duration_s", "state", "genre", "confidence",
              "genre_confidence", "title", "windows")


class ReportError(UsageError):
    """Nothing to report, or Redis cannot be read; one line for the user (exit 2, see cli)."""


def parse_time(text: str) -> float:
    """Epoch seconds from epoch seconds or an ISO 8601 time (UTC unless it names a zone)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is neither epoch seconds nor an ISO 8601 time") from exc
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def read_stream(client: redis.Redis, key: str, start: float, end: float, field: str) -> list[dict]:
    """JSON entries of a Redis Stream whose [field_start, field_end] overlaps [start, end]."""
    entries = []
    for _, fields in client.xrange(key):
        item = json.loads(fields[b"json"])
        lo, hi = (item["start"], item["end"]) if field == "segment" else (item["t_start"], item["t_end"])
        if hi >= start and lo <= end:
            entries.append(item)
    return entries


def open_segment(stream_id: str, windows: list[dict], after: float, settings: Settings) -> list[dict]:
    """The segment(s) not yet closed: the daemon's segmenter over the windows after ``after``."""
    segmenter = Segmenter(stream_id, settings.segment_min_s, settings.dead_air_s)
    closed = []
    for p in windows:
        if p["t_start"] < after or "state" not in p:
            continue
        genre = p.get("smoothed_genre")
        segments, _ = segmenter.update(WindowState(
            p["t_start"], p["t_end"], p["state"], p["state_probs"], genre,
            p["smoothed_probs"] if genre else None, p.get("title")))
        closed += segments
    return [s.to_dict() | {"open": True} for s in closed + segmenter.close()]


def utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def write_tables(segments: list[dict], out: Path) -> None:
    with (out / "segments.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for s in segments:
            writer.writerow(s | {"start_utc": utc(s["start"]), "end_utc": utc(s["end"])})
    (out / "segments.json").write_text(json.dumps(segments, indent=1, ensure_ascii=False) + "\n")


def plot(stream_id: str, segments: list[dict], windows: list[dict], settings: Settings, path: Path) -> None:
    """Three rows sharing the time axis: states + titles, genre probabilities, level."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ReportError("the PNG needs matplotlib: pip install 'streamgenre[report]'") from exc

    matplotlib.use("Agg")  # files only; never a display
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    t0 = min([s["start"] for s in segments] + [w["t_start"] for w in windows])
    fig, (bands, probs, level) = plt.subplots(3, 1, figsize=(14, 7), sharex=True,
                                              gridspec_kw={"height_ratios": [1.2, 2, 1]})
    for s in segments:
        bands.axvspan(s["start"] - t0, s["end"] - t0, color=STATE_COLOURS.get(s["state"], "k"), alpha=0.9)
        label = s["genre"] or s["state"]
        if s.get("title"):
            label += f"\n{s['title']}"
        bands.text((s["start"] + s["end"]) / 2 - t0, 0.5, label, ha="center", va="center", fontsize=7, clip_on=True)
        for axis in (bands, probs, level):
            axis.axvline(s["start"] - t0, color="k", lw=0.6)
    bands.set_yticks([])
    bands.set_title(f"{stream_id}: {utc(t0)} + seconds")
    bands.legend(handles=[Patch(color=c, label=n) for n, c in STATE_COLOURS.items()], loc="upper right",
                 fontsize=7, ncol=4)
    if windows:
        times = [(w["t_start"] + w["t_end"]) / 2 - t0 for w in windows]
        labels = list(windows[0]["probs"])
        # Genre only while music: other windows contribute zeros, so the stack shows the gaps.
        stacks = [[w["smoothed_probs"].get(g, 0.0) if w.get("smoothed_genre") else 0.0 for w in windows]
                  for g in labels]
        probs.stackplot(times, stacks, labels=labels, step="mid")
        probs.legend(loc="upper left", fontsize=6, ncol=5)
        level.plot(times, [w.get("level_dbfs", float("nan")) for w in windows], lw=0.8, color="k")
    probs.set_ylim(0, 1)
    probs.set_ylabel("genre probability")
    level.axhline(settings.silence_dbfs, color="r", ls="--", lw=0.8, label=f"silence {settings.silence_dbfs} dBFS")
    level.set_ylabel("dBFS")
    level.set_xlabel("seconds")
    level.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def build_report(settings: Settings, stream_id: str, start: float, end: float, out: Path) -> list[dict]:
    """Read, write the three files, return the segments (closed, then the open one)."""
    client = redis.Redis.from_url(settings.redis_url.get_secret_value(), socket_timeout=5.0)
    prefix = f"{settings.redis_prefix}:{stream_id}"
    try:
        closed = read_stream(client, f"{prefix}:segments", start, end, "segment")
        windows = read_stream(client, f"{prefix}:timeline", start, end, "window")
    except redis.RedisError as exc:
        raise ReportError(f"cannot read Redis: {exc}") from exc
    finally:
        client.close()
    if not closed and not windows:
        raise ReportError(f"no segments or windows for stream {stream_id!r} in Redis ({prefix}:*) in that time range")
    after = max((s["end"] for s in closed), default=float("-inf"))
    segments = closed + open_segment(stream_id, windows, after, settings)
    out.mkdir(parents=True, exist_ok=True)
    write_tables(segments, out)
    plot(stream_id, segments, windows, settings, out / "timeline.png")
    return segments


def _cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    start = args.start if args.start is not None else float("-inf")
    end = args.end if args.end is not None else float("inf")
    out = args.out or Path(f"report-{args.stream_id}")
    segments = build_report(settings, args.stream_id, start, end, out)
    print(f"{len(segments)} segments -> {out}/segments.csv, segments.json, timeline.png")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    report = sub.add_parser("report", help="a stream's timeline (PNG) and segments (CSV/JSON) from Redis")
    report.add_argument("--stream-id", required=True)
    report.add_argument("--from", dest="start", type=parse_time, default=None,
                        help="epoch seconds or ISO 8601 (UTC unless a zone is given)")
    report.add_argument("--to", dest="end", type=parse_time, default=None)
    report.add_argument("--out", type=Path, default=None, help="folder for the files (default report-<stream>)")
    report.set_defaults(handler=_cmd_report)
