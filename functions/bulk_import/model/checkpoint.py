"""Work items and the state that carries an import across invocations."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from bulk_import.model.manifest import ChunkRecord, ErrorInfo, SourceRef
from bulk_import.model.outcome import Counts, Outcome


class ObjectRef(BaseModel):
    """One object version to import, and which invocation (segment) of its import this is.

    The idempotency key: a redelivered S3 event or continuation message maps to the same ref.
    """

    model_config = ConfigDict(defer_build=True, frozen=True)

    bucket: str = Field(min_length=1)
    key: str
    version_id: str | None = None
    # Without versioning, the ETag and S3's sequencer tell two uploads of one key apart.
    etag: str | None = None
    sequencer: str | None = None
    segment: int = Field(default=0, ge=0)


def same_upload(mine: ObjectRef | SourceRef, theirs: SourceRef) -> bool:
    """Same upload: by version id, else by S3's per-upload sequencer, else by ETag."""
    for a, b in (
        (mine.version_id, theirs.version_id),
        (mine.sequencer, theirs.sequencer),
        (mine.etag, theirs.etag),
    ):
        if a and b:
            return a == b
    return False


def older_than(mine: ObjectRef | SourceRef, theirs: SourceRef) -> bool:
    """Whether S3 sent this upload's event before ``theirs``'s (its sequencer is lower); False
    when either has none, as for a manual invocation."""
    a, b = mine.sequencer, theirs.sequencer
    if not a or not b:
        return False
    width = max(len(a), len(b))
    return a.upper().rjust(width, "0") < b.upper().rjust(width, "0")


class ContinuationMessage(BaseModel):
    """The SQS message that hands the rest of a file to a fresh invocation (no tokens)."""

    model_config = ConfigDict(defer_build=True, extra="forbid")

    kind: Literal["bulk-import-continuation"] = "bulk-import-continuation"
    ref: ObjectRef


class LeaseMark(BaseModel):
    """When the lease was raised to ``lease``: chunks below it and at or above the mark before
    were sent after ``at``. Bulk ops that took one of them started no earlier."""

    model_config = ConfigDict(defer_build=True)

    lease: int
    at: str


class DoneRows(BaseModel):
    """Rows of a ``DoneChunk`` that got one outcome and detail, not the chunk's usual: their lines
    (a detail is written once however many rows share it, as failed users' usually do)."""

    model_config = ConfigDict(defer_build=True)

    outcome: Outcome
    detail: str
    lines: list[int]


class DoneChunk(BaseModel):
    """A chunk answered since the checkpoint a ``Handoff`` refines: a resume writes its rows'
    outcomes again from the file, without asking Vital. Most rows share ``outcome`` (usually
    all of them); ``others`` lists the rest (failed users, rows Vital rejected). Its lines and
    size tell the chunk a resume rebuilds from the one answered."""

    model_config = ConfigDict(defer_build=True)

    seq: int
    first_line: int
    last_line: int
    size: int
    outcome: Outcome
    detail: str
    others: list[DoneRows] = Field(default_factory=list)
    in_doubt: int = 0  # of its rows, errored in doubt (the failure threshold leaves them out)
    records: list[ChunkRecord] = Field(default_factory=list)


class Handoff(BaseModel):
    """Since the checkpoint write ``refines``: how far chunks may have gone to the posting
    threads (none numbered ``below`` or more), and the chunks answered meanwhile (``done``).
    Written before chunks are handed over, a few at a time, so that a crash leaves in doubt only
    the chunks the threads had, not all of the lease. Ignored once that checkpoint is
    replaced."""

    model_config = ConfigDict(defer_build=True)

    # Which write this is, "<run>:h<n>": a run tells its own stored record from another's.
    write: str = ""
    refines: str
    below: int
    done: list[DoneChunk] = Field(default_factory=list)


class ResumePoint(BaseModel):
    """Where a later invocation may start reading instead of at the file's start (JSONL, CSV).

    Chunks never span line ``line`` (the chunker closes every chunk there), so reading from it
    cuts the chunks that follow as reading from the start would, numbered from ``seq``. Usable
    once every chunk below ``seq`` is settled and the outcomes of the lines before it are
    stored.
    """

    model_config = ConfigDict(defer_build=True)

    line: int  # the first line read after the point (the lines before it: in chunks < seq)
    start_line: int  # where reading starts (lines from here to ``line`` are passed over)
    offset: int  # decompressed bytes before ``start_line``
    seq: int  # chunks numbered before ``line``
    rows_read: int
    rejected: int
    claims: int  # (provider, user) pairs claimed before ``line``: what the parts must load
    # Dedupe parts, in order: every (provider, user) claimed before ``line``, and where.
    seen: list[str] = Field(default_factory=list)
    # gzip: the access point object to enter the stream by (under the retry prefix: it holds
    # the 32 KiB of the file before it). None: from the file's start.
    access: str | None = None
    # CSV: the header's column names (normalised), which a reader starting here does not see.
    header: list[str] | None = None


class Checkpoint(BaseModel):
    """What a later invocation needs to resume a file without re-sending any chunk.

    Chunks are numbered in the deterministic order the chunker emits them. ``lease`` is the
    number of chunks that may have been sent, ``handed_below`` the number that may go to the
    posting threads before the next write; every chunk below ``settled_below`` or in
    ``settled_extra`` has its outcomes stored in ``parts``. A chunk under both that is not
    settled is in doubt after a crash (Vital is asked about it), unless the ``Handoff`` record
    of this write says it was answered or never handed over. Rejected and duplicate rows up to
    ``lines_done`` are in the parts too.
    """

    model_config = ConfigDict(defer_build=True)

    schema_version: int = 1
    # Which write this is, "<run>:<n>" (the invocation's token, drawn by each, and its n-th
    # write): a run tells its own write from another import's when S3's answer was lost.
    write: str = ""
    source: SourceRef
    fingerprint: str
    started_at: str
    next_segment: int
    lease: int = 0
    # No chunk from here on goes to the posting threads before the next write (None: the lease
    # bounds them). Until a hand-off record refines this write, a crash leaves in doubt only the
    # chunks they may have had.
    handed_below: int | None = None
    # The raises of the lease whose chunks are not all settled yet, in order.
    lease_marks: list[LeaseMark] = Field(default_factory=list)
    settled_below: int = 0
    settled_extra: list[int] = Field(default_factory=list)
    lines_done: int = 0
    # Rows reported in doubt so far (errored, though Vital failed none of them).
    in_doubt: int = 0
    counts: Counts = Field(default_factory=Counts)
    providers: dict[str, Counts] = Field(default_factory=dict)
    chunks: list[ChunkRecord] = Field(default_factory=list)
    outcome_parts: list[str] = Field(default_factory=list)
    retry_parts: list[str] = Field(default_factory=list)
    # The first is the newest that was usable when written (those before it are dropped); a
    # resume takes the last one usable.
    resume_points: list[ResumePoint] = Field(default_factory=list)
    stop_reason: ErrorInfo | None = None

    def state_objects(self) -> list[str]:
        """Every object this checkpoint names: its parts and its resume points' objects."""
        keys = [*self.outcome_parts, *self.retry_parts]
        for point in self.resume_points:
            keys.extend(key for key in point.seen if key not in keys)
            if point.access is not None:
                keys.append(point.access)
        return keys
