"""Resume cost: what a continuation pays to take up a 1 GB (decompressed) gzip JSONL file at
10 % and at 90 % of it, from the resume point a run stores there, against reading the file
from its start to the same place (what a resume costs without the point).

A resume from a point enters the gzip stream at the stored access point and reads the first
1,000 lines past the point: the target, which must not grow with the position. It also loads
the dedupe part, every user claimed before the point: that grows with the users before it
(a set of them is the least a resumed dedupe needs), and is reported with its cost per user.
All of it is the function's own code (``Dedupe.load``, ``ingest.source.decoded``,
``jsonl_blocks``) on a local file: S3's transfer is left out on both sides.

    .venv/bin/python -m bench.resume            # ~1 min, the file cached in bench/results/
"""

from __future__ import annotations

import argparse
import gzip
import random
import sys
import time
from pathlib import Path
from typing import IO, Any

from bulk_import.ingest.dedupe import Dedupe
from bulk_import.ingest.file_type import Compression
from bulk_import.ingest.jsonl import jsonl_blocks
from bulk_import.ingest.source import StartAt, decoded, start_at

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / "results" / "resume-1g.jsonl.gz"
TARGET_BYTES = 1_000_000_000
FRACTIONS = (0.1, 0.9)
LIMIT = 1 << 40  # MAX_DECOMPRESSED_BYTES: not what is measured
LINES_AFTER = 1_000
# The ratio entering the stream at 90 % may be of entering it at 10 %.
TARGET = 1.5


def _pool(rng: random.Random) -> str:
    return rng.randbytes(1 << 20).hex()


def write_file(path: Path) -> int:
    """~1 GB of rows like the benchmark's (~555 bytes, random tokens), gzip level 6."""
    rng = random.Random(7)
    pool = _pool(rng)
    providers = ("oura", "fitbit", "garmin", "whoop_v2")
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = written = 0
    tmp = path.with_suffix(".tmp")
    with gzip.open(tmp, "wb", compresslevel=6) as out:
        while written < TARGET_BYTES:
            batch = []
            for _ in range(10_000):
                at = rng.randrange(len(pool) - 400)
                uid = f"{rows:032x}"
                batch.append(
                    f'{{"user_id":"{uid[:8]}-{uid[8:12]}-4{uid[13:16]}-8{uid[17:20]}-'
                    f'{uid[20:]}","provider":"{providers[rows % 4]}","access_token":'
                    f'"{pool[at : at + 240]}","refresh_token":"{pool[at + 240 : at + 400]}",'
                    f'"provider_id":"p{rows}","expires_at":1999999999,'
                    f'"oauth_scopes":["daily","heartrate","sleep"]}}\n'
                )
                rows += 1
            data = "".join(batch).encode()
            out.write(data)
            written += len(data)
    path.with_suffix(".size").write_text(str(written))
    tmp.rename(path)
    return rows


class Point:
    """What a run stores at a resume point: where, the access point, the dedupe part."""

    def __init__(self, line: int, offset: int, start: StartAt, seen: bytes) -> None:
        self.line, self.offset, self.start, self.seen = line, offset, start, seen


def prepare(path: Path) -> tuple[dict[float, Point], int]:
    """One pass as a run makes it: the resume point at each fraction, and the file's size."""
    total = _decompressed_size(path)
    wanted = sorted(FRACTIONS)
    points: dict[float, Point] = {}
    seen = Dedupe()
    with path.open("rb") as raw:
        stream = decoded(raw, Compression.GZIP, LIMIT)
        for first, lines, offset in jsonl_blocks(stream, 1 << 20):
            if wanted and offset >= wanted[0] * total:
                start = start_at(stream, offset)
                assert start is not None
                points[wanted.pop(0)] = Point(first, offset, start, seen.part())
                if not wanted:
                    break
            for raw_line in lines:
                if raw_line:
                    seen.claim("oura", raw_line[12:48].decode(), first)
    return points, total


