"""The hand-off record (``_state/handoff.json``): how far chunks may have gone to the posting
threads, and which were answered, since the last checkpoint write.

A checkpoint is a large write (the outcome parts, the chunk table), made once per lease: every
``CHECKPOINT_EVERY_CHUNKS`` chunks, or about 2 s worth when chunks go out faster. On its own it
would leave every unsettled chunk under its lease in doubt after a crash. The hand-off record, a
few bytes to tens of KB, is stored before chunks go to the posting threads: it lets through only as
many as the posting queue has room for (a whole queue's worth when records come faster than one
per HANDOFF_SECONDS), and lists the chunks answered alike since the checkpoint. A resume then
asks Vital only about chunks the threads may have had: at most the posting queue's size
(2 x MAX_CONCURRENCY chunks) while hand-offs are HANDOFF_SECONDS apart or more, twice that in
faster runs (``Ledger.restore``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bulk_import.model import DoneChunk

if TYPE_CHECKING:
    from bulk_import.model import Checkpoint
    from bulk_import.run.context import RunContext
    from bulk_import.vital import ChunkReport

# A record stored less than this long after the one before lets a whole posting queue's worth
# of chunks through (not only its free places): fast runs write one record per queue of chunks.
HANDOFF_SECONDS = 0.1


class Handoffs:
    """The hand-off records of one run, written on the reading thread."""

    def __init__(self, ctx: RunContext, room: int) -> None:
        self.ctx = ctx
        self.room = room  # chunks the posting threads hold at most (sending or waiting)
        self.below = 0  # no chunk from here on is handed over under the stored record
        self.refines = ""  # the checkpoint write the stored record refines
        self.at = ctx.wiring.clock() - HANDOFF_SECONDS
        self.done: dict[int, DoneChunk] = {}
        self.pruned_for: Checkpoint | None = None  # the checkpoint ``done`` was last pruned for

    def before(self, seq: int, in_flight: int) -> None:
        """Store a record letting chunk ``seq`` through, unless the stored one does."""
        store = self.ctx.store
        if seq < self.below and self.refines == store.write_id:
            return
        now = self.ctx.wiring.clock()
        room = self.room if now - self.at < HANDOFF_SECONDS else self.room - in_flight
        below = seq + max(1, room)
        store.save_handoff(below, self._unsaved())
        self.below, self.refines, self.at = below, store.write_id, now

    def answered(self, seq: int, report: ChunkReport) -> None:
        """Note a chunk answered with one outcome for every row, for the next record."""
        if report.shared is None or report.in_doubt or report.held is not None:
            return
        chunk = report.chunk
        outcome, detail = report.shared
        self.done[seq] = DoneChunk(
            seq=seq,
            first_line=chunk.first_line,
            last_line=chunk.last_line,
            size=len(chunk.rows),
            outcome=outcome,
            detail=detail,
            records=report.records,
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
            self.pruned_for = cp
        return list(self.done.values())
