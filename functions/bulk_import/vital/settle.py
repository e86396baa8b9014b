"""Chunks in doubt, settled by asking Vital what it holds.

A chunk is in doubt when an interrupted invocation may have sent it without storing the answer,
or when the answer to its request was lost (``VitalAnswerLost``: a read timeout, a dropped
connection, a gateway's 502/504). Each of its users is looked up
(``GET /v2/user/providers/{user_id}``):

- the chunk's provider listed as connected: ``imported``, confirmed by the lookup;
- listed with another status: ``failed`` (the detail names the status; Vital's error text is
  not copied, as it may quote a token);
- a user Vital does not know (404): ``failed``, whether or not the chunk arrived (Vital fails
  such a user), and never a reason to send the chunk again;
- users not listed while a bulk op that may be the chunk's (its provider and size, started
  since the chunk was sent, for a crash since the lease was raised past it) is in progress:
  Vital has not said yet. The settlement waits for those ops to end (those started before it
  first listed them; polling the listing, at most ``BULK_OP_MAX_WAIT_SECONDS`` for the chunks
  of one listing together, never into the safety margin), then looks those users up again.
  Whose op it was does not matter then: the lookup tells what Vital holds;
- not listed, while others of the chunk are: the chunk reached Vital. ``failed``, unless such
  an op is still in progress after the wait: then the rows stay ``errored``, to check once it
  ends;
- no user of the chunk listed: if no bulk op of the provider and the chunk's size started
  since the chunk was sent and is in progress or failed, the chunk never reached Vital, and it
  is sent now, through the run's gate (once, for a lost answer: a second loss leaves the rows
  in doubt). If there is such an op, it may be this chunk's or another's (bulk ops carry no
  id: another file, or another chunk of this one, looks the same), so the rows stay
  ``errored`` with a reason rather than be sent twice or counted as enqueued on a guess.

When Vital cannot be asked (a rejected key, an outage past the retries), the undecided rows
stay ``errored``, saying what to check before they are uploaded again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, NamedTuple

import httpx

from bulk_import.errors import VitalAuthError, VitalError, VitalNoTime
from bulk_import.model import BulkOp, Outcome, RowOutcome
from bulk_import.observability import logger
from bulk_import.redaction import redact_text
from bulk_import.vital.bulk_ops import (
    BULK_OP_MAX_WAIT_SECONDS,
    BULK_OP_POLL_SECONDS,
    BULK_OP_SKEW,
    list_bulk_ops,
    parse_time,
)
from bulk_import.vital.lookups import CONNECTED, MISSING, connection_status, user_providers
from bulk_import.vital.posting import ChunkReport, Hold, post_chunk
from bulk_import.vital.retry import MIN_ATTEMPT_SECONDS

if TYPE_CHECKING:
    from bulk_import.ingest.chunking import Chunk, PendingRow
    from bulk_import.vital.client import VitalClient

CONFIRMED_DETAIL = "confirmed by GET /v2/user/providers after an interrupted run"
LOST_CONFIRMED_DETAIL = "confirmed by GET /v2/user/providers after Vital's answer was lost"
NOT_CONNECTED_DETAIL = (
    "not connected: the chunk reached Vital (others of it are listed) but this user is not "
    "listed for the provider"
)
UNKNOWN_USER_DETAIL = (
    "Vital does not know this user (GET /v2/user/providers answers 404): create the user, "
    "then upload the row again from retry.jsonl"
)
PENDING_DETAIL = (
    "in doubt: the chunk reached Vital and a bulk op of its provider and size is still in "
    "progress; check GET /v2/user/providers/{user_id} once it ends"
)
OP_DETAIL = (
    "in doubt: Vital has {count} bulk op(s) of this provider and size since the chunk was "
    "sent, which may be this chunk's; check GET /v2/user/providers/{{user_id}} before "
    "uploading these rows again (retry.jsonl)"
)
UNASKED_DETAIL = (
    "in doubt: the function stopped while this chunk was being sent and Vital could not be "
    "asked whether it arrived ({error}); check GET /v2/user/providers/{{user_id}} before "
    "uploading these rows again (retry.jsonl)"
)
LOST_UNASKED_DETAIL = (
    "in doubt: Vital's answer to this chunk was lost and Vital could not be asked whether it "
    "arrived ({error}); check GET /v2/user/providers/{{user_id}} before uploading these rows "
    "again (retry.jsonl)"
)
LOST_TWICE_DETAIL = (
    "in doubt: Vital's answer was lost twice, and Vital lists none of this chunk's users; "
    "check GET /v2/user/providers/{user_id} before uploading these rows again (retry.jsonl)"
)


class Cause(NamedTuple):
    """Why a chunk is in doubt, in the words its rows' details use."""

    confirmed: str
    unasked: str  # formatted with the error that kept Vital from being asked


CRASH = Cause(CONFIRMED_DETAIL, UNASKED_DETAIL)
LOST = Cause(LOST_CONFIRMED_DETAIL, LOST_UNASKED_DETAIL)
IMPORT_OP = "link_bulk_import"
UNFINISHED_OR_FAILED = frozenset({"in_progress", "failure", "aborted"})
# list_bulk_ops' bound (pages of 50): a listing this long may have left older ops out.
LISTING_LIMIT = 20 * 50


