"""Resume points: a continuation reads a JSONL file from near where the last invocation stopped
(the dedupe part and, for gzip, an access point stored there), not from the file's start; the
chunks, outcomes and duplicates come out as one invocation would make them."""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Callable
from typing import Any, NamedTuple

import pytest
import zstandard

from bulk_import.config import Settings
from bulk_import.ingest.gzip_access import SPACING
from bulk_import.model import Counts, ObjectRef, ResumePoint
from bulk_import.model.row import RECIPE_FIELDS
from bulk_import.run.context import FileResult
from bulk_import.run.intake import REPLACED
from bulk_import.wiring import Tunables
from tests.fakes import FakePost, FakeS3, StoreState, outcomes_by_line, run_offline
from tests.helpers import make_row

BUCKET = "bucket-a"
EVERY = 100
POINTS = Tunables(jsonl_block_bytes=4096, resume_every_lines=EVERY, resume_point_bytes=1)


class RangedS3(FakeS3):
    """FakeS3 that notes where each read of a key started."""

    def __init__(self) -> None:
        super().__init__()
        self.starts: dict[str, list[int]] = {}

    def get_object(self, *, Bucket: str, Key: str, Range: str = "", **kw: Any) -> dict[str, Any]:  # noqa: N803
        start = int(Range.removeprefix("bytes=").split("-")[0]) if Range else 0
        self.starts.setdefault(Key, []).append(start)
        return super().get_object(Bucket=Bucket, Key=Key, Range=Range, **kw)


def settings() -> Settings:
    return Settings.from_env(
        {"VITAL_API_KEY_SECRET": "vital-key", "CHUNK_SIZE": "7", "MAX_CONCURRENCY": "1"}
    )


def file_rows(n: int) -> list[dict[str, Any] | str]:
    """``n`` lines over two providers, with rejected rows, blank lines and duplicates of users
    first seen far earlier (before any resume point a later invocation reads from)."""
    lines: list[dict[str, Any] | str] = []
    for i in range(n):
        if i % 97 == 13:
            lines.append({"provider": "oura", "user_id": f"bad-{i}"})
        elif i % 89 == 5:
            lines.append("")
        elif i % 50 == 49:
            lines.append(make_row(i % 40, provider="oura" if i % 3 else "fitbit"))
        else:
            lines.append(make_row(i, provider="oura" if i % 3 else "fitbit"))
    return lines


def body(lines: list[dict[str, Any] | str]) -> bytes:
    return "".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines).encode()


def compress(data: bytes, suffix: str) -> bytes:
    if suffix == ".gz":
        return gzip.compress(data, compresslevel=1)
    if suffix == ".zst":
        return zstandard.ZstdCompressor().compress(data)
    return data


def runs_out_of_time_after(calls: int) -> Callable[[], float]:
    """Lambda's remaining time: plenty for ``calls`` asks, then none (the run hands on)."""
    asked = 0

    def remaining() -> float:
        nonlocal asked
        asked += 1
        return 900.0 if asked <= calls else 0.0

    return remaining


def import_all(
    s3: FakeS3, key: str, *, calls: int | None, tunables: Tunables = POINTS
) -> tuple[FileResult, FakePost, list[StoreState]]:
    """Import ``key`` in one invocation (``calls`` None) or in invocations that each run out
    of time; the states seen after each invocation that handed on."""
    state, post, ref = StoreState(), FakePost(), ObjectRef(bucket=BUCKET, key=key, sequencer="0A")
    handed_on: list[StoreState] = []
    for _ in range(500):
        remaining = (lambda: 900.0) if calls is None else runs_out_of_time_after(calls)
        result = run_offline(
            s3, state, settings(), ref, tunables=tunables, post_chunk=post,
            remaining_seconds=remaining,
        )  # fmt: skip
        if result.continuation is None:
            return result, post, handed_on
        assert state.checkpoint is not None
        handed_on.append(StoreState(checkpoint=state.checkpoint))
        ref = result.continuation
    raise AssertionError("the file never ended")


