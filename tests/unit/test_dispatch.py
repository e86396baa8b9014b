"""Chunks to Vital through the real run (``Run`` with ``Dispatcher`` and ``Intake``), with fakes at
the wiring seam: the lease stored before a chunk goes past it, chunks deferred for lack of time,
chunks in doubt after a crash, a refused key, and transient errors while reading."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from botocore.exceptions import ResponseStreamingError

from bulk_import.config import Settings
from bulk_import.errors import TransientError, VitalAuthError
from bulk_import.ingest import Chunk
from bulk_import.model import Checkpoint, Counts, DoneChunk, ObjectRef, Outcome, SourceRef
from bulk_import.run import replay
from bulk_import.run.context import FileResult
from bulk_import.vital import ChunkReport, Hold, post_chunk
from bulk_import.wiring import Tunables
from tests.fakes import (
    FakeBody,
    FakePost,
    FakeS3,
    FakeSecrets,
    FakeStore,
    FakeVital,
    StoreState,
    client_error,
    outcomes_by_line,
    run_offline,
)
from tests.helpers import encode_rows, make_row, user_id

BUCKET = "bucket-a"
KEY = "incoming/oura/a.jsonl"
REF = ObjectRef(bucket=BUCKET, key=KEY, sequencer="0A")
OUTCOMES = "results/oura/a.jsonl/outcomes.csv"
RETRY = "retry/oura/a.jsonl/retry.jsonl"
CHUNK = 10  # CHUNK_SIZE in every test: chunk n holds lines 10n+1 to 10n+10


def settings(**env: str) -> Settings:
    return Settings.from_env({"VITAL_API_KEY_SECRET": "vital-key", "CHUNK_SIZE": str(CHUNK), **env})


def put_rows(s3: FakeS3, count: int) -> None:
    s3.put(KEY, encode_rows([make_row(n) for n in range(count)], "jsonl"))


def run(
    s3: FakeS3,
    state: StoreState,
    config: Settings,
    ref: ObjectRef = REF,
    **overrides: Any,
) -> FileResult:
    """One invocation of the import of ``ref``, its collaborators faked at the wiring seam."""
    return run_offline(s3, state, config, ref, **overrides)


def outcomes(s3: FakeS3) -> dict[int, dict[str, str]]:
    return outcomes_by_line(s3, OUTCOMES)


def seq_of(chunk: Chunk) -> int:
    return (chunk.first_line - 1) // CHUNK


def lines(first: int, last: int) -> list[int]:
    return list(range(first, last + 1))


# --- the lease ------------------------------------------------------------------------------------


def answered_in(
    seconds: float, *, first_fails: bool = False
) -> Callable[[Chunk, bool], ChunkReport]:
    """Vital's usual answer (every row imported, or all but the chunk's first row, whose
    import failed), its request taking ``seconds``."""

    def answer(chunk: Chunk, probe: bool = False) -> ChunkReport:
        report = ChunkReport(chunk)
        if first_fails:
            report.add(chunk.subset(chunk.rows[:1]), Outcome.FAILED, "not connected")
            report.add(chunk.subset(chunk.rows[1:]), Outcome.IMPORTED, "")
        else:
            report.add(chunk, Outcome.IMPORTED, "")
        report.records.append(chunk.record(True, http_status=200, duration_ms=int(seconds * 1000)))
        return report

    return answer


@pytest.mark.parametrize(
    ("seconds_per_tick", "request_seconds", "first_fails", "room"),
    [
        (1.0, 0.01, False, 4),
        (0.0, 0.01, False, 8),
        (0.0, 1.0, False, 2),
        (0.0, 1.0, True, 2),
        (0.01, 1.0, False, 2),
        (0.1, 1.0, False, 4),
    ],
    ids=[
        "records-far-apart",
        "records-in-quick-succession",
        "slow-requests",
        "slow-requests-answered-row-by-row",
        "slow-requests-records-20-times-faster",
        "slow-requests-records-not-20-times-faster",
    ],
)
def test_given_a_lease_of_many_chunks_when_sent_then_a_handoff_record_narrows_it_first(
    seconds_per_tick: float,
    request_seconds: float,
    first_fails: bool,
    room: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given 10 chunks, two posting threads (four chunks in their hands at most while requests
    # are fast), a lease of eight chunks, a clock that moves 1 s between readings (records far
    # apart, and a record's write 1 s) or less (a record's write 10 ms or 100 ms) or not at all
    # (every record right after the one before, and its write taking no time), and requests
    # answered in 10 ms or in 1 s, every row alike or one row failed a chunk
    s3, state = FakeS3(), StoreState()
    put_rows(s3, 100)
    ticks = itertools.count()
    seen: list[tuple[int, int, int]] = []  # chunk, bound, chunks in doubt

    def before_send(chunk: Chunk) -> None:
        """What a crash as this chunk goes out would leave: the stored bound, and the chunks
        under it neither settled by the checkpoint nor listed as answered by the record."""
        seq = seq_of(chunk)
        for _ in range(100):  # what S3 holds at one moment (the reading thread may store more)
            cp, handoff = state.checkpoint, state.handoff
            if state.checkpoint is cp:
                break
        assert cp is not None, f"chunk {seq} went before any checkpoint was stored"
        bound = cp.lease if cp.handed_below is None else min(cp.lease, cp.handed_below)
        answered = set(cp.settled_extra)
        if handoff is not None and handoff.refines == cp.write:
            bound = min(cp.lease, handoff.below)
            answered |= {d.seq for d in handoff.done}
        doubt = [n for n in range(cp.settled_below, bound) if n not in answered]
        seen.append((seq, bound, len(doubt)))

    config = settings(MAX_CONCURRENCY="2", CHECKPOINT_EVERY_CHUNKS="8")

    # When the file is imported
    result = run(
        s3,
        state,
        config,
        post_chunk=FakePost(
            answered_in(request_seconds, first_fails=first_fails), before_send=before_send
        ),
        clock=lambda: next(ticks) * seconds_per_tick,
    )

    # Then each chunk went out under a stored bound that covers it, and a crash at any of those
    # moments would have left in doubt at most the posting queue's four chunks (eight when
    # records come in quick succession), or the two being sent when requests are slow, not
    # the lease's eight
    assert result.manifest is not None
    assert result.manifest.status == ("partial" if first_fails else "succeeded")
    assert sorted(seq for seq, _, _ in seen) == list(range(10))
    for seq, bound, doubt in seen:
        assert seq < bound, f"chunk {seq} went out under a bound of {bound}"
        assert doubt <= room, (seq, bound, doubt)
    # And the log says when the run leaves a record per chunk for the posting queue
    pipelined = "hand-off records: one per posting queue of chunks" in caplog.messages
    assert pipelined is (room > 2)
    assert state.handoff is None  # removed with the state when the file finished


def _stored_bound(store: FakeStore) -> int:
    """How far hand-offs may have got by what S3 holds at one moment (taken between writes)."""
    with store.writing:
        cp, handoff = store.state.checkpoint, store.state.handoff
    assert cp is not None
    bound = cp.lease if cp.handed_below is None else min(cp.lease, cp.handed_below)
    if handoff is not None and handoff.refines == cp.write:
        bound = min(cp.lease, handoff.below)
    return bound


class _RecordsWrittenAhead(FakeStore):
    """A store whose hand-off records written off the reading thread are stored only once
    ``go`` is set (waiting at most 1 s), or a checkpoint saved meanwhile."""

    def __init__(self, *args: Any, go: threading.Event, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.go = go
        self.waiting = False
        self.ahead: list[bool] = []  # each record written ahead: stored, or overtaken

    def save(self, checkpoint: Checkpoint) -> None:
        super().save(checkpoint)
        if self.waiting:
            self.go.set()

    def save_handoff(self, below: int, done: list[DoneChunk], refines: str | None = None) -> bool:
        if threading.current_thread() is threading.main_thread():
            return super().save_handoff(below, done, refines)
        self.waiting = True
        self.go.wait(1)
        self.go.clear()
        self.waiting = False
        stored = super().save_handoff(below, done, refines)
        self.ahead.append(stored)
        return stored


@pytest.mark.parametrize("checkpoint_every", [100, 3], ids=["one-lease", "lease-every-3"])
def test_given_fast_answers_then_records_are_written_ahead_while_chunks_go_out(
    checkpoint_every: int,
) -> None:
    # Given 20 chunks answered at once on two posting threads (records let a posting queue's
    # worth through), a store whose records written off the reading thread are stored once a
    # chunk went out meanwhile (one lease) or a checkpoint was saved meanwhile (a lease raised
    # every 3 chunks: checkpoints overtake records being written)
    s3, state = FakeS3(), StoreState()
    put_rows(s3, 20 * CHUNK)
    go = threading.Event()
    stores_made: list[_RecordsWrittenAhead] = []

    def new_store(*args: Any) -> FakeStore:
        stores_made.append(_RecordsWrittenAhead(*args, state=state, go=go))
        return stores_made[-1]

    def before_send(chunk: Chunk) -> None:
        bound = _stored_bound(stores_made[0])
        assert seq_of(chunk) < bound, f"chunk {seq_of(chunk)} went out under a bound of {bound}"
        if checkpoint_every == 100:
            go.set()

    # When the file is imported
    config = settings(MAX_CONCURRENCY="2", CHECKPOINT_EVERY_CHUNKS=str(checkpoint_every))
    post = FakePost(answered_in(0.0), before_send=before_send)
    result = run(s3, state, config, post_chunk=post, new_store=new_store)

    # Then records were written on a thread of their own while chunks went out, each chunk
    # under a stored bound that covers it; a record a checkpoint overtook was not stored
    [store] = stores_made
    assert store.ahead
    assert all(store.ahead) is (checkpoint_every == 100)
    assert result.manifest is not None
    assert result.manifest.counts == Counts(rows=200, imported=200)
    assert sorted(seq_of(chunk) for chunk in post.sent) == list(range(20))


def test_given_a_lease_raised_for_a_chunk_then_its_checkpoint_bounds_the_hand_off() -> None:
    # Given slow requests on one posting thread (a hand-off record before each hand-off, each
    # chunk handed once the one before is answered) and a lease of two chunks
    s3, state = FakeS3(), StoreState()
    put_rows(s3, 6 * CHUNK)
    at_send: list[tuple[int, int | None, int]] = []  # chunk, handed_below, records stored

    def before_send(chunk: Chunk) -> None:
        cp = state.checkpoint
        assert cp is not None
        at_send.append((seq_of(chunk), cp.handed_below, len(state.handoffs)))

    # When the file is imported
    config = settings(MAX_CONCURRENCY="1", CHECKPOINT_EVERY_CHUNKS="2")
    run(s3, state, config, post_chunk=FakePost(answered_in(1.0), before_send=before_send))

    # Then the chunks that raised the lease (2 and 4) went out under their checkpoint's bound
    # on hand-offs, with no record written for them; the others each had one, the run's first
    # included (its write time sets the pace)
    assert at_send == [(0, 1, 1), (1, 1, 2), (2, 3, 2), (3, 3, 3), (4, 5, 3), (5, 5, 4)]


@pytest.mark.parametrize("refused", [False, True], ids=["all-answered", "key-refused"])
def test_given_every_answer_in_then_a_record_or_a_checkpoint_stores_them(refused: bool) -> None:
    # Given four chunks on one posting thread under one checkpoint taken before the first, and
    # the API key refused at chunk 2 or not (refused: the run stops sending, and reads on)
    s3, state = FakeS3(), StoreState()
    put_rows(s3, 4 * CHUNK)
    answer = answered_in(0.0)

    def refusing(chunk: Chunk, probe: bool = False) -> ChunkReport:
        report = answer(chunk, probe)
        if refused and seq_of(chunk) == 2:
            report.fatal = VitalAuthError("Vital rejected the API key (401)", 401)
        return report

    # When the file is imported
    config = settings(MAX_CONCURRENCY="1", CHECKPOINT_EVERY_CHUNKS="100")
    run(s3, state, config, post_chunk=FakePost(refusing))

    # Then, once the last answer is in, one record holds every answer; but a run that stopped
    # stores them in a checkpoint, with its stop: a retry after its results failed to be written
    # must not send what it held back
    if refused:
        assert len(state.saved) == 2
        assert state.saved[-1].stop_reason is not None
        assert state.saved[-1].settled_below == 4
    else:
        assert len(state.saved) == 1
        assert sorted(done.seq for done in state.handoffs[-1].done) == [0, 1, 2, 3]


def test_given_an_answer_not_one_outcome_a_row_then_no_record_repeats_it() -> None:
    # Given slow requests (a hand-off record before each hand-off), and chunk 1 answered with two
    # outcomes for its first row and none for its last
    s3, state = FakeS3(), StoreState()
    put_rows(s3, 40)
    slow = answered_in(1.0, first_fails=True)

    def answer(chunk: Chunk, probe: bool = False) -> ChunkReport:
        report = slow(chunk, probe)
        if seq_of(chunk) == 1:
            report.decided[-1] = report.decided[0]
        return report

    # When the file is imported
    run(s3, state, settings(MAX_CONCURRENCY="2"), post_chunk=FakePost(answer))

    # Then the records list the other chunks as answered, never chunk 1: a resume would ask
    # Vital about it rather than write those outcomes again
    done = {d.seq for record in state.handoffs for d in record.done}
    assert 1 not in done
    assert done & {0, 2}
    # And once every answer is in, a checkpoint stores them all, chunk 1's outcomes included
    assert state.saved[-1].settled_below == 4


def test_given_chunks_past_the_lease_when_sent_then_a_lease_covering_each_is_stored_first() -> None:
    # Given 10 chunks, two posting threads, and a lease every 2 chunks
    s3, events = FakeS3(), []
    put_rows(s3, 100)
    state = StoreState()

    class Recorded(FakeStore):
        def save(self, checkpoint: Checkpoint) -> None:
            super().save(checkpoint)
            events.append(("stored", checkpoint.lease))

    def new_store(*args: Any) -> FakeStore:
        return Recorded(*args, state=state)

    def before_send(chunk: Chunk) -> None:
        durable = state.checkpoint.lease if state.checkpoint else None
        events.append(("sent", seq_of(chunk), durable))

    post = FakePost(before_send=before_send)
    config = settings(MAX_CONCURRENCY="2", CHECKPOINT_EVERY_CHUNKS="2")

    # When the file is imported
    result = run(s3, state, config, new_store=new_store, post_chunk=post)

    # Then every chunk went out once, under a lease stored before it that covers it
    assert result.manifest is not None
    assert result.manifest.status == "succeeded"
    sent = [e for e in events if e[0] == "sent"]
    assert sorted(seq for _, seq, _ in sent) == list(range(10))
    for _, seq, durable in sent:
        assert durable is not None, f"chunk {seq} went before any lease was stored"
        assert durable > seq, f"chunk {seq} went under a stored lease of {durable}"
    # One lease per two chunks, each stored before the first chunk past the one before
    stored = [e[1] for e in events if e[0] == "stored"]
    assert stored == [2, 4, 6, 8, 10]
    for seq in (0, 2, 4, 6, 8):
        lease_at = events.index(("stored", seq + 2))
        sent_at = next(i for i, e in enumerate(events) if e[:2] == ("sent", seq))
        assert lease_at < sent_at, f"chunk {seq} went before the lease {seq + 2} was stored"


# --- deferred chunks ------------------------------------------------------------------------------


def test_given_too_little_time_when_a_posting_thread_starts_a_chunk_then_it_is_deferred() -> None:
    # Given 4 chunks; the reading thread has time to hand them over, but by the time a posting
    # thread is to start one after the probe, less time is left than the margin
    s3, state = FakeS3(), StoreState()
    put_rows(s3, 40)
    post = FakePost()
    main = threading.main_thread()

    def remaining() -> float:
        return 900.0 if threading.current_thread() is main else 1.0

    config = settings(MAX_CONCURRENCY="1")

    # When the file is imported
    result = run(s3, state, config, post_chunk=post, remaining_seconds=remaining)

    # Then only the probe is sent; the others are held back, neither sent nor settled
    assert post.sent_lines == lines(1, 10)
    assert [(seq_of(c), hold) for c, hold in post.held] == [
        (1, Hold.DEFERRED),
        (2, Hold.DEFERRED),
        (3, Hold.DEFERRED),
    ]
    # And the run hands on, its lease at the first deferred chunk (not at the 4 chunks numbered)
    assert result.manifest is None
    assert result.continuation == REF.model_copy(update={"segment": 1})
    cp = state.checkpoint
    assert cp is not None
    assert (cp.next_segment, cp.lease, cp.settled_below, cp.settled_extra) == (1, 1, 1, [])
    assert cp.counts == Counts(rows=10, imported=10)  # the deferred rows have no outcome yet
    assert cp.lines_done == 40

    # When the next invocation continues with time enough
    post_next = FakePost()
    final = run(s3, state, config, ref=result.continuation, post_chunk=post_next)

    # Then it sends exactly the deferred chunks, and every row is imported once
    assert post_next.sent_lines == lines(11, 40)
    assert final.manifest is not None
    assert final.manifest.status == "succeeded"
    assert final.manifest.counts == Counts(rows=40, imported=40)


def test_given_too_little_time_from_the_start_then_the_probe_goes_and_reading_stops_after_it() -> (
    None
):
    # Given 4 chunks, and less time left than the margin all along
    s3, state = FakeS3(), StoreState()
    put_rows(s3, 40)
    post = FakePost()
    config = settings(MAX_CONCURRENCY="1")

    # When the file is imported
    result = run(s3, state, config, post_chunk=post, remaining_seconds=lambda: 1.0)

    # Then the invocation still sends its first chunk (so it moves the file on), and the next
    # chunk is not handed to a posting thread: reading stops in the block that closed it, whose
    # rows are all past the checkpoint's line (no outcome of theirs is written twice)
    assert post.sent_lines == lines(1, 10)
    assert post.held == []
    assert result.continuation == REF.model_copy(update={"segment": 1})
    cp = state.checkpoint
    assert cp is not None
    assert (cp.next_segment, cp.lease, cp.settled_below) == (1, 1, 1)
    assert cp.lines_done == 40  # the file is one block: chunks 1-3 are left to the next one

    # When the next invocation has time enough
    post_next = FakePost()
    final = run(s3, state, config, ref=result.continuation, post_chunk=post_next)

    # Then it sends the rest, once
    assert post_next.sent_lines == lines(11, 40)
    assert final.manifest is not None
    assert final.manifest.counts == Counts(rows=40, imported=40)


def test_given_a_deadline_as_a_block_closes_chunks_then_its_duplicates_get_one_outcome_each() -> (
    None
):
    # Given one block of 40 rows in which lines 25 and 35 repeat the users of lines 3 and 31,
    # and an invocation with less time left than the margin all along
    s3, state = FakeS3(), StoreState()
    rows = [make_row(n) for n in range(40)]
    rows[24], rows[34] = make_row(2), make_row(30)
    s3.put(KEY, encode_rows(rows, "jsonl"))
    config = settings(MAX_CONCURRENCY="1")

    # When it sends the first chunk and stops at the second, reported duplicates and all,
    # and the next invocation reads the block again
    first = run(s3, state, config, post_chunk=FakePost(), remaining_seconds=lambda: 1.0)
    assert first.continuation is not None
    final = run(s3, state, config, ref=first.continuation, post_chunk=FakePost())

    # Then each line has one outcome: the duplicates the first invocation's, written once
    assert final.manifest is not None
    assert final.manifest.counts == Counts(rows=40, imported=38, duplicates=2)
    by_line = outcomes(s3)  # fails on a line with two outcomes
    assert sorted(by_line) == lines(1, 40)
    assert {n for n, o in by_line.items() if o["outcome"] == "duplicate"} == {25, 35}


# --- resuming: settled and in-doubt chunks --------------------------------------------------------


def test_given_a_resume_when_a_leased_chunk_is_not_settled_then_vital_is_asked_not_sent() -> None:
    # Given a checkpoint: chunks 0 and 2 settled (their 20 rows imported), chunk 1 leased and
    # not settled (the run before may have sent it), chunks 3 and 4 never leased; and Vital
    # that does not answer its lookups
    s3 = FakeS3()
    put_rows(s3, 50)
    config = settings(MAX_CONCURRENCY="1")
    cp = Checkpoint(
        source=SourceRef(bucket=BUCKET, key=KEY, sequencer="0A"),
        fingerprint=replay.fingerprint(config),
        started_at="2026-01-01T00:00:00.000Z",
        next_segment=0,
        lease=3,
        settled_below=1,
        settled_extra=[2],
        lines_done=30,
        counts=Counts(rows=20, imported=20),
        providers={"oura": Counts(rows=20, imported=20)},
    )
    state = StoreState(checkpoint=cp)
    post = FakePost()
    vital = FakeVital(down=True)

    # When the run resumes
    result = run(s3, state, config, post_chunk=post, transport=httpx.MockTransport(vital))

    # Then only the never-leased chunks are sent; the in-doubt chunk's users were looked up
    assert post.sent_lines == lines(31, 50)
    assert vital.asked[:1] == [f"/v2/user/providers/{user_id(10)}"]
    # It is reported once, errored with what to check, and goes to retry.jsonl; the settled
    # ones get no outcome again (test_settle.py: what Vital's answers decide)
    by_line = outcomes(s3)
    assert sorted(by_line) == lines(11, 20) + lines(31, 50)
    assert {by_line[n]["outcome"] for n in lines(11, 20)} == {"errored"}
    (detail,) = {by_line[n]["detail"] for n in lines(11, 20)}
    assert detail.startswith("in doubt: ")
    assert {by_line[n]["outcome"] for n in lines(31, 50)} == {"imported"}
    retried = [json.loads(line)["user_id"] for line in s3.objects[RETRY].splitlines()]
    assert retried == [user_id(n) for n in range(10, 20)]
    assert result.manifest is not None
    assert result.manifest.counts == Counts(rows=50, imported=40, errored=10)
    assert result.manifest.status == "partial"


# --- a stopped run --------------------------------------------------------------------------------


def test_given_the_probe_is_refused_401_then_no_other_chunk_is_sent_and_each_is_reported() -> None:
    # Given a Vital that refuses the key (the real post_chunk over a mock transport)
    s3, state = FakeS3(), StoreState()
    put_rows(s3, 50)
    requests: list[httpx.Request] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(401, json={"detail": "Not authenticated"})

    config = settings(MAX_CONCURRENCY="2")

    # When the file is imported
    result = run(s3, state, config, post_chunk=post_chunk, transport=httpx.MockTransport(refuse))

    # Then the probe was the only request
    assert len(requests) == 1
    assert [c["user_id"] for c in json.loads(requests[0].content)["connections"]] == [
        user_id(n) for n in range(10)
    ]
    # Its rows are errored with the refusal; every other row is "not sent" for that reason
    by_line = outcomes(s3)
    assert sorted(by_line) == lines(1, 50)
    refusal = {by_line[n]["detail"] for n in lines(1, 10)}
    assert len(refusal) == 1
    (refused,) = refusal
    assert "401" in refused
    assert {by_line[n]["detail"] for n in lines(11, 50)} == {"not sent: " + refused}
    assert {o["outcome"] for o in by_line.values()} == {"errored"}
    manifest = result.manifest
    assert manifest is not None
    assert manifest.status == "failed"
    assert manifest.error is not None
    assert manifest.error.type == "ImportAborted"
    assert manifest.counts == Counts(rows=50, errored=50)
    assert len(s3.objects[RETRY].splitlines()) == 50


# --- transient errors while reading ---------------------------------------------------------------


def throttled() -> FakeSecrets:
    return FakeSecrets(error=client_error("ThrottlingException", "GetSecretValue"))


def test_given_a_throttled_secret_read_then_the_run_checkpoints_and_raises_for_a_retry() -> None:
    # Given two rejected rows, then a chunk's worth of valid ones
    s3, state = FakeS3(), StoreState()
    rows = [{"provider": "oura", "user_id": "not-a-uuid"}, {"provider": "oura"}]
    rows += [make_row(n) for n in range(10)]
    s3.put(KEY, encode_rows(rows, "jsonl"))
    config = settings(MAX_CONCURRENCY="1")
    post = FakePost()

    # When the API key cannot be read for a throttle
    with pytest.raises(TransientError, match="Secrets Manager did not answer"):
        run(s3, state, config, post_chunk=post, secrets=throttled)

    # Then nothing was sent, and a checkpoint with no lease keeps the rejected rows' outcomes
    assert post.sent == []
    cp = state.checkpoint
    assert cp is not None
    assert (cp.lease, cp.settled_below, cp.next_segment) == (0, 0, 0)
    assert cp.counts == Counts(rows=2, rejected=2)
    assert cp.lines_done >= 2
    assert cp.outcome_parts

    # When Lambda retries the event
    retried = run(s3, state, config, post_chunk=post)

    # Then the chunk is sent once and the rejected rows are not reported twice
    assert post.sent_lines == lines(3, 12)
    by_line = outcomes(s3)
    assert sorted(by_line) == lines(1, 12)
    assert [by_line[n]["outcome"] for n in (1, 2)] == ["rejected", "rejected"]
    assert retried.manifest is not None
    assert retried.manifest.counts == Counts(rows=12, rejected=2, imported=10)


class BrokenRead(FakeS3):
    """The object's GET breaks after ``cut`` bytes: a dropped connection mid-stream."""

    def __init__(self, cut: int) -> None:
        super().__init__()
        self.cut = cut
        self.broken = True

    def body(self, key: str, data: bytes) -> FakeBody:
        if key != KEY or not self.broken:
            return super().body(key, data)
        return BreakingBody(data[: self.cut])