class BulkOpListing:
    """Vital's bulk ops started since the earliest send in doubt, listed once for a run's
    settlements (on whichever posting thread asks first, under a lock), and listed again while
    chunks wait for an op that may be theirs to end (``wait``)."""

    def __init__(self, since: datetime) -> None:
        self.since = since - BULK_OP_SKEW
        self._until: datetime | None = None  # when the first listing was made, plus the skew
        self._lock = threading.Lock()
        self._ops: list[BulkOp] | None = None
        self._listings = 0  # how many listings ``_ops`` comes from: one is made per wait round
        self._wait_ends: float | None = None  # when the waits end (client clock): set by the first

    def _listing(self, client: VitalClient, seen: int = 0) -> tuple[int, list[BulkOp]]:
        """The ops, listed afresh unless a listing newer than the ``seen``-th one was made
        (threads waiting together share one listing a round)."""
        with self._lock:
            if self._ops is None or self._listings <= seen:
                self._ops = list_bulk_ops(client, since=self.since)
                self._listings += 1
                self._until = self._until or datetime.now(UTC) + BULK_OP_SKEW
            return self._listings, self._ops

    def candidates(self, client: VitalClient, chunk: Chunk, sent_after: datetime) -> int:
        """Ops that could be this chunk's: of its provider and size, started after it was
        leased, in progress or failed (one that succeeded would list its users). A listing cut
        short counts as one more: an op left out of it cannot be ruled out."""
        _, ops = self._listing(client)
        found = sum(1 for op in ops if _could_be(op, chunk, sent_after - BULK_OP_SKEW))
        return found + (len(ops) >= LISTING_LIMIT)

    def in_progress(self, client: VitalClient, chunk: Chunk, sent_after: datetime) -> bool:
        _, ops = self._listing(client)
        return _any_in_progress(ops, chunk, sent_after - BULK_OP_SKEW)

    def wait(self, client: VitalClient, chunk: Chunk, sent_after: datetime) -> bool:
        """Wait for the ops in progress that may be the chunk's to end, listing them every
        ``BULK_OP_POLL_SECONDS``; False when the waits' time was already spent and nothing
        changed (the users are not worth asking about again).

        Only ops started before the first listing (and the clock skew) are waited for: those
        that start later are most likely this run's new chunks or another file's, and would
        keep the wait going. Whether an op is the chunk's is never decided here: the lookups
        that follow decide, and ``candidates`` counts every op, late ones included. The waits of
        one listing end together, ``BULK_OP_MAX_WAIT_SECONDS`` after the first began.
        ``VitalNoTime`` rather than wait into the run's safety margin: a later invocation asks
        again."""
        seen, ops = self._listing(client)
        window = (sent_after - BULK_OP_SKEW, self._until)
        waited = False
        while _any_in_progress(ops, chunk, *window):
            now = client.clock()
            with self._lock:
                if self._wait_ends is None:
                    self._wait_ends = now + BULK_OP_MAX_WAIT_SECONDS
                left = self._wait_ends - now
            if left <= 0:
                return waited
            pause = min(BULK_OP_POLL_SECONDS, left)
            margin = client.settings.safety_margin_seconds + MIN_ATTEMPT_SECONDS
            if client.retry.remaining_seconds() - pause < margin:
                raise VitalNoTime("too little Lambda time left to wait for a bulk op")
            client.sleep(pause)
            waited = True
            seen, ops = self._listing(client, seen)
        return True


def _any_in_progress(
    ops: list[BulkOp], chunk: Chunk, since: datetime, until: datetime | None = None
) -> bool:
    return any(op.status == "in_progress" and _could_be(op, chunk, since, until) for op in ops)


def _could_be(op: BulkOp, chunk: Chunk, since: datetime, until: datetime | None = None) -> bool:
    started = parse_time(op.started_at)
    size = (op.pending or 0) + (op.processed or 0)
    return (
        op.type in (IMPORT_OP, None)
        and op.status in UNFINISHED_OR_FAILED
        and op.provider == chunk.provider
        and started is not None
        and since <= started
        and (until is None or started <= until)
        and size == len(chunk.rows)
    )


