"""The run's books: every outcome recorded once, which chunks are settled, and the checkpoint
that makes them durable.

A checkpoint records how many chunks may have been sent (the lease) and which have their
outcomes stored (settled); the hand-off record narrows it (``run/handoff.py``). A resumed run
replays the file: a chunk it finds settled is skipped, one the hand-off record lists as answered
gets those outcomes again, one that may have been sent and is neither is in doubt (Vital is
asked, ``run/settlement.py``), and the rest is new.
"""

from __future__ import annotations

import operator
from enum import Enum
from typing import TYPE_CHECKING

from bulk_import import errors
from bulk_import.model import (
    Checkpoint,
    ChunkRecord,
    DoneChunk,
    Handoff,
    LeaseMark,
    Outcome,
    ResumePoint,
    RowOutcome,
    SourceRef,
)
from bulk_import.run.tally import Tally

if TYPE_CHECKING:
    from bulk_import.ingest import Chunk
    from bulk_import.storage.checkpoint_store import CheckpointStore
    from bulk_import.storage.results import ResultWriter

IN_DOUBT_DETAIL = (
    "in doubt: the function stopped while this chunk was being sent, so it is not sent again; "
    "check GET /v2/user/providers/{user_id} and re-upload the row from retry.jsonl if needed"
)
RETRY_OUTCOMES = frozenset({Outcome.FAILED, Outcome.ERRORED})
_OUTCOME = operator.attrgetter("outcome")


class Replay(Enum):
    """What an earlier invocation did with a chunk number."""

    SETTLED = "settled"  # its outcomes are stored: skip it
    ANSWERED = "answered"  # answered since the checkpoint: the hand-off record says how
    IN_DOUBT = "in_doubt"  # it may have been sent: ask Vital before anything else
    NEW = "new"


