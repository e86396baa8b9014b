"""Posts one chunk and maps Vital's answer back to rows, splitting around 422 rejections.

Runs on worker threads; it only touches the chunk it was given and the thread-safe client.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from bulk_import.errors import (
    VitalAnswerLost,
    VitalAuthError,
    VitalClientError,
    VitalError,
    VitalNoTime,
    VitalRejected,
)
from bulk_import.ingest.chunking import USER_ID_OF, Chunk
from bulk_import.model import ChunkRecord, Outcome, RowOutcome
from bulk_import.redaction import redact_text
from bulk_import.vital.client import PostResult, VitalClient
from bulk_import.vital.messages import connection_index

# Requests one chunk may spend after its first one on resends and halves around 422s. Isolating
# one bad row in the largest chunk (CHUNK_SIZE 5000) takes about 2 * 13 = 26; what the budget
# cannot isolate is marked errored, so a chunk full of bad rows costs 64 requests, not 10,000.
MAX_EXTRA_REQUESTS = 64

IMPORTED_DETAIL = ""
FAILED_DETAIL = "Vital could not import this connection; check GET /v2/user/providers/{user_id}"
ENQUEUED_DETAIL = "accepted by Vital; the import finishes in the background (see bulk_ops)"
UNREPORTED_DETAIL = "Vital's response did not mention this user"


class Hold(Enum):
    """Why a chunk handed to the posting threads was not sent after all."""

    STOPPED = "stopped"  # the run stopped: a fatal answer, the failure threshold, a file error
    DEFERRED = "deferred"  # too little time left: a later invocation sends it


# Rows of a chunk whose answer was lost, that Vital turned out to hold nothing of, when the
# gate holds the resend back.
NOT_RESENT_DETAIL = {
    Hold.STOPPED: (
        "not sent: Vital's answer was lost, Vital holds nothing of this chunk, and the run "
        "stopped before it was sent again; upload these rows again (retry.jsonl)"
    ),
    Hold.DEFERRED: (
        "not sent: Vital's answer was lost, Vital holds nothing of this chunk, and too little "
        "Lambda time was left to send it again; upload these rows again (retry.jsonl)"
    ),
}
NOT_RESENT_BUDGET_DETAIL = (
    f"not sent: Vital's answer was lost, Vital holds nothing of this chunk, and the chunk had "
    f"spent its {MAX_EXTRA_REQUESTS} extra requests; upload these rows again (retry.jsonl)"
)


@dataclass(slots=True)
class ChunkReport:
    """What happened to one chunk: one record per request made, one outcome per row.

    The usual answer gives every row of the chunk one outcome (Vital imported them all, or
    enqueued them, or the request failed): that is ``shared``, with no tuple per row. Rows
    decided one by one (422s, partial answers) are in ``decided``.
    """

    chunk: Chunk
    records: list[ChunkRecord] = field(default_factory=list)
    decided: list[RowOutcome] = field(default_factory=list)
    shared: tuple[Outcome, str] | None = None
    # An answer that stops the file: 401/403, or any other 4xx to the invocation's first request.
    fatal: VitalAuthError | VitalClientError | None = None
    held: Hold | None = None  # not sent (nothing else is set then)
    # Rows left errored because whether an interrupted run sent them is unknown: Vital failed
    # none of them (the failure threshold leaves them out).
    in_doubt: int = 0

    @property
    def outcomes(self) -> list[RowOutcome]:
        """Every row's outcome, one tuple each (built on demand when shared)."""
        if self.shared is not None:
            return self.chunk.outcomes(*self.shared)
        return self.decided

    def add(self, rows: Chunk, outcome: Outcome, detail: str) -> None:
        """One outcome for every row of ``rows`` (the whole chunk, or part of it)."""
        if rows is self.chunk and self.shared is None and not self.decided:
            self.shared = (outcome, detail)
        else:
            self.decided.extend(rows.outcomes(outcome, detail))


