"""The run's books: replay routing, settling, outcome writing, and the checkpoint they make."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulk_import.errors import ImportAborted
from bulk_import.ingest import Chunk, PendingRow
from bulk_import.model import (
    Checkpoint,
    ChunkRecord,
    Counts,
    Handoff,
    Outcome,
    RowOutcome,
    SourceRef,
)
from bulk_import.run.ledger import IN_DOUBT_DETAIL, Ledger, Replay
from bulk_import.storage.results import ResultWriter
from tests.fakes import FakeS3, FakeStore
from tests.helpers import user_id

SOURCE = SourceRef(bucket="bucket-a", key="incoming/oura/a.jsonl", version_id="v1")
RESULTS = "results/oura/a.jsonl/"
RETRY = "retry/oura/a.jsonl/"


def new_ledger(s3: FakeS3 | None = None, keep_bytes: int = 1 << 20) -> Ledger:
    return Ledger(ResultWriter(s3 or FakeS3(), keep_bytes))  # type: ignore[arg-type]


@pytest.fixture
def ledger() -> Iterator[Ledger]:
    books = new_ledger()
    yield books
    books.close()


def chunk(provider: str, lines: range) -> Chunk:
    rows = [
        PendingRow(n, user_id(n), json.dumps({"user_id": user_id(n), "n": n}).encode())
        for n in lines
    ]
    return Chunk(provider, rows, sum(len(r.payload) for r in rows))


def outcome_lines(books: Ledger) -> list[dict[str, str]]:
    text = b"".join(books.outcomes.blocks()).decode()
    header = "line,user_id,provider,outcome,detail\n"
    return list(csv.DictReader(io.StringIO(header + text)))


def retry_rows(books: Ledger) -> list[dict[str, object]]:
    text = b"".join(books.retries.blocks()).decode()
    return [json.loads(line) for line in text.splitlines()]


def checkpoint(**fields: object) -> Checkpoint:
    base: dict[str, object] = {
        "source": SOURCE,
        "fingerprint": "f",
        "started_at": "2026-01-01T00:00:00.000Z",
        "next_segment": 0,
    }
    return Checkpoint.model_validate({**base, **fields})


def save(books: Ledger, store: FakeStore, **fields: object) -> bool:
    args: dict[str, object] = {
        "source": SOURCE,
        "fingerprint": "f",
        "started_at": "2026-01-01T00:00:00.000Z",
        "next_segment": 0,
        "lease": 0,
        "handed": fields.get("lease", 0),
        "line": 0,
        "stop_reason": None,
        "at": "2026-01-01T00:00:05.000Z",
        **fields,
    }
    return books.save(store, **args)  # type: ignore[arg-type]


def new_store(s3: FakeS3 | None = None, run: str = "0000000a") -> FakeStore:
    return FakeStore(s3 or FakeS3(), SOURCE.bucket, RESULTS, RETRY, run)


# --- replay routing -----------------------------------------------------------------------------


def test_given_a_fresh_ledger_when_any_chunk_is_replayed_then_it_is_new(ledger: Ledger) -> None:
    assert {ledger.replay(n) for n in range(50)} == {Replay.NEW}


def test_given_a_restored_checkpoint_when_replaying_then_each_chunk_is_routed_by_it(
    ledger: Ledger,
) -> None:
    # Given chunks 0-1 settled contiguously, 3 settled past a gap, and a lease of 5
    ledger.restore(checkpoint(lease=5, settled_below=2, settled_extra=[3]))
    # Then settled ones are skipped, unsettled ones under the lease are in doubt, the rest new
    routes = [ledger.replay(n) for n in range(8)]
    assert routes == [
        Replay.SETTLED,
        Replay.SETTLED,
        Replay.IN_DOUBT,
        Replay.SETTLED,
        Replay.IN_DOUBT,
        Replay.NEW,
        Replay.NEW,
        Replay.NEW,
    ]


@pytest.mark.parametrize(
    ("handoff", "in_doubt"),
    [
        (Handoff(refines="run-a:3", below=4), [2]),  # chunks from 4 on never left
        (Handoff(refines="run-a:3", below=9), [2, 4, 5]),  # the lease bounds it still
        (Handoff(refines="run-a:2", below=4), [2, 4, 5]),  # refines an older write: ignored
        (None, [2, 4, 5]),
    ],
)
def test_given_a_handoff_record_when_restored_then_only_chunks_handed_over_are_in_doubt(
    ledger: Ledger, handoff: Handoff | None, in_doubt: list[int]
) -> None:
    # Given a checkpoint write run-a:3 with a lease of 6, chunks 0-1 and 3 settled
    cp = checkpoint(lease=6, settled_below=2, settled_extra=[3]).model_copy(
        update={"write": "run-a:3"}
    )
    # When restored with the hand-off record S3 holds
    ledger.restore(cp, handoff)
    # Then in doubt: unsettled chunks under the lease and, when the record refines this very
    # checkpoint write, under the record too; the rest is new (never handed over)
    assert [n for n in range(10) if ledger.replay(n) is Replay.IN_DOUBT] == in_doubt
    assert ledger.lease == 6  # the next checkpoint is still due at the lease


@pytest.mark.parametrize(
    ("handoff", "in_doubt"),
    [
        (None, [2]),  # chunks from 3 on had not gone to the posting threads
        (Handoff(refines="run-a:3", below=5), [2, 4]),  # handed over since the checkpoint
        (Handoff(refines="run-a:2", below=9), [2]),  # refines an older write: ignored
    ],
)
def test_given_a_checkpoint_naming_the_chunks_handed_over_then_only_those_are_in_doubt(
    ledger: Ledger, handoff: Handoff | None, in_doubt: list[int]
) -> None:
    # Given a checkpoint write run-a:3 with a lease of 6, taken when chunks 0-2 had gone to the
    # posting threads, chunks 0-1 and 3 settled
    cp = checkpoint(lease=6, handed_below=3, settled_below=2, settled_extra=[3]).model_copy(
        update={"write": "run-a:3"}
    )
    # When restored, with or without a hand-off record refining it
    ledger.restore(cp, handoff)
    # Then in doubt: the unsettled chunks handed over by then, or by the record's write
    assert [n for n in range(10) if ledger.replay(n) is Replay.IN_DOUBT] == in_doubt


def test_given_a_resumed_run_then_its_checkpoints_name_the_chunks_the_run_before_handed_over(
    ledger: Ledger,
) -> None:
    # Given a run resumed from a checkpoint whose chunks 2 to 4 were handed over, unsettled
    ledger.restore(checkpoint(lease=6, handed_below=5, settled_below=2))
    store = new_store()
    # When it saves a checkpoint before its replay reaches them, having handed none over
    save(ledger, store, lease=6, handed=0)
    # Then they stay in doubt for the next resume
    assert store.state.checkpoint is not None
    assert store.state.checkpoint.handed_below == 5
    # And a checkpoint past them names what this run handed over
    save(ledger, store, lease=9, handed=7)
    assert store.state.checkpoint.handed_below == 7


def test_given_a_settled_extra_past_the_lease_when_replayed_then_it_is_settled(
    ledger: Ledger,
) -> None:
    ledger.restore(checkpoint(lease=2, settled_below=0, settled_extra=[6]))
    assert ledger.replay(6) is Replay.SETTLED
    assert ledger.replay(5) is Replay.NEW


# --- settling ------------------------------------------------------------------------------------


def test_given_contiguous_chunks_when_settled_then_settled_below_advances(ledger: Ledger) -> None:
    for n in range(3):
        ledger.settle(n)
    assert (ledger.settled_below, ledger.settled) == (3, set())


def test_given_a_gap_when_later_chunks_settle_then_they_wait_in_settled(ledger: Ledger) -> None:
    ledger.settle(0)
    ledger.settle(2)
    ledger.settle(4)
    assert (ledger.settled_below, ledger.settled) == (1, {2, 4})
    # When the gap closes, everything contiguous after it is folded in
    ledger.settle(1)
    assert (ledger.settled_below, ledger.settled) == (3, {4})


def test_given_a_resumed_run_when_it_re_settles_replayed_chunks_then_settled_extra_stays_empty(
    ledger: Ledger,
) -> None:
    ledger.restore(checkpoint(lease=6, settled_below=5, next_segment=1))
    for n in range(5):
        assert ledger.replay(n) is Replay.SETTLED
        ledger.settle(n)
    store = new_store()
    save(ledger, store, lease=6, next_segment=1)
    assert store.state.saved[-1].settled_extra == []


def first_gap(numbers: set[int]) -> int:
    n = 0
    while n in numbers:
        n += 1
    return n


@given(st.data())
def test_any_order_of_settling_leaves_settled_below_at_the_first_gap(data: st.DataObject) -> None:
    numbers = data.draw(st.sets(st.integers(0, 40), max_size=30), label="numbers")
    order = data.draw(st.permutations(sorted(numbers)), label="order")
    books = new_ledger()
    try:
        done: set[int] = set()
        for n in order:
            books.settle(n)
            done.add(n)
            # After every step: below the first gap is folded in, the rest kept apart
            gap = first_gap(done)
            assert books.settled_below == gap
            assert books.settled == {m for m in done if m > gap}
    finally:
        books.close()


@given(
    st.sets(st.integers(0, 40), max_size=30),
    st.integers(0, 45),
)
def test_settled_chunks_and_lease_survive_a_checkpoint_and_route_the_replay(
    numbers: set[int], lease: int
) -> None:
    # Given a run that settled ``numbers`` (in any order) under ``lease`` and saved
    books, store = new_ledger(), new_store()
    for n in sorted(numbers, reverse=True):
        books.settle(n)
    save(books, store, lease=lease)
    books.close()
    # When a later run restores the checkpoint it stored
    resumed = new_ledger()
    resumed.restore(store.state.saved[-1])
    resumed.close()
    # Then every settled chunk is skipped, every other one under the lease is in doubt
    for n in range(50):
        expected = Replay.SETTLED if n in numbers else Replay.IN_DOUBT if n < lease else Replay.NEW
        assert resumed.replay(n) is expected, n


# --- writing outcomes -----------------------------------------------------------------------------


@pytest.mark.parametrize("outcome", [Outcome.IMPORTED, Outcome.ENQUEUED])
def test_given_a_chunk_that_went_well_when_written_then_no_row_goes_to_retry(
    ledger: Ledger, outcome: Outcome
) -> None:
    ledger.write_chunk(chunk("oura", range(1, 4)), outcome, "")
    assert ledger.tally[outcome] == 3
    assert ledger.tally.counts().rows == 3
    assert [r["line"] for r in outcome_lines(ledger)] == ["1", "2", "3"]
    assert {r["outcome"] for r in outcome_lines(ledger)} == {outcome.value}
    assert ledger.retries.written == 0


@pytest.mark.parametrize("outcome", [Outcome.FAILED, Outcome.ERRORED])
def test_given_a_chunk_that_failed_when_written_then_every_row_goes_to_retry_once(
    ledger: Ledger, outcome: Outcome
) -> None:
    ledger.write_chunk(chunk("fitbit", range(7, 10)), outcome, "Vital said no")
    assert ledger.tally.counts().rows == 3
    assert ledger.tally[outcome] == 3
    assert {r["detail"] for r in outcome_lines(ledger)} == {"Vital said no"}
    assert retry_rows(ledger) == [
        {"provider": "fitbit", "user_id": user_id(n), "n": n} for n in range(7, 10)
    ]
    assert ledger.in_doubt == 0


def test_given_a_chunk_in_doubt_when_written_then_it_is_errored_counted_and_sent_to_retry(
    ledger: Ledger,
) -> None:
    ledger.write_in_doubt(chunk("oura", range(1, 5)))
    ledger.write_in_doubt(chunk("oura", range(5, 7)))
    assert ledger.in_doubt == 6
    assert ledger.tally[Outcome.ERRORED] == 6
    assert ledger.tally.counts().rows == 6
    assert {r["detail"] for r in outcome_lines(ledger)} == {IN_DOUBT_DETAIL}
    assert len(retry_rows(ledger)) == 6


def test_given_mixed_answers_for_a_chunk_when_written_then_only_failed_and_errored_go_to_retry(
    ledger: Ledger,
) -> None:
    source = chunk("oura", range(1, 6))
    decided = [
        RowOutcome(1, user_id(1), "oura", Outcome.IMPORTED),
        RowOutcome(2, user_id(2), "oura", Outcome.FAILED, "unknown user"),
        RowOutcome(3, user_id(3), "oura", Outcome.ENQUEUED),
        RowOutcome(4, user_id(4), "oura", Outcome.ERRORED, "timed out"),
        RowOutcome(5, user_id(5), "oura", Outcome.IMPORTED),
    ]
    ledger.write(decided, source)
    counts = ledger.tally.counts()
    assert (counts.rows, counts.imported, counts.failed, counts.enqueued, counts.errored) == (
        5,
        2,
        1,
        1,
        1,
    )
    assert [(r["line"], r["outcome"]) for r in outcome_lines(ledger)] == [
        ("1", "imported"),
        ("2", "failed"),
        ("3", "enqueued"),
        ("4", "errored"),
        ("5", "imported"),
    ]
    assert [row["n"] for row in retry_rows(ledger)] == [2, 4]


def test_given_outcomes_without_a_chunk_when_written_then_they_are_counted_not_retried(
    ledger: Ledger,
) -> None:
    ledger.write(
        [
            RowOutcome(1, "", "", Outcome.REJECTED, "missing user_id"),
            RowOutcome(2, user_id(2), "oura", Outcome.DUPLICATE),
            RowOutcome(3, user_id(3), "oura", Outcome.FAILED, "x"),
        ]
    )
    assert ledger.tally.counts() == Counts(rows=3, rejected=1, duplicates=1, failed=1)
    assert ledger.retries.written == 0
    # Rows without a provider count in the totals only
    assert ledger.tally.providers() == {"oura": Counts(rows=2, duplicates=1, failed=1)}


def test_given_chunks_of_two_providers_when_written_then_each_provider_is_counted_apart(
    ledger: Ledger,
) -> None:
    ledger.write_chunk(chunk("oura", range(1, 3)), Outcome.IMPORTED, "")
    ledger.write_chunk(chunk("fitbit", range(3, 6)), Outcome.FAILED, "no")
    assert ledger.tally.providers() == {
        "fitbit": Counts(rows=3, failed=3),
        "oura": Counts(rows=2, imported=2),
    }


# --- save and restore ---------------------------------------------------------------------------


def test_given_written_outcomes_when_saved_then_parts_are_stored_before_the_checkpoint_names_them(
    ledger: Ledger,
) -> None:
    s3 = FakeS3()
    store = new_store(s3)
    ledger.write_chunk(chunk("oura", range(1, 3)), Outcome.IMPORTED, "")
    ledger.write_chunk(chunk("oura", range(3, 4)), Outcome.FAILED, "no")
    ledger.settle(0)
    ledger.settle(2)
    ledger.chunk_records.append(
        ChunkRecord(provider="oura", first_line=1, last_line=2, size=2, bytes=100)
    )
    created = save(
        ledger, store, lease=4, line=3, next_segment=1, stop_reason=ImportAborted("threshold")
    )
    assert created is True
    [cp] = store.state.saved
    assert cp.source == SOURCE
    assert (cp.lease, cp.settled_below, cp.settled_extra) == (4, 1, [2])
    assert (cp.lines_done, cp.next_segment, cp.in_doubt) == (3, 1, 0)
    assert cp.counts == Counts(rows=3, imported=2, failed=1)
    assert cp.providers == {"oura": Counts(rows=3, imported=2, failed=1)}
    assert cp.outcome_parts == [store.outcome_part_key(1)]
    assert cp.retry_parts == [store.retry_part_key(1)]
    assert cp.stop_reason is not None
    assert (cp.stop_reason.type, cp.stop_reason.message) == ("ImportAborted", "threshold")
    assert len(cp.chunks) == 1
    # The parts hold the lines written: three outcomes (no header), one retry row
    assert s3.objects[store.outcome_part_key(1)].decode().count("\n") == 3
    assert json.loads(s3.objects[store.retry_part_key(1)])["n"] == 3


def test_given_a_second_save_then_only_new_lines_make_a_part_and_it_is_not_the_first(
    ledger: Ledger,
) -> None:
    s3 = FakeS3()
    store = new_store(s3)
    ledger.write_chunk(chunk("oura", range(1, 3)), Outcome.IMPORTED, "")
    assert save(ledger, store) is True
    # When a save finds no new line, it stores no part
    assert save(ledger, store) is False
    assert store.state.saved[-1].outcome_parts == [store.outcome_part_key(1)]
    # When new lines follow, they go to the next part, alone
    ledger.write_chunk(chunk("oura", range(3, 4)), Outcome.IMPORTED, "")
    assert save(ledger, store) is False
    assert store.state.saved[-1].outcome_parts == [
        store.outcome_part_key(1),
        store.outcome_part_key(2),
    ]
    assert s3.objects[store.outcome_part_key(2)].decode().startswith("3,")
    assert store.state.saved[-1].retry_parts == []


def test_given_a_saved_checkpoint_when_the_books_change_then_it_keeps_what_it_named(
    ledger: Ledger,
) -> None:
    store = new_store()
    ledger.write_chunk(chunk("oura", range(1, 3)), Outcome.IMPORTED, "")
    save(ledger, store)
    ledger.write_chunk(chunk("oura", range(3, 4)), Outcome.IMPORTED, "")
    ledger.chunk_records.append(
        ChunkRecord(provider="oura", first_line=3, last_line=3, size=1, bytes=10)
    )
    save(ledger, store)
    first, second = store.state.saved
    assert (len(first.outcome_parts), len(first.chunks)) == (1, 0)
    assert (len(second.outcome_parts), len(second.chunks)) == (2, 1)


def test_given_a_checkpoint_when_restored_and_saved_again_then_it_round_trips(
    ledger: Ledger,
) -> None:
    # Given a run that stored outcomes, settled chunks with a gap, and saw rows in doubt
    store = new_store()
    ledger.write_chunk(chunk("oura", range(1, 3)), Outcome.IMPORTED, "")
    ledger.write_in_doubt(chunk("fitbit", range(3, 5)))
    ledger.write([RowOutcome(5, "", "", Outcome.REJECTED, "bad")])
    for n in (0, 1, 3):
        ledger.settle(n)
    ledger.chunk_records.append(
        ChunkRecord(provider="oura", first_line=1, last_line=2, size=2, bytes=99, http_status=200)
    )
    save(ledger, store, lease=6, line=5, stop_reason=ImportAborted("stopped"))
    stored = store.state.saved[-1]
    # When another run restores it and saves without new work, asking for a lower lease
    resumed = new_ledger()
    try:
        resumed.restore(stored)
        assert resumed.checkpoint is stored
        assert resumed.outcome_parts_to_read == 1
        assert resumed.retry_parts_to_read == 1
        other = new_store(run="0000000b")
        assert save(resumed, other, lease=0, line=0, stop_reason=ImportAborted("stopped")) is False
    finally:
        resumed.close()
    # Then it stores the same books: the lease it resumed from is never lowered
    again = other.state.saved[-1]
    assert again.model_dump(exclude={"write"}) == stored.model_dump(exclude={"write"})
    assert (stored.write, again.write) == ("0000000a:1", "0000000b:1")
    assert again.in_doubt == 2
    assert again.lines_done == 5


def test_given_a_small_keep_limit_when_saved_then_the_parts_must_be_read_back() -> None:
    store = new_store()
    books = new_ledger(keep_bytes=0)
    try:
        books.write_chunk(chunk("oura", range(1, 3)), Outcome.FAILED, "no")
        save(books, store)
        assert (books.outcome_parts_to_read, books.retry_parts_to_read) == (1, 1)
        books.write_chunk(chunk("oura", range(3, 4)), Outcome.FAILED, "no")
        save(books, store)
        assert (books.outcome_parts_to_read, books.retry_parts_to_read) == (2, 2)
    finally:
        books.close()


def test_unsaved_bytes_count_lines_since_the_last_save(ledger: Ledger) -> None:
    assert ledger.unsaved_bytes == 0
    ledger.write_chunk(chunk("oura", range(1, 3)), Outcome.FAILED, "no")
    assert ledger.unsaved_bytes > 0
    save(ledger, new_store())
    assert ledger.unsaved_bytes == 0


def test_each_raise_of_the_lease_is_marked_until_its_chunks_are_settled(ledger: Ledger) -> None:
    # A chunk in doubt was sent after the lease was raised past it: the bulk op that took it,
    # if any, started no earlier (vital.settle).
    books, store = ledger, FakeStore(FakeS3(), "bucket-a", RESULTS, RETRY, "0000000a")
    save(books, store, lease=4, at="T1")
    save(books, store, lease=4, at="T2")  # not raised: no mark
    save(books, store, lease=8, at="T3")
    assert [(m.lease, m.at) for m in books.lease_marks] == [(4, "T1"), (8, "T3")]
    assert [books.sent_after(seq) for seq in (0, 3, 4, 7, 8)] == ["T1", "T1", "T3", "T3", None]
    for seq in range(4):
        books.settle(seq)
    save(books, store, lease=8, at="T4")
    assert [(m.lease, m.at) for m in books.lease_marks] == [(8, "T3")]
    assert store.state.checkpoint is not None
    assert store.state.checkpoint.lease_marks == books.lease_marks
