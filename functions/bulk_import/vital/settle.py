"""Chunks in doubt, settled by asking Vital what it holds.

A chunk is in doubt when an interrupted invocation may have sent it without storing the answer.
Each of its users is looked up (``GET /v2/user/providers/{user_id}``):

- the chunk's provider listed as connected: ``imported``, confirmed by the lookup;
- listed with another status: ``failed``, with Vital's (redacted) error details;
- not listed: if some of the chunk's users are listed, the chunk reached Vital and Vital did
  not connect these (``failed``). If none is, Vital's bulk ops tell: one ``link_bulk_import``
  op of the provider, of the chunk's size, started after the chunk's lease was raised, still
  in progress: ``enqueued``; ended in failure: ``failed``. (One that succeeded would list the
  users: it is another chunk's.) No such op: the chunk never reached Vital, and it is sent now
  (nothing of it exists there). Two such ops (another file of the same provider and size, sent
  in the same seconds): which is this chunk's cannot be told, and the rows stay ``errored``
  with a reason.

When Vital cannot be asked (a rejected key, an outage past the retries), the undecided rows
stay ``errored``, saying what to check before they are uploaded again.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

import httpx

from bulk_import.errors import VitalAuthError, VitalError, VitalNoTime
from bulk_import.model import BulkOp, Outcome, RowOutcome, UserProvider
from bulk_import.redaction import redact_text
from bulk_import.vital.bulk_ops import BULK_OP_SKEW, list_bulk_ops, parse_time
from bulk_import.vital.lookups import user_providers
from bulk_import.vital.messages import scrub
from bulk_import.vital.posting import ChunkReport, Hold, post_chunk

if TYPE_CHECKING:
    from bulk_import.ingest.chunking import Chunk, PendingRow
    from bulk_import.vital.client import VitalClient

CONFIRMED_DETAIL = "confirmed by GET /v2/user/providers after an interrupted run"
NOT_CONNECTED_DETAIL = (
    "not connected: the chunk reached Vital (others of it are listed) but this user is not "
    "listed for the provider"
)
ENQUEUED_DETAIL = (
    "in progress at Vital (bulk op started {started}) after an interrupted run; see bulk_ops"
)
OP_FAILED_DETAIL = "Vital's bulk op for this chunk ended {status} without connecting this user"
AMBIGUOUS_DETAIL = (
    "in doubt: {count} imports of this provider and size are in progress at Vital and which is "
    "this chunk's cannot be told; check GET /v2/user/providers/{{user_id}} once they finish"
)
UNASKED_DETAIL = (
    "in doubt: the function stopped while this chunk was being sent and Vital could not be "
    "asked whether it arrived ({error}); check GET /v2/user/providers/{{user_id}} before "
    "uploading these rows again (retry.jsonl)"
)
IMPORT_OP = "link_bulk_import"
UNFINISHED_OR_FAILED = frozenset({"in_progress", "failure", "aborted"})


class BulkOpClaims:
    """Vital's bulk ops, listed once for a run's settlements, each matched to one chunk at most.

    Shared by the posting threads: the listing and the claims are under one lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ops: list[BulkOp] | None = None
        self._claimed: set[int] = set()

    def match(self, client: VitalClient, chunk: Chunk, sent_after: datetime) -> list[BulkOp]:
        """The unclaimed ops that could be this chunk's; the one claimed when it is alone."""
        since = sent_after - BULK_OP_SKEW
        with self._lock:
            if self._ops is None:
                self._ops = list_bulk_ops(client, since=since)
            candidates = [
                (index, op)
                for index, op in enumerate(self._ops)
                if index not in self._claimed and _could_be(op, chunk, since)
            ]
            if len(candidates) == 1:
                self._claimed.add(candidates[0][0])
            return [op for _, op in candidates]


