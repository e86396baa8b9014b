"""Posts one chunk and maps Vital's answer back to rows, splitting around 422 rejections.

Runs on worker threads; it only touches the chunk it was given and the thread-safe client.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from bulk_import.chunking import Chunk, RowOutcome
from bulk_import.models import ChunkRecord, Outcome
from bulk_import.redaction import redact_text
from bulk_import.vital import (
    PostResult,
    VitalAuthError,
    VitalClient,
    VitalError,
    VitalRejected,
    connection_index,
)

# Bisecting an unattributable 422 stops here (2**12 rows); deeper rows are marked errored.
MAX_SPLIT_DEPTH = 12

IMPORTED_DETAIL = ""
FAILED_DETAIL = "Vital could not import this connection; check GET /v2/user/providers/{user_id}"
ENQUEUED_DETAIL = "accepted by Vital; the import finishes in the background (see bulk_ops)"
UNREPORTED_DETAIL = "Vital's response did not mention this user"


@dataclass(slots=True)
class ChunkReport:
    """What happened to one chunk: one record per request made, one outcome per row."""

    chunk: Chunk
    records: list[ChunkRecord] = field(default_factory=list)
    outcomes: list[RowOutcome] = field(default_factory=list)
    fatal: VitalAuthError | None = None


def post_chunk(client: VitalClient, chunk: Chunk, wait_for_completion: bool) -> ChunkReport:
    poster = _Poster(client, wait_for_completion, ChunkReport(chunk))
    poster.post(chunk, depth=0, resent=False)
    return poster.report


@dataclass(slots=True)
class _Poster:
    client: VitalClient
    wait: bool
    report: ChunkReport

    def post(self, chunk: Chunk, *, depth: int, resent: bool) -> None:
        started = time.monotonic()
        try:
            result = self.client.post_bulk_import(chunk.body(self.wait))
        except VitalRejected as exc:
            self._record(chunk, started, 422, exc.attempts, "rejected by Vital")
            self._rejected(chunk, exc, depth=depth, resent=resent)
        except VitalAuthError as exc:
            self._record(chunk, started, exc.status, exc.attempts, str(exc))
            self.report.outcomes.extend(chunk.outcomes(Outcome.ERRORED, str(exc)))
            self.report.fatal = exc
        except VitalError as exc:
            self._record(chunk, started, exc.status, exc.attempts, str(exc))
            self.report.outcomes.extend(chunk.outcomes(Outcome.ERRORED, str(exc)))
        else:
            self._record(chunk, started, result.status, result.attempts, None)
            self.report.outcomes.extend(map_result(chunk, result))

    def _rejected(self, chunk: Chunk, exc: VitalRejected, *, depth: int, resent: bool) -> None:
        """Reject the rows a 422 points at and resend the rest once; else bisect to find them."""
        pointed: dict[int, str] = {}
        for issue in exc.issues:
            index = connection_index(issue)
            if index is not None and 0 <= index < len(chunk.rows):
                field_name = str(issue.loc[-1]) if issue.loc else "connection"
                reason = f"rejected by Vital: {field_name}: {issue.msg}"
                pointed.setdefault(index, redact_text(reason)[:300])
        if pointed and not resent:
            for index, reason in pointed.items():
                row = chunk.rows[index]
                self.report.outcomes.append(
                    RowOutcome(row.line, row.user_id, chunk.provider, Outcome.REJECTED, reason)
                )
            rest = chunk.subset(r for i, r in enumerate(chunk.rows) if i not in pointed)
            if rest.rows:
                self.post(rest, depth=depth, resent=True)
            return
        if len(chunk.rows) == 1:
            self.report.outcomes.extend(chunk.outcomes(Outcome.REJECTED, str(exc)))
            return
        if depth >= MAX_SPLIT_DEPTH:
            detail = f"not sent: could not isolate the rejected row ({exc})"
            self.report.outcomes.extend(chunk.outcomes(Outcome.ERRORED, detail))
            return
        middle = len(chunk.rows) // 2
        for half in (chunk.rows[:middle], chunk.rows[middle:]):
            self.post(chunk.subset(half), depth=depth + 1, resent=False)

    def _record(
        self, chunk: Chunk, started: float, status: int | None, attempts: int, note: str | None
    ) -> None:
        self.report.records.append(
            chunk.record(
                http_status=status,
                attempts=attempts,
                duration_ms=int((time.monotonic() - started) * 1000),
                note=note,
            )
        )


def map_result(chunk: Chunk, result: PostResult) -> list[RowOutcome]:
    """Rows of a 200 by Vital's imported/failed lists; every row of a 202 is enqueued."""
    if result.body is None:
        return chunk.outcomes(Outcome.ENQUEUED, ENQUEUED_DETAIL)
    imported = {u.lower() for u in result.body.user_ids_imported}
    failed = {u.lower() for u in result.body.user_ids_failed}
    outcomes = []
    for row in chunk.rows:
        if row.user_id in imported:
            outcome, detail = Outcome.IMPORTED, IMPORTED_DETAIL
        elif row.user_id in failed:
            outcome, detail = Outcome.FAILED, FAILED_DETAIL
        else:
            outcome, detail = Outcome.ERRORED, UNREPORTED_DETAIL
        outcomes.append(RowOutcome(row.line, row.user_id, chunk.provider, outcome, detail))
    return outcomes
