"""Why a file stops, decided in one place: a refused request, the failure threshold, the
rejection threshold, a file error or a bug. Once stopped, nothing more is sent; every row still
gets an outcome."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bulk_import.errors import (
    FileError,
    ImportAborted,
    InternalError,
    VitalAuthError,
    VitalClientError,
)
from bulk_import.model import Outcome
from bulk_import.observability import logger

if TYPE_CHECKING:
    from bulk_import.run.tally import Tally

# The failure threshold is judged only after this many rows came back from Vital.
THRESHOLD_WARMUP_ROWS = 100
# REJECTED_STOP_PERCENT is judged only once this many rows were read.
REJECTED_PERCENT_FROM_ROWS = 10_000
NOT_A_CONNECTION_FILE = (
    "this does not look like a connection file; see outcomes.csv for the reasons"
)


def too_many_rejected(
    rejected: int, rows: int, stop_after_rows: int, stop_percent: float
) -> ImportAborted | None:
    """Why a file stops reading because its rows are rejected, or None to read on.

    ``rejected`` of the first ``rows`` rows of the file (counted from its start on every
    invocation, a resume point carrying the counts, so a resumed one judges alike): every one
    of at least ``stop_after_rows`` (0: never), or more than ``stop_percent`` percent of them
    once ``REJECTED_PERCENT_FROM_ROWS`` were read (100: never).
    """
    if 0 < stop_after_rows <= rows == rejected:
        return ImportAborted(
            f"{rejected:,} of the first {rows:,} rows were rejected "
            f"(REJECTED_STOP_AFTER_ROWS={stop_after_rows}): {NOT_A_CONNECTION_FILE}"
        )
    if rows >= REJECTED_PERCENT_FROM_ROWS and rejected * 100 > stop_percent * rows:
        return ImportAborted(
            f"{rejected:,} of the first {rows:,} rows were rejected, more than "
            f"REJECTED_STOP_PERCENT={stop_percent:g}%: {NOT_A_CONNECTION_FILE}"
        )
    return None


class Stop:
    """The file's error (its manifest says ``failed``) and the reason sending stopped."""

    def __init__(self) -> None:
        self.error: FileError | None = None
        self.reason: FileError | None = None
        # The first refusal (401/403) a posting thread got, before the reading thread takes it
        # in: chunks that have not started yet are held back by it at once.
        self.refusal: VitalAuthError | VitalClientError | None = None

    @property
    def stopped(self) -> bool:
        return self.reason is not None

    def fail(self, error: FileError) -> None:
        """The file cannot go on: its error, and the reason nothing more is sent."""
        self.error = error
        self.reason = self.reason or error

    def stop(self, reason: FileError) -> None:
        self.reason = self.reason or reason

    def internal_error(self, message: str, exc: Exception) -> None:
        """A bug, not the file's fault: the file stops and ends failed, every row accounted for."""
        logger.exception(message, extra={"error": type(exc).__name__})
        self.error = self.error or InternalError(
            f"internal error ({type(exc).__name__}); see the function's logs"
        )
        self.reason = self.reason or self.error

    def refused(self, fatal: VitalAuthError | VitalClientError) -> None:
        """Vital refused a request in a way every chunk would be refused alike."""
        if isinstance(fatal, VitalAuthError):
            self.reason = ImportAborted(str(fatal))
        else:
            check = (
                "lower MAX_BODY_BYTES or CHUNK_SIZE"
                if fatal.status == 413
                else "check VITAL_ENVIRONMENT and VITAL_REGION (or VITAL_API_BASE_URL) and "
                "VITAL_TEAM_ID, and that Link Migration is enabled for this team"
            )
            self.reason = ImportAborted(
                f"Vital refused the first request ({fatal}), so the file stopped rather than "
                f"send every chunk to be refused alike; {check}"
            )
        logger.error("Vital refused the request; file stopped", extra={"status": fatal.status})

    def check_threshold(self, tally: Tally, in_doubt: int, threshold: float) -> None:
        """Stop once more than ``threshold`` percent of the rows Vital answered for went bad."""
        if threshold >= 100 or self.reason is not None:
            return
        # Rows in doubt after a crash are errored, but Vital failed none of them: a crash of
        # the function must not trip a threshold on Vital's answers.
        bad = tally[Outcome.FAILED] + tally[Outcome.ERRORED] - in_doubt
        posted = tally[Outcome.IMPORTED] + tally[Outcome.ENQUEUED] + bad
        if posted < THRESHOLD_WARMUP_ROWS:
            return
        if bad * 100 > threshold * posted:
            self.reason = ImportAborted(
                f"{bad} of {posted} posted rows failed or errored, more than "
                f"FAILURE_THRESHOLD_PERCENT={threshold:g}%; the import was stopped"
            )
            logger.error("failure threshold passed", extra={"bad": bad, "posted": posted})

    def not_sent(self) -> str:
        return f"not sent: {self.reason}"

    def settle_error(self) -> None:
        """Once posting is over, a stop reason is the file's error if nothing else was."""
        if self.error is None and self.reason is not None:
            self.error = self.reason
