"""One file, start to finish: read → validate → dedupe → chunk → post → outcomes → manifest.

Reading, validation and outcome writing happen on the calling thread; only the POSTs run on
worker threads, at most ``MAX_CONCURRENCY`` at a time. A full pool blocks reading (back-pressure),
so memory stays bounded by the chunks in flight, whatever the file's size.

Exactly-once across crashes, retries and continuations rests on one fact: reading the same file
with the same settings yields the same chunks in the same order. A checkpoint records how many
chunks may have been sent (the lease) and which have their outcomes stored; a later invocation
replays the file, skips what is settled, reports unsettled chunks under the lease as in doubt
(``errored``, never re-sent), and posts the rest.
"""

from __future__ import annotations

import gc
import itertools
import operator
import secrets
import sys
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, TYPE_CHECKING, NamedTuple

import httpx
from botocore.exceptions import BotoCoreError, ClientError
from pydantic_core import to_json

from bulk_import import errors
from bulk_import.config import Settings
from bulk_import.errors import (
    FileError,
    ImportAborted,
    InternalError,
    Superseded,
    TransientError,
    VitalAuthError,
    VitalClientError,
    VitalError,
)
from bulk_import.ingest import formats
from bulk_import.ingest import source as sources
from bulk_import.ingest.chunking import Chunk, Chunker, PendingRow, serialise
from bulk_import.ingest.validation import (
    context_for,
    display_provider,
    display_user_id,
    validate_json_row,
    validate_row,
    validate_well_formed,
)
from bulk_import.model import (
    PROVIDERS,
    BulkOp,
    Checkpoint,
    ChunkRecord,
    FileStatus,
    Manifest,
    ObjectRef,
    Outcome,
    RowOutcome,
    SourceRef,
)
from bulk_import.observability import logger, tracer
from bulk_import.redaction import redact_text
from bulk_import.run import replay
from bulk_import.run.tally import Tally
from bulk_import.storage.checkpoint_store import S3_KEY_BYTES, CheckpointStore, longest_key
from bulk_import.storage.results import (
    MANIFEST_NAME,
    OUTCOMES_NAME,
    RETRY_NAME,
    OutcomeSpool,
    RetrySpool,
    assemble,
    outcomes_header,
    results_prefix,
    write_manifest,
)
from bulk_import.vital.client import CallStats, VitalClient, parse_time, start_seconds
from bulk_import.vital.posting import ChunkReport, Hold, post_chunk

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

PROGRESS_EVERY_SECONDS = 15.0
# The failure threshold is judged only after this many rows came back from Vital.
THRESHOLD_WARMUP_ROWS = 100
BULK_OP_POLL_SECONDS = 2.0
BULK_OP_MAX_WAIT_SECONDS = 60.0
BULK_OP_SKEW = timedelta(seconds=5)
BULK_OP_FAILED = frozenset({"failure", "aborted"})
DEADLINE_CHECK_EVERY_RECORDS = 64
# Checkpoints are spaced at least about this far apart when chunks go out quickly.
CHECKPOINT_SECONDS = 2.0
# Outcome and retry lines written since the last checkpoint that make the reading thread take
# one: with results.SPOOL_KEEP_BYTES, /tmp holds at most ~200 MB (Lambda's default is 512 MB).
UNSAVED_SPOOL_BYTES = 32 * 1024 * 1024
# Outcome and retry lines written since the last checkpoint that make the end of reading store
# them while the last answers are awaited (``_save_while_answered``), instead of after.
EARLY_SAVE_BYTES = 1024 * 1024
# Chunks handed to the posting threads at once, per thread: one being sent, one waiting.
QUEUED_PER_THREAD = 2
# How long this thread keeps the GIL while a posting thread waits for it. A request needs the
# GIL for moments at a time (to send, then for each read of the answer), and with CPython's
# default of 5 ms each of those waits out this thread's parsing: at 50 ms of latency a run took
# 5-10 % longer. Much lower (0.2 ms) costs more in switching than it saves (README, Performance).
POSTING_SWITCH_INTERVAL_S = 0.001
# Net new container objects between two collections of the cyclic GC's youngest generation
# (CPython: 2000). Rows in chunks come and go in the thousands; at the default the GC ran ~25
# young and 2-3 older collections per 100k rows (35-65 ms), at this threshold 2 (5-11 ms).
# Reference counting frees nearly everything here; little waits for the cyclic GC (see
# vital._released).
GC_YOUNG_THRESHOLD = 20_000
IN_DOUBT_DETAIL = (
    "in doubt: the function stopped while this chunk was being sent, so it is not sent again; "
    "check GET /v2/user/providers/{user_id} and re-upload the row from retry.jsonl if needed"
)
RETRY_OUTCOMES = frozenset({Outcome.FAILED, Outcome.ERRORED})
_OUTCOME = operator.attrgetter("outcome")
# PendingRow(...) runs a Python-level __new__; tuple.__new__ builds the same named tuple in C.
_pending = tuple.__new__


@dataclass(frozen=True, slots=True)
class Dependencies:
    """The edges the pipeline talks through; tests pass real clients bound to the local stack."""

    s3: S3Client
    api_key: Callable[[], str]
    remaining_seconds: Callable[[], float]
    transport: httpx.BaseTransport | None = None


@dataclass(frozen=True, slots=True)
class FileResult:
    """A finished file (``manifest``), a hand-off (``continuation``) or a ``skipped`` duplicate."""

    ref: ObjectRef
    manifest_key: str
    manifest: Manifest | None = None
    call_stats: CallStats | None = None
    continuation: ObjectRef | None = None
    skipped: str | None = None


class _DeadlineReached(Exception):
    pass


def results_fit(key: str, settings: Settings) -> bool:
    """Whether S3 can hold the keys an import of ``key`` writes: a key near S3's limit of 1024
    bytes has results and part keys longer than that, which every write would fail on."""
    results = results_prefix(key, settings.incoming_prefix, settings.results_prefix)
    retry = results_prefix(key, settings.incoming_prefix, settings.retry_prefix)
    return longest_key(results, retry) <= S3_KEY_BYTES


