"""What happened to a row, and the counts of every outcome."""

from enum import StrEnum
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict


class Outcome(StrEnum):
    IMPORTED = "imported"
    FAILED = "failed"
    ENQUEUED = "enqueued"
    REJECTED = "rejected"
    DUPLICATE = "duplicate"
    ERRORED = "errored"
    # A dry run's row that would be sent: validated, deduplicated, chunked, never posted.
    VALID = "valid"


class RowOutcome(NamedTuple):
    """One line of outcomes.csv. A tuple, not a model: one is made per row on the hot path."""

    line: int
    user_id: str
    provider: str
    outcome: Outcome
    detail: str = ""


class Counts(BaseModel):
    """Rows per outcome; ``rows`` is their sum."""

    model_config = ConfigDict(defer_build=True)

    rows: int = 0
    rejected: int = 0
    duplicates: int = 0
    imported: int = 0
    failed: int = 0
    enqueued: int = 0
    errored: int = 0
    valid: int = 0


# The Counts field each outcome is counted in.
COUNT_FIELD: dict[Outcome, str] = {
    Outcome.IMPORTED: "imported",
    Outcome.FAILED: "failed",
    Outcome.ENQUEUED: "enqueued",
    Outcome.REJECTED: "rejected",
    Outcome.DUPLICATE: "duplicates",
    Outcome.ERRORED: "errored",
    Outcome.VALID: "valid",
}
