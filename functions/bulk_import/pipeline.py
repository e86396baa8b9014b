"""One file, start to finish: read → validate → dedupe → chunk → post → outcomes → manifest.

Reading, validation and outcome writing happen on the calling thread; only the POSTs run on
worker threads, at most ``MAX_CONCURRENCY`` at a time. A full pool blocks reading (back-pressure),
so memory stays bounded by the chunks in flight, whatever the file's size.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import httpx

from bulk_import import formats, sources
from bulk_import.chunking import Chunk, Chunker, PendingRow, RowOutcome, serialise
from bulk_import.config import Settings
from bulk_import.errors import FileError, ImportAborted, InternalError
from bulk_import.models import (
    BulkOp,
    ChunkRecord,
    ConnectionRow,
    Counts,
    ErrorInfo,
    FileStatus,
    Manifest,
    Outcome,
    SourceRef,
)
from bulk_import.observability import logger
from bulk_import.posting import ChunkReport, post_chunk
from bulk_import.redaction import redact_text
from bulk_import.results import (
    MANIFEST_NAME,
    OUTCOMES_NAME,
    OutcomeWriter,
    results_prefix,
    write_manifest,
)
from bulk_import.validation import display_provider, display_user_id, validate_row
from bulk_import.vital import CallStats, VitalClient, VitalError

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

PROGRESS_EVERY_SECONDS = 15.0
# The failure threshold is judged only after this many rows came back from Vital.
THRESHOLD_WARMUP_ROWS = 100
BULK_OP_POLL_SECONDS = 2.0
BULK_OP_MAX_WAIT_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Dependencies:
    """The edges the pipeline talks through; tests pass real clients bound to the local stack."""

    s3: S3Client
    api_key: Callable[[], str]
    remaining_seconds: Callable[[], float]
    transport: httpx.BaseTransport | None = None


@dataclass(frozen=True, slots=True)
class FileResult:
    manifest: Manifest
    manifest_key: str
    call_stats: CallStats | None


def import_object(
    bucket: str, key: str, version_id: str | None, settings: Settings, deps: Dependencies
) -> FileResult:
    return _Run(bucket, key, version_id, settings, deps).execute()


class _Run:
    def __init__(
        self,
        bucket: str,
        key: str,
        version_id: str | None,
        settings: Settings,
        deps: Dependencies,
    ) -> None:
        self.settings = settings
        self.deps = deps
        self.source = SourceRef(bucket=bucket, key=key, version_id=version_id)
        self.prefix = results_prefix(key, settings.incoming_prefix, settings.results_prefix)
        self.started_at = _now()
        self.started_monotonic = time.monotonic()
        self.counts = Counts()
        self.providers: dict[str, Counts] = {}
        self.chunk_records: list[ChunkRecord] = []
        self.seen: dict[tuple[str, str], int] = {}
        self.error: FileError | None = None
        self.stop_reason: FileError | None = None
        self.client: VitalClient | None = None
        self.executor: ThreadPoolExecutor | None = None
        self.in_flight: set[Future[ChunkReport]] = set()
        self.chunker = Chunker(settings.chunk_size, settings.max_body_bytes)
        self.writer = OutcomeWriter()
        self.last_progress = time.monotonic()
        self.chunks_done = 0
        self.probed = False

    # --- main flow ----------------------------------------------------------------------------

    def execute(self) -> FileResult:
        with self.writer:
            try:
                self._read_and_post()
            except FileError as exc:
                self.error = exc
            except Exception as exc:  # noqa: BLE001 - a bug must not send the file into retries
                logger.exception(
                    "unexpected error while importing", extra={"error": type(exc).__name__}
                )
                self.error = InternalError(
                    f"internal error ({type(exc).__name__}); see the function's logs"
                )
            finally:
                self._finish_posting()
            bulk_ops = self._reconcile_bulk_ops()
            manifest = self._manifest(bulk_ops)
            self.writer.upload(self.deps.s3, self.source.bucket, manifest.outcomes_key)
        manifest_key = self.prefix + MANIFEST_NAME
        write_manifest(self.deps.s3, self.source.bucket, manifest_key, manifest)
        stats = self.client.stats if self.client else None
        return FileResult(manifest, manifest_key, stats)

    def _read_and_post(self) -> None:
        fmt, compression = formats.detect(self.source.key)
        described = sources.describe(
            self.deps.s3, self.source.bucket, self.source.key, self.source.version_id
        )
        self.source = described.ref
        default_provider = sources.provider_from_key(
            self.source.key, self.settings.incoming_prefix
        ) or described.metadata.get("provider")
        logger.info(
            "reading file",
            extra={"format": fmt.value, "compression": compression.value, "size": self.source.size},
        )
        stream = sources.open_stream(
            self.deps.s3, described, compression, self.settings.max_decompressed_bytes
        )
        with stream:
            for record in formats.read_records(stream, fmt, self.settings.max_row_bytes):
                self._take(record, default_provider)
                if time.monotonic() - self.last_progress > PROGRESS_EVERY_SECONDS:
                    self._log_progress()

    def _take(self, record: formats.Record, default_provider: str | None) -> None:
        if record.data is None:
            self._reject(record.line, None, default_provider, record.error or "unreadable row")
            return
        row = validate_row(record.data, default_provider)
        if isinstance(row, str):
            self._reject(record.line, record.data, default_provider, row)
            return
        self._accept(record.line, row)

    def _reject(
        self, line: int, data: dict[str, object] | None, default: str | None, reason: str
    ) -> None:
        self._write(
            [
                RowOutcome(
                    line,
                    display_user_id(data),
                    display_provider(data, default),
                    Outcome.REJECTED,
                    redact_text(reason),
                )
            ]
        )

    def _accept(self, line: int, row: ConnectionRow) -> None:
        identity = (row.provider, row.user_id)
        first = self.seen.get(identity)
        if first is not None:
            self._write(
                [
                    RowOutcome(
                        line,
                        row.user_id,
                        row.provider,
                        Outcome.DUPLICATE,
                        f"duplicate of line {first} (same provider and user_id); not sent",
                    )
                ]
            )
            return
        self.seen[identity] = line
        payload = serialise(row)
        if not self.chunker.fits_alone(row.provider, payload):
            self._write(
                [
                    RowOutcome(
                        line,
                        row.user_id,
                        row.provider,
                        Outcome.REJECTED,
                        "row is larger than one request may be "
                        f"(MAX_BODY_BYTES={self.settings.max_body_bytes})",
                    )
                ]
            )
            return
        for chunk in self.chunker.add(row.provider, PendingRow(line, row.user_id, payload)):
            self._submit(chunk)

    # --- posting ------------------------------------------------------------------------------

    def _submit(self, chunk: Chunk) -> None:
        if self.stop_reason is not None:
            self._write(chunk.outcomes(Outcome.ERRORED, f"not sent: {self.stop_reason}"))
            return
        try:
            client = self._client()
        except FileError as exc:
            self.stop_reason = exc
            self._write(chunk.outcomes(Outcome.ERRORED, f"not sent: {exc}"))
            return
        # The first chunk goes alone: a rejected key or disabled Link Migration then costs one
        # request, not MAX_CONCURRENCY of them.
        while len(self.in_flight) >= (self.settings.max_concurrency if self.probed else 1):
            self._collect(block=True)
            if self.stop_reason is not None:
                self._write(chunk.outcomes(Outcome.ERRORED, f"not sent: {self.stop_reason}"))
                return
        assert self.executor is not None  # noqa: S101 - created with the client
        self.in_flight.add(
            self.executor.submit(post_chunk, client, chunk, self.settings.wait_for_completion)
        )

    def _client(self) -> VitalClient:
        if self.client is None:
            self.client = VitalClient(
                self.settings,
                self.deps.api_key(),
                self.deps.remaining_seconds,
                self.deps.transport,
            )
            self.executor = ThreadPoolExecutor(
                max_workers=self.settings.max_concurrency, thread_name_prefix="vital-post"
            )
        return self.client

    def _collect(self, *, block: bool) -> None:
        if not self.in_flight:
            return
        done, self.in_flight = wait(
            self.in_flight, timeout=None if block else 0, return_when=FIRST_COMPLETED
        )
        for future in done:
            self._absorb(future.result())

    def _absorb(self, report: ChunkReport) -> None:
        self.chunk_records.extend(report.records)
        self._write(report.outcomes)
        self.chunks_done += 1
        self.probed = self.probed or report.fatal is None
        if report.fatal is not None and self.stop_reason is None:
            self.stop_reason = ImportAborted(str(report.fatal))
            logger.error(
                "Vital refused the credentials; stopping the file",
                extra={"status": report.fatal.status},
            )
        self._check_threshold()

    def _check_threshold(self) -> None:
        threshold = self.settings.failure_threshold_percent
        if threshold >= 100 or self.stop_reason is not None:
            return
        posted = (
            self.counts.imported + self.counts.failed + self.counts.enqueued + self.counts.errored
        )
        if posted < THRESHOLD_WARMUP_ROWS:
            return
        bad = self.counts.failed + self.counts.errored
        if bad * 100 > threshold * posted:
            self.stop_reason = ImportAborted(
                f"{bad} of {posted} posted rows failed or errored, more than "
                f"FAILURE_THRESHOLD_PERCENT={threshold:g}%; the import was stopped"
            )
            logger.error(
                "failure threshold passed; stopping the file", extra={"bad": bad, "posted": posted}
            )

    def _finish_posting(self) -> None:
        try:
            for chunk in self.chunker.flush():
                self._submit(chunk)
            while self.in_flight:
                self._collect(block=True)
        finally:
            if self.executor is not None:
                self.executor.shutdown(wait=True)
            if self.error is None and self.stop_reason is not None:
                self.error = self.stop_reason

    def _reconcile_bulk_ops(self) -> list[BulkOp]:
        """After 202s, wait (bounded) for the bulk ops this run started and record their state."""
        if self.client is None or self.counts.enqueued == 0:
            return []
        since = self.started_at
        providers = {p for p, c in self.providers.items() if c.enqueued}
        deadline = time.monotonic() + min(
            BULK_OP_MAX_WAIT_SECONDS,
            max(0.0, self.deps.remaining_seconds() - self.settings.safety_margin_seconds),
        )
        ops: list[BulkOp] = []
        while True:
            try:
                ops = [
                    op
                    for op in self.client.list_bulk_ops()
                    if op.provider in providers and (op.started_at or "") >= since[:19]
                ]
            except (VitalError, httpx.HTTPError) as exc:
                logger.warning("could not list bulk ops", extra={"error": type(exc).__name__})
                return ops
            if all(op.status != "in_progress" for op in ops) or time.monotonic() >= deadline:
                return ops
            time.sleep(BULK_OP_POLL_SECONDS)

    # --- bookkeeping --------------------------------------------------------------------------

    def _write(self, outcomes: list[RowOutcome]) -> None:
        self.writer.write(outcomes)
        for outcome in outcomes:
            self.counts.add(outcome.outcome)
            if outcome.provider:
                self.providers.setdefault(outcome.provider, Counts()).add(outcome.outcome)

    def _log_progress(self) -> None:
        self.last_progress = time.monotonic()
        logger.info(
            "progress",
            extra={
                "rows": self.counts.rows,
                "chunks_done": self.chunks_done,
                "in_flight": len(self.in_flight),
                "elapsed_s": round(self.last_progress - self.started_monotonic, 1),
                **self.counts.model_dump(exclude={"rows"}),
            },
        )

    def _status(self) -> FileStatus:
        if self.error is not None:
            return "failed"
        c = self.counts
        return "partial" if c.rejected or c.failed or c.errored else "succeeded"

    def _manifest(self, bulk_ops: list[BulkOp]) -> Manifest:
        if self.client is not None:
            self.client.close()
        error = (
            ErrorInfo(type=self.error.kind, message=redact_text(self.error.message))
            if self.error is not None
            else None
        )
        return Manifest(
            source=self.source,
            status=self._status(),
            started_at=self.started_at,
            finished_at=_now(),
            counts=self.counts,
            providers=dict(sorted(self.providers.items())),
            chunks=self.chunk_records,
            bulk_ops=bulk_ops,
            outcomes_key=self.prefix + OUTCOMES_NAME,
            error=error,
        )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