# capture_response=False: a result must never be copied into a trace. Worker threads are not
# traced (X-Ray's context is per thread); their HTTP calls show under this subsegment's time.
@tracer.capture_method(capture_response=False)
def import_object(ref: ObjectRef, settings: Settings, deps: Dependencies) -> FileResult:
    tracer.put_annotation(key="segment", value=str(ref.segment))
    tracer.put_metadata(key="object", value={"bucket": ref.bucket, "key": ref.key})
    with tuned_interpreter():
        return _Run(ref, settings, deps).execute()


class _Tuning:
    """The thread switch interval and young GC threshold for runs; the previous ones after the
    last. Lambda runs one invocation at a time, but the settings are process-wide: runs that
    overlap (in tests, or a caller's threads) must not restore them under each other."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs = 0
        self._saved: tuple[float, tuple[int, int, int]] = (0.0, (0, 0, 0))

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._runs == 0:
                self._saved = (sys.getswitchinterval(), gc.get_threshold())
                sys.setswitchinterval(POSTING_SWITCH_INTERVAL_S)
                gc.set_threshold(GC_YOUNG_THRESHOLD, *self._saved[1][1:])
            self._runs += 1
        try:
            yield
        finally:
            with self._lock:
                self._runs -= 1
                if self._runs == 0:
                    gc.set_threshold(*self._saved[1])
                    sys.setswitchinterval(self._saved[0])


tuned_interpreter = _Tuning()


class _Run:
    def __init__(  # noqa: PLR0915 - all of a run's state, in one place
        self, ref: ObjectRef, settings: Settings, deps: Dependencies
    ) -> None:
        self.ref = ref
        self.settings = settings
        self.deps = deps
        self.source = SourceRef(
            bucket=ref.bucket, key=ref.key, version_id=ref.version_id, sequencer=ref.sequencer
        )
        self.prefix = results_prefix(ref.key, settings.incoming_prefix, settings.results_prefix)
        self.retry_prefix = results_prefix(ref.key, settings.incoming_prefix, settings.retry_prefix)
        self.store = CheckpointStore(
            deps.s3, ref.bucket, self.prefix, self.retry_prefix, secrets.token_hex(4)
        )
        self.checkpoint: Checkpoint | None = None
        self.started_at = _now()
        self.started_monotonic = time.monotonic()
        # Accounting, restored from a checkpoint on resume.
        self.tally = Tally()
        self.chunk_records: list[ChunkRecord] = []
        self.outcome_parts: list[str] = []
        self.retry_parts: list[str] = []
        self.lease = 0
        self.settled: set[int] = set()
        self.settled_below = 0
        self.lines_done = 0  # reject/duplicate outcomes up to here are already stored
        # Rows reported in doubt after a crash: errored, but nothing Vital said (the failure
        # threshold leaves them out).
        self.in_doubt = 0
        self.replay_settled: set[int] = set()
        self.replay_below = 0
        self.replay_lease = 0
        # This invocation.
        # provider → user id (as one 128-bit int) → first line: ~110 bytes a row. One dict per
        # provider, not one keyed by both: several smaller tables take less room than one
        # that doubled past the row count (~3 MB less at 100k rows).
        self.seen: defaultdict[str, dict[int, int]] = defaultdict(dict)
        self.context = context_for(None)
        self.next_seq = 0
        self.line = 0
        # Rows taken from the file (blank lines are none), and whether it was read to its end:
        # then every one of them must have its outcome by the end (``_check_every_row_counted``).
        self.rows_read = 0
        self.read_to_end = False
        self.error: FileError | None = None
        self.stop_reason: FileError | None = None
        # The first chunk a posting thread held back for lack of time (the rest go after it).
        self.deferred: int | None = None
        self.client: VitalClient | None = None
        self.client_future: Future[VitalClient] | None = None
        self.opening: Future[_Opened] | None = None  # the object, opened as the run starts
        self.executor: ThreadPoolExecutor | None = None
        self.in_flight: dict[Future[ChunkReport], tuple[int, Chunk]] = {}
        # Cut and not handed to ``_dispatch`` yet, or handed and not sent because it failed
        # (its lease could not be saved): ``_send``, and ``_report_unsent`` if the run stops.
        self.unsent: deque[Chunk] = deque()
        self.submitted: Chunk | None = None  # the last chunk handed to a posting thread
        self.chunker = Chunker(settings.chunk_size, settings.max_body_bytes)
        # What this invocation writes, its checkpoints' parts included up to a size (see Spool).
        self.outcomes = OutcomeSpool(outcomes_header())
        self.retries = RetrySpool()
        # Parts the final objects read back: earlier invocations' (a resume's), and this one's
        # once its spool has let them go (``Spool.upload``).
        self.outcome_parts_to_read = 0
        self.retry_parts_to_read = 0
        self.last_progress = time.monotonic()
        self.chunks_done = 0
        # The invocation's first request: the chunks after it wait for its answer (``_gate``).
        self.probe: Future[ChunkReport] | None = None
        # The first refusal (401/403) a posting thread got, before this thread takes it in.
        self.refusal: VitalAuthError | VitalClientError | None = None
        self.posted_here = 0
        self.lease_step = settings.checkpoint_every_chunks or 2 * settings.max_concurrency
        # Time kept back: SAFETY_MARGIN_SECONDS, and never less than the client needs to start
        # a request (below that it refuses, and the chunk would end errored, not deferred).
        self.margin = max(settings.safety_margin_seconds, start_seconds(settings))
        self.last_lease_at = time.monotonic()
        self.last_lease_seq = 0

    # --- main flow ----------------------------------------------------------------------------

    def execute(self) -> FileResult:
        try:
            self._start_client()  # nearly every run needs it; its set-up overlaps S3's answers
            self._start_opening()  # so does the object: opened while the checkpoint is read
            skipped = self._prepare()
            if skipped is not None:
                return skipped
            return self._run()
        except Superseded as exc:
            return self._superseded(exc)
        finally:
            self.outcomes.close()
            self.retries.close()
            if self.opening is not None:  # opened for nothing (a skip, an error): closed
                self.opening.add_done_callback(_close_opened)
            if self.executor is not None:  # already drained, unless something went wrong
                self.executor.shutdown(wait=False)
            if self.client_future is not None:  # now, or once built if still on its way
                self.client_future.add_done_callback(_close_client)

    def _prepare(self) -> FileResult | None:  # noqa: PLR0911 - a decision table of early exits
        """Resume, skip a duplicate, or re-send a lost hand-off; None to start fresh or resume."""
        checkpoint = self.store.load()
        manifest_key = self.prefix + MANIFEST_NAME
        if checkpoint is not None and not self._same_object(checkpoint.source):
            if self.ref.segment > 0 or self._older_than(checkpoint.source):
                return self._skip("a newer upload of this key replaced the file being imported")
            logger.warning("a new upload replaces an unfinished import of this key")
            self.store.delete(checkpoint.outcome_parts + checkpoint.retry_parts)
            checkpoint = None
        manifest = self.store.existing_manifest()
        finished = manifest is not None and self._same_object(manifest.source)
        if checkpoint is None:
            if self.ref.segment > 0:
                return self._skip("this import already finished")
            if finished:
                return self._skip("this object version was already imported")
            if manifest is not None and self._older_than(manifest.source):
                return self._skip("a newer upload of this key was already imported")
            return None
        if finished:
            # The manifest is written before the state is deleted: the cleanup failed or the
            # function stopped in between. Replaying would overwrite the manifest.
            self.store.finish(checkpoint.outcome_parts + checkpoint.retry_parts)
            return self._skip("this object version was already imported (its state is cleared)")
        if self.ref.segment < checkpoint.next_segment:
            if self.ref.segment == checkpoint.next_segment - 1:
                # Our earlier attempt saved the hand-off but may have died before sending it.
                return FileResult(
                    self.ref, manifest_key, continuation=self._next_ref(checkpoint.next_segment)
                )
            return self._skip("a later invocation already took over this import")
        if self.ref.segment > checkpoint.next_segment:
            return self._skip("continuation from an unknown segment")
        changed = replay.changes(checkpoint.fingerprint, replay.fingerprint(self.settings))
        if changed:
            self.error = errors.ConfigurationError(replay.describe(changed))
        self._restore(checkpoint)
        return None

    def _older_than(self, other: SourceRef) -> bool:
        """Whether S3 sent this upload's event before ``other``'s (its sequencer is lower);
        False when either has none, as for a manual invocation."""
        mine, theirs = self.ref.sequencer, other.sequencer
        if not mine or not theirs:
            return False
        width = max(len(mine), len(theirs))
        return mine.upper().rjust(width, "0") < theirs.upper().rjust(width, "0")

    def _superseded(self, exc: Superseded) -> FileResult:
        """Another import took this key over: send nothing more and write no results (they are
        the other import's to write). Chunks already out finish; those waiting are held back."""
        self.stop_reason = self.stop_reason or ImportAborted(str(exc))
        logger.warning(
            "another import took this key over; this one stops", extra={"line": self.line}
        )
        self._drain()
        # Parts stored for a checkpoint that then lost are no one's (retry parts hold tokens);
        # those of the checkpoints it wrote are the other import's to keep or delete, as are
        # any the checkpoint now stored names (the other import may have resumed from this
        # run's last write, whose answer this run never saw).
        cp = self.checkpoint
        listed = set(cp.outcome_parts + cp.retry_parts) if cp is not None else set()
        listed |= self.store.named_parts()
        orphans = [k for k in self.outcome_parts + self.retry_parts if k not in listed]
        self.store.delete_parts(orphans)
        return self._skip(str(exc))

    def _same_object(self, other: SourceRef) -> bool:
        """Same upload: by version id, else by S3's per-upload sequencer, else by ETag."""
        for mine, theirs in (
            (self.ref.version_id, other.version_id),
            (self.ref.sequencer, other.sequencer),
            (self.ref.etag, other.etag),
        ):
            if mine and theirs:
                return mine == theirs
        return False

    def _skip(self, reason: str) -> FileResult:
        logger.info("skipping: " + reason, extra={"segment": self.ref.segment})
        return FileResult(self.ref, self.prefix + MANIFEST_NAME, skipped=reason)

    def _next_ref(self, segment: int) -> ObjectRef:
        return self.ref.model_copy(update={"segment": segment})

    def _restore(self, cp: Checkpoint) -> None:
        self.checkpoint = cp
        self.source = cp.source
        self.started_at = cp.started_at
        self.tally = Tally.restore(cp.counts, cp.providers)
        self.chunk_records = list(cp.chunks)
        self.outcome_parts = list(cp.outcome_parts)
        self.retry_parts = list(cp.retry_parts)
        self.outcome_parts_to_read = len(cp.outcome_parts)
        self.retry_parts_to_read = len(cp.retry_parts)
        self.lease = self.replay_lease = cp.lease
        self.settled_below = self.replay_below = cp.settled_below
        self.settled = set(cp.settled_extra)
        self.replay_settled = set(cp.settled_extra)
        self.lines_done = cp.lines_done
        self.in_doubt = cp.in_doubt
        if cp.stop_reason is not None:
            self.stop_reason = errors.from_info(cp.stop_reason)
        logger.info(
            "resuming from checkpoint",
            extra={"segment": self.ref.segment, "lines_done": cp.lines_done, "lease": cp.lease},
        )

    def _run(self) -> FileResult:
        deadline = False
        try:
            if self.error is None:
                self._read_and_post()
                self._save_while_answered()
        except FileError as exc:
            self.error = exc
            # Rows already chunked are not sent after a file error: reported, and in retry.jsonl.
            self.stop_reason = self.stop_reason or exc
            self._report_unsent()
        except _DeadlineReached:
            deadline = True
        except Superseded:
            raise  # not this run's to finish (``execute``)
        except TransientError:
            self._drain()
            self._save_checkpoint(next_segment=self.ref.segment)
            raise
        except (BotoCoreError, ClientError) as exc:
            self._drain()
            self._save_checkpoint(next_segment=self.ref.segment)
            raise TransientError(f"S3 failed while reading ({type(exc).__name__})") from exc
        except Exception as exc:  # noqa: BLE001 - a bug must not send the file into retries
            self._internal_error("unexpected error", exc)
            # Rows already chunked still get an outcome (errored, in retry.jsonl).
            self._report_unsent()
        if deadline:
            self._drain()
            return self._hand_on()
        self._finish_posting()
        if self.deferred is not None:  # the posting threads ran out of time for some chunks
            return self._hand_on()
        return self._finalise()

    def _save_while_answered(self) -> None:
        """Store the outcomes so far while the last chunks are out, not after their answers.

        A checkpoint stores every line spooled since the one before, up to CHECKPOINT_SECONDS'
        worth: a file that took less holds all its outcomes then. Sent once the answers are in,
        that part was the largest upload between them and the results; now the final
        checkpoint's part holds only the last chunks' lines. The same checkpoint as a lease's,
        taken with chunks in flight: the lease stays where it is.
        """
        self._collect(block=False)  # answers already in: stored with the rest, not after
        unsaved = self.outcomes.unsaved_bytes + self.retries.unsaved_bytes
        if self.checkpoint is None or not self.in_flight or unsaved < EARLY_SAVE_BYTES:
            return
        self._save_checkpoint(next_segment=self.ref.segment, lease=self.lease)

    def _send(self, chunks: Iterable[Chunk]) -> None:
        """Dispatch chunks in order. If one fails before a posting thread has it (its lease
        could not be saved, say), it and those after it stay in ``unsent``: a retry rebuilds
        them, or ``_report_unsent`` gives their rows an outcome."""
        self.unsent.extend(chunks)
        while self.unsent:
            chunk = self.unsent.popleft()
            try:
                self._dispatch(chunk)
            except BaseException:
                if self.submitted is not chunk:
                    self.unsent.appendleft(chunk)
                raise

    def _report_unsent(self) -> None:
        """Once the run has stopped: the chunks it was about to send, then those still being
        filled, each row with its outcome ("not sent")."""
        self._send(self.chunker.flush())

    def _hand_on(self) -> FileResult:
        """Checkpoint and name the next segment: a fresh invocation goes on from here."""
        self._save_checkpoint(next_segment=self.ref.segment + 1)
        nxt = self._next_ref(self.ref.segment + 1)
        logger.info(
            "time is running out; handing the rest to a fresh invocation",
            extra={"lines_done": self.line, "next_segment": nxt.segment},
        )
        stats = self.client.stats if self.client else None
        return FileResult(self.ref, self.prefix + MANIFEST_NAME, call_stats=stats, continuation=nxt)

    def _start_opening(self) -> None:
        """HEAD and GET the object on a posting thread while this one reads the checkpoint.

        Nearly every run reads the object: its two round trips to S3 no longer wait for the
        checkpoint's and the manifest's. A failure is raised where the stream is taken, as it
        would have been; a run that turns out not to need the object closes it unread.
        """
        assert self.executor is not None  # noqa: S101 - created with the client
        ref = self.ref
        self.opening = self.executor.submit(self._open, ref.bucket, ref.key, ref.version_id)

    def _open(self, bucket: str, key: str, version_id: str | None) -> _Opened:
        _, compression = formats.detect(key)
        described = sources.describe(self.deps.s3, bucket, key, version_id)
        stream = sources.open_stream(
            self.deps.s3, described, compression, self.settings.max_decompressed_bytes
        )
        return _Opened(described, stream)

    def _opened(self) -> _Opened:
        """The object as opened in advance; opened again if a checkpoint named another version."""
        opening, self.opening = self.opening, None
        source = self.source
        if opening is not None:
            opened = opening.result()
            if source.version_id == self.ref.version_id:
                return opened
            opened.stream.close()
        return self._open(source.bucket, source.key, source.version_id)

    def _read_and_post(self) -> None:
        fmt, compression = formats.detect(self.source.key)
        described, stream = self._opened()
        if self.checkpoint is None:
            self.source = described.ref.model_copy(update={"sequencer": self.ref.sequencer})
        elif self.source.etag and described.ref.etag != self.source.etag:
            # An unversioned key uploaded again since the checkpoint: replaying other content
            # against it would send other rows under its chunk numbers. The new upload's own
            # event imports it.
            stream.close()
            raise Superseded("the object was replaced since this import started")
        default_provider = sources.provider_from_key(
            self.source.key, self.settings.incoming_prefix
        ) or described.metadata.get("provider")
        self.context = context_for(default_provider)
        logger.info(
            "reading file",
            extra={
                "format": fmt.value,
                "compression": compression.value,
                "size": self.source.size,
                "segment": self.ref.segment,
            },
        )
        with stream:
            if fmt is formats.Format.JSONL:
                self._take_jsonl(stream, default_provider)
            else:
                records = formats.read_records(stream, fmt, self.settings.max_row_bytes)
                for n, record in enumerate(records):
                    if n % DEADLINE_CHECK_EVERY_RECORDS == 0:
                        self._between_rows()
                    self.rows_read += 1
                    self._take(record, default_provider)
                    self.line = record.line
        self._send(self.chunker.flush())
        self.read_to_end = True

    def _between_rows(self) -> None:
        # Only after progress past the checkpoint, so every invocation moves on.
        if self.line > self.lines_done and self.deps.remaining_seconds() < self.margin:
            raise _DeadlineReached
        if time.monotonic() - self.last_progress > PROGRESS_EVERY_SECONDS:
            self._log_progress()
        if self.outcomes.unsaved_bytes + self.retries.unsaved_bytes > UNSAVED_SPOOL_BYTES:
            # Rows that are not sent (rejected, or after a stop) bring no checkpoints of their
            # own: without one, their outcomes would pile up in /tmp, and a retry would not know
            # of the stop.
            self._save_checkpoint(next_segment=self.ref.segment)

    def _take_jsonl(self, stream: IO[bytes], default_provider: str | None) -> None:
        """The hot loop: JSONL in blocks, well-formed rows straight to ``_accept``.

        Everything else (blank and over-long lines, lenient spellings, errors) goes through
        ``_take`` like the other formats' rows. ``self.line`` moves after each row, so a deadline
        raised while a row is dispatched leaves that row to the next invocation.
        """
        limit = self.settings.max_row_bytes
        accept = self._accept
        # A default spelled otherwise ("Oura") is normalised, or refused, by the full model.
        default = default_provider if default_provider in PROVIDERS else None
        for first, lines in formats.jsonl_blocks(stream, limit):
            self._between_rows()
            self.rows_read += len(lines) - lines.count(b"")
            rows = validate_well_formed(lines)
            for line, raw, row in zip(itertools.count(first), lines, rows, strict=False):
                if row is not None and (provider := row.pop("provider", None) or default):
                    accept(line, provider, row["user_id"], to_json(row))
                elif raw:
                    self._take(formats.Record(line, None, None, raw), default_provider)
                elif raw is None:
                    self._take(
                        formats.Record(line, None, formats.too_long(limit)), default_provider
                    )
                self.line = line

    def _take(self, record: formats.Record, default_provider: str | None) -> None:
        if record.raw is not None:  # a JSONL line that is not well formed (see _take_jsonl)
            lenient = validate_json_row(record.raw, self.context)
            if lenient is not None:
                self._accept(record.line, lenient.provider, lenient.user_id, serialise(lenient))
                return
            record = formats.parse_json_line(record.line, record.raw)  # for the exact reason
        if record.data is None:
            self._reject(record.line, None, default_provider, record.error or "unreadable row")
            return
        row = validate_row(record.data, default_provider)
        if isinstance(row, str):
            self._reject(record.line, record.data, default_provider, row)
            return
        self._accept(record.line, row.provider, row.user_id, serialise(row))

    def _reject(
        self, line: int, data: dict[str, object] | None, default: str | None, reason: str
    ) -> None:
        if line <= self.lines_done:
            return  # stored before the checkpoint this run resumed from
        provider = display_provider(data, default)
        self._write(
            [
                RowOutcome(
                    line, display_user_id(data), provider, Outcome.REJECTED, redact_text(reason)
                )
            ]
        )

    def _accept(self, line: int, provider: str, user_id: str, payload: bytes) -> None:
        """A valid row, its recipe serialised (``payload``): a duplicate, or on to a chunk."""
        seen = self.seen[provider]
        identity = int(user_id.replace("-", ""), 16)
        first = seen.get(identity)
        if first is not None:
            if line > self.lines_done:
                detail = f"duplicate of line {first} (same provider and user_id); not sent"
                self._write([RowOutcome(line, user_id, provider, Outcome.DUPLICATE, detail)])
            return
        chunker = self.chunker
        if len(payload) > chunker.fits_any and not chunker.fits_alone(provider, payload):
            # Not seen: a corrected copy of the row further down is not its duplicate.
            self._reject(
                line,
                None,
                provider,
                "row is larger than one request may be "
                f"(MAX_BODY_BYTES={self.settings.max_body_bytes})",
            )
            return
        seen[identity] = line
        closed = chunker.add(provider, _pending(PendingRow, (line, user_id, payload)))
        if closed:
            self._send(closed)

    # --- posting ------------------------------------------------------------------------------

    def _dispatch(self, chunk: Chunk) -> None:
        """Route a new chunk by what earlier invocations did with the same chunk number."""
        seq = self.next_seq
        self.next_seq += 1
        if seq < self.replay_below or seq in self.replay_settled:
            self._settle(seq)  # outcomes already stored
            return
        if seq < self.replay_lease:
            logger.warning("chunk in doubt after an interrupted run", extra={"chunk": seq})
            self._write_chunk(chunk, Outcome.ERRORED, IN_DOUBT_DETAIL)
            self.in_doubt += len(chunk.rows)
            self._settle(seq)
            return
        if self.stop_reason is not None:
            self._write_chunk(chunk, Outcome.ERRORED, f"not sent: {self.stop_reason}")
            self._settle(seq)
            return
        try:
            client = self._client()
        except FileError as exc:
            self.stop_reason = exc
            self._write_chunk(chunk, Outcome.ERRORED, f"not sent: {exc}")
            self._settle(seq)
            return
        except TransientError:
            self.next_seq = seq  # not sent: Lambda's retry rebuilds this chunk and sends it
            raise
        # Up to MAX_CONCURRENCY chunks wait in the posting threads' queue behind the ones being
        # sent: a thread that is answered starts the next request at once, while this thread
        # goes on reading (also while the invocation's first chunk is out: see ``_gate``).
        self._collect(block=False)
        while len(self.in_flight) >= QUEUED_PER_THREAD * self.settings.max_concurrency:
            self._collect()
        # A chunk the posting threads deferred was held back by this same check (``_gate``).
        if self.posted_here and self.deps.remaining_seconds() < self.margin:
            # Not numbered yet: a later invocation rebuilds this very chunk and sends it.
            self.next_seq = seq
            raise _DeadlineReached
        if self.stop_reason is not None:
            self._write_chunk(chunk, Outcome.ERRORED, f"not sent: {self.stop_reason}")
            self._settle(seq)
            return
        if seq >= self.lease:
            # Make the lease durable before sending past it, so a crash cannot hide a send.
            try:
                self._save_checkpoint(
                    next_segment=self.ref.segment, lease=seq + self._lease_step(seq)
                )
            except Exception:
                self.next_seq = seq  # not sent: a retry rebuilds this chunk and sends it
                raise
        assert self.executor is not None  # noqa: S101 - created with the client
        # Every invocation sends at least its first chunk, so each one moves the file on.
        gate = self._gate if self.probe is not None else None
        future = self.executor.submit(
            post_chunk, client, chunk, self.settings.wait_for_completion, gate, probe=gate is None
        )
        self.submitted = chunk
        future.add_done_callback(self._note_refusal)
        self.probe = self.probe or future
        self.in_flight[future] = (seq, chunk)
        self.posted_here += 1

    def _lease_step(self, seq: int) -> int:
        """Chunks until the next checkpoint: the configured step, or ~CHECKPOINT_SECONDS' worth.

        Fast runs would otherwise write a checkpoint every few milliseconds; a crash leaves at
        most this many chunks in doubt.
        """
        now = time.monotonic()
        elapsed = now - self.last_lease_at
        sent = seq - self.last_lease_seq
        self.last_lease_at, self.last_lease_seq = now, seq
        if self.settings.checkpoint_every_chunks or elapsed <= 0 or sent <= 0:
            return self.lease_step
        rate = sent / elapsed
        return max(self.lease_step, min(int(rate * CHECKPOINT_SECONDS), 64 * self.lease_step))

    def _start_client(self) -> None:
        """Build the Vital client on a posting thread while the checkpoint, the object and the
        first rows are read.

        The API key is a Secrets Manager call and the TLS context loads CA certificates without
        holding the GIL: ~50 ms that no longer delays the first request. A failure (say, the
        secret is missing) surfaces where the client is first needed, as it would have. A run
        that turns out to be a duplicate leaves it unused (the key stays cached for the next).
        """
        if self.client_future is None:
            self.executor = ThreadPoolExecutor(
                max_workers=self.settings.max_concurrency, thread_name_prefix="vital-post"
            )
            self.client_future = self.executor.submit(self._new_client)

    def _new_client(self) -> VitalClient:
        return VitalClient(
            self.settings,
            self.deps.api_key(),
            self.deps.remaining_seconds,
            self.deps.transport,
        )

    def _client(self) -> VitalClient:
        if self.client is None:
            self._start_client()
            assert self.client_future is not None  # noqa: S101 - just started
            self.client = self.client_future.result()
        return self.client

    def _gate(self) -> Hold | None:
        """Asked on a posting thread as a chunk's request is about to start (it may have waited
        in the queue): the same checks as ``_dispatch`` made when it handed the chunk over.

        Every chunk after the invocation's first (the probe) first waits for the probe's answer:
        a rejected key or disabled Link Migration then costs one request, not MAX_CONCURRENCY of
        them. The reading thread goes on meanwhile, so the threads start together once it is in.
        The probe is never gated and went into the queue first, so it cannot wait on a gate.
        """
        assert self.probe is not None  # noqa: S101 - gates are only given after the probe
        if self.probe.exception() is not None or self.probe.result().fatal is not None:
            return Hold.STOPPED  # as the reading thread will have it once it takes the answer
        if self.stop_reason is not None or self.refusal is not None:
            return Hold.STOPPED
        if self.deps.remaining_seconds() < self.margin:
            return Hold.DEFERRED
        return None

    def _collect(self, *, block: bool = True) -> None:
        """Absorb answered chunks in the order they were sent: at least one (waiting for it if
        need be) or, with ``block`` False, those already answered."""
        if not self.in_flight:
            return
        if block:
            wait(self.in_flight, return_when=FIRST_COMPLETED)
        done = [future for future in self.in_flight if future.done()]
        for future in done:
            seq, chunk = self.in_flight.pop(future)
            try:
                report = future.result()
            except Exception as exc:  # noqa: BLE001 - a bug in a worker must not lose the file
                self._internal_error("unexpected error posting a chunk", exc)
                detail = "in doubt: the function failed while sending this chunk; see retry.jsonl"
                self._write_chunk(chunk, Outcome.ERRORED, detail)
            else:
                if report.held is Hold.DEFERRED:
                    # Neither sent nor settled: the checkpoint's lease starts at the first one.
                    self.deferred = seq if self.deferred is None else min(self.deferred, seq)
                    continue
                recorded = self.outcomes.written
                try:
                    self._absorb(report)
                except Exception as exc:  # noqa: BLE001 - nor a bug in recording its answer
                    self._internal_error("unexpected error recording a chunk's answer", exc)
                    if self.outcomes.written == recorded:  # else ``_check_every_row_counted``
                        detail = (
                            "in doubt: the function failed while recording Vital's answer to "
                            "this chunk; see retry.jsonl"
                        )
                        self._write_chunk(chunk, Outcome.ERRORED, detail)
            self._settle(seq)

    def _internal_error(self, message: str, exc: Exception) -> None:
        """A bug, not the file's fault: the file stops and ends failed, every row accounted for."""
        logger.exception(message, extra={"error": type(exc).__name__})
        self.error = self.error or InternalError(
            f"internal error ({type(exc).__name__}); see the function's logs"
        )
        self.stop_reason = self.stop_reason or self.error

    def _drain(self) -> None:
        while self.in_flight:
            self._collect()

    def _absorb(self, report: ChunkReport) -> None:
        if report.held is Hold.STOPPED:  # handed over before the run stopped, never sent
            if self.stop_reason is None and self.refusal is not None:
                self._refused(self.refusal)  # held back by a refusal not taken in yet
            self._write_chunk(report.chunk, Outcome.ERRORED, f"not sent: {self.stop_reason}")
            return
        self.chunk_records.extend(report.records)
        if report.shared is not None:
            self._write_chunk(report.chunk, *report.shared)
        else:
            self._write(report.decided, report.chunk)
        self.chunks_done += 1
        if report.fatal is not None and self.stop_reason is None:
            self._refused(report.fatal)
        self._check_threshold()

    def _refused(self, fatal: VitalAuthError | VitalClientError) -> None:
        if isinstance(fatal, VitalAuthError):
            self.stop_reason = ImportAborted(str(fatal))
        else:
            check = (
                "lower MAX_BODY_BYTES or CHUNK_SIZE"
                if fatal.status == 413
                else "check VITAL_API_BASE_URL and VITAL_TEAM_ID, and that Link Migration is "
                "enabled for this team"
            )
            self.stop_reason = ImportAborted(
                f"Vital refused the first request ({fatal}), so the file stopped rather than "
                f"send every chunk to be refused alike; {check}"
            )
        logger.error("Vital refused the request; file stopped", extra={"status": fatal.status})

    def _note_refusal(self, future: Future[ChunkReport]) -> None:
        """Run on the posting thread that got the answer: a refused key or Link Migration holds
        back every chunk that has not started yet (``_gate``), without waiting for the reading
        thread to take the answer in; each of them would be sent and refused in turn."""
        if future.cancelled() or future.exception() is not None:
            return
        fatal = future.result().fatal
        if fatal is not None and self.refusal is None:
            self.refusal = fatal

    def _settle(self, seq: int) -> None:
        self.settled.add(seq)
        while self.settled_below in self.settled:
            self.settled.discard(self.settled_below)
            self.settled_below += 1

    def _check_threshold(self) -> None:
        threshold = self.settings.failure_threshold_percent
        if threshold >= 100 or self.stop_reason is not None:
            return
        t = self.tally
        # Rows in doubt after a crash are errored, but Vital failed none of them: a crash of
        # the function must not trip a threshold on Vital's answers.
        bad = t[Outcome.FAILED] + t[Outcome.ERRORED] - self.in_doubt
        posted = t[Outcome.IMPORTED] + t[Outcome.ENQUEUED] + bad
        if posted < THRESHOLD_WARMUP_ROWS:
            return
        if bad * 100 > threshold * posted:
            self.stop_reason = ImportAborted(
                f"{bad} of {posted} posted rows failed or errored, more than "
                f"FAILURE_THRESHOLD_PERCENT={threshold:g}%; the import was stopped"
            )
            logger.error("failure threshold passed", extra={"bad": bad, "posted": posted})

    def _finish_posting(self) -> None:
        try:
            self._drain()
        finally:
            if self.executor is not None:
                self.executor.shutdown(wait=True)
            if self.error is None and self.stop_reason is not None:
                self.error = self.stop_reason

    def _reconcile_bulk_ops(self) -> list[BulkOp]:
        """After 202s, wait (bounded) for the bulk ops this run started and record their state."""
        try:
            client = self._client()
        except FileError:
            return []
        # A little slack for clock skew between Vital and Lambda.
        since = datetime.fromisoformat(self.started_at.replace("Z", "+00:00")) - BULK_OP_SKEW
        providers = {p for p, c in self.tally.providers().items() if c.enqueued}
        deadline = time.monotonic() + min(
            BULK_OP_MAX_WAIT_SECONDS,
            max(0.0, self.deps.remaining_seconds() - self.margin),
        )
        ops: list[BulkOp] = []
        while True:
            try:
                ops = [
                    op
                    for op in client.list_bulk_ops(since=since)
                    if op.provider in providers
                    and (started := parse_time(op.started_at)) is not None
                    and started >= since
                ]
            except (VitalError, httpx.HTTPError) as exc:
                logger.warning("could not list bulk ops", extra={"error": type(exc).__name__})
                return ops
            left = deadline - time.monotonic()
            if all(op.status != "in_progress" for op in ops) or left <= 0:
                return ops
            time.sleep(min(BULK_OP_POLL_SECONDS, left))  # never past the deadline

    # --- bookkeeping --------------------------------------------------------------------------

    def _write_chunk(self, chunk: Chunk, outcome: Outcome, detail: str) -> None:
        """One outcome for every row of a chunk: no tuple per row (the usual case)."""
        self.outcomes.write_same(chunk.rows, chunk.provider, outcome, detail)
        self.tally.add_same(chunk.provider, outcome, len(chunk.rows))
        if outcome in RETRY_OUTCOMES:
            for row in chunk.rows:
                self.retries.write(chunk.provider, row.payload)

    def _write(self, outcomes: list[RowOutcome], source: Chunk | None = None) -> None:
        """Record outcomes; failed and errored rows of a chunk also go to retry.jsonl."""
        self.outcomes.write(outcomes)
        self.tally.add(outcomes)
        if source is None or RETRY_OUTCOMES.isdisjoint(map(_OUTCOME, outcomes)):
            return
        retry = [o for o in outcomes if o.outcome in RETRY_OUTCOMES]
        if retry:
            payloads = {r.line: r.payload for r in source.rows}
            for outcome in retry:
                self.retries.write(outcome.provider, payloads[outcome.line])

    def _save_checkpoint(
        self, *, next_segment: int, lease: int | None = None, final: bool = False
    ) -> None:
        """Store the spooled outcomes as parts, then the checkpoint that makes them count.

        ``final``: the run is about to send its results, from the spools it keeps whole.
        """
        s3, bucket = self.deps.s3, self.source.bucket
        if self.outcomes.lines:
            key = self.store.outcome_part_key(len(self.outcome_parts) + 1)
            kept = self.outcomes.upload(s3, bucket, key, "text/csv", keep=final)
            self.outcome_parts.append(key)
            if not kept:
                self.outcome_parts_to_read = len(self.outcome_parts)
        if self.retries.lines:
            key = self.store.retry_part_key(len(self.retry_parts) + 1)
            kept = self.retries.upload(s3, bucket, key, "application/x-ndjson", keep=final)
            self.retry_parts.append(key)
            if not kept:
                self.retry_parts_to_read = len(self.retry_parts)
        # Without an explicit lease the caller has drained: nothing from next_seq on was sent,
        # nor any chunk from the first one the posting threads held back for lack of time.
        if lease is None:
            lease = self.next_seq if self.deferred is None else min(self.next_seq, self.deferred)
        # Never below the lease this run resumed from: the chunks under it that the replay has
        # not reached yet may have been sent by the run before, and must stay in doubt.
        self.lease = max(lease, self.replay_lease)
        checkpoint = Checkpoint(
            source=self.source,
            fingerprint=replay.fingerprint(self.settings),
            started_at=self.started_at,
            next_segment=next_segment,
            lease=self.lease,
            settled_below=self.settled_below,
            settled_extra=sorted(self.settled),
            lines_done=max(self.line, self.lines_done),
            in_doubt=self.in_doubt,
            counts=self.tally.counts(),
            providers=self.tally.providers(),
            # Copies: a record keeps the lists it is given, and the run goes on appending to its
            # own. The checkpoint must name only the parts stored when it was written (a run
            # that loses its key deletes the parts stored since).
            chunks=list(self.chunk_records),
            outcome_parts=list(self.outcome_parts),
            retry_parts=list(self.retry_parts),
            stop_reason=errors.to_info(self.stop_reason),
        )
        created = self.checkpoint is None
        self.store.save(checkpoint)
        self.checkpoint = checkpoint
        if created:
            self._check_not_imported_meanwhile()

    def _check_not_imported_meanwhile(self) -> None:
        """Without an idempotency table, two deliveries of one event can both find no state; if
        one finishes (and deletes its checkpoint) before the other creates one, only the
        manifest tells. Checked once this run's checkpoint exists, before it sends anything."""
        manifest = self.store.existing_manifest()
        if manifest is not None and self._same_object(manifest.source):
            self.store.finish(self.outcome_parts + self.retry_parts)
            raise Superseded("another delivery of this event imported the object meanwhile")

    def _finalise(self) -> FileResult:
        self._check_every_row_counted()
        saved = False
        if self.checkpoint is not None and self.posted_here and self.read_to_end:
            # Every answer of this run, stored before anything else can fail (the results'
            # writes, waiting on bulk ops): a retry then replays them instead of reporting the
            # chunks answered since the last lease in doubt. Not after a run that stopped
            # reading early: it cut its last chunks short, which a retry reading further (past
            # a one-off error) would cut whole, under the same numbers.
            self._save_checkpoint(next_segment=self.ref.segment, final=True)
            saved = True
        waited = self.tally[Outcome.ENQUEUED] > 0  # on bulk ops, after 202s: seconds, maybe
        bulk_ops = self._reconcile_bulk_ops() if waited else []
        # A checkpoint write that just succeeded (conditional on this run's last) shows the key
        # is still this run's as well as a HEAD would; after a wait, or without it, ask.
        if self.checkpoint is not None and (waited or not saved) and not self.store.still_mine():
            raise Superseded("another import of this key took over while this one finished")
        if self.checkpoint is None:
            manifest_key, manifest = self._write_results(bulk_ops)
        else:
            # The key's parts are listed while the results are written: two round trips fewer
            # at the end of every file. Ownership is checked after the listing (``finish``).
            with ThreadPoolExecutor(1, thread_name_prefix="list-parts") as lister:
                listed = lister.submit(self.store.stored_parts)
                manifest_key, manifest = self._write_results(bulk_ops)
                stored = listed.result()
            # Only while the checkpoint is its own: a newer upload may have taken the key over.
            self.store.finish(self.outcome_parts + self.retry_parts, stored)
        stats = self.client.stats if self.client else None
        return FileResult(self.ref, manifest_key, manifest=manifest, call_stats=stats)

    def _write_results(self, bulk_ops: list[BulkOp]) -> tuple[str, Manifest]:
        """outcomes.csv, retry.jsonl if any row needs it, then the manifest that names them."""
        s3, bucket = self.deps.s3, self.source.bucket
        outcomes_key = self.prefix + OUTCOMES_NAME
        # The parts after those to read are in the spools too.
        assemble(
            s3,
            bucket,
            outcomes_key,
            parts=self.outcome_parts[: self.outcome_parts_to_read],
            spool=self.outcomes,
            content_type="text/csv",
        )
        retry_key = None
        if self.retry_parts or self.retries.lines:
            retry_key = self.retry_prefix + RETRY_NAME
            assemble(
                s3,
                bucket,
                retry_key,
                parts=self.retry_parts[: self.retry_parts_to_read],
                spool=self.retries,
                content_type="application/x-ndjson",
            )
        manifest = self._manifest(bulk_ops, outcomes_key, retry_key)
        manifest_key = self.prefix + MANIFEST_NAME
        write_manifest(s3, bucket, manifest_key, manifest)
        return manifest_key, manifest

    def _check_every_row_counted(self) -> None:
        """The last guard of "every row ends in exactly one outcome": a file read to its end
        whose outcomes do not match its rows fails loudly, instead of reporting fewer rows.

        Only a bug gets here (the paths that stop early write an outcome for every row read);
        the outcomes the run did record are kept, and the gap is named in the error.
        """
        recorded = self.tally.counts().rows
        if not self.read_to_end or recorded == self.rows_read:
            return
        logger.error(
            "rows and outcomes do not match",
            extra={"rows_read": self.rows_read, "outcomes": recorded},
        )
        self.error = self.error or InternalError(
            f"internal error: {self.rows_read} rows read, {recorded} outcomes recorded; "
            "see the function's logs"
        )

    def _log_progress(self) -> None:
        self.last_progress = time.monotonic()
        logger.info(
            "progress",
            extra={
                "line": self.line,
                "chunks_done": self.chunks_done,
                "in_flight": len(self.in_flight),
                "elapsed_s": round(self.last_progress - self.started_monotonic, 1),
                **self.tally.counts().model_dump(),
            },
        )

    def _status(self, bulk_ops: list[BulkOp]) -> FileStatus:
        if self.error is not None:
            return "failed"
        t = self.tally
        bad = t[Outcome.REJECTED] + t[Outcome.FAILED] + t[Outcome.ERRORED]
        # Enqueued rows count as fine, unless a bulk op they went into is known to have failed.
        unfinished = any(op.status in BULK_OP_FAILED for op in bulk_ops)
        return "partial" if bad or unfinished else "succeeded"

    def _manifest(
        self, bulk_ops: list[BulkOp], outcomes_key: str, retry_key: str | None
    ) -> Manifest:
        return Manifest(
            source=self.source,
            status=self._status(bulk_ops),
            started_at=self.started_at,
            finished_at=_now(),
            counts=self.tally.counts(),
            providers=self.tally.providers(),
            chunks=list(self.chunk_records),
            bulk_ops=bulk_ops,
            outcomes_key=outcomes_key,
            retry_key=retry_key,
            segments=self.ref.segment + 1,
            error=errors.to_info(self.error),
        )


class _Opened(NamedTuple):
    source: sources.SourceObject
    stream: IO[bytes]


def _close_opened(future: Future[_Opened]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().stream.close()


def _close_client(future: Future[VitalClient]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().close()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