def post_chunk(
    client: VitalClient,
    chunk: Chunk,
    wait_for_completion: bool,
    gate: Callable[[], Hold | None] | None = None,
    *,
    probe: bool = False,
) -> ChunkReport:
    """Post a chunk, unless ``gate`` (asked as the request is about to start) holds it back.

    A chunk may wait in the posting threads' queue; the run can stop, or run short of time,
    meanwhile. The ``probe`` (an invocation's first chunk) stops the file on any 4xx that is not
    about the rows (a wrong base URL, a team without Link Migration): every chunk would be
    refused alike. Later, such an answer fails its chunk only.

    A request whose answer was lost is settled by asking Vital what it holds
    (``vital/settle.py``); what Vital never received is sent once more (``_Poster.resend``).
    """
    if gate is not None and (held := gate()) is not None:
        return ChunkReport(chunk, held=held)
    poster = _Poster(client, wait_for_completion, ChunkReport(chunk), probe=probe, gate=gate)
    try:
        poster.post(chunk, resent=False)
    except VitalNoTime:
        # Between the gate and the client's own check, time ran short: nothing of the chunk
        # went out, so a later invocation sends it, as if the gate had held it back.
        return ChunkReport(chunk, held=Hold.DEFERRED)
    poster.settle_lost()
    return poster.report