def settle_chunk(
    client: VitalClient,
    chunk: Chunk,
    wait_for_completion: bool,
    *,
    sent_after: datetime,
    ops: BulkOpListing,
    post: Callable[[VitalClient, Chunk, bool], ChunkReport] = post_chunk,
    cause: Cause = CRASH,
) -> ChunkReport:
    """Every row of a chunk in doubt decided by what Vital holds, or the chunk sent (``post``)
    when Vital holds nothing of it."""
    report = ChunkReport(chunk)
    try:
        unlisted, listed = _look_up(client, report, chunk.rows, cause.confirmed)
        # An op that may be the chunk's is running: what Vital holds is known once it ends (or
        # as far as the wait got).
        running = unlisted and ops.in_progress(client, chunk, sent_after)
        if running and ops.wait(client, chunk, sent_after):
            unlisted, listed_now = _look_up(client, report, unlisted, cause.confirmed)
            listed += listed_now
        if unlisted and listed:
            # The chunk reached Vital: these it did not connect, or not yet.
            if ops.in_progress(client, chunk, sent_after):
                _in_doubt(report, unlisted, PENDING_DETAIL)
            else:
                for row in unlisted:
                    report.decided.append(
                        _outcome(chunk, row, Outcome.FAILED, NOT_CONNECTED_DETAIL)
                    )
        elif unlisted:
            count = ops.candidates(client, chunk, sent_after)
            if not count:
                return post(client, chunk, wait_for_completion)  # it never reached Vital
            _in_doubt(report, unlisted, OP_DETAIL.format(count=count))
    except VitalNoTime:
        # Too little time to ask: the chunk stays in doubt for the next invocation.
        return ChunkReport(chunk, held=Hold.DEFERRED)
    except (VitalError, httpx.HTTPError) as exc:
        if isinstance(exc, VitalAuthError):
            report.fatal = exc
        decided = {o.line for o in report.decided}
        detail = cause.unasked.format(error=redact_text(str(exc))[:200])
        _in_doubt(report, [r for r in chunk.rows if r.line not in decided], detail)
    return report


def settle_lost(
    client: VitalClient,
    report: ChunkReport,
    lost: list[tuple[Chunk, float]],
    wait_for_completion: bool,
    *,
    resend: Callable[[Chunk], ChunkReport] | None,
) -> None:
    """The parts of ``report``'s chunk whose answer was lost (each with the time it was sent),
    decided by what Vital holds and added to ``report``. What Vital holds nothing of goes to
    ``resend``; without one (a resend's answer lost too), it stays in doubt. The bulk ops are
    listed once for all the parts, from the earliest send: their waits end together."""

    def again(_: VitalClient, part: Chunk, __: bool) -> ChunkReport:
        if resend is not None:
            return resend(part)
        twice = ChunkReport(part)
        _in_doubt(twice, list(part.rows), LOST_TWICE_DETAIL)
        return twice

    # One listing for the parts: their waits for ops end together.
    listing = BulkOpListing(datetime.fromtimestamp(min(sent_at for _, sent_at in lost), UTC))
    for part, sent_at in lost:
        if report.fatal is not None:  # the key was refused meanwhile: nothing more is asked
            settled = ChunkReport(part)
            error = redact_text(str(report.fatal))[:200]
            _in_doubt(settled, list(part.rows), LOST_UNASKED_DETAIL.format(error=error))
        else:
            logger.warning(
                "Vital's answer to a chunk was lost; asking Vital what it holds",
                extra={"provider": part.provider, "rows": len(part.rows)},
            )
            sent_after = datetime.fromtimestamp(sent_at, UTC)
            settled = settle_chunk(
                client,
                part,
                wait_for_completion,
                sent_after=sent_after,
                ops=listing,
                post=again,
                cause=LOST,
            )
        if settled.held is not None:  # too little Lambda time left to ask
            settled = ChunkReport(part)
            error = "too little Lambda time left"
            _in_doubt(settled, list(part.rows), LOST_UNASKED_DETAIL.format(error=error))
        report.records.extend(settled.records)
        report.decided.extend(settled.outcomes)
        report.in_doubt += settled.in_doubt
        report.fatal = report.fatal or settled.fatal


def _look_up(
    client: VitalClient, report: ChunkReport, rows: list[PendingRow], confirmed: str
) -> tuple[list[PendingRow], int]:
    """The rows whose user Vital lists for the provider get their outcome, and so do those of
    users it does not know; the others return, with how many were listed (a sign that the
    chunk reached Vital, which an unknown user is not)."""
    chunk = report.chunk
    unlisted: list[PendingRow] = []
    listed_rows = 0
    for row in rows:
        listed = user_providers(client, row.user_id)
        if listed is None:  # whether or not the chunk arrived, Vital fails a user it lacks
            report.decided.append(_outcome(chunk, row, Outcome.FAILED, UNKNOWN_USER_DETAIL))
            continue
        status, detail = connection_status(listed, chunk.provider)
        if status == MISSING:
            unlisted.append(row)
            continue
        listed_rows += 1
        if status == CONNECTED:
            report.decided.append(_outcome(chunk, row, Outcome.IMPORTED, confirmed))
        else:
            report.decided.append(_outcome(chunk, row, Outcome.FAILED, detail))
    return unlisted, listed_rows


def _in_doubt(report: ChunkReport, rows: list[PendingRow], detail: str) -> None:
    """Rows whose fate Vital cannot tell yet: errored, in retry.jsonl, not failures."""
    for row in rows:
        report.decided.append(_outcome(report.chunk, row, Outcome.ERRORED, detail))
    report.in_doubt += len(rows)


def _outcome(chunk: Chunk, row: PendingRow, outcome: Outcome, detail: str) -> RowOutcome:
    return RowOutcome(row.line, row.user_id, chunk.provider, outcome, detail)