def first_run(s3: FakeS3, key: str, calls: int) -> tuple[StoreState, FakePost, FileResult]:
    """The import's first invocation, out of time after ``calls`` asks: it hands on."""
    state, post = StoreState(), FakePost()
    ref = ObjectRef(bucket=BUCKET, key=key, sequencer="0A")
    first = run_offline(
        s3, state, settings(), ref, tunables=POINTS, post_chunk=post,
        remaining_seconds=runs_out_of_time_after(calls),
    )  # fmt: skip
    assert first.continuation is not None
    assert state.checkpoint is not None
    return state, post, first


def usable_point(state: StoreState) -> ResumePoint | None:
    """The point a run resuming from ``state`` reads from: the newest whose chunks are all
    settled and whose lines' outcomes are stored."""
    cp = state.checkpoint
    assert cp is not None
    usable = [
        p for p in cp.resume_points if p.seq <= cp.settled_below and p.line - 1 <= cp.lines_done
    ]
    return usable[-1] if usable else None


def chunks_of(post: FakePost) -> list[list[int]]:
    return [[row.line for row in chunk.rows] for chunk in post.sent]


class Compared(NamedTuple):
    """A file imported in one invocation and in many: what the many-invocation import left."""

    outcomes: dict[int, dict[str, str]]
    entered: list[ResumePoint]  # the points the resuming invocations read from
    read_from: list[int]  # where reads of the object started, past its start
    s3: RangedS3