class BreakingBody(FakeBody):
    def read(self, size: int | None = None) -> bytes:
        data = super().read(size)
        if not data:
            raise ResponseStreamingError(error="Connection broken: IncompleteRead")
        return data


def test_given_s3_breaks_mid_read_then_the_run_checkpoints_its_lease_so_far_and_raises() -> None:
    # Given a 100-row file whose read breaks after row 47 (the reader, in 2 KiB blocks, has taken
    # some 46 rows by then: four chunks, and part of a fifth); a lease every 3 chunks
    rows = [make_row(n) for n in range(100)]
    data = encode_rows(rows, "jsonl")
    s3 = BrokenRead(cut=len(encode_rows(rows[:47], "jsonl")))
    s3.put(KEY, data)
    state = StoreState()
    post = FakePost()
    config = settings(MAX_CONCURRENCY="1", CHECKPOINT_EVERY_CHUNKS="3")
    small_blocks = Tunables(jsonl_block_bytes=2048)

    # When the file is imported
    with pytest.raises(TransientError, match=r"S3 failed while reading \(ResponseStreamingError\)"):
        run(s3, state, config, post_chunk=post, tunables=small_blocks)

    # Then the chunks read before the break were sent and settled, and the checkpoint's lease
    # is the chunks numbered so far (lease_so_far), not the lease stored ahead of them
    assert post.sent_lines == lines(1, 40)
    cp = state.checkpoint
    assert cp is not None
    assert (cp.lease, cp.settled_below, cp.settled_extra) == (4, 4, [])
    assert max(saved.lease for saved in state.saved) == 6
    assert cp.counts == Counts(rows=40, imported=40)

    # When Lambda retries the event and S3 answers
    s3.broken = False
    post_retry = FakePost()
    retried = run(s3, state, config, post_chunk=post_retry, tunables=small_blocks)

    # Then the rest is sent, nothing twice, and no row is in doubt
    assert post_retry.sent_lines == lines(41, 100)
    assert retried.manifest is not None
    assert retried.manifest.counts == Counts(rows=100, imported=100)


def test_given_the_secret_cannot_be_read_at_all_then_the_file_fails_rather_than_retrying() -> None:
    # The contrast with a throttle: a configuration error is the file's, reported per row
    s3, state = FakeS3(), StoreState()
    put_rows(s3, 20)
    post = FakePost()

    def denied() -> FakeSecrets:
        return FakeSecrets(error=client_error("AccessDeniedException", "GetSecretValue"))

    result = run(s3, state, settings(MAX_CONCURRENCY="1"), post_chunk=post, secrets=denied)

    assert post.sent == []
    assert result.manifest is not None
    assert result.manifest.status == "failed"
    assert result.manifest.error is not None
    assert result.manifest.error.type == "ConfigurationError"
    by_line = outcomes(s3)
    assert sorted(by_line) == lines(1, 20)
    assert all(o["detail"].startswith("not sent: ") for o in by_line.values())