def _decompressed_size(path: Path) -> int:
    return int(path.with_suffix(".size").read_text())


def _read_lines(stream: IO[bytes], first: int, offset: int, count: int) -> int:
    got = 0
    for _, lines, _ in jsonl_blocks(stream, 1 << 20, first_line=first, offset=offset):
        got += len(lines)
        if got >= count:
            break
    return got


def resume_from_point(path: Path, point: Point) -> dict[str, float]:
    started = time.perf_counter()
    Dedupe().load(point.seen)
    loaded = time.perf_counter()
    with path.open("rb") as raw:
        stream = decoded(raw, Compression.GZIP, LIMIT, start=point.start)
        _read_lines(stream, point.line, point.offset, LINES_AFTER)
    done = time.perf_counter()
    return {"dedupe_s": loaded - started, "seek_s": done - loaded, "total_s": done - started}


def read_from_start(path: Path, point: Point) -> float:
    started = time.perf_counter()
    with path.open("rb") as raw:
        stream = decoded(raw, Compression.GZIP, LIMIT)
        _read_lines(stream, 1, 0, point.line + LINES_AFTER)
    return time.perf_counter() - started


def measure(repeat: int = 3) -> dict[str, Any]:
    """Best of ``repeat`` at each fraction; the file is written once and cached."""
    if not CACHE.exists():
        print(f"  resume: writing {CACHE.relative_to(ROOT)} (~1 GB unpacked) ...", flush=True)
        write_file(CACHE)
    points, total = prepare(CACHE)
    result: dict[str, Any] = {"decompressed_bytes": total, "gzip_bytes": CACHE.stat().st_size}
    for fraction, point in points.items():
        runs = [resume_from_point(CACHE, point) for _ in range(repeat)]
        best = min(runs, key=lambda r: r["total_s"])
        replay = min(read_from_start(CACHE, point) for _ in range(max(1, repeat - 1)))
        result[f"{fraction:.0%}"] = {
            "line": point.line,
            "offset": point.offset,
            "seen_bytes": len(point.seen),
            **{k: round(v, 4) for k, v in best.items()},
            "from_start_s": round(replay, 3),
        }
    low, high = (result[f"{f:.0%}"] for f in FRACTIONS)
    result["ratio"] = round(high["seek_s"] / low["seek_s"], 2)
    result["from_start_ratio"] = round(high["from_start_s"] / low["from_start_s"], 2)
    users = high["line"] - 1
    result["dedupe_us_per_user"] = round(high["dedupe_s"] / users * 1e6, 3)
    return result


def report(result: dict[str, Any]) -> str:
    low, high = (result[f"{f:.0%}"] for f in FRACTIONS)
    verdict = "PASS" if result["ratio"] <= TARGET else "FAIL"
    return "\n".join(
        [
            f"Resume cost, {result['decompressed_bytes'] / 1e9:.2f} GB gzip JSONL "
            f"({result['gzip_bytes'] / 1e6:.0f} MB packed), then {LINES_AFTER:,} lines:",
            "                          at 10 %     at 90 %    90 / 10",
            f"  enter the stream at the  {low['seek_s']:8.3f} s  {high['seek_s']:8.3f} s"
            f"  {result['ratio']:6.2f}  (limit {TARGET}) {verdict}",
            "    point, read on",
            f"  load the dedupe part     {low['dedupe_s']:8.3f} s  {high['dedupe_s']:8.3f} s"
            f"  ({result['dedupe_us_per_user']} µs a user before the point)",
            f"  resume, in all           {low['total_s']:8.3f} s  {high['total_s']:8.3f} s",
            f"  read from the file's     {low['from_start_s']:8.3f} s  "
            f"{high['from_start_s']:8.3f} s  {result['from_start_ratio']:6.2f}",
            "    start to the point",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.resume", description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    print(report(measure(args.repeat)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