def _could_be(op: BulkOp, chunk: Chunk, since: datetime) -> bool:
    started = parse_time(op.started_at)
    size = (op.pending or 0) + (op.processed or 0)
    return (
        op.type in (IMPORT_OP, None)
        # Finished with success, it would list the chunk's users: it is another chunk's.
        and op.status in UNFINISHED_OR_FAILED
        and op.provider == chunk.provider
        and started is not None
        and started >= since
        and size == len(chunk.rows)
    )


def settle_chunk(
    client: VitalClient,
    chunk: Chunk,
    wait_for_completion: bool,
    *,
    sent_after: datetime,
    claims: BulkOpClaims,
    post: Callable[[VitalClient, Chunk, bool], ChunkReport] = post_chunk,
) -> ChunkReport:
    """Every row of a chunk in doubt decided by what Vital holds, or the chunk sent (``post``)
    when Vital holds nothing of it."""
    report = ChunkReport(chunk)
    try:
        unlisted = _look_up(client, report)
        if unlisted and len(unlisted) < len(chunk.rows):
            for row in unlisted:  # the chunk reached Vital: these it did not connect
                report.decided.append(_outcome(chunk, row, Outcome.FAILED, NOT_CONNECTED_DETAIL))
        elif unlisted:
            ops = claims.match(client, chunk, sent_after)
            if not ops:
                return post(client, chunk, wait_for_completion)  # it never reached Vital
            if len(ops) > 1:
                report.add(chunk, Outcome.ERRORED, AMBIGUOUS_DETAIL.format(count=len(ops)))
                report.in_doubt = len(chunk.rows)
            elif ops[0].status == "in_progress":
                detail = ENQUEUED_DETAIL.format(started=ops[0].started_at)
                report.add(chunk, Outcome.ENQUEUED, detail)
            else:
                report.add(chunk, Outcome.FAILED, OP_FAILED_DETAIL.format(status=ops[0].status))
    except VitalNoTime:
        # Too little time to ask: the chunk stays in doubt for the next invocation.
        return ChunkReport(chunk, held=Hold.DEFERRED)
    except (VitalError, httpx.HTTPError) as exc:
        if isinstance(exc, VitalAuthError):
            report.fatal = exc
        decided = {o.line for o in report.decided}
        detail = UNASKED_DETAIL.format(error=redact_text(str(exc))[:200])
        for row in chunk.rows:
            if row.line not in decided:
                report.decided.append(_outcome(chunk, row, Outcome.ERRORED, detail))
                report.in_doubt += 1
    return report


def _look_up(client: VitalClient, report: ChunkReport) -> list[PendingRow]:
    """The rows whose user Vital lists for the provider get their outcome; the others return."""
    chunk = report.chunk
    unlisted: list[PendingRow] = []
    for row in chunk.rows:
        listed = user_providers(client, row.user_id) or []
        mine = next((p for p in listed if p.slug == chunk.provider), None)
        if mine is None:
            unlisted.append(row)
        elif mine.status in (None, "connected"):
            report.decided.append(_outcome(chunk, row, Outcome.IMPORTED, CONFIRMED_DETAIL))
        else:
            detail = f"Vital lists this connection as {mine.status}" + _details(mine, row)
            report.decided.append(_outcome(chunk, row, Outcome.FAILED, detail))
    return unlisted


def _outcome(chunk: Chunk, row: PendingRow, outcome: Outcome, detail: str) -> RowOutcome:
    return RowOutcome(row.line, row.user_id, chunk.provider, outcome, detail)


def _details(provider: UserProvider, row: PendingRow) -> str:
    """Vital's error details, any fragment of the row's own tokens masked (and token-shaped
    text), cut short."""
    details = provider.error_details
    if details in (None, "", {}, []):
        return ""
    text = details if isinstance(details, str) else json.dumps(details, default=str)
    recipe = json.loads(row.payload)
    tokens = {str(recipe.get(name) or "") for name in ("access_token", "refresh_token")}
    return ": " + scrub(text, tokens)[:300]
