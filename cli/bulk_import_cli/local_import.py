"""An import of a file on the operator's disk, by the Lambda's own run.

``LocalImport`` builds the run's collaborators with ``wiring.build`` overrides (a
``LocalBucket`` for S3, the API key, a clock with no Lambda deadline) and runs
``bulk_import.run.importer.Run`` on a worker thread, so that the main thread can show progress
and take Ctrl-C. Stopping is the Lambda's own deadline path: once ``stop()`` is called the run
has "no time left", sends nothing more, waits for the requests in flight, stores a checkpoint
in the output directory and hands on; the next ``LocalImport`` of the same file and directory
resumes from it without sending any chunk again.
"""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import httpx

from bulk_import.config import Settings
from bulk_import.errors import BulkImportError
from bulk_import.ingest import DRY_RUN_METADATA
from bulk_import.model import Checkpoint, Counts, Manifest, ObjectRef
from bulk_import.observability import logger
from bulk_import.run.importer import Run
from bulk_import.run.tuning import tuned_interpreter
from bulk_import.storage.keys import CHECKPOINT_NAME, MANIFEST_NAME, STATE_DIR, results_prefix
from bulk_import.wiring import build
from bulk_import_cli.local_bucket import LocalBucket, Route

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from bulk_import.run.context import FileResult

# The bucket name the run's keys and manifest carry for a local file.
LOCAL_BUCKET = "local"
# Seconds "left" while the run goes on: no Lambda deadline on a laptop.
NO_DEADLINE = 10.0**9
# A laptop import runs as one "invocation" per start; resumes must never hit the Lambda's cap.
MAX_RESUMES = 1_000_000
API_KEY_VARIABLE = "VITAL_API_KEY"


class LocalImportError(Exception):
    """The import cannot start (the output directory, a setting): a one-line message."""


class Snapshot(NamedTuple):
    """How far a run got, read from another thread while it runs (approximate)."""

    bytes_read: int
    size: int
    rows: int
    chunks: int
    counts: Counts


class StaticKey:
    """Powertools' ``SecretsProvider.get`` shape, answering with a key the operator gave."""

    def __init__(self, key: str) -> None:
        self._key = key

    def get(self, name: str, max_age: int | None = None, **kwargs: Any) -> str:
        return self._key

    def __repr__(self) -> str:
        return "StaticKey(***)"


class LocalContext:
    """The two things ``wiring.build`` asks of a Lambda context."""

    def __init__(self) -> None:
        self.aws_request_id = str(uuid.uuid4())

    def get_remaining_time_in_millis(self) -> int:
        return int(NO_DEADLINE * 1000)


def refuse_requests(request: httpx.Request) -> httpx.Response:
    """The transport of a run that must send nothing (``validate``)."""
    raise httpx.ConnectError(f"offline: {request.method} {request.url.path} not sent")


def settings_for(
    overrides: Mapping[str, str], environ: Mapping[str, str] | None = None
) -> Settings:
    """The Lambda's Settings from the environment, with the command's options over it."""
    env = dict(os.environ if environ is None else environ)
    env.setdefault("VITAL_API_KEY_SECRET", API_KEY_VARIABLE)
    env["MAX_INVOCATIONS_PER_FILE"] = str(MAX_RESUMES)
    return Settings.from_env({**env, **overrides})


