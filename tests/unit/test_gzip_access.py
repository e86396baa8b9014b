"""gzip read through access points: the same bytes and the same errors as the gzip module, and
from any access point the rest of the file, checked against the member's trailer."""

from __future__ import annotations

import gzip
import io
import random
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulk_import.ingest import gzip_access
from bulk_import.ingest.dedupe import Dedupe
from bulk_import.ingest.file_type import Compression
from bulk_import.ingest.gzip_access import SPACING, AccessPoint, GzipError, GzipReader
from bulk_import.ingest.source import can_resume, decoded, start_at


def text(n: int, seed: int = 1) -> bytes:
    """JSONL-like bytes that compress as real exports do (repeats, and random ids)."""
    rnd = random.Random(seed)
    rows = (
        b'{"user_id":"%032x","provider":"oura","access_token":"%s"}\n'
        % (rnd.getrandbits(128), b"t" * rnd.randrange(10, 200))
        for _ in range(n)
    )
    return b"".join(rows)


def read_all(reader: GzipReader, size: int = 65536) -> bytes:
    out = []
    while block := reader.read(size):
        out.append(block)
    return b"".join(out)


def points_of(data: bytes) -> tuple[bytes, list[AccessPoint]]:
    reader = GzipReader(io.BytesIO(data))
    out, points = [], []
    while block := reader.read(65536):
        out.append(block)
        points.extend(p for p in reader.points if p not in points)
    return b"".join(out), points


def enter(data: bytes, point: AccessPoint) -> GzipReader:
    raw = io.BytesIO(data)
    raw.seek(point.inp - (1 if point.bits else 0))
    return GzipReader(raw, AccessPoint.load(point.dump()))


PLAIN = text(40_000)
ONE = gzip.compress(PLAIN, compresslevel=6)


@settings(max_examples=25, deadline=None)
@given(
    level=st.integers(1, 9),
    members=st.integers(1, 3),
    padding=st.integers(0, 3),
    size=st.sampled_from([1, 7, 4096, 65536, 1 << 20]),
)
def test_reads_what_the_gzip_module_reads(
    level: int, members: int, padding: int, size: int
) -> None:
    parts = [PLAIN[i * 1000 : (i + 1) * 150_000] for i in range(members)]
    data = b"".join(gzip.compress(p, compresslevel=level) + b"\0" * padding for p in parts)
    if size == 1:
        data, parts = gzip.compress(PLAIN[:5000]), [PLAIN[:5000]]
    assert read_all(GzipReader(io.BytesIO(data)), size) == b"".join(parts)


def test_every_access_point_leads_to_the_rest_of_the_file() -> None:
    # Given a file of two members with access points about SPACING apart in each
    data = ONE + gzip.compress(PLAIN[::-1], compresslevel=1)
    whole, points = points_of(data)
    assert whole == PLAIN + PLAIN[::-1]
    assert len(points) >= 2 * (len(PLAIN) // SPACING) - 2
    assert {p.bits for p in points} != {0}  # points in the middle of a byte too

    # Then entering at each one gives the rest, the trailers checked
    for point in points:
        assert read_all(enter(data, point)) == whole[point.out :]


def test_a_damaged_trailer_is_found_after_entering_at_a_point() -> None:
    _, points = points_of(ONE)
    damaged = bytearray(ONE)
    damaged[-6] ^= 1  # the CRC
    with pytest.raises(GzipError, match="CRC check failed"):
        read_all(enter(bytes(damaged), points[-1]))
    with pytest.raises(GzipError, match="ended before the end-of-stream marker"):
        read_all(enter(ONE[:-100], points[-1]))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not gzip at all", "Not a gzipped file"),
        (ONE[: len(ONE) // 2], "ended before the end-of-stream marker"),
        (ONE[:-4] + b"\0\0\0\0", "Incorrect length of data produced"),
        (ONE + b"garbage", "Not a gzipped file"),
    ],
)
def test_damage_is_an_error_as_in_the_gzip_module(data: bytes, message: str) -> None:
    with pytest.raises(GzipError, match=message):
        read_all(GzipReader(io.BytesIO(data)))
    with pytest.raises((gzip.BadGzipFile, EOFError, zlib.error)):
        gzip.decompress(data)


def test_a_changed_byte_inside_is_found_by_the_crc() -> None:
    damaged = bytearray(ONE)
    spot = len(damaged) // 2
    damaged[spot : spot + 64] = bytes(64)
    with pytest.raises(GzipError):
        read_all(GzipReader(io.BytesIO(bytes(damaged))))


# --- dedupe parts ---------------------------------------------------------------------------------

CLAIMS = st.lists(
    st.tuples(st.sampled_from(["oura", "fitbit", "garmin"]), st.integers(0, 30)), max_size=60
)


@settings(max_examples=200, deadline=None)
@given(before=CLAIMS, after=CLAIMS, cut=st.integers(0, 60))
def test_a_run_loading_dedupe_parts_claims_as_the_run_that_wrote_them(
    before: list[tuple[str, int]], after: list[tuple[str, int]], cut: int
) -> None:
    def uid(n: int) -> str:
        return f"{n:08x}-0000-4000-8000-{n * 7919:012x}"

    # Given a run that claimed users, storing a part at ``cut`` and one at the end
    writer, parts = Dedupe(), []
    for line, (provider, n) in enumerate(before, 1):
        writer.claim(provider, uid(n), line)
        if line == cut:
            parts.append(writer.part())
    parts.append(writer.part())

    # When another run loads the parts
    reader = Dedupe()
    for part in parts:
        reader.load(part)

    # Then it answers every later claim as the writer does
    for line, (provider, n) in enumerate(after, len(before) + 1):
        assert reader.claim(provider, uid(n), line) == writer.claim(provider, uid(n), line)
    assert writer.part() == reader.part()  # and both have the same claims left to store


def test_without_a_system_zlib_gzip_is_read_by_the_gzip_module_and_never_entered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a machine where the system's zlib cannot be loaded
    monkeypatch.setattr(gzip_access, "available", lambda: False)

    # When a gzip file is opened
    stream = decoded(io.BytesIO(ONE), Compression.GZIP, 1 << 30, len(ONE))

    # Then it reads as ever, and no resume point is offered for it
    assert not can_resume(Compression.GZIP)
    assert start_at(stream, 0) is None
    assert stream.read() == PLAIN
