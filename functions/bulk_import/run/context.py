"""What every step of one run shares: the object, the wiring, the books and the stop state."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, NamedTuple

from bulk_import.errors import Superseded
from bulk_import.model import Manifest, ObjectRef, SourceRef
from bulk_import.model.checkpoint import same_upload
from bulk_import.run import replay
from bulk_import.run.ledger import Ledger
from bulk_import.run.stop import Stop
from bulk_import.storage.keys import MANIFEST_NAME, results_prefix
from bulk_import.storage.resume_objects import ResumeObjects

if TYPE_CHECKING:
    from bulk_import.vital import CallStats
    from bulk_import.wiring import Wiring


class FileResult(NamedTuple):
    """A finished file (``manifest``), a hand-off (``continuation``) or a ``skipped`` duplicate."""

    ref: ObjectRef
    manifest_key: str
    manifest: Manifest | None = None
    call_stats: CallStats | None = None
    continuation: ObjectRef | None = None
    skipped: str | None = None


@dataclass(slots=True)
class Progress:
    """How far reading got. Rows taken from the file (blank lines are none), and whether it was
    read to its end: then every one of them must have its outcome by the end."""

    line: int = 0
    rows_read: int = 0
    read_to_end: bool = False


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def same_object(ref: ObjectRef, other: SourceRef) -> bool:
    """Same upload: by version id, else by S3's per-upload sequencer, else by ETag."""
    return same_upload(ref, other)


class RunContext:
    """One run's shared state; the steps (resume, intake, dispatch, finish) each take it."""

    def __init__(self, ref: ObjectRef, wiring: Wiring) -> None:
        settings = wiring.settings
        self.ref = ref
        self.wiring = wiring
        self.settings = settings
        self.source = SourceRef(
            bucket=ref.bucket, key=ref.key, version_id=ref.version_id, sequencer=ref.sequencer
        )
        self.prefix = results_prefix(ref.key, settings.incoming_prefix, settings.results_prefix)
        self.retry_prefix = results_prefix(ref.key, settings.incoming_prefix, settings.retry_prefix)
        run = secrets.token_hex(4)
        self.store = wiring.new_store(wiring.s3, ref.bucket, self.prefix, self.retry_prefix, run)
        self.resume_objects = ResumeObjects(
            wiring.s3, ref.bucket, self.prefix, self.retry_prefix, run
        )
        self.started_at = now()
        self.started_monotonic = wiring.clock()
        self.ledger = Ledger(wiring.writer())
        self.stop = Stop()
        self.progress = Progress()
        # Object metadata dry-run: true (read with the object): every row validated, none sent.
        self.dry_run = False

    @property
    def manifest_key(self) -> str:
        return self.prefix + MANIFEST_NAME

    def next_ref(self, segment: int) -> ObjectRef:
        return self.ref.model_copy(update={"segment": segment})

    def save_checkpoint(self, *, next_segment: int, lease: int, handed: int | None = None) -> None:
        """Store the outcomes spooled so far and the checkpoint that makes them count.

        ``handed``: no chunk from this number on goes to the posting threads before the next
        write, checkpoint or hand-off record (the lease when not given: every chunk under it may
        have been sent)."""
        created = self.ledger.save(
            self.store,
            source=self.source,
            fingerprint=replay.fingerprint(self.settings, self.wiring.tunables.resume_every_lines),
            started_at=self.started_at,
            next_segment=next_segment,
            lease=lease,
            handed=lease if handed is None else handed,
            line=self.progress.line,
            stop_reason=self.stop.reason,
            at=now(),
        )
        if created:
            self._check_not_imported_meanwhile()

    def _check_not_imported_meanwhile(self) -> None:
        """Without an idempotency table, two deliveries of one event can both find no state; if
        one finishes (and deletes its checkpoint) before the other creates one, only the
        manifest tells. Checked once this run's checkpoint exists, before it sends anything."""
        manifest = self.store.existing_manifest()
        if manifest is not None and same_object(self.ref, manifest.source):
            self.store.finish(self.ledger.all_parts())
            raise Superseded("another delivery of this event imported the object meanwhile")