class Ledger:
    """Outcomes, counts, the chunk table, the lease and the settled chunks of one import."""

    def __init__(self, results: ResultWriter) -> None:
        self.tally = Tally()
        self.chunk_records: list[ChunkRecord] = []
        self.outcomes = results.outcome_spool()
        self.retries = results.retry_spool()
        self.outcome_parts: list[str] = []
        self.retry_parts: list[str] = []
        # Parts the final objects read back: earlier invocations' (a resume's), and this one's
        # once its spool has let them go (``Spool.upload``).
        self.outcome_parts_to_read = 0
        self.retry_parts_to_read = 0
        self.lease = 0
        self.lease_marks: list[LeaseMark] = []
        self.settled: set[int] = set()
        self.settled_below = 0
        self.lines_done = 0  # reject/duplicate outcomes up to here are already stored
        # Rows reported in doubt after a crash: errored, but nothing Vital said (the failure
        # threshold leaves them out).
        self.in_doubt = 0
        self.replay_settled: set[int] = set()
        self.replay_below = 0
        self.replay_lease = 0
        # Chunks below this that are not settled may have been sent: the lease resumed from,
        # or less when the hand-off record of that checkpoint write says so.
        self.replay_doubt = 0
        self.replay_answered: dict[int, DoneChunk] = {}
        self.chunks_done = 0
        self.checkpoint: Checkpoint | None = None  # the last one stored (or resumed from)
        self.resume_points: list[ResumePoint] = []
        # Where this run reads from: the newest point of the checkpoint resumed from whose
        # chunks are all settled and whose lines' outcomes are stored (None: the file's start).
        self.resume_from: ResumePoint | None = None

    def restore(self, cp: Checkpoint, handoff: Handoff | None = None) -> None:
        """Resume from ``cp``; chunks under its lease that are not settled are in doubt, or
        only those below ``handoff`` when it refines this very checkpoint write."""
        self.checkpoint = cp
        self.tally = Tally.restore(cp.counts, cp.providers)
        self.chunk_records = list(cp.chunks)
        self.outcome_parts = list(cp.outcome_parts)
        self.retry_parts = list(cp.retry_parts)
        self.outcome_parts_to_read = len(cp.outcome_parts)
        self.retry_parts_to_read = len(cp.retry_parts)
        self.lease = self.replay_lease = cp.lease
        handed = cp.lease if cp.handed_below is None else min(cp.lease, cp.handed_below)
        self.replay_doubt = handed
        if handoff is not None and cp.write and handoff.refines == cp.write:
            # Written after the checkpoint, it names the chunks handed over since as well.
            self.replay_doubt = min(cp.lease, handoff.below)
            self.replay_answered = {done.seq: done for done in handoff.done}
        self.lease_marks = list(cp.lease_marks)
        self.settled_below = self.replay_below = cp.settled_below
        self.settled = set(cp.settled_extra)
        self.replay_settled = set(cp.settled_extra)
        self.lines_done = cp.lines_done
        self.in_doubt = cp.in_doubt
        self.resume_points = list(cp.resume_points)
        usable = self._usable(cp.settled_below, cp.lines_done)
        self.resume_from = usable[-1] if usable else None

    def _usable(self, settled_below: int, lines_done: int) -> list[ResumePoint]:
        return [
            p for p in self.resume_points if p.seq <= settled_below and p.line - 1 <= lines_done
        ]

    def replay(self, seq: int) -> Replay:
        if seq < self.replay_below or seq in self.replay_settled:
            return Replay.SETTLED
        if seq in self.replay_answered:
            return Replay.ANSWERED
        return Replay.IN_DOUBT if seq < self.replay_doubt else Replay.NEW

    def write_answered(self, seq: int, chunk: Chunk) -> DoneChunk | None:
        """The outcomes the hand-off record gives chunk ``seq``, written again for the rows the
        replay rebuilt; None (and nothing written) if those are not the rows answered."""
        done = self.replay_answered.get(seq)
        if done is None or (done.first_line, done.last_line, done.size) != (
            chunk.first_line,
            chunk.last_line,
            len(chunk.rows),
        ):
            return None
        if done.others:
            others = {
                line: (rows.outcome, rows.detail) for rows in done.others for line in rows.lines
            }
            usual = (done.outcome, done.detail)
            provider = chunk.provider
            outcomes = [
                RowOutcome(row.line, row.user_id, provider, *others.get(row.line, usual))
                for row in chunk.rows
            ]
            self.write(outcomes, chunk)
        else:
            self.write_chunk(chunk, done.outcome, done.detail)
        self.in_doubt += done.in_doubt
        self.chunk_records.extend(done.records)
        self.chunks_done += 1
        return done

    def sent_after(self, seq: int) -> str | None:
        """When chunk ``seq`` was sent at the earliest: when the lease was raised past it."""
        return next((mark.at for mark in self.lease_marks if mark.lease > seq), None)

    def settle(self, seq: int) -> None:
        if seq < self.settled_below:
            return  # settled before the checkpoint this run resumed from
        self.settled.add(seq)
        while self.settled_below in self.settled:
            self.settled.discard(self.settled_below)
            self.settled_below += 1

    def write_chunk(self, chunk: Chunk, outcome: Outcome, detail: str) -> None:
        """One outcome for every row of a chunk: no tuple per row (the usual case)."""
        self.outcomes.write_same(chunk.rows, chunk.provider, outcome, detail)
        self.tally.add_same(chunk.provider, outcome, len(chunk.rows))
        if outcome in RETRY_OUTCOMES:
            for row in chunk.rows:
                self.retries.write(chunk.provider, row.payload)

    def write_in_doubt(self, chunk: Chunk) -> None:
        self.write_chunk(chunk, Outcome.ERRORED, IN_DOUBT_DETAIL)
        self.in_doubt += len(chunk.rows)

    def write(self, outcomes: list[RowOutcome], source: Chunk | None = None) -> None:
        """Record outcomes; failed and errored rows of a chunk also go to retry.jsonl."""
        self.outcomes.write(outcomes)
        self.tally.add(outcomes)
        if source is None or RETRY_OUTCOMES.isdisjoint(map(_OUTCOME, outcomes)):
            return
        retry = [o for o in outcomes if o.outcome in RETRY_OUTCOMES]
        if retry:
            payloads = {r.line: r.payload for r in source.rows}
            for outcome in retry:
                self.retries.write(outcome.provider, payloads[outcome.line])

    @property
    def unsaved_bytes(self) -> int:
        """Outcome and retry lines spooled since the last checkpoint."""
        return self.outcomes.unsaved_bytes + self.retries.unsaved_bytes

    def save(
        self,
        store: CheckpointStore,
        *,
        source: SourceRef,
        fingerprint: str,
        started_at: str,
        next_segment: int,
        lease: int,
        handed: int,
        line: int,
        stop_reason: errors.FileError | None,
        at: str,
    ) -> bool:
        """Store the spooled lines as parts, then the checkpoint that makes them count.

        ``handed``: no chunk from this number on goes to the posting threads before the next
        write.
        True when this was the run's first checkpoint.
        """
        self._store_parts(store, source.bucket)
        # Never below the lease this run resumed from: the chunks under it that the replay has
        # not reached yet may have been sent by the run before, and must stay in doubt.
        raised = max(lease, self.replay_lease)
        if raised > self.lease:
            self.lease_marks.append(LeaseMark(lease=raised, at=at))
        self.lease = raised
        # Marks of chunks all settled are of no more use (``sent_after``).
        self.lease_marks = [m for m in self.lease_marks if m.lease > self.settled_below]
        lines_done = max(line, self.lines_done)
        # Points before the newest usable one are of no more use either.
        usable = self._usable(self.settled_below, lines_done)
        if usable:
            self.resume_points = self.resume_points[self.resume_points.index(usable[-1]) :]
        checkpoint = Checkpoint(
            source=source,
            fingerprint=fingerprint,
            started_at=started_at,
            next_segment=next_segment,
            lease=self.lease,
            # Nor below the chunks the replay may not have reached, left in doubt by the run
            # before.
            handed_below=max(handed, self.replay_doubt),
            lease_marks=list(self.lease_marks),
            settled_below=self.settled_below,
            settled_extra=sorted(self.settled),
            lines_done=lines_done,
            in_doubt=self.in_doubt,
            counts=self.tally.counts(),
            providers=self.tally.providers(),
            # Copies: the checkpoint must name only the parts stored when it was written (a
            # run that loses its key deletes the parts stored since).
            chunks=list(self.chunk_records),
            outcome_parts=list(self.outcome_parts),
            retry_parts=list(self.retry_parts),
            resume_points=list(self.resume_points),
            stop_reason=errors.to_info(stop_reason),
        )
        created = self.checkpoint is None
        store.save(checkpoint)
        self.checkpoint = checkpoint
        return created

    def _store_parts(self, store: CheckpointStore, bucket: str) -> None:
        s3 = store.s3
        if self.outcomes.lines:
            key = store.outcome_part_key(len(self.outcome_parts) + 1)
            kept = self.outcomes.upload(s3, bucket, key, "text/csv")
            self.outcome_parts.append(key)
            if not kept:
                self.outcome_parts_to_read = len(self.outcome_parts)
        if self.retries.lines:
            key = store.retry_part_key(len(self.retry_parts) + 1)
            kept = self.retries.upload(s3, bucket, key, "application/x-ndjson")
            self.retry_parts.append(key)
            if not kept:
                self.retry_parts_to_read = len(self.retry_parts)

    def all_parts(self) -> list[str]:
        return self.outcome_parts + self.retry_parts

    def close(self) -> None:
        self.outcomes.close()
        self.retries.close()