def import_once_and_in_many(data: bytes, key: str, suffix: str, calls: int) -> Compared:
    """Import ``data`` in one invocation and in many that each run out of time after ``calls``
    asks, and check that both send the same chunks (each row once), write the same outcomes and
    counts, cut no chunk across a point, and that the invocations resuming at a point read the
    file from there."""
    once_s3, many_s3 = RangedS3(), RangedS3()
    once_s3.put(key, compress(data, suffix))
    many_s3.put(key, compress(data, suffix))

    once, once_post, _ = import_all(once_s3, key, calls=None)
    many, many_post, handed_on = import_all(many_s3, key, calls=calls)

    assert len(handed_on) > 5
    assert chunks_of(many_post) == chunks_of(once_post)
    sent = many_post.sent_lines
    assert len(sent) == len(set(sent))
    outcomes_key = "results/" + key.removeprefix("incoming/") + "/outcomes.csv"
    many_outcomes = outcomes_by_line(many_s3, outcomes_key)
    assert many_outcomes == outcomes_by_line(once_s3, outcomes_key)
    assert many.manifest is not None
    assert once.manifest is not None
    assert many.manifest.counts == once.manifest.counts
    assert many.manifest.counts.rows == len(many_outcomes)
    # No chunk spans a multiple of RESUME_EVERY_LINES (+1), where the points are
    assert all((c[0] - 1) // EVERY == (c[-1] - 1) // EVERY for c in chunks_of(many_post))
    # Each invocation resuming at a point read the file from there, not from its start
    # (besides the object each invocation opens from the start while its checkpoint is read;
    # gzip's first access point comes after SPACING bytes: before it, gzip inflates from the
    # start)
    entered = [point for state in handed_on if (point := usable_point(state))]
    assert len(entered) >= len(handed_on) - 2
    read_from = [start for start in many_s3.starts[key] if start > 0]
    assert len(read_from) == sum(1 for p in entered if p.access or not suffix)
    assert len(read_from) >= len(handed_on) // 3
    return Compared(many_outcomes, entered, read_from, many_s3)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_given_invocations_that_run_out_of_time_then_each_reads_from_near_where_the_last_stopped(
    suffix: str,
) -> None:
    # Given a JSONL file of 3,000 lines (two providers, rejected rows, blank lines, duplicates
    # of users first seen far earlier), over 1 MiB once unpacked
    lines = file_rows(3000)
    lines = [
        {**x, "provider_id": "p" * 600} if isinstance(x, dict) and "access_token" in x else x
        for x in lines
    ]
    data = body(lines)
    assert len(data) > 2 * SPACING  # gzip's access points are SPACING apart

    # When it is imported in one invocation, and in many that each run out of time
    many = import_once_and_in_many(data, f"incoming/a.jsonl{suffix}", suffix, calls=40)

    # Then the chunks, the outcomes and the counts are the same, each row sent once, and each
    # invocation resuming at a point read the file from there (import_once_and_in_many)
    assert sorted(many.outcomes) == [n for n in range(1, 3001) if lines[n - 1] != ""]
    assert any(o["outcome"] == "duplicate" for o in many.outcomes.values())
    assert many.read_from == sorted(many.read_from)
    if not suffix:
        key = "incoming/a.jsonl"
        assert many.read_from[-1] > len(many.s3.objects[key]) * 3 // 4


def test_given_a_point_whose_objects_are_gone_then_the_run_reads_from_the_start() -> None:
    # Given an import that stored resume points, then lost their objects
    lines = file_rows(600)
    key = "incoming/b.jsonl"
    s3 = RangedS3()
    s3.put(key, body(lines))
    state, post, first = first_run(s3, key, calls=30)
    assert state.checkpoint.resume_points
    for point in state.checkpoint.resume_points:
        for gone in point.seen:
            del s3.objects[gone]

    # When the next invocation resumes
    result = run_offline(
        s3, state, settings(), first.continuation, tunables=POINTS, post_chunk=post
    )

    # Then it read from the start, and the file ends as it would have: each row once
    assert s3.starts[key][-1] == 0
    assert result.manifest is not None
    assert result.manifest.error is None
    sent = post.sent_lines
    assert len(sent) == len(set(sent))
    assert result.manifest.counts.rows == len(outcomes_by_line(s3, "results/b.jsonl/outcomes.csv"))


def test_given_a_zstd_file_then_no_point_is_stored_and_each_invocation_reads_from_the_start() -> (
    None
):
    lines = file_rows(800)
    key = "incoming/c.jsonl.zst"
    s3 = RangedS3()
    s3.put(key, compress(body(lines), ".zst"))

    result, post, handed_on = import_all(s3, key, calls=30)

    assert len(handed_on) > 2
    assert all(s.checkpoint is not None and not s.checkpoint.resume_points for s in handed_on)
    assert result.manifest is not None
    assert result.manifest.error is None
    assert len(post.sent_lines) == len(set(post.sent_lines))
    expected = sum(1 for x in lines if x != "")
    assert result.manifest.counts.rows == expected


def test_given_a_file_shorter_than_the_cut_spacing_then_it_imports_as_it_always_did() -> None:
    # Given a file of fewer lines than RESUME_EVERY_LINES
    key = "incoming/d.jsonl"
    s3 = RangedS3()
    s3.put(key, body([make_row(i) for i in range(30)]))

    result, post, _ = import_all(s3, key, calls=None, tunables=Tunables())

    # Then its chunks are full ones, the last one partial
    assert [len(c) for c in chunks_of(post)] == [7, 7, 7, 7, 2]
    assert result.manifest is not None
    assert result.manifest.counts == Counts(rows=30, imported=30)


class PutCounter(RangedS3):
    """RangedS3 that counts the writes of each key."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: dict[str, int] = {}

    def put_object(self, *, Bucket: str, Key: str, Body: bytes | str, **kw: Any) -> None:  # noqa: N803
        self.writes[Key] = self.writes.get(Key, 0) + 1
        super().put_object(Bucket=Bucket, Key=Key, Body=Body, **kw)


def rows_with_late_duplicates(n: int) -> list[dict[str, Any] | str]:
    """``n`` padded rows; from line 1,001 on, every tenth repeats a user of lines 151-250."""
    return [
        {
            **make_row(150 + i % 100 if i >= 1000 and i % 10 == 3 else i),
            "provider_id": "p" * 600,
        }
        for i in range(n)
    ]


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("calls", [150, 400])
def test_given_runs_that_store_many_points_then_none_is_overwritten_and_duplicates_hold(
    suffix: str, calls: int
) -> None:
    # Given a file whose later rows repeat users first seen early on, imported in invocations
    # long enough to store several points each, and in one
    lines = rows_with_late_duplicates(3000)
    key = f"incoming/e.jsonl{suffix}"
    once_s3, many_s3 = PutCounter(), PutCounter()
    once_s3.put(key, compress(body(lines), suffix))
    many_s3.put(key, compress(body(lines), suffix))

    once, once_post, _ = import_all(once_s3, key, calls=None)
    many, many_post, _ = import_all(many_s3, key, calls=calls)

    # Then every point's objects were written once (a point never loses them to a later one)
    for s3 in (once_s3, many_s3):
        points = {k: n for k, n in s3.writes.items() if "/_state/seen-" in k or "access-" in k}
        assert len(points) > 3
        assert set(points.values()) == {1}
    # And the outcomes, the duplicates among them, and what was sent match one invocation's
    outcomes_key = f"results/e.jsonl{suffix}/outcomes.csv"
    assert outcomes_by_line(many_s3, outcomes_key) == outcomes_by_line(once_s3, outcomes_key)
    assert chunks_of(many_post) == chunks_of(once_post)
    assert many.manifest is not None
    assert once.manifest is not None
    assert many.manifest.counts == once.manifest.counts
    assert many.manifest.counts.duplicates == 200


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_given_the_key_uploaded_again_then_a_resume_from_a_point_stops_before_reading_it(
    suffix: str,
) -> None:
    # Given an import that stored points, then the key uploaded again with other content
    lines = rows_with_late_duplicates(6000)
    key = f"incoming/f.jsonl{suffix}"
    s3 = RangedS3()
    s3.put(key, compress(body(lines), suffix))
    state, post, first = first_run(s3, key, calls=1500)
    assert any(p.access or not suffix for p in state.checkpoint.resume_points)
    other = [{**make_row(100_000 + i), "provider_id": "q" * 600} for i in range(3000)]
    s3.put(key, compress(body(other), suffix))
    sent = len(post.sent)

    # When the continuation runs
    result = run_offline(
        s3, state, settings(), first.continuation, tunables=POINTS, post_chunk=post
    )

    # Then it stops as replaced, sending nothing of the new content
    assert result.skipped == REPLACED
    assert len(post.sent) == sent


def test_given_a_point_whose_objects_are_gone_then_later_points_work_again() -> None:
    # Given an import whose stored points lost their dedupe parts
    lines = rows_with_late_duplicates(3000)
    key = "incoming/g.jsonl"
    s3 = RangedS3()
    s3.put(key, body(lines))
    state, post, result = first_run(s3, key, calls=300)
    for point in state.checkpoint.resume_points:
        for gone in point.seen:
            s3.objects.pop(gone, None)

    # When the continuations run
    starts: list[list[int]] = []
    while result.continuation is not None:
        before = len(s3.starts[key])
        result = run_offline(
            s3, state, settings(), result.continuation, tunables=POINTS, post_chunk=post,
            remaining_seconds=runs_out_of_time_after(300),
        )  # fmt: skip
        starts.append([s for s in s3.starts[key][before:] if s > 0])

    # Then the first reads from the start, and the ones after it from their new points
    assert len(starts) > 2
    assert starts[0] == []
    assert all(later for later in starts[1:])
    assert result.manifest is not None
    assert result.manifest.error is None
    assert len(post.sent_lines) == len(set(post.sent_lines))


def test_given_a_point_whose_dedupe_parts_hold_fewer_claims_then_it_is_not_used() -> None:
    # Given a stored point whose part is replaced by an empty one (its claims lost)
    lines = rows_with_late_duplicates(3000)
    key = "incoming/h.jsonl"
    s3 = RangedS3()
    s3.put(key, body(lines))
    state, post, first = first_run(s3, key, calls=600)
    for point in state.checkpoint.resume_points:
        s3.objects[point.seen[-1]] = b""

    # When the continuation runs to the end
    result = run_offline(
        s3, state, settings(), first.continuation, tunables=POINTS, post_chunk=post
    )

    # Then it read from the start, and every duplicate is found
    assert s3.starts[key][-1] == 0
    assert result.manifest is not None
    assert result.manifest.counts.duplicates == 200
    assert len(post.sent_lines) == len(set(post.sent_lines))


def csv_body(lines: list[dict[str, Any] | str], broken_every: int = 37) -> bytes:
    """The rows as CSV under a header (a blank line for ``""``); every ``broken_every``-th
    row's provider_id holds a line break, so its record spans two lines (and is rejected)."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for n, row in enumerate(lines):
        if isinstance(row, str):
            out.write("\r\n")
            continue
        cells = {**row, "oauth_scopes": " ".join(row.get("oauth_scopes", []))}
        if broken_every and n % broken_every == 0:
            cells["provider_id"] = "two\nlines"
        writer.writerow([cells.get(c, "") for c in CSV_COLUMNS])
    return out.getvalue().encode()


CSV_COLUMNS = ("provider", *RECIPE_FIELDS)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_given_a_csv_file_over_many_invocations_then_each_reads_from_its_point(
    suffix: str,
) -> None:
    # Given a CSV file (records over two lines among them, rejected rows, blank lines,
    # duplicates of users first seen far earlier), over 2 MiB once unpacked
    lines = [
        {**x, "refresh_token": "r" * 900} if isinstance(x, dict) and "access_token" in x else x
        for x in file_rows(3000)
    ]
    data = csv_body(lines)
    assert len(data) > 2 * SPACING

    # When it is imported in one invocation, and in many that each run out of time
    many = import_once_and_in_many(data, f"incoming/a.csv{suffix}", suffix, calls=15)

    # Then the chunks, the outcomes and the counts are the same, each row sent once, and the
    # invocations resuming at a point read the file from there (import_once_and_in_many), the
    # header from the point
    details = [o["detail"] for o in many.outcomes.values()]
    assert any("holds a line break" in d for d in details)
    assert any(d.startswith("duplicate of line") for d in details)
    assert all(p.header == list(CSV_COLUMNS) for p in many.entered)


def threshold_file() -> list[dict[str, Any] | str]:
    """Rows alternately valid and rejected (50 %), then 20 rejected (just over half for a few
    dozen rows), then valid ones and alternating again: the rejection threshold's verdict
    depends on where it is checked."""
    rows: list[dict[str, Any] | str] = [
        make_row(i) if i % 2 else {"provider": "oura", "user_id": f"bad-{i}"} for i in range(10_000)
    ]
    rows += [{"provider": "oura", "user_id": f"bad-x{i}"} for i in range(20)]
    rows += [make_row(20_000 + i) for i in range(40)]
    rows += [
        make_row(30_000 + i) if i % 2 else {"provider": "oura", "user_id": f"bad-y{i}"}
        for i in range(600)
    ]
    return rows


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_given_the_rejection_threshold_then_it_is_checked_where_one_invocation_checks_it(
    fmt: str,
) -> None:
    # Given a file whose rejection ratio is over the threshold only briefly
    rows = threshold_file()
    data = body(rows) if fmt == "jsonl" else csv_body(rows, broken_every=0)
    verdicts = set()

    # When it is imported in one invocation, and split into invocations at several places
    for calls in (None, 150, 233, 400):
        s3 = RangedS3()
        s3.put(f"incoming/t.{fmt}", data)
        result, _, _ = import_all(s3, f"incoming/t.{fmt}", calls=calls)
        assert result.manifest is not None
        error = result.manifest.error
        counts = result.manifest.counts
        verdicts.add((counts.rows, counts.rejected, None if error is None else error.message))

    # Then every split reaches the verdict of the one invocation: it stops at the same row, or
    # not at all (whether a chunk cut before a stop went out depends on the posting threads, as
    # for any stop: imported and errored are not compared)
    assert len(verdicts) == 1


def test_given_invalid_utf8_in_a_csv_then_a_resumed_read_stops_at_the_same_line() -> None:
    # Given a CSV file with a byte that is not UTF-8 in a row near its middle
    rows: list[dict[str, Any] | str] = list(file_rows(2000))
    data = csv_body(rows, broken_every=0)
    at = data.index(b"provider-user-1500,")
    data = data[:at] + b"\xff" + data[at + 1 :]
    bad_line = data[:at].count(b"\n") + 1
    messages = set()

    # When it is imported in one invocation, and in many
    for calls in (None, 40):
        s3 = RangedS3()
        s3.put("incoming/u.csv", data)
        result, _, handed_on = import_all(s3, "incoming/u.csv", calls=calls)
        assert result.manifest is not None
        assert result.manifest.error is not None
        messages.add((result.manifest.counts.rows, result.manifest.error.message))
        assert calls is None or any(usable_point(s) for s in handed_on)

    # Then both stop at the same line, which the message names
    ((rows_read, message),) = messages
    assert message.startswith(f"not valid UTF-8 after line {bad_line - 1};")
    assert rows_read < bad_line
