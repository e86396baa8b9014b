"""The hand-off record (``_state/handoff.json``): how far chunks may have gone to the posting
threads, and which were answered, since the last checkpoint write.

A checkpoint is a large write (the outcome parts, the chunk table), made once per lease: every
``CHECKPOINT_EVERY_CHUNKS`` chunks, or about 2 s worth when chunks go out faster. It says how
far hand-offs may get before the next write; the hand-off record, a few bytes to tens of KB, is
stored before more chunks go to the posting threads. A resume asks Vital only about chunks the
threads may have had and whose answer is not stored (``Ledger.restore``).

How many that is depends on Vital's pace, measured as the run goes:

- requests of at least ``STRICT_REQUEST_SECONDS`` and ``STRICT_FACTOR`` times a record's write
  (Vital answering slowly, as a real bulk import does): no chunk waits in the posting queue, and
  a record is stored before each hand-off, so at most the chunks being sent are in doubt
  (``MAX_CONCURRENCY``). The write costs a thread under 1/``STRICT_FACTOR`` of its time;
- faster requests: a chunk waits behind each one being sent, so a thread that is answered
  starts the next request at once, and records let a queue's worth through. At most the
  posting queue (2 x ``MAX_CONCURRENCY`` chunks) is in doubt while records are
  ``HANDOFF_SECONDS`` apart or more, twice that when they come faster. The next record is
  written on a thread of its own as the chunks its predecessor lets through run out (when as
  many are left as hand-offs take the time of a write), so the reading thread rarely waits for
  S3: chunks past the stored record still wait until the new one is stored.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, NamedTuple

from bulk_import.model import DoneChunk, DoneRows, Outcome
from bulk_import.observability import logger

if TYPE_CHECKING:
    from bulk_import.model import Checkpoint
    from bulk_import.run.context import RunContext
    from bulk_import.vital import ChunkReport

# Chunks handed to the posting threads at once, per thread, while requests are fast: one being
# sent, one waiting.
QUEUED_PER_THREAD = 2
# A record stored less than this long after the one before lets a whole posting queue's worth
# of chunks through (not only its free places): fast runs write one record per queue of chunks.
HANDOFF_SECONDS = 0.1
# Requests at least this long, and this many times a record's write, get a record each.
STRICT_REQUEST_SECONDS = 0.25
STRICT_FACTOR = 20
# Weight of the newest measurement in the running averages of both.
SMOOTHING = 0.3


class _Written(NamedTuple):
    """A record written ahead, on the writer thread: what it allows, once taken in."""

    stored: bool  # False: a checkpoint replaced the write it refines first
    below: int
    refines: str
    at: float
    seconds: float


class Handoffs:
    """The hand-off records of one run: written on the reading thread, or ahead of need on a
    thread of their own (``writer``)."""

    def __init__(self, ctx: RunContext, threads: int) -> None:
        self.ctx = ctx
        self.threads = threads
        self.queue = QUEUED_PER_THREAD * threads  # chunks the threads hold while pipelined
        # Running averages: a request's time (Vital's answers), a record's write (the clock's).
        self.request_seconds: float | None = None
        self.write_seconds: float | None = None
        # A record per hand-off, none waiting (see the module's docstring); so until the first
        # answer tells Vital's pace: a few records more in a fast run, none in doubt too many.
        self.strict = True
        self.below = 0  # no chunk from here on is handed over under the stored record
        self.refines = ""  # the checkpoint write the stored record refines
        self.at = ctx.wiring.clock() - HANDOFF_SECONDS
        self.done: dict[int, DoneChunk] = {}
        # Chunks answered that no record can hold (held back, or not one outcome a row): only a
        # checkpoint stores their outcomes.
        self.unrecorded: set[int] = set()
        self.pruned_for: Checkpoint | None = None  # the checkpoint ``done`` was last pruned for
        # The next record, being written ahead on ``writer``; the time between hand-offs.
        self.ahead: Future[_Written] | None = None
        self.writer: ThreadPoolExecutor | None = None
        self.handoff_seconds: float | None = None
        self.last_handoff: float | None = None

    def capacity(self) -> int:
        """Chunks the posting threads may hold at once (being sent or waiting)."""
        return self.threads if self.strict else self.queue

    def before(self, seq: int, in_flight: int) -> None:
        """Store a record letting chunk ``seq`` through, unless the stored one does;
        ``in_flight``: the chunks the posting threads hold, answered or not."""
        store = self.ctx.store
        clock = self.ctx.wiring.clock
        now = clock()
        if self.last_handoff is not None:
            self.handoff_seconds = _average(self.handoff_seconds, now - self.last_handoff)
        self.last_handoff = now
        if self.ahead is not None and (seq >= self.below or self.refines != store.write_id):
            self.wait_ahead()
        if seq < self.below and self.refines == store.write_id:
            self._write_ahead(seq, in_flight)
            return
        now = clock()
        below = self.allowance(seq, in_flight)
        store.save_handoff(below, self._unsaved())
        self.write_seconds = _average(self.write_seconds, clock() - now)
        self.below, self.refines, self.at = below, store.write_id, now

    def wait_ahead(self) -> None:
        """Wait for the record being written ahead, if any: what it allows counts from here
        on. Raises what its write raised."""
        ahead, self.ahead = self.ahead, None
        if ahead is None:
            return
        written = ahead.result()
        if written.stored and written.refines == self.ctx.store.write_id:
            self.write_seconds = _average(self.write_seconds, written.seconds)
            self.below, self.refines, self.at = written.below, written.refines, written.at

    def close(self) -> None:
        """No record is written after the run: the one ahead, if any, is waited for (a run
        that stopped first lets nothing through under it)."""
        if self.writer is None:
            return
        self.writer.shutdown(wait=True)
        error = None if self.ahead is None else self.ahead.exception()
        if error is not None:
            logger.warning(
                "a hand-off record written ahead failed as the run stopped",
                extra={"error": type(error).__name__},
            )

    def _write_ahead(self, seq: int, in_flight: int) -> None:
        """Start the next record on the writer thread once the chunks the stored one lets
        through (from ``seq`` on) would last about as long as a write (pipelined runs only)."""
        if self.strict or self.ahead is not None or self.write_seconds is None:
            return
        interval = self.handoff_seconds or 0.0
        lead = self.queue // 2
        if interval > 0:
            lead = min(lead, 1 + int(self.write_seconds / interval))
        if self.below - seq > lead:
            return
        below = self.allowance(seq, in_flight)
        if below <= self.below:
            return
        if self.writer is None:
            self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="handoff")
        refines, done = self.ctx.store.write_id, self._unsaved()
        self.ahead = self.writer.submit(self._write, below, done, refines)

    def _write(self, below: int, done: list[DoneChunk], refines: str) -> _Written:
        clock = self.ctx.wiring.clock
        at = clock()
        stored = self.ctx.store.save_handoff(below, done, refines=refines)
        return _Written(stored, below, refines, at, clock() - at)

    def allowance(self, seq: int, in_flight: int) -> int:
        """How far hand-offs may get from chunk ``seq`` on under one write: its ``below``."""
        if self.strict:
            room = self.threads - in_flight
        elif self.ctx.wiring.clock() - self.at < HANDOFF_SECONDS:
            room = self.queue
        else:
            room = self.queue - in_flight
        return seq + max(1, room)

    def covered(self, below: int) -> None:
        """A checkpoint just stored says hand-offs may get to ``below`` (its ``handed_below``):
        it does what a record would, so none is written before those chunks. Except for the
        run's first record: its write time is half of what sets the pace (``_pace``). A record
        written ahead meanwhile refines the checkpoint before it: it is waited for, and left."""
        self.wait_ahead()
        if self.write_seconds is None:
            return
        self.below, self.refines, self.at = below, self.ctx.store.write_id, self.ctx.wiring.clock()

    def store_answers(self, handed: int) -> bool:
        """Every answer taken in since the last checkpoint, in one record, before a file's
        results are written (``handed``: no chunk from this number on went out). A retry
        after the results failed replays them instead of asking Vital about those chunks.
        False, with nothing written, when some answers fit no record: a checkpoint must."""
        self.wait_ahead()
        done = self._unsaved()
        if self.unrecorded:
            return False
        if done:  # else the checkpoint holds them all
            store = self.ctx.store
            store.save_handoff(handed, done)
            self.below, self.refines, self.at = handed, store.write_id, self.ctx.wiring.clock()
        return True

    def answered(self, seq: int, report: ChunkReport) -> None:
        """Note a chunk's requests (Vital's pace) and its rows' outcomes, for the next record."""
        self._pace(report)
        if report.held is not None:
            self.unrecorded.add(seq)
            return
        chunk = report.chunk
        others: list[DoneRows] = []
        if report.shared is not None:
            outcome, detail = report.shared
        else:
            decided = report.decided
            if sorted(o.line for o in decided) != [row.line for row in chunk.rows]:
                self.unrecorded.add(seq)  # not one outcome a row: left for the lookups
                return
            groups: dict[tuple[Outcome, str], list[int]] = {}
            for o in decided:
                groups.setdefault((o.outcome, o.detail), []).append(o.line)
            (outcome, detail), _ = max(groups.items(), key=lambda group: len(group[1]))
            others = [
                DoneRows(outcome=kind, detail=text, lines=lines)
                for (kind, text), lines in groups.items()
                if (kind, text) != (outcome, detail)
            ]
        self.done[seq] = DoneChunk(
            seq=seq,
            first_line=chunk.first_line,
            last_line=chunk.last_line,
            size=len(chunk.rows),
            outcome=outcome,
            detail=detail,
            others=others,
            in_doubt=report.in_doubt,
            records=report.records,
        )

    def _pace(self, report: ChunkReport) -> None:
        """Choose between a record per hand-off and pipelining, by the requests' pace."""
        if not report.records or self.write_seconds is None:
            return
        seconds = sum(r.duration_ms for r in report.records) / 1000 / len(report.records)
        self.request_seconds = request = _average(self.request_seconds, seconds)
        strict = request >= STRICT_REQUEST_SECONDS and request >= STRICT_FACTOR * (
            self.write_seconds
        )
        if strict != self.strict:
            self.strict = strict
            logger.info(
                "hand-off records: one per chunk, none waiting"
                if strict
                else "hand-off records: one per posting queue of chunks",
                extra={
                    "request_seconds": round(request, 3),
                    "record_seconds": round(self.write_seconds, 3),
                },
            )

    def _unsaved(self) -> list[DoneChunk]:
        """The chunks answered that the stored checkpoint does not count as settled (pruned
        once per checkpoint written)."""
        cp = self.ctx.ledger.checkpoint
        if cp is not None and cp is not self.pruned_for:
            settled = set(cp.settled_extra)
            self.done = {
                seq: done
                for seq, done in self.done.items()
                if seq >= cp.settled_below and seq not in settled
            }
            self.unrecorded = {
                seq for seq in self.unrecorded if seq >= cp.settled_below and seq not in settled
            }
            self.pruned_for = cp
        return list(self.done.values())


def _average(average: float | None, value: float) -> float:
    return value if average is None else average + SMOOTHING * (value - average)
