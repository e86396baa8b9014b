"""Chunks in doubt after a crash, handed to a posting thread to be settled by asking Vital.

Loaded only when a resumed run meets a chunk the invocation before may have sent
(``vital/settle.py`` decides each row from what Vital holds).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from bulk_import.errors import FileError, TransientError
from bulk_import.observability import logger
from bulk_import.run.dispatch import DeadlineReached, held
from bulk_import.vital import parse_time
from bulk_import.vital.settle import BulkOpListing, settle_chunk

if TYPE_CHECKING:
    from bulk_import.ingest import Chunk
    from bulk_import.run.dispatch import Dispatcher
    from bulk_import.vital import ChunkReport, VitalClient

EPOCH = datetime.fromtimestamp(0, UTC)  # no lower bound on when a chunk in doubt was sent


def settle_in_doubt(dispatcher: Dispatcher, seq: int, chunk: Chunk) -> None:
    """Ask Vital about chunk ``seq`` on a posting thread, never as the invocation's probe (new
    chunks need not wait for its lookups); once the run has stopped, report it in doubt."""
    ctx, ledger = dispatcher.ctx, dispatcher.ctx.ledger
    logger.warning("chunk in doubt after an interrupted run", extra={"chunk": seq})
    client = None
    if not ctx.stop.stopped:
        try:
            client = dispatcher.vital()
        except FileError as exc:
            ctx.stop.stop(exc)
        except TransientError:
            dispatcher.next_seq = seq  # Lambda's retry rebuilds this chunk and settles it
            raise
    if client is None:
        ledger.write_in_doubt(chunk)
        ledger.settle(seq)
        return
    dispatcher.collect(block=False)
    while len(dispatcher.in_flight) >= dispatcher.handoffs.capacity():
        dispatcher.collect()
    if dispatcher.posted_here and not dispatcher.time_left():
        dispatcher.next_seq = seq  # still in doubt: the next invocation settles it
        raise DeadlineReached
    if dispatcher.ops is None:  # listed from the earliest lease in doubt on
        marks = ledger.lease_marks
        dispatcher.ops = BulkOpListing(_time(marks[0].at if marks else ctx.started_at))
    post_chunk = ctx.wiring.post_chunk

    def post(vital: VitalClient, rows: Chunk, wait_for_completion: bool) -> ChunkReport:
        """Sent, as Vital holds nothing of it, unless the run stopped or ran short of time
        meanwhile (the lookups and a wait for bulk ops take a while)."""
        return post_chunk(vital, rows, wait_for_completion, lambda: held(dispatcher))

    future = dispatcher.executor.submit(
        settle_chunk,
        client,
        chunk,
        ctx.settings.wait_for_completion,
        sent_after=_time(ledger.sent_after(seq) or ctx.started_at),
        ops=dispatcher.ops,
        post=post,
    )
    dispatcher.submitted = chunk
    future.add_done_callback(dispatcher.note_refusal)
    dispatcher.in_flight[future] = (seq, chunk)
    dispatcher.posted_here += 1


def _time(value: str) -> datetime:
    return parse_time(value) or EPOCH