@dataclass(slots=True)
class _Poster:
    client: VitalClient
    wait: bool
    report: ChunkReport
    requests: int = 0
    probe: bool = False
    gate: Callable[[], Hold | None] | None = None
    may_resend: bool = True  # False for a resend: an answer lost again is not sent a third time
    # Parts of the chunk whose answer was lost, with when each was sent: settled afterwards.
    lost: list[tuple[Chunk, float]] = field(default_factory=list)

    def settle_lost(self) -> None:
        """Parts whose answer was lost, decided by what Vital holds (into ``report``)."""
        if not self.lost:
            return
        from bulk_import.vital.settle import settle_lost  # noqa: PLC0415 - rare path (cold start)

        resend = self.resend if self.may_resend else None
        settle_lost(self.client, self.report, self.lost, self.wait, resend=resend)

    def resend(self, part: Chunk) -> ChunkReport:
        """Send again a part Vital holds nothing of: held back by the gate as a new chunk would
        be, and within this chunk's request budget (``MAX_EXTRA_REQUESTS``)."""
        report = ChunkReport(part)
        if self.gate is not None and (held := self.gate()) is not None:
            report.add(part, Outcome.ERRORED, NOT_RESENT_DETAIL[held])
            return report
        if self.requests - 1 >= MAX_EXTRA_REQUESTS:
            report.add(part, Outcome.ERRORED, NOT_RESENT_BUDGET_DETAIL)
            return report
        again = _Poster(
            self.client,
            self.wait,
            ChunkReport(part),
            requests=self.requests,
            probe=self.probe,
            may_resend=False,
        )
        again.post(part, resent=False)
        self.requests = again.requests
        self.report.fatal = self.report.fatal or again.report.fatal
        again.settle_lost()
        return again.report

    def post(self, chunk: Chunk, *, resent: bool) -> None:
        if self.report.fatal is not None:  # e.g. the key was revoked in the middle of a bisection
            self.report.add(chunk, Outcome.ERRORED, f"not sent: {self.report.fatal}")
            return
        self.requests += 1
        started = time.monotonic()
        try:
            result = self.client.post_bulk_import(chunk.body(self.wait))
        except VitalRejected as exc:
            self._record(chunk, started, 422, exc.attempts, "rejected by Vital")
            self._rejected(chunk, exc, resent=resent)
        except VitalAuthError as exc:
            self._record(chunk, started, exc.status, exc.attempts, str(exc))
            self.report.add(chunk, Outcome.ERRORED, str(exc))
            self.report.fatal = exc
        except VitalAnswerLost as exc:
            self._record(chunk, started, exc.status, exc.attempts, str(exc))
            self.lost.append((chunk, exc.sent_at))
        except VitalClientError as exc:
            self._record(chunk, started, exc.status, exc.attempts, str(exc))
            self.report.add(chunk, Outcome.ERRORED, str(exc))
            if self.probe:
                self.report.fatal = exc
        except VitalError as exc:
            if isinstance(exc, VitalNoTime) and self.requests == 1:
                raise  # the chunk's first request: nothing of it went out (``post_chunk``)
            self._record(chunk, started, exc.status, exc.attempts, str(exc))
            self.report.add(chunk, Outcome.ERRORED, str(exc))
        else:
            self._record(chunk, started, result.status, result.attempts, None)
            self._answered(chunk, result)

    def _answered(self, chunk: Chunk, result: PostResult) -> None:
        """Rows by Vital's imported/failed lists; a row in neither is enqueued after a 202 (all
        of them when it has no lists) and errored after a 200 (Vital did not say)."""
        if result.body is None:
            self.report.add(chunk, Outcome.ENQUEUED, ENQUEUED_DETAIL)
            return
        body = result.body
        imported = set(body.user_ids_imported)
        if not body.user_ids_failed and imported.issuperset(map(USER_ID_OF, chunk.rows)):
            self.report.add(chunk, Outcome.IMPORTED, IMPORTED_DETAIL)  # the usual answer
            return
        # Row ids are lower case (validated); Vital's may not be.
        imported = set(map(str.lower, imported))
        failed = set(map(str.lower, body.user_ids_failed))
        for row in chunk.rows:
            if row.user_id in imported:
                outcome, detail = Outcome.IMPORTED, IMPORTED_DETAIL
            elif row.user_id in failed:
                outcome, detail = Outcome.FAILED, FAILED_DETAIL
            elif result.status == 202:
                outcome, detail = Outcome.ENQUEUED, ENQUEUED_DETAIL
            else:
                outcome, detail = Outcome.ERRORED, UNREPORTED_DETAIL
            self.report.decided.append(
                RowOutcome(row.line, row.user_id, chunk.provider, outcome, detail)
            )

    def _rejected(self, chunk: Chunk, exc: VitalRejected, *, resent: bool) -> None:
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
                self.report.decided.append(
                    RowOutcome(row.line, row.user_id, chunk.provider, Outcome.REJECTED, reason)
                )
            rest = chunk.subset(r for i, r in enumerate(chunk.rows) if i not in pointed)
            if rest.rows:
                self._post_more(rest, exc, resent=True)
            return
        whole = _whole_body_issue(exc)
        if len(chunk.rows) == 1 or whole is not None:
            # One row left, or Vital objects to something every row shares (e.g. the provider).
            self.report.add(chunk, Outcome.REJECTED, whole or str(exc))
            return
        middle = len(chunk.rows) // 2
        for half in (chunk.rows[:middle], chunk.rows[middle:]):
            self._post_more(chunk.subset(half), exc, resent=False)

    def _post_more(self, chunk: Chunk, exc: VitalRejected, *, resent: bool) -> None:
        """Another request for part of a rejected chunk, if the chunk's budget allows one."""
        if self.requests - 1 >= MAX_EXTRA_REQUESTS:
            detail = (
                f"not sent: could not isolate the rows Vital rejected within "
                f"{MAX_EXTRA_REQUESTS} extra requests ({exc})"
            )
            self.report.add(chunk, Outcome.ERRORED, redact_text(detail))
            return
        self.post(chunk, resent=resent)

    def _record(
        self, chunk: Chunk, started: float, status: int | None, attempts: int, note: str | None
    ) -> None:
        self.report.records.append(
            chunk.record(
                self.wait,
                http_status=status,
                attempts=attempts,
                duration_ms=int((time.monotonic() - started) * 1000),
                note=note,
            )
        )


def _whole_body_issue(exc: VitalRejected) -> str | None:
    """A 422 issue about what every row of the request shares, if any.

    ``["body", "provider"]`` or ``["query", "team_id"]`` apply to all rows alike: bisecting
    would only repeat them. ``["body"]`` alone or ``["body", "connections"]`` say nothing about
    which rows, so those are bisected.
    """
    for issue in exc.issues:
        loc = issue.loc
        if not loc or (loc[0] == "body" and (len(loc) == 1 or loc[1] == "connections")):
            continue
        where = ".".join(map(str, loc[1:] if loc[0] == "body" else loc))
        return redact_text(f"rejected by Vital: {where}: {issue.msg}")[:300]
    return None