class LocalImport:
    """One start of the import of ``file`` into ``out`` (fresh, or resumed from ``out``)."""

    def __init__(
        self,
        file: Path,
        out: Path,
        settings: Settings,
        *,
        provider: str | None = None,
        dry_run: bool = False,
        secrets: Callable[[], Any] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.file = file
        self.out = out
        self.settings = settings
        self.key = settings.incoming_prefix + file.name
        metadata = {DRY_RUN_METADATA: "true"} if dry_run else {}
        if provider:
            metadata["provider"] = provider
        results = results_prefix(self.key, settings.incoming_prefix, settings.results_prefix)
        retry = results_prefix(self.key, settings.incoming_prefix, settings.retry_prefix)
        self.results_key = results
        self.bucket = LocalBucket(
            self.key,
            file,
            metadata,
            [
                Route(results, out),
                Route(retry + STATE_DIR, out / STATE_DIR / "retry"),
                Route(retry, out),
            ],
        )
        self.secrets = secrets
        self.transport = transport
        self.stopping = threading.Event()
        self.run: Run | None = None
        self.result: FileResult | None = None
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None

    # --- before the run ----------------------------------------------------------------------

    def checkpoint(self) -> Checkpoint | None:
        path = self.out / STATE_DIR / CHECKPOINT_NAME
        if not path.is_file():
            return None
        return Checkpoint.model_validate_json(path.read_bytes())

    def manifest(self) -> Manifest | None:
        path = self.out / MANIFEST_NAME
        if not path.is_file():
            return None
        return Manifest.model_validate_json(path.read_bytes())

    def ref(self) -> ObjectRef:
        """This file's ref: the segment after the checkpoint's, if ``out`` holds one of it."""
        if not self.file.is_file():
            raise LocalImportError(f"{self.file}: no such file")
        head = self.bucket.head_object(Bucket=LOCAL_BUCKET, Key=self.key)
        etag = head["ETag"].strip('"')
        segment = 0
        checkpoint = self.checkpoint()
        if checkpoint is not None:
            if checkpoint.source.key != self.key or checkpoint.source.etag != etag:
                raise LocalImportError(
                    f"{self.out} holds an unfinished import of another file (or of this file "
                    "before it changed): choose another --out, or remove it to start again"
                )
            segment = checkpoint.next_segment
        else:
            manifest = self.manifest()
            if manifest is not None and manifest.source.key != self.key:
                raise LocalImportError(
                    f"{self.out} holds the results of {manifest.source.key.rsplit('/', 1)[-1]}: "
                    "choose another --out"
                )
        return ObjectRef(bucket=LOCAL_BUCKET, key=self.key, etag=etag, segment=segment)

    # --- the run -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the run on a worker thread; ``done()``, ``snapshot()`` and ``stop()`` follow
        it, ``wait`` joins it."""
        ref = self.ref()
        self.out.mkdir(parents=True, exist_ok=True, mode=0o700)
        overrides: dict[str, Any] = {
            "s3": self.bucket,
            "remaining_seconds": self._remaining,
        }
        if self.secrets is not None:
            overrides["secrets"] = self.secrets
        if self.transport is not None:
            overrides["transport"] = self.transport
        wiring = build(self.settings, LocalContext(), **overrides)  # type: ignore[arg-type]
        self.run = Run(ref, wiring)
        self._thread = threading.Thread(target=self._execute, name="bulk-import-run", daemon=True)
        self._thread.start()

    def _execute(self) -> None:
        run = self.run
        if run is None:
            return
        try:
            with tuned_interpreter():
                self.result = run.execute()
        except BulkImportError as exc:
            self.error = exc
        except Exception as exc:  # noqa: BLE001 - reported by the command as one line
            logger.exception("local import failed", extra={"error": type(exc).__name__})
            self.error = exc

    def _remaining(self) -> float:
        return 0.0 if self.stopping.is_set() else NO_DEADLINE

    def stop(self) -> None:
        """Send nothing more; the run checkpoints and hands on (the Lambda's deadline path)."""
        self.stopping.set()

    def wait(self, timeout: float | None = None) -> bool:
        """True once the run has ended."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def snapshot(self) -> Snapshot:
        run = self.run
        size = self.file.stat().st_size if self.file.is_file() else 0
        if run is None:
            return Snapshot(0, size, 0, 0, Counts())
        ledger = run.ctx.ledger
        return Snapshot(
            bytes_read=self.bucket.source_bytes_read,
            size=size,
            rows=run.ctx.progress.rows_read,
            chunks=ledger.chunks_done,
            counts=ledger.tally.counts(),
        )

    def execute(self) -> FileResult:
        """Run to the end on this thread's watch; raises what stopped the run from starting."""
        self.start()
        self.wait()
        return self.outcome()

    def outcome(self) -> FileResult:
        if self.error is not None:
            raise self.error
        if self.result is None:
            raise LocalImportError("the import did not run")
        return self.result
